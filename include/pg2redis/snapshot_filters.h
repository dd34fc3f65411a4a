/*-------------------------------------------------------------------------
 *
 * snapshot_filters.h
 *	  Snapshot requests and filters (snapshot_filters.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG2REDIS_SNAPSHOT_FILTERS_H
#define PG2REDIS_SNAPSHOT_FILTERS_H

extern char *ondemand_filter_for(Oid relid);

#endif /* PG2REDIS_SNAPSHOT_FILTERS_H */
