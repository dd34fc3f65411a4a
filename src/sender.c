/*-------------------------------------------------------------------------
 *
 * sender.c
 *	  Decoded transactions to Redis: blocks, fences, replies, retries.
 *
 * The decoder hands every command of a committed transaction to
 * sender_command(), in commit order.  Commands are collected in a block of
 * one or more whole transactions, which goes to Redis as
 *
 *		MULTI
 *		<the block's commands>
 *		SET <fence key> <fence>
 *		EXEC
 *
 * so that Redis applies the commands, and the fence saying how far the
 * stream got, atomically.  The fence is "<end_lsn>" when the transaction
 * whose commit record ends at end_lsn (and every earlier one) is applied,
 * or "<end_lsn>:<n>" when only its first n commands are: a transaction with
 * more than pg2redis.max_transaction_commands commands is split into
 * several blocks.  After any reconnect or restart the fence is read back,
 * and the decoder skips what Redis already has; decoding is deterministic
 * (same WAL, same rules at the same point of the stream), so command n of a
 * transaction is the same command every time.  That is what applies INCRBY,
 * XADD and PUBLISH exactly once.
 *
 * Redis Cluster (redis-cluster:// URLs) runs a MULTI/EXEC only when all its
 * keys are in one hash slot.  There a block is cut into groups, one per
 * slot it touches, each a MULTI/EXEC of its slot's commands (in commit
 * order) and of the slot's own fence key (src/cluster.c), sent on the link
 * to the primary that serves the slot.  Atomicity and the fence are then per
 * slot: a reader of one key still sees transactions whole and in order,
 * and every slot knows exactly which commands it has.  Multi-key DEL,
 * UNLINK and MSET whose keys span slots are split per slot; other commands
 * whose keys span slots are dead letters.  A standalone server is the same
 * machinery with one group per block and one fence key.
 *
 * At most two blocks exist: one in flight (sent, not yet acknowledged) and
 * one being built.  The next block is built while Redis executes the
 * previous one, but a block is never sent before every group of the
 * previous one is acknowledged.  That keeps ordering simple under failures:
 * only the block in flight is ever in doubt, and each group's fence tells
 * whether Redis applied it.  If Redis refuses a command while queueing it
 * (EXECABORT), nothing of its group was applied, so the group is sent again
 * without it.  When the block being built is full and one is still in
 * flight, the caller (possibly a decoding callback in the middle of a huge
 * transaction) waits here: that is the back-pressure that bounds memory.
 *
 * Links.  A standalone server has one link; a cluster has a link to each
 * primary, set up from CLUSTER SLOTS asked of a seed (or of a node of the
 * last map).  Each link is a small state machine (down, connecting,
 * handshake, ready) driven by sender_service(), which waits on the latch and
 * every socket with the deadlines of pg2redis.redis_timeout.  Any failure,
 * and any redirection (MOVED, ASK, TRYAGAIN, CLUSTERDOWN: the topology
 * changed or is changing), drops every link, and after a backoff with
 * jitter the map is asked for again and every link re-reads the fences of
 * its slots: the groups of the block in flight that Redis has are done, the
 * others are sent again to whoever serves their slot now.  Nothing here
 * blocks without a deadline, and nothing raises an ERROR for a Redis failure.
 *
 * Failover.  Redis replicates asynchronously, so a write a primary
 * acknowledged can be lost when a replica takes its place.  Fence and
 * commands of a group are one MULTI/EXEC, replicated as a unit, so a
 * promoted replica holds a fence consistent with its data.  To be able to
 * resend what it lacks, a block counts as applied (and the replication slot
 * is confirmed past it) only once WAIT reports the groups replicated to
 * pg2redis.redis_cluster_wait_replicas replicas of their primary (or to as
 * many as the map lists, when fewer).
 *
 * Commands Redis rejects are kept, with where they came from, for the
 * worker to record in pg2redis.dead_letters between decoding batches (or,
 * with pg2redis.on_command_error = stop, the stream stops).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/pg_prng.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "pg2redis/cluster.h"
#include "pg2redis/commands.h"
#include "pg2redis/compat.h"
#include "pg2redis/keyslot.h"
#include "pg2redis/redis_io.h"
#include "pg2redis/sender.h"
#include "pg2redis/settings.h"
#include "pg2redis/state.h"
#include "pg2redis/worker.h"

#define FENCE_DONE PG_UINT64_MAX
#define MAP_REFRESH_MS 5000 /* how often a cluster's slot map is checked */
#define MAX_DEAD_LETTERS 10000

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
	int			  slot;	   /* hash slot (cluster), 0 (standalone) */
	bool		  dropped; /* refused while queued: a dead letter now */
} CmdInfo;

typedef enum GroupState
{
	GROUP_PENDING, /* to be sent */
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
	StringInfoData resp; /* the commands' RESP, back to back */
	int			   ncmds;
	int			   cmdcap;
	CmdInfo		  *cmds;
	int			   txn_cmds; /* commands of the open transaction here */
	Fence		   fence;
	bool		   reset; /* sets every fence to 0/0 (a new slot) */
	int			   ntxns; /* transactions completed in this block */
	uint64		   nchanges;
	TimestampTz	   commit_time; /* of the last completed transaction */
	TimestampTz	   opened_at;
	/* while in flight */
	int	  *order; /* command indexes, grouped by slot */
	Group *groups;
	int	   ngroups;
	char **queue_errors; /* per command: why Redis refused to queue it */
} Block;

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
	LinkState	   state;
	RedisConn	   conn;
	RedisTarget	   target; /* this server */
	char		  *name;   /* host:port, for messages */
	int			   replicas;
	bool		   is_map; /* asks CLUSTER SLOTS, carries no data */
	StringInfoData hs;	   /* handshake bytes to send */
	size_t		   hs_written;
	int			   hs_setup; /* AUTH/SELECT replies expected first */
	int			   hs_extra; /* then CLIENT KILL (if hs_kill) and INFO */
	bool		   hs_kill;
	int			   hs_nslots; /* fence GETs that follow, for hs_slots */
	int			  *hs_slots;
	int			   hs_seen;
	StringInfoData out; /* groups of the block in flight */
	size_t		   written;
	int			  *pend; /* groups in the order sent */
	int			   npend;
	int			  *sent; /* command indexes in the order sent */
	int			   nsent;
	int			   pos;	  /* pend[pos] is the group being answered */
	int			   reply; /* replies of that group so far */
	int			   wait_n;
	bool		   wait_sent;
	TimestampTz	   deadline; /* of the current connect or reply */
} Link;

typedef enum TopoState
{
	TOPO_INIT,	/* before the first settings were applied */
	TOPO_DOWN,	/* waiting to (re)connect */
	TOPO_MAP,	/* asking a cluster node for the slot map */
	TOPO_LINKS, /* links connecting and reading fences */
	TOPO_READY
} TopoState;

static MemoryContext SenderCxt = NULL;
static MemoryContext DeadCxt = NULL;
static MemoryContext TopoCxt = NULL; /* links and the map: reset on refresh */
static MemoryContext MapCxt = NULL;	 /* the map link: reset after each use */
static Block		 blocks[2];
static Block		*building = NULL;
static Block		*inflight = NULL;

static struct
{
	TopoState	state;
	RedisTarget target; /* from the settings */
	char	   *url;	/* settings signature the target is from */
	bool		cluster;
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
} topo;

/* The transaction being decoded. */
static struct
{
	bool		  active;
	bool		  skip; /* wholly applied already */
	bool		  seen; /* reached Redis before (its errors are recorded) */
	TransactionId xid;
	XLogRecPtr	  commit_lsn;
	XLogRecPtr	  end_lsn;
	TimestampTz	  commit_time;
	uint64		  seq; /* its commands so far */
	uint64		  changes;
} cur;

static bool	  stopped = false;
static bool	  redirect_next = false; /* the next topo_fail is a redirection */
static List	 *dead_letters = NIL;
static uint64 dead_letters_dropped = 0;

static void topo_fail(Link *l, const char *fmt, ...) pg_attribute_printf(2, 3);
static void note_redirect(const char *err);
static bool link_start(struct Link *l, const char *host, int port);
static void link_reset(struct Link *l);
static void wait_for_room(void);
static void dispatch_inflight(void);

/* ---------------------------------------------------------------------------
 * Fences
 * ---------------------------------------------------------------------------
 */

static int
fence_cmp(Fence a, Fence b)
{
	if (a.lsn != b.lsn)
		return a.lsn < b.lsn ? -1 : 1;
	if (a.seq != b.seq)
		return a.seq < b.seq ? -1 : 1;
	return 0;
}

static char *
fence_format(Fence f, char *buf, size_t len)
{
	if (f.seq == FENCE_DONE)
		snprintf(buf, len, "%X/%X", LSN_FORMAT_ARGS(f.lsn));
	else
		snprintf(buf, len, "%X/%X:" UINT64_FORMAT, LSN_FORMAT_ARGS(f.lsn),
				 f.seq);
	return buf;
}

/* fence_parse reads a fence from Redis; false if malformed. */
static bool
fence_parse(const char *s, Fence *f)
{
	unsigned int	   hi, lo;
	unsigned long long seq;
	int				   n = 0;

	if (sscanf(s, "%X/%X%n", &hi, &lo, &n) != 2)
		return false;
	f->lsn = ((uint64) hi << 32) | lo;
	f->seq = FENCE_DONE;
	if (s[n] == '\0')
		return true;
	if (s[n] != ':' || sscanf(s + n + 1, "%llu", &seq) != 1)
		return false;
	f->seq = seq;
	return true;
}

