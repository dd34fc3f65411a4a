/*-------------------------------------------------------------------------
 *
 * snapshot.h
 *	  Loading existing rows of mapped tables into Redis.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG2REDIS_SNAPSHOT_H
#define PG2REDIS_SNAPSHOT_H

#include "access/xlogdefs.h"
#include "nodes/pg_list.h"

#include "pg2redis/owner.h"

/* How the initial load ended, for the worker to act on. */
typedef enum LoadOutcome
{
	LOAD_DONE,		/* Redis has every row (snapshots may be queued) */
	LOAD_GAVE_UP,	/* Redis stalled; snapshots on demand load the rest */
	LOAD_START_OVER /* nothing can be kept: drop the slot, load again */
} LoadOutcome;

extern LoadOutcome snapshot_initial_load(XLogRecPtr start);

#endif /* PG2REDIS_SNAPSHOT_H */
