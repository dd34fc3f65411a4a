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

extern void	 snapshot_initial_load(XLogRecPtr start);
extern List *snapshot_mapped_leaves(Oid relid);

#endif /* PG2REDIS_SNAPSHOT_H */