/*
 * fence_covers tells whether a slot whose fence is f has command seq of the
 * transaction ending at end_lsn.
 */
static bool
fence_covers(Fence f, XLogRecPtr end_lsn, uint64 seq)
{
	if (end_lsn != f.lsn)
		return end_lsn < f.lsn;
	return f.seq == FENCE_DONE || seq < f.seq;
}

/* fence_slot returns the index into topo.applied of a group's slot. */
static inline int
fence_slot(int slot)
{
	return slot < 0 ? 0 : slot;
}

/* append_fence_set appends SET <fence key of slot> <fence>. */
static void
append_fence_set(StringInfo buf, int slot, Fence fence)
{
	StringInfoData key;
	char		   val[64];

	initStringInfo(&key);
	cluster_append_fence_key(&key, pg2r_slot_name, slot);
	redis_append_cstrings(buf, 3, "SET", key.data,
						  fence_format(fence, val, sizeof(val)));
	pfree(key.data);
}

/* ---------------------------------------------------------------------------
 * Blocks
 * ---------------------------------------------------------------------------
 */

/* block_forget_groups frees what sending a block needed. */
static void
block_forget_groups(Block *b)
{
	if (b->queue_errors)
	{
		for (int i = 0; i < b->ncmds; i++)
			if (b->queue_errors[i])
				pfree(b->queue_errors[i]);
		pfree(b->queue_errors);
	}
	b->queue_errors = NULL;
	if (b->order)
		pfree(b->order);
	b->order = NULL;
	if (b->groups)
		pfree(b->groups);
	b->groups = NULL;
	b->ngroups = 0;
}

/* block_reset empties a block for reuse, keeping its buffers. */
static void
block_reset(Block *b)
{
	block_forget_groups(b);
	resetStringInfo(&b->resp);
	b->ncmds = 0;
	b->txn_cmds = 0;
	b->fence.lsn = InvalidXLogRecPtr;
	b->fence.seq = FENCE_DONE;
	b->reset = false;
	b->ntxns = 0;
	b->nchanges = 0;
	b->commit_time = 0;
	b->opened_at = 0;
	if (b->resp.maxlen > 64 * 1024 * 1024)
	{
		/* do not keep a huge buffer around after a huge transaction */
		MemoryContext old = MemoryContextSwitchTo(SenderCxt);

		pfree(b->resp.data);
		initStringInfo(&b->resp);
		MemoryContextSwitchTo(old);
	}
}

