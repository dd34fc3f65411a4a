/*-------------------------------------------------------------------------
 *
 * compat.h
 *	  Every difference between the PostgreSQL major versions pg2redis
 *	  supports (15, with 16 and 17 planned), in one place.
 *
 * Code elsewhere uses only the names defined here for anything that changed
 * between versions; it never redefines a core name.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG2REDIS_COMPAT_H
#define PG2REDIS_COMPAT_H

#include "postgres.h"
#include "replication/reorderbuffer.h"

/*
 * Tuples of a ReorderBufferChange: ReorderBufferTupleBuf up to 16, a plain
 * HeapTuple from 17 on.
 */
#if PG_VERSION_NUM >= 170000
#define PG2R_CHANGE_NEWTUPLE(change) ((change)->data.tp.newtuple)
#define PG2R_CHANGE_OLDTUPLE(change) ((change)->data.tp.oldtuple)
#else
#define PG2R_CHANGE_NEWTUPLE(change)                                          \
	((change)->data.tp.newtuple ? &(change)->data.tp.newtuple->tuple : NULL)
#define PG2R_CHANGE_OLDTUPLE(change)                                          \
	((change)->data.tp.oldtuple ? &(change)->data.tp.oldtuple->tuple : NULL)
#endif

/* AttrMap building lost its error-message argument in 16. */
#if PG_VERSION_NUM >= 160000
#define pg2r_build_attrmap_by_name(indesc, outdesc)                           \
	build_attrmap_by_name((indesc), (outdesc), false)
#else
#define pg2r_build_attrmap_by_name(indesc, outdesc)                           \
	build_attrmap_by_name((indesc), (outdesc))
#endif

/*
 * A WaitEventSet belongs to a memory context up to 16, to a resource owner
 * (none here: the set lives for one wait) from 17 on.
 */
#if PG_VERSION_NUM >= 170000
#define PG2R_CREATE_WAIT_EVENT_SET(nevents) CreateWaitEventSet(NULL, (nevents))
#else
#define PG2R_CREATE_WAIT_EVENT_SET(nevents)                                   \
	CreateWaitEventSet(CurrentMemoryContext, (nevents))
#endif

#endif /* PG2REDIS_COMPAT_H */
