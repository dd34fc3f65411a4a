/*-------------------------------------------------------------------------
 *
 * compat.h
 *	  Every difference between the PostgreSQL major versions pg2redis
 *	  supports (15, with 16 and 17 planned), in one place.
 *
 * Code elsewhere uses only the names defined here for anything that changed
 * between versions; it never redefines a core name.
 *
 * Stage: common (every stage may include it)
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG2REDIS_COMPAT_H
#define PG2REDIS_COMPAT_H

#include "postgres.h"
#include "replication/reorderbuffer.h"
#include "utils/wait_event.h"

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

/*
 * Wait events.  From 17 on an extension names its own waits
 * (WaitEventExtensionNew), shown in pg_stat_activity.wait_event; up to 16
 * every wait of an extension is "Extension".  pg2r_wait_event() gives the
 * wait_event_info to pass to WaitLatch and its kin.
 */
typedef enum Pg2rWait
{
	PG2R_WAIT_EXTENSION,	 /* the worker waits for CREATE/ALTER EXTENSION */
	PG2R_WAIT_PAUSED,		 /* pg2redis.enabled is off */
	PG2R_WAIT_STOPPED,		 /* stopped by a rejected command */
	PG2R_WAIT_REDIS,		 /* the worker waits for Redis or a commit */
	PG2R_WAIT_SESSION_REDIS, /* pg2redis_redis() waits for Redis */
	PG2R_WAIT_APPLIED,		 /* pg2redis_wait() waits for the stream */
	PG2R_WAIT_STANDBY,		 /* the server is a standby: waits for promotion */
	PG2R_NUM_WAITS
} Pg2rWait;

#if PG_VERSION_NUM >= 170000
extern uint32 pg2r_wait_event(Pg2rWait wait);
#else
#define pg2r_wait_event(wait) ((void) (wait), PG_WAIT_EXTENSION)
#endif

/*
 * Creating the worker's slot (never two-phase).  16 can decode on a
 * standby, but such a slot is the standby's own and does not carry the
 * primary's position over a promotion, so the worker waits on a standby on
 * every version (worker.c).  17 adds failover slots,
 * which a primary keeps in step on standbys (sync_replication_slots) so
 * that a promoted standby has them.  pg2redis does not mark its slot so:
 * a synced slot may only advance past WAL the standbys listed in
 * synchronized_standby_slots confirmed, a wait the walsender and the SQL
 * decoding functions make and this worker's own loop does not.  On every
 * version a promoted standby therefore makes a new slot and reloads, with
 * a sweep (failover.c).
 */
#if PG_VERSION_NUM >= 170000
#define PG2R_REPLICATION_SLOT_CREATE(name, persistency)                       \
	ReplicationSlotCreate((name), true, (persistency), false, false, false)
#else
#define PG2R_REPLICATION_SLOT_CREATE(name, persistency)                       \
	ReplicationSlotCreate((name), true, (persistency), false)
#endif

#endif /* PG2REDIS_COMPAT_H */
