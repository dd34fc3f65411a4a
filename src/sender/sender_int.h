/*-------------------------------------------------------------------------
 *
 * sender_int.h
 *	  What src/sender/sender.c (blocks, groups, replies) and src/sender/links.c (the
 *	  connections to Redis and the cluster topology) share; not for other
 *	  files.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG2REDIS_SENDER_INT_H
#define PG2REDIS_SENDER_INT_H

#include <hiredis/hiredis.h>

#include "access/xlogdefs.h"
#include "datatype/timestamp.h"
#include "lib/stringinfo.h"
#include "utils/palloc.h"

#include "pg2redis/cluster.h"
#include "pg2redis/redis_errors.h"
#include "pg2redis/redis_io.h"
#include "pg2redis/rules.h"
#include "pg2redis/sender.h"

#define FENCE_DONE PG_UINT64_MAX

/* How far the stream got: see the header comment. */
typedef struct Fence
{
	XLogRecPtr lsn;
	uint64	   seq;
} Fence;

/* Where a command of a block came from, for dead letters. */
typedef struct CmdInfo
{
	int64		  rule_id;
	Oid			  relid;
	Pg2rOp		  op;
	TransactionId xid;
	XLogRecPtr	  lsn;
	uint32		  offset; /* of its RESP in the block */
	uint32		  len;
	int32		  key_off; /* its row's key in the block's keys, or -1 */
	int			  slot;	   /* hash slot (cluster), 0 (standalone) */
	bool		  dropped; /* refused while queued: a dead letter now */
	bool		  refused; /* a dead letter (refused queued or at EXEC) */
} CmdInfo;

typedef enum GroupState
{
	GROUP_PENDING, /* to be sent */
	GROUP_HELD,	   /* MULTI, commands and fence sent, EXEC held back */
	GROUP_SENT,	   /* sent, EXEC not answered yet */
	GROUP_APPLIED, /* EXEC answered, WAIT not yet */
	GROUP_DONE	   /* applied (and replicated as configured) */
} GroupState;

/* The commands of one slot in a block: one MULTI/EXEC. */
typedef struct Group
{
	int		   slot; /* hash slot, or -1 on a standalone server */
	int		   first;
	int		   n; /* commands: order[first .. first + n - 1] */
	int		   link;
	GroupState state;
	bool	   fence_only; /* applied: write the fence again, for WAIT */
	bool	   any_queue_error;
	int		   sent_first; /* its commands in its link's sent[] */
	int		   sent_n;
} Group;

typedef struct Block
{
	StringInfoData resp;   /* the commands' RESP, back to back */
	StringInfoData keys;   /* their rows' keys, for dead letters (see
						  * sender_set_row_key) */
	uint32		   resets; /* times emptied: tells keys' offsets apart */
	int			   ncmds;
	int			   cmdcap;
	CmdInfo		  *cmds;
	int			   txn_cmds; /* commands of the open transaction here */
	Fence		   fence;
	bool		   reset; /* sets every fence to 0/0 (a new slot) */
	int			   ntxns; /* transactions completed in this block */
	uint64		   nchanges;
	TimestampTz	   commit_time;		  /* of the last completed transaction */
	TimestampTz	   first_commit_time; /* of the first transaction in it */
	TimestampTz	   opened_at;
	/* while in flight */
	int	  *order; /* command indexes, grouped by slot */
	Group *groups;
	int	   ngroups;
	char **queue_errors; /* per command: why Redis refused to queue it */
} Block;

/*
 * A piece of a link's output: bytes of its own buffer (MULTI, fences, EXEC,
 * WAIT, DISCARD, small commands copied), or a run of a block's RESP (the
 * block in flight's, or the held block's), sent from there without a copy.
 */
typedef struct OutSeg
{
	const struct Block *block; /* whose RESP, or NULL: the link's own */
	size_t				off;
	size_t				len;
} OutSeg;

typedef enum LinkState
{
	LINK_DOWN,
	LINK_CONNECTING,
	LINK_HANDSHAKE,
	LINK_READY
} LinkState;

