/*-------------------------------------------------------------------------
 *
 * xactsql.h
 *	  Ordinary SQL in the decoding process (xactsql.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG2REDIS_XACTSQL_H
#define PG2REDIS_XACTSQL_H

#include "replication/logical.h"

extern void xactsql_init(MemoryContext					cxt,
						 LogicalDecodingContext *const *decoding);
extern bool pg2r_run_sql(bool (*fn)(void *arg), void *arg, bool *result,
						 char **err);

#endif /* PG2REDIS_XACTSQL_H */
