/*-------------------------------------------------------------------------
 *
 * redrive.h
 *	  The keys of dead letters' rows, and pg2redis_redrive().
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG2REDIS_REDRIVE_H
#define PG2REDIS_REDRIVE_H

#include "access/htup.h"
#include "utils/relcache.h"

#include "pg2redis/mapping.h"

extern void redrive_note_row(Relation rel, RelMap *map, HeapTuple tuple);

#endif /* PG2REDIS_REDRIVE_H */