/* sender_init sets up the sender's memory (worker start). */
void
sender_init(void)
{
	MemoryContext old;

	SenderCxt = AllocSetContextCreate(TopMemoryContext, "pg2redis sender",
									  ALLOCSET_DEFAULT_SIZES);
	DeadCxt = AllocSetContextCreate(TopMemoryContext, "pg2redis dead letters",
									ALLOCSET_DEFAULT_SIZES);
	TopoCxt = AllocSetContextCreate(SenderCxt, "pg2redis Redis links",
									ALLOCSET_DEFAULT_SIZES);
	MapCxt = AllocSetContextCreate(SenderCxt, "pg2redis Redis Cluster map",
								   ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(SenderCxt);
	for (int i = 0; i < 2; i++)
	{
		memset(&blocks[i], 0, sizeof(Block));
		initStringInfo(&blocks[i].resp);
		block_reset(&blocks[i]);
	}
	building = &blocks[0];
	inflight = NULL;
	topo.state = TOPO_INIT;
	for (int li = 0; li < CLUSTER_MAX_NODES; li++)
		link_reset(&topo.links[li]);
	link_reset(&topo.maplink);
	topo.acked.lsn = InvalidXLogRecPtr;
	topo.acked.seq = FENCE_DONE;
	/* one fence until the settings say more (an invalid URL says nothing) */
	topo.nfences = 1;
	topo.applied = palloc(sizeof(Fence));
	topo.read = palloc(sizeof(Fence));
	topo.applied[0] = topo.acked;
	topo.read[0] = topo.acked;
	MemoryContextSwitchTo(old);
	sender_reconfigure();
}

/*
 * make_groups cuts a closed block into its groups: one per slot touched
 * (cluster), one in all (standalone), or one per fence (a reset block).
 */
static void
make_groups(Block *b)
{
	static int	  counts[REDIS_CLUSTER_SLOTS + 1];
	MemoryContext old = MemoryContextSwitchTo(SenderCxt);

	b->order = palloc(sizeof(int) * Max(b->ncmds, 1));
	b->queue_errors = palloc0(sizeof(char *) * Max(b->ncmds, 1));
	if (b->reset)
	{
		b->ngroups = topo.cluster ? REDIS_CLUSTER_SLOTS : 1;
		b->groups = palloc0(sizeof(Group) * b->ngroups);
		for (int g = 0; g < b->ngroups; g++)
			b->groups[g].slot = topo.cluster ? g : -1;
	}
	else if (!topo.cluster)
	{
		b->ngroups = 1;
		b->groups = palloc0(sizeof(Group));
		b->groups[0].slot = -1;
		b->groups[0].n = b->ncmds;
		for (int i = 0; i < b->ncmds; i++)
			b->order[i] = i;
	}
	else
	{
		/* a counting sort by slot keeps commit order within each slot */
		int ngroups = 0;
		int g = 0;

		memset(counts, 0, sizeof(counts));
		for (int i = 0; i < b->ncmds; i++)
			if (counts[b->cmds[i].slot + 1]++ == 0)
				ngroups++;
		b->groups = palloc0(sizeof(Group) * ngroups);
		b->ngroups = ngroups;
		for (int s = 0, start = 0; s < REDIS_CLUSTER_SLOTS; s++)
		{
			int n = counts[s + 1];

			if (n == 0)
				continue;
			b->groups[g].slot = s;
			b->groups[g].first = start;
			b->groups[g].n = n;
			counts[s + 1] = start; /* next free position of slot s */
			start += n;
			g++;
		}
		for (int i = 0; i < b->ncmds; i++)
			b->order[counts[b->cmds[i].slot + 1]++] = i;
	}
	MemoryContextSwitchTo(old);
}

/*
 * push_building closes the block being built (when it holds anything) and
 * hands it over for sending, waiting for the block in flight to be
 * acknowledged first.  fence is where the stream is once it is applied.
 */
static void
push_building(Fence fence)
{
	Block *b = building;

	if (b->ncmds == 0 && !b->reset)
		return;
	b->fence = fence;
	wait_for_room();
	if (stopped)
	{
		/* not sent: decoded again when the stream restarts */
		block_reset(b);
		return;
	}
	inflight = b;
	building = (b == &blocks[0]) ? &blocks[1] : &blocks[0];
	block_reset(building);
	make_groups(inflight);
	if (topo.state == TOPO_READY)
		dispatch_inflight();
	sender_service(0);
}

/* ---------------------------------------------------------------------------
 * The decoder's side
 * ---------------------------------------------------------------------------
 */

/*
 * sender_begin_txn starts a decoded transaction; what of it is skipped
 * depends on the fences Redis holds.
 */
void
sender_begin_txn(TransactionId xid, XLogRecPtr commit_lsn, XLogRecPtr end_lsn,
				 TimestampTz commit_time)
{
	cur.active = true;
	cur.xid = xid;
	cur.commit_lsn = commit_lsn;
	cur.end_lsn = end_lsn;
	cur.commit_time = commit_time;
	cur.seq = 0;
	cur.changes = 0;
	/* on a cluster, each command is checked against its slot's fence */
	cur.skip = !topo.cluster && (end_lsn < topo.applied[0].lsn ||
								 (end_lsn == topo.applied[0].lsn &&
								  topo.applied[0].seq == FENCE_DONE));
	cur.seen = cur.skip || (topo.cluster && topo.read_max.lsn >= end_lsn &&
							topo.read_max.lsn != InvalidXLogRecPtr);
	building->txn_cmds = 0;
}

/* sender_txn_skipped tells whether Redis already has the transaction. */
bool
sender_txn_skipped(void)
{
	return cur.skip;
}

/* sender_count_change counts a decoded change of a mapped table. */
void
sender_count_change(void)
{
	cur.changes++;
}

/* queue_dead_letter keeps a dead letter for the worker to record. */
static void
queue_dead_letter(XLogRecPtr lsn, TransactionId xid, Oid relid, Pg2rOp op,
				  int argc, char **argv, const char *error)
{
	MemoryContext old;
	DeadLetter	 *dl;

	if (list_length(dead_letters) >= MAX_DEAD_LETTERS)
	{
		if (dead_letters_dropped++ == 0)
			ereport(WARNING,
					(errmsg("pg2redis dead letter queue is full; further dead letters are only counted")));
		pg2r_report_dead_letters(1);
		return;
	}
	old = MemoryContextSwitchTo(DeadCxt);
	dl = palloc(sizeof(DeadLetter));
	dl->lsn = lsn;
	dl->xid = xid;
	dl->relid = relid;
	dl->op = op;
	dl->argc = argc;
	dl->argv = palloc(sizeof(char *) * Max(argc, 1));
	for (int i = 0; i < argc; i++)
		dl->argv[i] = pstrdup(argv[i]);
	dl->error = pstrdup(error);
	dead_letters = lappend(dead_letters, dl);
	MemoryContextSwitchTo(old);
	pg2r_report_dead_letters(1);
}

/*
 * append_command adds one command for slot to the block being built,
 * unless that slot has it already.
 */
static void
append_command(const Rule *rule, Oid relid, Pg2rOp op, uint64 seq, int slot,
			   int argc, const char *const *argv, const size_t *argvlen)
{
	Block	*b = building;
	CmdInfo *ci;

	if (fence_covers(topo.applied[slot], cur.end_lsn, seq))
		return;
	if (b->ncmds == 0)
		b->opened_at = GetCurrentTimestamp();
	if (b->ncmds == b->cmdcap)
	{
		MemoryContext old = MemoryContextSwitchTo(SenderCxt);

		b->cmdcap = b->cmdcap ? b->cmdcap * 2 : 1024;
		b->cmds = b->cmds ? repalloc(b->cmds, sizeof(CmdInfo) * b->cmdcap)
						  : palloc(sizeof(CmdInfo) * b->cmdcap);
		MemoryContextSwitchTo(old);
	}
	ci = &b->cmds[b->ncmds++];
	ci->rule_id = rule->id;
	ci->relid = relid;
	ci->op = op;
	ci->xid = cur.xid;
	ci->lsn = cur.commit_lsn;
	ci->slot = slot;
	ci->dropped = false;
	ci->offset = b->resp.len;
	{
		MemoryContext old = MemoryContextSwitchTo(SenderCxt);

		redis_append_command(&b->resp, argc, argv, argvlen);
		MemoryContextSwitchTo(old);
	}
	ci->len = b->resp.len - ci->offset;
}

/*
 * split_by_slot sends a multi-key command whose keys span slots (DEL,
 * UNLINK, MSET: each key with the arguments after it up to the next key) as
 * one command per slot, keys in their order; false if the command cannot be
 * split that way.
 */
static bool
split_by_slot(const Rule *rule, Oid relid, Pg2rOp op, uint64 seq, int argc,
			  const char *const *argv, const size_t *argvlen)
{
	const RedisCommandDef *def = redis_command_lookup_len(argv[0], argvlen[0]);
	const char			 **sargv;
	size_t				  *slen;
	int					  *slots;
	bool				  *done;
	int					   nunits;

	if (def == NULL ||
		(pg_strcasecmp(def->name, "DEL") != 0 &&
		 pg_strcasecmp(def->name, "UNLINK") != 0 &&
		 pg_strcasecmp(def->name, "MSET") != 0) ||
		(argc - def->first_key) % def->key_step != 0)
		return false;
	nunits = (argc - def->first_key) / def->key_step;
	sargv = palloc(sizeof(char *) * argc);
	slen = palloc(sizeof(size_t) * argc);
	slots = palloc(sizeof(int) * nunits);
	done = palloc0(sizeof(bool) * nunits);
	for (int u = 0; u < nunits; u++)
	{
		int k = def->first_key + u * def->key_step;

		slots[u] = redis_key_slot(argv[k], argvlen[k]);
	}
	for (int u = 0; u < nunits; u++)
	{
		int n = def->first_key;

		if (done[u])
			continue;
		memcpy(sargv, argv, sizeof(char *) * def->first_key);
		memcpy(slen, argvlen, sizeof(size_t) * def->first_key);
		for (int v = u; v < nunits; v++)
		{
			int k = def->first_key + v * def->key_step;

			if (done[v] || slots[v] != slots[u])
				continue;
			done[v] = true;
			for (int a = 0; a < def->key_step; a++)
			{
				sargv[n] = argv[k + a];
				slen[n++] = argvlen[k + a];
			}
		}
		append_command(rule, relid, op, seq, slots[u], n, sargv, slen);
	}
	pfree(sargv);
	pfree(slen);
	pfree(slots);
	pfree(done);
	return true;
}

/*
 * sender_command appends one command of the current transaction, unless
 * Redis has it already; splits the transaction when it outgrows
 * pg2redis.max_transaction_commands.
 */
void
sender_command(void *arg, const Rule *rule, Pg2rOp op, int argc,
			   const char *const *argv, const size_t *argvlen)
{
	Oid	   relid = *(Oid *) arg;
	uint64 seq = cur.seq++;
	int	   slot = 0;

	if (cur.skip)
		return;
	if (building->txn_cmds >= pg2r_max_transaction_commands)
	{
		Fence part = {cur.end_lsn, seq};

		push_building(part);
		building->txn_cmds = 0;
	}
	building->txn_cmds++;

	if (topo.cluster)
	{
		slot = redis_command_slot(argc, argv, argvlen);
		if (slot == REDIS_SLOT_CROSSSLOT)
		{
			char **copy;

			if (split_by_slot(rule, relid, op, seq, argc, argv, argvlen))
				return;
			if (cur.seen)
				return;
			copy = palloc(sizeof(char *) * argc);
			for (int i = 0; i < argc; i++)
				copy[i] = pnstrdup(argv[i], argvlen[i]);
			queue_dead_letter(cur.commit_lsn, cur.xid, relid, op, argc, copy,
							  "CROSSSLOT the keys of this command hash to different Redis Cluster slots; give them one hash tag, as in {order:1}:items and {order:1}:total");
			for (int i = 0; i < argc; i++)
				pfree(copy[i]);
			pfree(copy);
			return;
		}
		/* a command without a key (PUBLISH) goes with slot 0's fence */
		if (slot < 0)
			slot = 0;
	}
	append_command(rule, relid, op, seq, slot, argc, argv, argvlen);
}

/*
 * sender_render_error records a change a rule could not render; the
 * command stored in the dead letter is the rule's template.
 */
void
sender_render_error(void *arg, const Rule *rule, Pg2rOp op,
					const Pg2rError *err)
{
	Oid relid = *(Oid *) arg;

	if (cur.seen)
		return;
	queue_dead_letter(cur.commit_lsn, cur.xid, relid, op, rule->ncommand,
					  rule->command, err->message);
}

/*
 * sender_commit_txn ends the current transaction; the block goes out when
 * it has reached pg2redis.batch_size commands.
 */
void
sender_commit_txn(void)
{
	Block *b = building;

	cur.active = false;
	if (cur.skip)
		return;
	if (b->ncmds > 0)
	{
		b->ntxns++;
		b->nchanges += cur.changes;
		b->commit_time = cur.commit_time;
		b->fence.lsn = cur.end_lsn;
		b->fence.seq = FENCE_DONE;
	}
	else if (cur.changes > 0)
		pg2r_report_applied(InvalidXLogRecPtr, cur.commit_time, 1, 0,
							cur.changes);
	b->txn_cmds = 0;
	if (b->ncmds >= pg2r_batch_size)
		push_building(b->fence);
}

/* sender_flush sends the block being built, at a transaction boundary. */
void
sender_flush(void)
{
	if (cur.active || building->ncmds == 0)
		return;
	push_building(building->fence);
}

/* sender_batch_open_longer_than: the block being built is older than ms. */
bool
sender_batch_open_longer_than(int ms)
{
	return building->ncmds > 0 &&
		   TimestampDifferenceExceeds(building->opened_at,
									  GetCurrentTimestamp(), ms);
}

/* sender_ready: connected, and the fences are known. */
bool
sender_ready(void)
{
	return topo.state == TOPO_READY && topo.fence_known && !stopped;
}

/* sender_idle: nothing built, nothing in flight, not stopped. */
bool
sender_idle(void)
{
	/* a stopped stream discards what it decodes: nothing is "applied" */
	return !stopped && inflight == NULL && building->ncmds == 0;
}

/*
 * sender_applied_through tells whether Redis has applied every transaction
 * ending at or before lsn (as far as this process knows).
 */
bool
sender_applied_through(XLogRecPtr lsn)
{
	return topo.acked.lsn > lsn ||
		   (topo.acked.lsn == lsn && topo.acked.seq == FENCE_DONE);
}

/* sender_stopped: a rejected command stopped the stream. */
bool
sender_stopped(void)
{
	return stopped;
}

/* sender_has_dead_letters: dead letters wait to be recorded. */
bool
sender_has_dead_letters(void)
{
	return dead_letters != NIL;
}

/*
 * sender_take_dead_letters hands the queued dead letters to the caller;
 * they stay valid until the next call.
 */
List *
sender_take_dead_letters(void)
{
	static List *taken = NIL;

	taken = dead_letters;
	dead_letters = NIL;
	if (taken == NIL)
		MemoryContextReset(DeadCxt);
	return taken;
}

/* ---------------------------------------------------------------------------
 * Sending a block: groups on links
 * ---------------------------------------------------------------------------
 */

/* link_wait_replicas returns how many replicas WAIT asks for on l. */
static int
link_wait_replicas(const Link *l)
{
	if (!topo.cluster)
		return 0;
	return Min(pg2r_redis_cluster_wait_replicas, l->replicas);
}

/*
 * link_build_out writes the pending groups of the block in flight that
 * belong on link li into its output, followed by WAIT when replicas must
 * acknowledge them.
 */
static void
link_build_out(int li)
{
	Link		 *l = &topo.links[li];
	Block		 *b = inflight;
	MemoryContext old = MemoryContextSwitchTo(TopoCxt);

	resetStringInfo(&l->out);
	l->written = 0;
	l->npend = 0;
	l->nsent = 0;
	l->pos = 0;
	l->reply = 0;
	l->wait_sent = false;
	if (l->pend)
		pfree(l->pend);
	if (l->sent)
		pfree(l->sent);
	l->pend = palloc(sizeof(int) * Max(b->ngroups, 1));
	l->sent = palloc(sizeof(int) * Max(b->ncmds, 1));
	for (int gi = 0; gi < b->ngroups; gi++)
	{
		Group *g = &b->groups[gi];

		if (g->link != li || g->state != GROUP_PENDING)
			continue;
		redis_append_cstrings(&l->out, 1, "MULTI");
		g->sent_first = l->nsent;
		if (!g->fence_only)
			for (int k = 0; k < g->n; k++)
			{
				int		 c = b->order[g->first + k];
				CmdInfo *ci = &b->cmds[c];

				if (ci->dropped)
					continue;
				appendBinaryStringInfo(&l->out, b->resp.data + ci->offset,
									   ci->len);
				l->sent[l->nsent++] = c;
			}
		g->sent_n = l->nsent - g->sent_first;
		append_fence_set(&l->out, g->slot, b->fence);
		redis_append_cstrings(&l->out, 1, "EXEC");
		g->state = GROUP_SENT;
		g->any_queue_error = false;
		l->pend[l->npend++] = gi;
	}
	l->wait_n = link_wait_replicas(l);
	if (l->npend > 0 && l->wait_n > 0)
	{
		char n[16], ms[16];

		snprintf(n, sizeof(n), "%d", l->wait_n);
		snprintf(ms, sizeof(ms), "%d", Max(pg2r_redis_timeout_ms / 2, 1));
		redis_append_cstrings(&l->out, 3, "WAIT", n, ms);
		l->wait_sent = true;
	}
	l->deadline = l->npend > 0
					  ? TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													pg2r_redis_timeout_ms)
					  : 0;
	MemoryContextSwitchTo(old);
}

