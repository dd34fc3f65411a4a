/*-------------------------------------------------------------------------
 *
 * reply_compact.h
 *	  Compact Redis replies (src/redis/reply_compact.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG2REDIS_REPLY_COMPACT_H
#define PG2REDIS_REPLY_COMPACT_H

#include <hiredis/hiredis.h>

extern int	pg2r_reader_get_reply(redisReader *reader, bool compact,
								  void **reply);
extern void redis_free_reply(void *reply);

#endif /* PG2REDIS_REPLY_COMPACT_H */
