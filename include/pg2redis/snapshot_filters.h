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
extern void	 snapshot_check_filter(const char *relname, const char *filter);
extern char *snapshot_filter_clause(const char *filter);

#endif /* PG2REDIS_SNAPSHOT_FILTERS_H */
