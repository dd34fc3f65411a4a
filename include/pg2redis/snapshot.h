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

/*
 * The search_path of every query the worker runs, and of a snapshot filter
 * (validated and run): nothing a user can create in it is found.
 */
#define PG2R_SAFE_SEARCH_PATH "pg_catalog, pg_temp"

/* The identity saved by snapshot_become_owner. */
typedef struct SnapshotOwner
{
	Oid save_userid;
	int save_sec_context;
	int save_nestlevel;
} SnapshotOwner;

extern void	 snapshot_become_owner(Oid owner, SnapshotOwner *saved);
extern void	 snapshot_restore_user(const SnapshotOwner *saved);
extern void	 snapshot_check_filter(const char *relname, const char *filter);
extern char *snapshot_filter_clause(const char *filter);

/* How the initial load ended, for the worker to act on. */
typedef enum LoadOutcome
{
	LOAD_DONE,		/* Redis has every row (snapshots may be queued) */
	LOAD_GAVE_UP,	/* Redis stalled; snapshots on demand load the rest */
	LOAD_START_OVER /* nothing can be kept: drop the slot, load again */
} LoadOutcome;

extern LoadOutcome snapshot_initial_load(XLogRecPtr start);

#endif /* PG2REDIS_SNAPSHOT_H */