/*
 * dispatch_inflight assigns the pending groups of the block in flight to
 * the links serving their slots and writes every link's output.
 */
static void
dispatch_inflight(void)
{
	Block *b = inflight;

	for (int gi = 0; gi < b->ngroups; gi++)
		if (b->groups[gi].state == GROUP_PENDING)
			b->groups[gi].link =
				topo.cluster ? topo.map->slot_node[b->groups[gi].slot] : 0;
	for (int li = 0; li < topo.nlinks; li++)
		link_build_out(li);
}

/* inflight_acked finishes the block in flight once Redis applied it. */
static void
inflight_acked(void)
{
	Block *b = inflight;

	if (b->reset)
	{
		for (int s = 0; s < topo.nfences; s++)
		{
			topo.applied[s].lsn = InvalidXLogRecPtr;
			topo.applied[s].seq = FENCE_DONE;
		}
		topo.read_max = topo.applied[0];
	}
	else
	{
		pg2r_report_applied(b->fence.seq == FENCE_DONE ? b->fence.lsn
													   : InvalidXLogRecPtr,
							b->commit_time, b->ntxns, b->ncmds, b->nchanges);
		if (b->fence.seq == FENCE_DONE)
			worker_confirm(b->fence.lsn);
	}
	topo.acked = b->fence;
	topo.redirect_streak = 0;
	block_reset(b);
	inflight = NULL;
	for (int li = 0; li < topo.nlinks; li++)
		topo.links[li].deadline = 0;
}

/* inflight_check acknowledges the block in flight when all its groups are. */
static void
inflight_check(void)
{
	if (inflight == NULL)
		return;
	for (int gi = 0; gi < inflight->ngroups; gi++)
		if (inflight->groups[gi].state != GROUP_DONE)
			return;
	inflight_acked();
}

/*
 * inflight_restart forgets what the links carried of the block in flight:
 * every group not known applied is pending again (the fences read on the
 * next connect decide).
 */
static void
inflight_restart(void)
{
	if (inflight == NULL)
		return;
	for (int gi = 0; gi < inflight->ngroups; gi++)
	{
		inflight->groups[gi].state = GROUP_PENDING;
		inflight->groups[gi].any_queue_error = false;
	}
	for (int c = 0; c < inflight->ncmds; c++)
		if (inflight->queue_errors[c])
		{
			pfree(inflight->queue_errors[c]);
			inflight->queue_errors[c] = NULL;
		}
}

/* ---------------------------------------------------------------------------
 * Replies
 * ---------------------------------------------------------------------------
 */

/*
 * resp_to_argv parses the RESP of one command of a block back into its
 * arguments (palloc'd), for a dead letter.
 */
static char **
resp_to_argv(const char *p, int *argc)
{
	int	   n = (int) strtol(p + 1, NULL, 10);
	char **argv = palloc(sizeof(char *) * Max(n, 1));

	p = strchr(p, '\n') + 1;
	for (int i = 0; i < n; i++)
	{
		long len = strtol(p + 1, NULL, 10);

		p = strchr(p, '\n') + 1;
		argv[i] = pnstrdup(p, len);
		p += len + 2;
	}
	*argc = n;
	return argv;
}

/* dead_letter_cmd records command i of block b as rejected. */
static void
dead_letter_cmd(Block *b, int i, const char *error)
{
	CmdInfo *ci = &b->cmds[i];
	int		 argc;
	char   **argv = resp_to_argv(b->resp.data + ci->offset, &argc);

	queue_dead_letter(ci->lsn, ci->xid, ci->relid, ci->op, argc, argv, error);
	for (int a = 0; a < argc; a++)
		pfree(argv[a]);
	pfree(argv);
	if (pg2r_on_command_error == PG2R_ON_ERROR_STOP && !stopped)
	{
		stopped = true;
		pg2r_report_error("Redis rejected a command of rule " INT64_FORMAT
						  ": %s; the stream stopped (pg2redis.on_command_error = stop)",
						  ci->rule_id, error);
		pg2r_report_state(PG2R_STATE_STOPPED);
	}
}

/*
 * error_code_in tells whether a Redis error's code, its first word (e.g.
 * "MOVED" in "MOVED 3999 127.0.0.1:6381"), is one of codes.
 */
static bool
error_code_in(const char *err, const char *const *codes, size_t ncodes)
{
	size_t len = strcspn(err, " ");

	for (size_t i = 0; i < ncodes; i++)
		if (strlen(codes[i]) == len && strncmp(err, codes[i], len) == 0)
			return true;
	return false;
}

/* Errors only a Redis Cluster node sends: redirections, keys across slots. */
static const char *const cluster_codes[] = {"MOVED", "ASK", "CROSSSLOT",
											"CLUSTERDOWN", "TRYAGAIN"};

/*
 * is_transient tells whether a Redis error is worth retrying as is.  On a
 * cluster, redirections are (the map is asked for again), but CROSSSLOT is
 * about the command itself: a dead letter.
 */
static bool
is_transient(const char *err)
{
	static const char *const codes[] = {"OOM",		  "LOADING",
										"BUSY",		  "READONLY",
										"MASTERDOWN", "NOREPLICAS"};
	static const char *const crossslot[] = {"CROSSSLOT"};

	if (topo.cluster && error_code_in(err, crossslot, 1))
		return false;
	return error_code_in(err, codes, lengthof(codes)) ||
		   error_code_in(err, cluster_codes, lengthof(cluster_codes));
}

/*
 * cluster_note returns a remark to append to a Redis error that only a Redis
 * Cluster node sends when pg2redis.redis_url names a standalone server, or
 * "" for any other error.  The stream cannot go on against such a node with
 * such a URL: it stops and retries, losing nothing, until the URL is changed.
 */
static const char *
cluster_note(const char *err)
{
	if (!topo.cluster &&
		error_code_in(err, cluster_codes, lengthof(cluster_codes)))
		return " (pg2redis.redis_url names a node of a Redis Cluster; write it "
			   "as redis-cluster://host:port)";
	return "";
}

/* group_applied records that Redis ran a group's EXEC. */
static void
group_applied(Link *l, Group *g)
{
	topo.applied[fence_slot(g->slot)] = inflight->fence;
	g->state = l->wait_sent ? GROUP_APPLIED : GROUP_DONE;
}

/*
 * link_pipeline_done runs when every reply a link's output asked for came
 * back: groups to send again go out, or the block may be complete.
 */
static void
link_pipeline_done(int li)
{
	Link *l = &topo.links[li];
	bool  again = false;

	l->npend = 0;
	l->deadline = 0;
	for (int gi = 0; gi < inflight->ngroups; gi++)
		if (inflight->groups[gi].link == li &&
			inflight->groups[gi].state == GROUP_PENDING)
			again = true;
	if (again)
		link_build_out(li);
	else
		inflight_check();
}

/*
 * handle_exec_reply consumes the EXEC reply of group g.  Returns false when
 * the links must be dropped (the error is recorded).
 */
static bool
handle_exec_reply(Link *l, Group *g, redisReply *r)
{
	Block *b = inflight;

	if (r->type == REDIS_REPLY_ARRAY && !g->any_queue_error)
	{
		for (size_t i = 0; i < r->elements && (int) i < g->sent_n; i++)
			if (r->element[i]->type == REDIS_REPLY_ERROR)
				dead_letter_cmd(b, l->sent[g->sent_first + i],
								r->element[i]->str);
		if (r->elements == (size_t) g->sent_n + 1 &&
			r->element[g->sent_n]->type == REDIS_REPLY_ERROR)
		{
			topo_fail(l, "Redis refused to record the stream position: %s",
					  r->element[g->sent_n]->str);
			return false;
		}
		group_applied(l, g);
		return true;
	}
	if (g->any_queue_error)
	{
		/* EXECABORT: nothing of the group was applied */
		for (int k = 0; k < g->sent_n; k++)
		{
			int c = l->sent[g->sent_first + k];

			if (b->queue_errors[c] == NULL)
				continue;
			dead_letter_cmd(b, c, b->queue_errors[c]);
			b->cmds[c].dropped = true;
			pfree(b->queue_errors[c]);
			b->queue_errors[c] = NULL;
		}
		g->any_queue_error = false;
		if (stopped)
		{
			/* keep the position before the block; it is sent again on resume */
			topo_fail(l, "the stream stopped on a rejected command");
			return false;
		}
		g->state = GROUP_PENDING; /* sent again without them */
		return true;
	}
	if (r->type == REDIS_REPLY_ERROR)
		note_redirect(r->str);
	topo_fail(l, "unexpected reply to EXEC: %s%s",
			  r->type == REDIS_REPLY_ERROR ? r->str : "nil",
			  r->type == REDIS_REPLY_ERROR ? cluster_note(r->str) : "");
	return false;
}

