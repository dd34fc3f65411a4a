/*-------------------------------------------------------------------------
 *
 * session_redis.h
 *	  A backend's own connections to Redis: pipelined batches of commands,
 *	  routed by hash slot on a Redis Cluster, under pg2redis.redis_timeout.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG2REDIS_SESSION_REDIS_H
#define PG2REDIS_SESSION_REDIS_H

#include <hiredis/hiredis.h>

#include "datatype/timestamp.h"
#include "lib/stringinfo.h"
#include "port.h"

#include "pg2redis/redis_io.h"

typedef struct RedisSession RedisSession;

/* One command of a batch: its RESP text and the hash slot of its key. */
typedef struct SessionCmd
{
	int			off; /* into the batch's buffer */
	int			len;
	int			slot;  /* of the key; -1: none (standalone: ignored) */
	int			node;  /* >= 0: this node, whatever the slot */
	redisReply *reply; /* set by redis_session_run; freeReplyObject it */
} SessionCmd;

/* Commands sent together; replies come back in the same order. */
typedef struct SessionBatch
{
	StringInfoData buf;
	SessionCmd	  *cmds;
	int			   ncmds;
	int			   cap;
	bool		  *unanswered; /* between send and finish: replies missing */
} SessionBatch;

extern bool redis_session_wait_socket(pgsocket sock, int events,
									  TimestampTz deadline);
extern int	redis_session_connect(RedisConn *conn, const RedisTarget *target);
extern void redis_session_find_primary(RedisTarget *target);
extern void redis_session_target(RedisTarget *target);
extern redisReply	*redis_session_command(const RedisTarget *target,
										   const StringInfo	  cmd);
extern RedisSession *redis_session_open(void);
extern void			 redis_session_close(RedisSession *s);
extern bool			 redis_session_is_cluster(RedisSession *s);
extern int			 redis_session_nodes(RedisSession *s);

extern void redis_batch_init(SessionBatch *b);
extern void redis_batch_reset(SessionBatch *b);
extern int	redis_batch_add(SessionBatch *b, int argc, const char *const *argv,
							const size_t *argvlen);
extern int	redis_batch_add_node(SessionBatch *b, int node, int argc,
								 const char *const *argv,
								 const size_t	   *argvlen);
extern void redis_session_run(RedisSession *s, SessionBatch *b);
extern void redis_session_send(RedisSession *s, SessionBatch *b);
extern void redis_session_finish(RedisSession *s, SessionBatch *b);

#endif /* PG2REDIS_SESSION_REDIS_H */
