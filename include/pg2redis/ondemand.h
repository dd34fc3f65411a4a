/*-------------------------------------------------------------------------
 *
 * ondemand.h
 *	  Snapshots on demand while streaming goes on.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG2REDIS_ONDEMAND_H
#define PG2REDIS_ONDEMAND_H

#include "access/htup.h"
#include "access/xlogdefs.h"
#include "utils/relcache.h"

#include "pg2redis/common.h"

extern void ondemand_init(void);
extern void ondemand_resolve_resumes(void);
extern void ondemand_step(void);
extern bool ondemand_busy(void);
extern long ondemand_poll_timeout(void);
extern void ondemand_note_commit(TransactionId xid);
extern void ondemand_note_change(Relation rel, TransactionId xid, Pg2rOp op,
								 HeapTuple oldtuple, HeapTuple newtuple);
extern void ondemand_note_truncate(Oid relid, TransactionId xid);
extern void ondemand_on_message(XLogRecPtr lsn, const char *prefix, Size size,
								const char *message);

#endif /* PG2REDIS_ONDEMAND_H */