/*
 * handle_block_reply consumes one reply on a ready link.  Returns false
 * when the links must be dropped (the error is recorded).
 */
static bool
handle_block_reply(int li, redisReply *r)
{
	Link  *l = &topo.links[li];
	Block *b = inflight;
	Group *g;
	int	   idx;

	if (b == NULL || (l->pos >= l->npend && !l->wait_sent))
	{
		topo_fail(l, "unexpected reply from Redis");
		return false;
	}
	if (l->pos >= l->npend)
	{
		/* the reply to WAIT */
		if (r->type != REDIS_REPLY_INTEGER || r->integer < l->wait_n)
		{
			topo_fail(l,
					  "Redis replicated the stream's writes to %lld of the %d replicas asked for within %d ms (pg2redis.redis_cluster_wait_replicas)",
					  r->type == REDIS_REPLY_INTEGER ? r->integer : 0LL,
					  l->wait_n, Max(pg2r_redis_timeout_ms / 2, 1));
			return false;
		}
		l->wait_sent = false;
		for (int gi = 0; gi < b->ngroups; gi++)
			if (b->groups[gi].link == li &&
				b->groups[gi].state == GROUP_APPLIED)
				b->groups[gi].state = GROUP_DONE;
		link_pipeline_done(li);
		return true;
	}

	g = &b->groups[l->pend[l->pos]];
	idx = l->reply++;
	if (idx == 0)
	{
		if (r->type == REDIS_REPLY_ERROR)
		{
			topo_fail(l, "Redis refused MULTI: %s", r->str);
			return false;
		}
		return true;
	}
	if (idx <= g->sent_n + 1)
	{
		/* QUEUED, or an error for a command refused while queueing */
		if (r->type == REDIS_REPLY_ERROR)
		{
			int c;

			if (idx == g->sent_n + 1 || is_transient(r->str))
			{
				note_redirect(r->str);
				topo_fail(l, "Redis refused to queue a command: %s%s", r->str,
						  cluster_note(r->str));
				return false;
			}
			c = l->sent[g->sent_first + idx - 1];
			if (b->queue_errors[c] == NULL)
				b->queue_errors[c] = MemoryContextStrdup(SenderCxt, r->str);
			g->any_queue_error = true;
		}
		return true;
	}

	/* the EXEC reply ends the group */
	if (!handle_exec_reply(l, g, r))
		return false;
	l->pos++;
	l->reply = 0;
	l->deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
											  pg2r_redis_timeout_ms);
	if (l->pos == l->npend && !l->wait_sent)
		link_pipeline_done(li);
	return true;
}

/* ---------------------------------------------------------------------------
 * Links and the topology
 * ---------------------------------------------------------------------------
 */

/*
 * link_reset makes *l an unused, closed link (its socket is not 0, which a
 * later close would take for a real descriptor).
 */
static void
link_reset(Link *l)
{
	memset(l, 0, sizeof(Link));
	redis_conn_init(&l->conn);
}

/* link_close closes a link's connection. */
static void
link_close(Link *l)
{
	redis_close(&l->conn);
	l->state = LINK_DOWN;
	l->deadline = 0;
	l->npend = 0;
	l->wait_sent = false;
}

/* topo_close closes every link. */
static void
topo_close(void)
{
	for (int li = 0; li < topo.nlinks; li++)
		link_close(&topo.links[li]);
	link_close(&topo.maplink);
}

/*
 * map_check_done closes the map link after a check of the slot map while
 * the links are ready, and forgets what it used.
 */
static void
map_check_done(void)
{
	link_close(&topo.maplink);
	MemoryContextReset(MapCxt);
	link_reset(&topo.maplink);
	topo.map_read_at = GetCurrentTimestamp();
}

/*
 * map_equal tells whether two slot maps route every slot to the same
 * primary, with the same number of replicas.
 */
static bool
map_equal(const ClusterMap *a, const ClusterMap *b)
{
	/* b's node i is a's node same[i]; nodes come in any order */
	int same[CLUSTER_MAX_NODES];

	if (a->nnodes != b->nnodes)
		return false;
	for (int i = 0; i < b->nnodes; i++)
	{
		same[i] = -1;
		for (int j = 0; j < a->nnodes; j++)
			if (a->nodes[j].port == b->nodes[i].port &&
				a->nodes[j].replicas == b->nodes[i].replicas &&
				strcmp(a->nodes[j].host, b->nodes[i].host) == 0)
				same[i] = j;
		if (same[i] < 0)
			return false;
	}
	for (int s = 0; s < REDIS_CLUSTER_SLOTS; s++)
		if (a->slot_node[s] != same[b->slot_node[s]])
			return false;
	return true;
}

/*
 * map_check_start asks a primary for the slot map, on a connection of its
 * own, to notice replicas added or removed and slots moved without a
 * redirection having told (every MAP_REFRESH_MS while the links are ready).
 */
static void
map_check_start(void)
{
	static int next = 0;
	int		   i = next++ % topo.map->nnodes;

	topo.maplink.is_map = true;
	(void) link_start(&topo.maplink, topo.map->nodes[i].host,
					  topo.map->nodes[i].port);
}

/*
 * topo_fail drops every link, records why (naming link l's server in a
 * cluster), and schedules a reconnect after a backoff with jitter.
 */
static void
topo_fail(Link *l, const char *fmt, ...)
{
	char	msg[512];
	char	full[600];
	va_list ap;
	long	delay;
	bool	redirect = redirect_next;

	if (l == &topo.maplink && topo.state == TOPO_READY)
	{
		/* a failed check of the slot map: the links are fine */
		redirect_next = false;
		map_check_done();
		return;
	}


	redirect_next = false;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (topo.cluster && l && l->name)
		snprintf(full, sizeof(full), "%s: %s", l->name, msg);
	else
		strlcpy(full, msg, sizeof(full));

	topo_close();
	topo.state = TOPO_DOWN;
	delay = pg2r_retry_initial_ms;
	if (redirect)
	{
		/* the cluster changes its map: back off gently, up to 16 x */
		topo.redirects++;
		delay = Min((long) delay << Min(topo.redirect_streak, 4),
					pg2r_retry_max_ms);
		topo.redirect_streak++;
	}
	else
	{
		for (int i = 0; i < topo.attempts && delay < pg2r_retry_max_ms; i++)
			delay *= 2;
		delay = Min(delay, pg2r_retry_max_ms);
		topo.attempts++;
	}
	delay =
		(long) (delay * (0.5 + 0.5 * pg_prng_double(&pg_global_prng_state)));
	topo.next_attempt =
		TimestampTzPlusMilliseconds(GetCurrentTimestamp(), delay);
	inflight_restart();
	pg2r_report_connected(false);
	pg2r_report_retry();
	pg2r_report_error("%s", full);
	if (!stopped)
		pg2r_report_state(PG2R_STATE_REDIS_UNAVAILABLE);
	if (redirect ? topo.redirects % 100 == 1
				 : topo.attempts == 1 || topo.attempts % 20 == 0)
		ereport(LOG,
				(redirect
					 ? errmsg("pg2redis: the Redis Cluster at %s is moving slots or failing over: %s",
							  topo.target.display, full)
					 : errmsg("pg2redis: Redis at %s is unavailable: %s",
							  topo.target.display, full),
				 errdetail("Retrying in %ld ms.", delay)));
}

/*
 * note_redirect tells the next topo_fail() that err, a reply of a cluster
 * node, says the slot map changed or is changing (MOVED, ASK, TRYAGAIN,
 * CLUSTERDOWN): the map is read again after the initial backoff only.
 */
static void
note_redirect(const char *err)
{
	static const char *const codes[] = {"MOVED", "ASK", "TRYAGAIN",
										"CLUSTERDOWN"};

	redirect_next = topo.cluster && error_code_in(err, codes, lengthof(codes));
}

/*
 * client_slot returns the index in topo.clients of server name, or -1;
 * with add, a free (or the oldest) entry for it.
 */
static int
client_slot(const char *name, bool add)
{
	static int next = 0;

	for (int c = 0; c < (int) lengthof(topo.clients); c++)
		if (topo.clients[c].name && strcmp(topo.clients[c].name, name) == 0)
			return c;
	if (!add)
		return -1;
	for (int c = 0; c < (int) lengthof(topo.clients); c++)
		if (topo.clients[c].name == NULL)
			return c;
	return next++ % lengthof(topo.clients);
}

/*
 * info_field copies the value of "key=" in a CLIENT INFO line into a new
 * string in SenderCxt, or returns NULL.
 */
static char *
info_field(const char *info, const char *key)
{
	size_t		klen = strlen(key);
	const char *p = info;

	while (p && *p)
	{
		if (strncmp(p, key, klen) == 0 && p[klen] == '=')
		{
			size_t len;
			char  *v;

			p += klen + 1;
			len = strcspn(p, " \r\n");
			v = MemoryContextAlloc(SenderCxt, len + 1);
			memcpy(v, p, len);
			v[len] = '\0';
			return v;
		}
		p = strchr(p, ' ');
		if (p)
			p++;
	}
	return NULL;
}

