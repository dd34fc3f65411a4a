/*-------------------------------------------------------------------------
 *
 * names.c
 *	  Names that every stage shares: row operations and wait events.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "pg2redis/common.h"
#include "pg2redis/compat.h"

static const char *const op_names[PG2R_NUM_OPS] = {"insert", "update",
												   "delete", "truncate",
												   "snapshot"};

/* pg2r_op_name returns the name of op as stored in pg2redis.rules.op. */
const char *
pg2r_op_name(Pg2rOp op)
{
	return op_names[op];
}

/* pg2r_op_parse sets *op from its name; false if the name is unknown. */
bool
pg2r_op_parse(const char *name, Pg2rOp *op)
{
	for (int i = 0; i < PG2R_NUM_OPS; i++)
		if (strcmp(name, op_names[i]) == 0)
		{
			*op = (Pg2rOp) i;
			return true;
		}
	return false;
}

#if PG_VERSION_NUM >= 170000
/*
 * pg2r_wait_event returns the wait_event_info of one of pg2redis's waits,
 * named the first time this process uses it (PostgreSQL 17 and later; see
 * compat.h).
 */
uint32
pg2r_wait_event(Pg2rWait wait)
{
	static const char *const names[PG2R_NUM_WAITS] = {
		[PG2R_WAIT_EXTENSION] = "Pg2RedisExtension",
		[PG2R_WAIT_PAUSED] = "Pg2RedisPaused",
		[PG2R_WAIT_STOPPED] = "Pg2RedisStopped",
		[PG2R_WAIT_REDIS] = "Pg2RedisRedis",
		[PG2R_WAIT_SESSION_REDIS] = "Pg2RedisSessionRedis",
		[PG2R_WAIT_APPLIED] = "Pg2RedisApplied",
		[PG2R_WAIT_STANDBY] = "Pg2RedisStandby",
	};
	static uint32 events[PG2R_NUM_WAITS];

	if (events[wait] == 0)
		events[wait] = WaitEventExtensionNew(names[wait]);
	return events[wait];
}
#endif
