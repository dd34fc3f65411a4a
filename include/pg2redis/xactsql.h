/*-------------------------------------------------------------------------
 *
 * xactsql.h
 *	  Ordinary SQL in the decoding process (xactsql.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG2REDIS_XACTSQL_H
#define PG2REDIS_XACTSQL_H

extern void xactsql_init(MemoryContext cxt);
extern void pg2r_xactsql_set_decoding(bool on);
extern bool pg2r_run_sql(bool (*fn)(void *arg), void *arg, bool *result,
						 char **err);

#endif /* PG2REDIS_XACTSQL_H */