/* A connection to one Redis server (a primary, in a cluster). */
typedef struct Link
{
	LinkState	state;
	RedisConn	conn;
	RedisTarget target; /* this server */
	char	   *name;	/* host:port, for messages */

	bool		   is_map; /* asks CLUSTER SLOTS or a sentinel; no data */
	StringInfoData hs;	   /* handshake bytes to send */
	size_t		   hs_written;
	int			   hs_setup;  /* AUTH/SELECT replies expected first */
	int			   hs_extra;  /* then CLIENT KILL (maybe), SETNAME, INFO,
								 * LIST and the KILLs LIST asks for */
	int			   hs_info;	  /* index of the CLIENT INFO reply */
	int			   hs_list;	  /* index of the CLIENT LIST reply */
	int			   hs_role;	  /* index of the ROLE reply, or -1 */
	char		  *my_id;	  /* this connection's id, from CLIENT INFO */
	int			   hs_nslots; /* fence GETs that follow, for hs_slots */
	int			  *hs_slots;
	int			   hs_seen;
	StringInfoData out;	 /* the groups' own bytes, see OutSeg */
	OutSeg		  *segs; /* what the groups of the block in flight (and
						  * of the held block) send */
	int			   nsegs;
	int			   segcap;
	int			   seg;		 /* segs[seg] is being sent, */
	size_t		   seg_sent; /* this much of it already */
	size_t		   own_from; /* while building: out bytes not in segs yet */
	size_t		   run_off;	 /* while building: block bytes not placed yet */
	size_t		   run_len;
	int			  *pend; /* groups in the order sent */
	int			   npend;
	int			  *sent; /* command indexes in the order sent */
	int			   nsent;
	int			   sentcap;
	int			   pos;	  /* pend[pos] is the group being answered */
	int			   reply; /* replies of that group so far */
	int			   wait_n;
	bool		   wait_sent;
	int			   skip;	 /* replies still to come of a discarded held
						  * block (its queue and DISCARD's +OK) */
	TimestampTz	   deadline; /* of the current connect or reply */
} Link;

typedef enum TopoState
{
	TOPO_INIT,	/* before the first settings were applied */
	TOPO_DOWN,	/* waiting to (re)connect */
	TOPO_MAP,	/* asking a cluster node for the slot map, or a sentinel
				 * for the primary */
	TOPO_LINKS, /* links connecting and reading fences */
	TOPO_READY
} TopoState;

/* The links, the slot map and the positions read (src/sender/links.c). */
typedef struct Topology
{
	TopoState	state;
	RedisTarget target; /* from the settings */
	char	   *url;	/* settings signature the target is from */
	bool		cluster;
	bool		sentinel;	  /* redis-sentinel://: the primary is asked */
	char	   *primary_host; /* sentinel: the primary last named */
	int			primary_port;
	int			nlinks;
	Link		links[CLUSTER_MAX_NODES];
	Link		maplink;
	ClusterMap *map;		 /* cluster: the last slot map */
	int			nfences;	 /* CLUSTER_SLOTS, or 1 */
	Fence	   *applied;	 /* per slot: what Redis has, as last known */
	Fence	   *read;		 /* per slot: fences read at the last connect */
	Fence		read_max;	 /* the highest of them */
	bool		fence_known; /* read at least once since start */
	Fence		acked;		 /* the last block applied whole */
	Fence		confirmed;	 /* the last block applied and replicated as
							  * asked, on this server (not reset by a
							  * reconnect): never to go back */
	int			attempts;	 /* failed attempts since last success */
	int			redirects;	 /* redirections followed, for the log */
	int			redirect_streak; /* redirections since a block was applied */
	TimestampTz map_read_at;	 /* when the slot map was last compared */
	/* our last connection to each server, to end it before a new one */
	struct
	{
		char *name; /* host:port */
		char *id;	/* its CLIENT ID */
		char *addr; /* its address as the server sees it */
	} clients[2 * CLUSTER_MAX_NODES];
	TimestampTz next_attempt;
} Topology;

/*
 * SenderState is everything sender.c and links.c share: one instance, snd,
 * defined in sender.c and visible to no other folder (and, like every
 * symbol but the entry points, not exported from the library: exports.map).
 */
typedef struct SenderState
{
	MemoryContext cxt; /* the sender's own: blocks, the last dead letters */
	MemoryContext topo_cxt; /* links and the map: reset on refresh */
	MemoryContext map_cxt;	/* the map link: reset after each use */
	Block		 *building; /* the block being built */
	Block		 *inflight; /* the block sent and not acknowledged, or NULL */
	Block		 *held;		/* the next block, queued behind the block in
							 * flight with its EXEC held back, or NULL (it
							 * is also snd.building: see sender.c) */
	Topology	  topo;		/* the links and what they know */
	bool		  stopped;	/* a rejected command stopped the stream */
	SenderHooks	  hooks;	/* given to sender_init() */
} SenderState;

extern SenderState snd;

/* src/sender/sender.c */
extern char		  *pg2r_fence_format(Fence f, char *buf, size_t len);
extern bool		   pg2r_fence_parse(const char *s, Fence *f);
extern int		   pg2r_link_wait_replicas(const Link *l);
extern void		   pg2r_inflight_restart(void);
extern const char *pg2r_cluster_note(const char *err);
extern void		   pg2r_append_wait(StringInfo buf, int n);
extern bool		   pg2r_handle_block_reply(int li, redisReply *r);
extern void		   pg2r_topo_ready(void);

/* src/sender/links.c */
extern void pg2r_link_reset(Link *l);
extern void pg2r_link_arm_deadline(Link *l);
extern int	pg2r_wait_timeout_ms(void);
extern bool pg2r_wait_reply_ok(const redisReply *r, int n,
							   long long *replicated);
extern void pg2r_topo_fail(Link *l, const char *fmt, ...)
	pg_attribute_printf(2, 3);
extern void pg2r_note_redirect(const char *err);

#endif /* PG2REDIS_SENDER_INT_H */
