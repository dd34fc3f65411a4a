/*-------------------------------------------------------------------------
 *
 * relutil.h
 *	  Relation utilities shared by the stages (relutil.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG2REDIS_RELUTIL_H
#define PG2REDIS_RELUTIL_H

#include "access/htup.h"
#include "access/tupdesc.h"
#include "fmgr.h"
#include "nodes/bitmapset.h"
#include "utils/relcache.h"

extern Bitmapset  *pg2r_identity_columns(Relation rel, bool *full);
extern Oid		   pg2r_key_index(Relation rel);
extern Oid		   pg2r_row_key_index(Relation rel);
extern AttrNumber *pg2r_key_attnums(Relation rel, int *n);
extern void pg2r_spi_whole_row(uint64 i, Oid relid, HeapTupleData *tuple);

extern HeapTuple pg2r_trigger_row(FunctionCallInfo fcinfo, const char *name,
								  bool before, TupleDesc *desc);

#endif /* PG2REDIS_RELUTIL_H */
