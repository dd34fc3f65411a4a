/*-------------------------------------------------------------------------
 *
 * owner.h
 *	  Running a table owner's code as that owner (owner.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG2REDIS_OWNER_H
#define PG2REDIS_OWNER_H

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

extern void snapshot_become_owner(Oid owner, SnapshotOwner *saved);
extern void snapshot_restore_user(const SnapshotOwner *saved);

#endif /* PG2REDIS_OWNER_H */