/* remember_client records which connection l is, from CLIENT INFO. */
static void
remember_client(Link *l, const redisReply *r)
{
	int	  c;
	char *id, *addr;

	if (r->type != REDIS_REPLY_STRING)
		return; /* older than Redis 6.2, or not granted: nothing to end */
	id = info_field(r->str, "id");
	addr = info_field(r->str, "addr");
	if (id == NULL || addr == NULL)
	{
		if (id)
			pfree(id);
		if (addr)
			pfree(addr);
		return;
	}
	c = client_slot(l->name, true);
	if (topo.clients[c].name == NULL)
		topo.clients[c].name = MemoryContextStrdup(SenderCxt, l->name);
	else if (strcmp(topo.clients[c].name, l->name) != 0)
	{
		pfree(topo.clients[c].name);
		topo.clients[c].name = MemoryContextStrdup(SenderCxt, l->name);
	}
	if (topo.clients[c].id)
		pfree(topo.clients[c].id);
	if (topo.clients[c].addr)
		pfree(topo.clients[c].addr);
	topo.clients[c].id = id;
	topo.clients[c].addr = addr;
}

/*
 * link_start begins connecting l to host:port; the handshake (AUTH, then
 * CLUSTER SLOTS for the map link or the fence GETs of its slots) is queued
 * to go once connected.
 */
static bool
link_start(Link *l, const char *host, int port)
{
	MemoryContext  old = MemoryContextSwitchTo(l->is_map ? MapCxt : TopoCxt);
	StringInfoData key;

	redis_conn_init(&l->conn);
	l->target = topo.target;
	if (!topo.target.unix_socket)
	{
		l->target.host = pstrdup(host);
		l->target.port = port;
	}
	l->name = topo.target.unix_socket ? pstrdup(topo.target.path)
									  : psprintf("%s:%d", host, port);
	initStringInfo(&l->hs);
	initStringInfo(&l->out);
	l->hs_written = 0;
	l->hs_seen = 0;
	l->hs_setup = redis_append_handshake(&l->hs, &l->target);
	l->hs_extra = 0;
	l->hs_kill = false;
	initStringInfo(&key);
	if (l->is_map)
		redis_append_cstrings(&l->hs, 2, "CLUSTER", "SLOTS");
	else
	{
		int c = client_slot(l->name, false);

		/*
		 * The connection this one replaces may still have a block in the
		 * server's input buffer (the server stalled, or the network): it
		 * would run after the fences are read here.  End it first; the
		 		 * server runs commands one at a time, so after the KILL that block
		 * either ran (and the fences show it) or never will.  Not over a
		 * unix socket: every client there has the address "<path>:0", and
		 * after a restart of the server another client may have our old id.
		 */
		if (c >= 0 && topo.clients[c].id && !topo.target.unix_socket)
		{
			redis_append_cstrings(&l->hs, 6, "CLIENT", "KILL", "ID",
								  topo.clients[c].id, "ADDR",
								  topo.clients[c].addr);
			l->hs_kill = true;
			l->hs_extra++;
		}
		redis_append_cstrings(&l->hs, 2, "CLIENT", "INFO");
		l->hs_extra++;
		for (int i = 0; i < l->hs_nslots; i++)
		{
			resetStringInfo(&key);
			cluster_append_fence_key(&key, pg2r_slot_name,
									 topo.cluster ? l->hs_slots[i] : -1);
			redis_append_cstrings(&l->hs, 2, "GET", key.data);
		}
	}
	MemoryContextSwitchTo(old);
	if (!redis_connect_start(&l->conn, &l->target))
	{
		topo_fail(l, "%s", l->conn.error);
		return false;
	}
	l->state = LINK_CONNECTING;
	l->deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
											  pg2r_redis_timeout_ms);
	return true;
}

/*
 * topo_connect starts a (re)connect: to the server, or, in a cluster, to a
 * node asked for the slot map (the nodes of the last map first, then the
 * URL's seeds, one more each attempt).
 */
static void
topo_connect(void)
{
	MemoryContext old;

	topo_close();
	MemoryContextReset(TopoCxt);
	MemoryContextReset(MapCxt);
	for (int li = 0; li < CLUSTER_MAX_NODES; li++)
		link_reset(&topo.links[li]);
	link_reset(&topo.maplink);
	topo.nlinks = 0;
	if (!topo.cluster)
	{
		Link *l = &topo.links[0];

		topo.nlinks = 1;
		old = MemoryContextSwitchTo(TopoCxt);
		l->hs_nslots = 1;
		l->hs_slots = palloc0(sizeof(int));
		MemoryContextSwitchTo(old);
		topo.state = TOPO_LINKS;
		(void) link_start(l, topo.target.host, topo.target.port);
		return;
	}
	else
	{
		int known = topo.map ? topo.map->nnodes : 0;
		int i = (topo.attempts + topo.redirect_streak) %
				(known + topo.target.nseeds);
		const char *host;
		int			port;

		if (i < known)
		{
			host = topo.map->nodes[i].host;
			port = topo.map->nodes[i].port;
		}
		else
		{
			host = topo.target.seed_hosts[i - known];
			port = topo.target.seed_ports[i - known];
		}
		/* the host may live in the map about to be replaced */
		host = MemoryContextStrdup(SenderCxt, host);
		topo.maplink.is_map = true;
		topo.state = TOPO_MAP;
		(void) link_start(&topo.maplink, host, port);
		pfree((char *) host);
	}
}

/*
 * forget_other_clients drops the connections remembered for servers that are
 * not primaries of map (so that the table holds the current ones).
 */
static void
forget_other_clients(const ClusterMap *map)
{
	for (int c = 0; c < (int) lengthof(topo.clients); c++)
	{
		bool keep = false;

		if (topo.clients[c].name == NULL)
			continue;
		for (int i = 0; i < map->nnodes && !keep; i++)
		{
			char name[NI_MAXHOST + 16];

			snprintf(name, sizeof(name), "%s:%d", map->nodes[i].host,
					 map->nodes[i].port);
			keep = strcmp(name, topo.clients[c].name) == 0;
		}
		if (keep)
			continue;
		pfree(topo.clients[c].name);
		if (topo.clients[c].id)
			pfree(topo.clients[c].id);
		if (topo.clients[c].addr)
			pfree(topo.clients[c].addr);
		topo.clients[c].name = topo.clients[c].id = topo.clients[c].addr =
			NULL;
	}
}

/* topo_forget_map frees the slot map, if any. */
static void
topo_forget_map(void)
{
	if (topo.map == NULL)
		return;
	for (int i = 0; i < topo.map->nnodes; i++)
		pfree(topo.map->nodes[i].host);
	pfree(topo.map);
	topo.map = NULL;
}

/* topo_use_map starts a link to every primary of a new slot map. */
static void
topo_use_map(ClusterMap *map)
{
	MemoryContext old = MemoryContextSwitchTo(SenderCxt);

	topo_forget_map();
	topo.map = map;
	forget_other_clients(map);
	for (int i = 0; i < map->nnodes; i++)
		map->nodes[i].host = pstrdup(map->nodes[i].host);
	MemoryContextSwitchTo(old);

	link_close(&topo.maplink);
	MemoryContextReset(MapCxt);
	link_reset(&topo.maplink);
	topo.map_read_at = GetCurrentTimestamp();
	topo.nlinks = map->nnodes;
	old = MemoryContextSwitchTo(TopoCxt);
	for (int li = 0; li < map->nnodes; li++)
	{
		Link *l = &topo.links[li];

		l->replicas = map->nodes[li].replicas;
		l->hs_slots = palloc(sizeof(int) * REDIS_CLUSTER_SLOTS);
		for (int s = 0; s < REDIS_CLUSTER_SLOTS; s++)
			if (map->slot_node[s] == li)
				l->hs_slots[l->hs_nslots++] = s;
	}
	MemoryContextSwitchTo(old);
	topo.state = TOPO_LINKS;
	for (int li = 0; li < map->nnodes; li++)
		if (!link_start(&topo.links[li], map->nodes[li].host,
						map->nodes[li].port))
			return;
}

/*
 * topo_ready runs once every link has read its fences: the groups of the
 * block in flight that Redis has are done (or, when replicas must
 * acknowledge them, their fence is written again so that WAIT covers it),
 * the others go out again.
 */
static void
topo_ready(void)
{
	static bool in_doubt[REDIS_CLUSTER_SLOTS];
	int			lost = 0;

	memset(in_doubt, 0, sizeof(in_doubt));
	if (inflight)
	{
		for (int gi = 0; gi < inflight->ngroups; gi++)
		{
			Group *g = &inflight->groups[gi];
			Fence  r = topo.read[fence_slot(g->slot)];
			bool   has = inflight->reset ? r.lsn == InvalidXLogRecPtr
										 : fence_cmp(inflight->fence, r) <= 0;
			int	   li = topo.cluster ? topo.map->slot_node[g->slot] : 0;

			in_doubt[fence_slot(g->slot)] = true;
			g->fence_only = has && link_wait_replicas(&topo.links[li]) > 0;
			g->state = has && !g->fence_only ? GROUP_DONE : GROUP_PENDING;
		}
	}
	topo.read_max.lsn = InvalidXLogRecPtr;
	topo.read_max.seq = 0;
	for (int s = 0; s < topo.nfences; s++)
	{
		if (fence_cmp(topo.read[s], topo.read_max) > 0)
			topo.read_max = topo.read[s];
		/* a slot's position went back: writes it acknowledged are gone */
		if (topo.fence_known && !in_doubt[s] &&
			fence_cmp(topo.read[s], topo.applied[s]) < 0)
			lost++;
	}
	if (lost > 0 && topo.cluster)
		ereport(WARNING,
				(errmsg("pg2redis: the Redis Cluster lost writes of %d hash slots that it had acknowledged",
						lost),
				 errdetail("Their stream positions went back; the changes in between are not in Redis."),
				 errhint("Set pg2redis.redis_cluster_wait_replicas to the number of replicas per primary, and run pg2redis_resync() to load every mapped table again.")));
	else if (!topo.cluster && topo.read[0].lsn == InvalidXLogRecPtr &&
			 (topo.fence_known || worker_confirmed_lsn() != InvalidXLogRecPtr))
	{
		StringInfoData key;

		initStringInfo(&key);
		cluster_append_fence_key(&key, pg2r_slot_name, -1);
		ereport(LOG,
				(errmsg("pg2redis: Redis has no stream position (key \"%s\"); streaming resumes from the slot's position",
						key.data),
				 errhint("If Redis lost its data, run pg2redis_resync() to load every mapped table again, or pg2redis_snapshot() for one table.")));
		pfree(key.data);
	}
	memcpy(topo.applied, topo.read, sizeof(Fence) * topo.nfences);
	if (!topo.cluster)
		topo.acked = topo.read[0];
	topo.fence_known = true;
	topo.state = TOPO_READY;
	topo.attempts = 0;
	pg2r_report_connected(true);
	if (!stopped)
		pg2r_report_state(PG2R_STATE_STREAMING);
	if (topo.cluster)
		ereport(LOG,
				(errmsg("pg2redis: connected to Redis Cluster at %s (%d primaries)",
						topo.target.display, topo.nlinks)));
	else
		ereport(LOG, (errmsg("pg2redis: connected to Redis at %s",
							 topo.target.display)));
	if (inflight)
	{
		dispatch_inflight();
		inflight_check();
	}
}

/* link_ready marks a link ready, and the topology once all links are. */
static void
link_ready(Link *l)
{
	l->state = LINK_READY;
	l->deadline = 0;
	for (int i = 0; i < topo.nlinks; i++)
		if (topo.links[i].state != LINK_READY)
			return;
	topo_ready();
}

/*
 * handle_sync_reply consumes the replies to the SET and the WAIT that make
 * the positions read at the first connect durable.  Returns false when the
 * links were dropped.
 */
static bool
handle_sync_reply(int li, Link *l, redisReply *r, int which)
{
	if (r->type == REDIS_REPLY_ERROR)
	{
		note_redirect(r->str);
		topo_fail(l,
				  "could not confirm the stream positions on the replicas: %s",
				  r->str);
		return false;
	}
	if (which == 0)
		return true;
	if (r->type != REDIS_REPLY_INTEGER || r->integer < link_wait_replicas(l))
	{
		topo_fail(l,
				  "Redis replicated the stream's positions to %lld of the %d replicas asked for within %d ms (pg2redis.redis_cluster_wait_replicas)",
				  r->type == REDIS_REPLY_INTEGER ? r->integer : 0LL,
				  link_wait_replicas(l), Max(pg2r_redis_timeout_ms / 2, 1));
		return false;
	}
	link_ready(l);
	return true;
}

/*
 * handle_handshake_reply consumes AUTH and SELECT replies, then CLUSTER
 * SLOTS (map link) or the fence GETs.  Returns false when the links were
 * dropped.
 */
static bool
handle_handshake_reply(int li, Link *l, redisReply *r)
{
	int idx = l->hs_seen++;

	if (idx < l->hs_setup)
	{
		if (r->type == REDIS_REPLY_ERROR)
		{
			topo_fail(l, "Redis refused the connection setup: %s", r->str);
			return false;
		}
		return true;
	}
	if (l->is_map)
	{
		char		  err[256];
		ClusterMap	 *map;
		MemoryContext old;

		if (r->type == REDIS_REPLY_ERROR)
		{
			topo_fail(l,
					  "could not read the slot map of the Redis Cluster: %s",
					  r->str);
			return false;
		}
		old = MemoryContextSwitchTo(MapCxt);
		map = MemoryContextAllocZero(SenderCxt, sizeof(ClusterMap));
		if (!cluster_parse_slots(r, l->target.host, map, err, sizeof(err)))
		{
			MemoryContextSwitchTo(old);
			pfree(map);
			topo_fail(l, "%s", err);
			return false;
		}
		MemoryContextSwitchTo(old);
		if (topo.state == TOPO_READY)
		{
			/* a periodic check: reconnect only if the map changed */
			bool same = map_equal(map, topo.map);

			pfree(map);
			map_check_done();
			if (!same)
			{
				redirect_next = true;
				topo_fail(NULL, "the slot map of the Redis Cluster changed");
			}
			return false;
		}
		topo_use_map(map); /* copies the host names */
		return false;	   /* the map link is closed */
	}

	if (idx < l->hs_setup + l->hs_extra)
	{
		/* CLIENT KILL (its result does not matter), then CLIENT INFO */
		if (idx == l->hs_setup + l->hs_extra - 1)
			remember_client(l, r);
		return true;
	}
	if (idx >= l->hs_setup + l->hs_extra + l->hs_nslots)
		return handle_sync_reply(li, l, r,
								 idx - (l->hs_setup + l->hs_extra +
										l->hs_nslots));

	/* a fence GET */
	{
		int s =
			topo.cluster ? l->hs_slots[idx - l->hs_setup - l->hs_extra] : 0;
		Fence f = {InvalidXLogRecPtr, FENCE_DONE};

		if (r->type == REDIS_REPLY_ERROR)
		{
			note_redirect(r->str);
			topo_fail(l, "could not read the stream position from Redis: %s%s",
					  r->str, cluster_note(r->str));
			return false;
		}
		if (r->type == REDIS_REPLY_STRING && !fence_parse(r->str, &f))
		{
			StringInfoData key;

			initStringInfo(&key);
			cluster_append_fence_key(&key, pg2r_slot_name,
									 topo.cluster ? s : -1);
			topo_fail(l,
					  "Redis key \"%s\" holds \"%s\", which is not a pg2redis stream position",
					  key.data, r->str);
			pfree(key.data);
			return false;
		}
		topo.read[s] = f;
	}
	if (l->hs_seen == l->hs_setup + l->hs_extra + l->hs_nslots)
	{
		if (!topo.fence_known && link_wait_replicas(l) > 0 && l->hs_nslots > 0)
		{
			/*
			 * The positions just read may be writes the replicas never got
			 * (the worker stopped before WAIT answered): the slot would be
			 * confirmed past them, and a failover would lose them.  One
			 * write now, and WAIT for it, covers everything before it.
			 */
			char		   val[64], n[16], ms[16];
			StringInfoData key;
			MemoryContext  old = MemoryContextSwitchTo(TopoCxt);

			/* a key of its own, in a slot of this primary: fences untouched */
			initStringInfo(&key);
			appendStringInfo(&key, "pg2redis:%s:sync:{%d}", pg2r_slot_name,
							 cluster_fence_tag(l->hs_slots[0]));
			redis_append_cstrings(&l->hs, 3, "SET", key.data,
								  fence_format(topo.read[l->hs_slots[0]], val,
											   sizeof(val)));
			snprintf(n, sizeof(n), "%d", link_wait_replicas(l));
			snprintf(ms, sizeof(ms), "%d", Max(pg2r_redis_timeout_ms / 2, 1));
			redis_append_cstrings(&l->hs, 3, "WAIT", n, ms);
			MemoryContextSwitchTo(old);
			return true;
		}
		link_ready(l);
	}
	return true;
}

/* link_write sends what is pending on a link; false when the links failed. */
static bool
link_write(Link *l)
{
	const char *data;
	size_t		len;
	size_t	   *written;
	ssize_t		n;

	if (l->state == LINK_HANDSHAKE && l->hs_written < (size_t) l->hs.len)
	{
		data = l->hs.data;
		len = l->hs.len;
		written = &l->hs_written;
	}
	else if (l->state == LINK_READY && l->written < (size_t) l->out.len)
	{
		data = l->out.data;
		len = l->out.len;
		written = &l->written;
	}
	else
		return true;

	while (*written < len)
	{
		n = redis_send(&l->conn, data + *written, len - *written);
		if (n < 0)
		{
			topo_fail(l, "%s", l->conn.error);
			return false;
		}
		if (n == 0)
			break;
		*written += n;
		l->deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
												  pg2r_redis_timeout_ms);
	}
	return true;
}

/*
 * link_read takes in and handles what Redis sent on a link; false when the
 * links failed or were rebuilt (the caller must not touch l again).
 */
static bool
link_read(int li, Link *l)
{
	bool		eof;
	redisReply *r;
	int			rc;

	if (!redis_receive(&l->conn, &eof))
	{
		topo_fail(l, "%s", l->conn.error);
		return false;
	}
	while ((rc = redis_next_reply(&l->conn, &r)) == 1)
	{
		bool ok;

		l->deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
												  pg2r_redis_timeout_ms);
		if (l->state == LINK_HANDSHAKE)
			ok = handle_handshake_reply(li, l, r);
		else
			ok = handle_block_reply(li, r);
		freeReplyObject(r);
		if (!ok || l->state == LINK_DOWN)
			return false;
	}
	if (rc < 0)
	{
		topo_fail(l, "%s", l->conn.error);
		return false;
	}
	return true;
}

/* link_awaiting: something was sent on l that Redis has not answered. */
static bool
link_awaiting(const Link *l)
{
	if (l->state == LINK_HANDSHAKE || l->state == LINK_CONNECTING)
		return true;
	return l->state == LINK_READY && (l->pos < l->npend || l->wait_sent);
}

/* link_events returns the socket events l waits for (0: none). */
static int
link_events(const Link *l)
{
	if (l->state == LINK_DOWN)
		return 0;
	if (l->state == LINK_CONNECTING)
		return l->conn.want;
	if ((l->state == LINK_HANDSHAKE && l->hs_written < (size_t) l->hs.len) ||
		(l->state == LINK_READY && l->written < (size_t) l->out.len))
		return WL_SOCKET_READABLE | WL_SOCKET_WRITEABLE;
	return WL_SOCKET_READABLE;
}

/* link_step advances one link after a wait; false when the links failed. */
static bool
link_step(int li, Link *l, int events)
{
	if (l->state == LINK_CONNECTING &&
		(events & (WL_SOCKET_WRITEABLE | WL_SOCKET_READABLE)))
	{
		int done = redis_connect_finish(&l->conn, &l->target);

		if (done < 0)
		{
			topo_fail(l, "%s", l->conn.error);
			return false;
		}
		if (done > 0)
		{
			l->state = LINK_HANDSHAKE;
			l->deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													  pg2r_redis_timeout_ms);
		}
	}
	if (l->state == LINK_HANDSHAKE || l->state == LINK_READY)
	{
		if (!link_write(l) || !link_read(li, l))
			return false;
		if (l->state == LINK_READY && !link_write(l))
			return false;
	}
	if (l->state != LINK_DOWN && l->deadline != 0 && link_awaiting(l) &&
		GetCurrentTimestamp() >= l->deadline)
	{
		topo_fail(l, l->state == LINK_CONNECTING
						 ? "timed out connecting to Redis"
						 : "timed out waiting for Redis to reply");
		return false;
	}
	return true;
}

/*
 * sender_reconfigure applies new pg2redis.redis_* settings: a changed
 * target drops the links and reconnects at once.
 */
void
sender_reconfigure(void)
{
	RedisTarget	  target;
	char		  err[256];
	char		 *signature = pg2r_redis_settings_signature();
	MemoryContext old;
	int			  nfences;

	if (topo.url && strcmp(topo.url, signature) == 0)
		return;
	old = MemoryContextSwitchTo(SenderCxt);
	topo.url = pstrdup(signature);
	if (!pg2r_redis_target(&target, err, sizeof(err)))
	{
		MemoryContextSwitchTo(old);
		pg2r_report_error("%s", err);
		ereport(WARNING,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("%s", err),
				 errhint("Fix the pg2redis.redis_* settings and reload the configuration.")));
		/* no valid target: stay down until a reload (still "initial" if so) */
		topo_close();
		if (topo.state != TOPO_INIT)
			topo.state = TOPO_DOWN;
		topo.next_attempt = DT_NOEND;
		return;
	}
	if (topo.state != TOPO_DOWN && topo.state != TOPO_INIT)
		ereport(LOG,
				(errmsg("pg2redis: Redis settings changed, connecting to %s",
						target.display)));
	nfences = target.cluster ? REDIS_CLUSTER_SLOTS : 1;
	if (topo.nfences != nfences && topo.state != TOPO_INIT)
	{
		/*
		 * Standalone <-> cluster: the blocks decoded so far are cut for the
		 * other kind of server.  Start over from the slot's position, which
		 * only ever moves past what Redis acknowledged.
		 */
		ereport(LOG,
				(errmsg("pg2redis: pg2redis.redis_url switched between a standalone Redis and a Redis Cluster; restarting the worker")));
		proc_exit(1);
	}
	topo_close();
	topo.target = target;
	if (topo.nfences != nfences)
	{
		pfree(topo.applied);
		pfree(topo.read);
		topo.applied = palloc(sizeof(Fence) * nfences);
		topo.read = palloc(sizeof(Fence) * nfences);
		for (int s = 0; s < nfences; s++)
		{
			topo.applied[s].lsn = InvalidXLogRecPtr;
			topo.applied[s].seq = FENCE_DONE;
			topo.read[s] = topo.applied[s];
		}
		topo.nfences = nfences;
	}
	topo.cluster = target.cluster;
	/* another server: nothing is known about its positions or its map */
	topo.fence_known = false;
	topo_forget_map();
	MemoryContextSwitchTo(old);
	topo.state = TOPO_DOWN;
	topo.attempts = 0;
	topo.next_attempt = 0;
	pg2r_report_connected(false);
	inflight_restart();
}

/* sender_disconnect closes the connections (worker exit). */
void
sender_disconnect(void)
{
	if (SenderCxt == NULL)
		return;
	topo_close();
	topo.state = TOPO_DOWN;
}

/*
 * sender_service does one round of Redis work: connects when due, writes
 * what is pending, reads and handles replies, enforces deadlines.  It
 * waits up to timeout_ms for a socket or the latch first (0: does not
 * wait).  Interrupts are handled by the worker's hook.
 */
void
sender_service(long timeout_ms)
{
	TimestampTz	  now = GetCurrentTimestamp();
	WaitEventSet *set;
	WaitEvent	  occurred[CLUSTER_MAX_NODES + 4];
	int			  events[CLUSTER_MAX_NODES + 2];
	Link		 *all[CLUSTER_MAX_NODES + 2];
	int			  nall = 0;
	int			  nsockets = 0;
	int			  nev;

	worker_handle_interrupts();
	if (stopped)
	{
		(void) WaitLatch(MyLatch,
						 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Max(timeout_ms, 1), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		return;
	}

	if (topo.state == TOPO_DOWN && topo.next_attempt <= now)
		topo_connect();

	/* never sleep past a deadline or a reconnect attempt */
	if (topo.state == TOPO_DOWN && topo.next_attempt != DT_NOEND)
		timeout_ms =
			Min(timeout_ms,
				Max(TimestampDifferenceMilliseconds(now, topo.next_attempt),
					0));
	if (topo.state == TOPO_READY && topo.cluster &&
		topo.maplink.state == LINK_DOWN &&
		TimestampDifferenceExceeds(topo.map_read_at, now, MAP_REFRESH_MS))
		map_check_start();
	if (topo.state == TOPO_MAP)
		all[nall++] = &topo.maplink;
	else if (topo.state != TOPO_DOWN)
		for (int li = 0; li < topo.nlinks; li++)
			all[nall++] = &topo.links[li];
	if (topo.state == TOPO_READY && topo.maplink.state != LINK_DOWN)
		all[nall++] = &topo.maplink;
	for (int i = 0; i < nall; i++)
	{
		if (all[i]->deadline != 0 && link_awaiting(all[i]))
			timeout_ms =
				Min(timeout_ms,
					Max(TimestampDifferenceMilliseconds(now, all[i]->deadline),
						0));
		events[i] = 0;
		if (link_events(all[i]) != 0)
			nsockets++;
	}

	if (timeout_ms > 0 || nsockets > 0)
	{
		set = PG2R_CREATE_WAIT_EVENT_SET(nsockets + 2);
		AddWaitEventToSet(set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
		AddWaitEventToSet(set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL,
						  NULL);
		for (int i = 0; i < nall; i++)
		{
			int ev = link_events(all[i]);

			if (ev != 0)
				AddWaitEventToSet(set, ev, all[i]->conn.sock, NULL,
								  (void *) (intptr_t) i);
		}
		nev = WaitEventSetWait(set, Max(timeout_ms, 0), occurred,
							   lengthof(occurred), PG_WAIT_EXTENSION);
		FreeWaitEventSet(set);
		for (int e = 0; e < nev; e++)
		{
			if (occurred[e].events & WL_LATCH_SET)
				ResetLatch(MyLatch);
			else if (occurred[e].events &
					 (WL_SOCKET_READABLE | WL_SOCKET_WRITEABLE))
				events[(intptr_t) occurred[e].user_data] |= occurred[e].events;
		}
		worker_handle_interrupts();
	}

	/* a failure or a new map rebuilds the links: stop at the first */
	for (int i = 0; i < nall; i++)
		if (!link_step(all[i] == &topo.maplink ? -1 : i, all[i], events[i]))
			break;
}

/*
  * wait_for_room waits until nothing is in flight, serving Redis; called
 * with a closed block that must go next, possibly inside a decoding
 * callback.  It returns at once when the stream stopped on a rejected
 * command, so that the worker's loop records the dead letters.
 */
static void
wait_for_room(void)
{
	while (inflight != NULL && !stopped)
		sender_service(1000);
}

/*
 * sender_set_idle_position notes that everything before lsn is applied or
 * irrelevant to Redis (caught up, nothing pending).
 */
void
sender_set_idle_position(XLogRecPtr lsn)
{
	if (sender_idle())
		pg2r_report_applied(lsn, 0, 0, 0, 0);
}

/*
 * sender_reset_fence sets every stream position in Redis to 0/0 when a new
 * slot is made (its positions are unrelated to an older slot's), waiting
 * for the replies; false if Redis could not be reached in time.  SET rather
 * than DEL, so that an ACL user needs only SET and GET on the keys.
 */
bool
sender_reset_fence(void)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   pg2r_redis_timeout_ms);

	while (!sender_ready() || !sender_idle())
	{
		if (GetCurrentTimestamp() >= deadline)
			return false;
		sender_service(100);
	}
	building->reset = true;
	push_building(building->fence);
	while (inflight != NULL)
	{
		if (GetCurrentTimestamp() >= deadline)
		{
			topo_fail(NULL, "could not reset the stream position in Redis");
			block_reset(inflight);
			inflight = NULL;
			return false;
		}
		sender_service(100);
	}
	return true;
}
