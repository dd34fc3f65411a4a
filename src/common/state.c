/*-------------------------------------------------------------------------
 *
 * state.c
 *	  Shared memory: what the worker reports, and how backends wake it.
 *
 * The worker publishes its state and counters here for pg2redis_status()
 * and its progress for pg2redis_wait().  Every backend (the library is
 * preloaded) runs a commit callback that sets the worker's latch when a
 * transaction that wrote commits, so that a commit reaches Redis without
 * a polling delay while an idle system costs nothing.  An atomic flag
 * keeps a burst of commits to one SetLatch.
 *
 * This file is the only one that touches the shared struct (pg2r_shared is
 * static): every field but the atomics is read and written here under its
 * spinlock, through the accessors and reporters below.  It calls nothing
 * of pg2redis.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/lwlock.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "pg2redis/compat.h"
#include "pg2redis/state.h"

/* True in the pg2redis worker process only (set by pg2redis_worker_main). */
bool pg2r_in_worker = false;

static Pg2rShared *pg2r_shared = NULL;

/* Per-relation statistics: PG2R_RELSTATS_MAX entries, open addressing. */
typedef struct RelStatsShared
{
	LWLock		*lock;
	int			 used;
	Pg2rRelStats others; /* tables that found no free entry */
	Pg2rRelStats entries[PG2R_RELSTATS_MAX];
} RelStatsShared;

static RelStatsShared *relstats = NULL;
static HTAB			  *relstats_local = NULL; /* worker: not yet published */
static Pg2rRelStats	  *relstats_last = NULL;  /* its entry counted last */

static const char *const state_names[] = {
	[PG2R_STATE_STOPPED] = "stopped",
	[PG2R_STATE_WAITING_FOR_EXTENSION] = "waiting_for_extension",
	[PG2R_STATE_STARTING] = "starting",
	[PG2R_STATE_SNAPSHOTTING] = "snapshotting",
	[PG2R_STATE_STREAMING] = "streaming",
	[PG2R_STATE_PAUSED] = "paused",
	[PG2R_STATE_REDIS_UNAVAILABLE] = "redis_unavailable",
	[PG2R_STATE_STANDBY] = "standby",
};

/* pg2r_state_name returns the name pg2redis_status() shows for state. */
const char *
pg2r_state_name(Pg2rWorkerState state)
{
	return state_names[state];
}

/* pg2r_state_request_shmem asks the postmaster for our shared memory. */
void
pg2r_state_request_shmem(void)
{
	RequestAddinShmemSpace(MAXALIGN(sizeof(Pg2rShared)));
	RequestAddinShmemSpace(MAXALIGN(sizeof(RelStatsShared)));
	RequestNamedLWLockTranche("pg2redis", 1);
}

/* pg2r_state_init_shmem creates (postmaster) or attaches the state. */
void
pg2r_state_init_shmem(void)
{
	bool found;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	pg2r_shared = ShmemInitStruct("pg2redis", sizeof(Pg2rShared), &found);
	if (!found)
	{
		memset(pg2r_shared, 0, sizeof(Pg2rShared));
		SpinLockInit(&pg2r_shared->mutex);
		pg2r_shared->worker_procno = -1;
		pg2r_shared->state = PG2R_STATE_STOPPED;
		pg_atomic_init_u32(&pg2r_shared->wakeup_pending, 0);
		pg_atomic_init_u32(&pg2r_shared->snapshot_requested, 0);
		ConditionVariableInit(&pg2r_shared->progress_cv);
	}
	relstats = ShmemInitStruct("pg2redis relation stats",
							   sizeof(RelStatsShared), &found);
	if (!found)
	{
		memset(relstats, 0, sizeof(RelStatsShared));
		relstats->lock = &(GetNamedLWLockTranche("pg2redis"))->lock;
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * pg2r_state_copy copies the whole shared state, taken under its lock, into
 * *out (for pg2redis_status() and messages that quote it).
 */
void
pg2r_state_copy(Pg2rShared *out)
{
	SpinLockAcquire(&pg2r_shared->mutex);
	memcpy(out, pg2r_shared, sizeof(*out));
	SpinLockRelease(&pg2r_shared->mutex);
}

/* pg2r_worker_pid returns the running worker's pid, or 0 when none runs. */
pid_t
pg2r_worker_pid(void)
{
	pid_t pid;

	SpinLockAcquire(&pg2r_shared->mutex);
	pid = pg2r_shared->worker_pid;
	SpinLockRelease(&pg2r_shared->mutex);
	return pid;
}

/*
 * pg2r_worker_attach records this process as the worker, streaming
 * database MyDatabaseId, in state starting (worker process only).
 */
void
pg2r_worker_attach(void)
{
	SpinLockAcquire(&pg2r_shared->mutex);
	pg2r_shared->worker_pid = MyProcPid;
	pg2r_shared->worker_procno = MyProc->pgprocno;
	pg2r_shared->dboid = MyDatabaseId;
	pg2r_shared->state = PG2R_STATE_STARTING;
	pg2r_shared->pending_since = 0;
	SpinLockRelease(&pg2r_shared->mutex);
}

/*
 * pg2r_worker_detach clears the worker's entry (state stopped, not
 * connected) and wakes pg2redis_wait() callers so that they see it.
 */
void
pg2r_worker_detach(void)
{
	SpinLockAcquire(&pg2r_shared->mutex);
	pg2r_shared->worker_pid = 0;
	pg2r_shared->worker_procno = -1;
	pg2r_shared->state = PG2R_STATE_STOPPED;
	pg2r_shared->pending_since = 0;
	pg2r_shared->redis_connected = false;
	SpinLockRelease(&pg2r_shared->mutex);
	ConditionVariableBroadcast(&pg2r_shared->progress_cv);
}

/* pg2r_worker_state returns the state the worker published last. */
Pg2rWorkerState
pg2r_worker_state(void)
{
	Pg2rWorkerState state;

	SpinLockAcquire(&pg2r_shared->mutex);
	state = pg2r_shared->state;
	SpinLockRelease(&pg2r_shared->mutex);
	return state;
}

/*
 * pg2r_request_resync asks the running worker for a resync; it returns
 * false, asking nothing, when no worker runs.
 */
bool
pg2r_request_resync(void)
{
	bool running;

	SpinLockAcquire(&pg2r_shared->mutex);
	running = pg2r_shared->worker_pid != 0;
	if (running)
		pg2r_shared->resync_requested = true;
	SpinLockRelease(&pg2r_shared->mutex);
	return running;
}

/* pg2r_resync_requested tells whether pg2redis_resync() asked for a resync. */
bool
pg2r_resync_requested(void)
{
	bool r;

	SpinLockAcquire(&pg2r_shared->mutex);
	r = pg2r_shared->resync_requested;
	SpinLockRelease(&pg2r_shared->mutex);
	return r;
}

/* pg2r_clear_resync_request forgets a resync request (it is being done). */
void
pg2r_clear_resync_request(void)
{
	SpinLockAcquire(&pg2r_shared->mutex);
	pg2r_shared->resync_requested = false;
	SpinLockRelease(&pg2r_shared->mutex);
}

/*
 * pg2r_request_snapshot flags a new pg2redis.snapshots request for the
 * worker (the commit hook wakes it); it returns whether a worker runs.
 */
bool
pg2r_request_snapshot(void)
{
	pg_atomic_write_u32(&pg2r_shared->snapshot_requested, 1);
	return pg2r_worker_pid() != 0;
}

/*
 * pg2r_take_snapshot_request tells whether a snapshot was requested since
 * the last call, and clears the flag.
 */
bool
pg2r_take_snapshot_request(void)
{
	return pg_atomic_exchange_u32(&pg2r_shared->snapshot_requested, 0) != 0;
}

/*
 * pg2r_clear_wakeup clears the pending-wakeup flag (worker, before it
 * reads WAL or looks at the catalogs), so that the next commit wakes it.
 */
void
pg2r_clear_wakeup(void)
{
	pg_atomic_write_u32(&pg2r_shared->wakeup_pending, 0);
}

/*
 * pg2r_wakeup_pending tells whether a commit asked to wake the worker
 * since pg2r_clear_wakeup() (its latch may have been reset since).
 */
bool
pg2r_wakeup_pending(void)
{
	return pg_atomic_read_u32(&pg2r_shared->wakeup_pending) != 0;
}

/*
 * pg2r_wake_worker sets the worker's latch unless a wakeup is already
 * pending.  Safe to call from any backend at any time.
 *
 * It reads worker_procno without the lock, on purpose: it runs in every
 * commit, and an int is read whole.  A stale value costs at most one
 * spurious SetLatch on a process that took the slot over (harmless) or one
 * missed wakeup of a worker that just attached (it reads WAL before its
 * first sleep).
 */
void
pg2r_wake_worker(void)
{
	int procno;

	if (pg2r_shared == NULL)
		return;
	procno = pg2r_shared->worker_procno;
	if (procno < 0 || (MyProc && MyProc->pgprocno == procno))
		return;
	if (pg_atomic_exchange_u32(&pg2r_shared->wakeup_pending, 1) == 0)
		SetLatch(&GetPGProcByNumber(procno)->procLatch);
}

/*
 * xact_callback wakes the worker when a transaction that wrote commits in
 * its database.  It must never raise an ERROR: the commit is done.  It
 * reads dboid without the lock for the reason pg2r_wake_worker() gives.
 */
static void
xact_callback(XactEvent event, void *arg)
{
	if (event != XACT_EVENT_COMMIT || pg2r_shared == NULL)
		return;
	if (!TransactionIdIsValid(GetTopTransactionIdIfAny()))
		return;
	if (pg2r_shared->dboid != MyDatabaseId)
		return;
	pg2r_wake_worker();
}

/* pg2r_xact_callback_register installs the commit hook (from _PG_init). */
void
pg2r_xact_callback_register(void)
{
	RegisterXactCallback(xact_callback, NULL);
}

/* pg2r_report_state publishes the worker's state. */
void
pg2r_report_state(Pg2rWorkerState state)
{
	SpinLockAcquire(&pg2r_shared->mutex);
	pg2r_shared->state = state;
	SpinLockRelease(&pg2r_shared->mutex);
}

/* pg2r_report_connected publishes whether Redis is connected. */
void
pg2r_report_connected(bool connected)
{
	SpinLockAcquire(&pg2r_shared->mutex);
	pg2r_shared->redis_connected = connected;
	SpinLockRelease(&pg2r_shared->mutex);
}

/* pg2r_report_error publishes the last error and its time. */
void
pg2r_report_error(const char *fmt, ...)
{
	char	msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	SpinLockAcquire(&pg2r_shared->mutex);
	strlcpy(pg2r_shared->last_error, msg, sizeof(pg2r_shared->last_error));
	pg2r_shared->last_error_time = GetCurrentTimestamp();
	SpinLockRelease(&pg2r_shared->mutex);
}

/*
 * pg2r_clear_error forgets the last error (new Redis settings: an error
 * about the old ones, which may quote them, must not linger).
 */
void
pg2r_clear_error(void)
{
	SpinLockAcquire(&pg2r_shared->mutex);
	pg2r_shared->last_error[0] = '\0';
	pg2r_shared->last_error_time = 0;
	SpinLockRelease(&pg2r_shared->mutex);
}

/*
 * pg2r_report_applied adds applied work to the counters and, when lsn is
 * valid, moves the applied position (never backwards), waking waiters.
 */
void
pg2r_report_applied(XLogRecPtr lsn, TimestampTz commit_time,
					uint64 transactions, uint64 commands, uint64 changes)
{
	bool moved = false;

	SpinLockAcquire(&pg2r_shared->mutex);
	pg2r_shared->transactions += transactions;
	pg2r_shared->commands += commands;
	pg2r_shared->changes += changes;
	if (commit_time != 0)
		pg2r_shared->last_commit_time = commit_time;
	if (lsn != InvalidXLogRecPtr && lsn > pg2r_shared->applied_lsn)
	{
		pg2r_shared->applied_lsn = lsn;
		moved = true;
	}
	SpinLockRelease(&pg2r_shared->mutex);
	if (moved)
		ConditionVariableBroadcast(&pg2r_shared->progress_cv);
}

/*
 * pg2r_report_pending publishes the commit time of the oldest transaction
 * decoded and not yet applied (0: none).
 */
void
pg2r_report_pending(TimestampTz oldest)
{
	SpinLockAcquire(&pg2r_shared->mutex);
	pg2r_shared->pending_since = oldest;
	SpinLockRelease(&pg2r_shared->mutex);
}

/*
 * pg2r_report_load_start publishes that an initial load of tables_total
 * tables (about rows_estimate rows) starts; pg2r_report_load_progress how
 * far it got; pg2r_report_load_end that it ended.
 */
void
pg2r_report_load_start(int tables_total, uint64 rows_estimate)
{
	SpinLockAcquire(&pg2r_shared->mutex);
	pg2r_shared->load_tables_total = tables_total;
	pg2r_shared->load_tables_done = 0;
	pg2r_shared->load_rows = 0;
	pg2r_shared->load_rows_estimate = rows_estimate;
	pg2r_shared->load_started_at = GetCurrentTimestamp();
	pg2r_shared->load_finished_at = 0;
	SpinLockRelease(&pg2r_shared->mutex);
}

void
pg2r_report_load_progress(int tables_done, uint64 rows)
{
	SpinLockAcquire(&pg2r_shared->mutex);
	pg2r_shared->load_tables_done = tables_done;
	pg2r_shared->load_rows = rows;
	SpinLockRelease(&pg2r_shared->mutex);
}

void
pg2r_report_load_end(void)
{
	SpinLockAcquire(&pg2r_shared->mutex);
	pg2r_shared->load_finished_at = GetCurrentTimestamp();
	SpinLockRelease(&pg2r_shared->mutex);
}

/* pg2r_report_confirmed publishes the slot's confirmed position. */
void
pg2r_report_confirmed(XLogRecPtr lsn)
{
	SpinLockAcquire(&pg2r_shared->mutex);
	pg2r_shared->confirmed_lsn = lsn;
	SpinLockRelease(&pg2r_shared->mutex);
}

/* pg2r_report_retry counts a failed attempt to reach Redis. */
void
pg2r_report_retry(void)
{
	SpinLockAcquire(&pg2r_shared->mutex);
	pg2r_shared->retries++;
	SpinLockRelease(&pg2r_shared->mutex);
}

/* pg2r_report_dead_letters counts dead letters. */
void
pg2r_report_dead_letters(uint64 n)
{
	SpinLockAcquire(&pg2r_shared->mutex);
	pg2r_shared->dead_letters += n;
	SpinLockRelease(&pg2r_shared->mutex);
}

/*
 * pg2r_wal_record_start turns a WAL insert position into the position a reader
 * reports after the record before it: at the start of a page, the position
 * is past the page header, which no record ends at.
 */
XLogRecPtr
pg2r_wal_record_start(XLogRecPtr lsn)
{
	if (XLogSegmentOffset(lsn, wal_segment_size) == SizeOfXLogLongPHD)
		return lsn - SizeOfXLogLongPHD;
	if (lsn % XLOG_BLCKSZ == SizeOfXLogShortPHD)
		return lsn - SizeOfXLogShortPHD;
	return lsn;
}

/*
 * pg2r_set_careful_until records that decoding up to lsn raised an ERROR:
 * the next worker decodes the transactions that end there carefully (each
 * rule in a subtransaction, an ERROR a dead letter).  Kept in shared
 * memory, so it outlives the worker that failed; never moves backwards.
 */
void
pg2r_set_careful_until(XLogRecPtr lsn)
{
	SpinLockAcquire(&pg2r_shared->mutex);
	if (lsn > pg2r_shared->careful_until)
		pg2r_shared->careful_until = lsn;
	SpinLockRelease(&pg2r_shared->mutex);
}

/* pg2r_careful_until returns the position pg2r_set_careful_until set. */
XLogRecPtr
pg2r_careful_until(void)
{
	XLogRecPtr lsn;

	SpinLockAcquire(&pg2r_shared->mutex);
	lsn = pg2r_shared->careful_until;
	SpinLockRelease(&pg2r_shared->mutex);
	return lsn;
}

/*
 * pg2r_wait_applied waits until the worker has applied every transaction
 * that ends before target (or that the stream found nothing to do for);
 * false when timeout_ms passes first.
 */
bool
pg2r_wait_applied(XLogRecPtr target, int64 timeout_ms)
{
	TimestampTz deadline;
	bool		done = false;

	/* everything committed before target must be readable by the worker */
	XLogFlush(target);
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);
	pg2r_wake_worker();
	ConditionVariablePrepareToSleep(&pg2r_shared->progress_cv);
	for (;;)
	{
		XLogRecPtr applied;
		long	   remaining;

		SpinLockAcquire(&pg2r_shared->mutex);
		applied = pg2r_shared->applied_lsn;
		SpinLockRelease(&pg2r_shared->mutex);
		if (applied >= target)
		{
			done = true;
			break;
		}
		remaining =
			TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
		if (remaining <= 0)
			break;
		(void) ConditionVariableTimedSleep(&pg2r_shared->progress_cv,
										   Min(remaining, 100),
										   pg2r_wait_event(PG2R_WAIT_APPLIED));
		pg2r_wake_worker();
	}
	ConditionVariableCancelSleep();
	return done;
}

/*
 * pg2r_set_careful_load records whether the next initial load must render
 * carefully (each rule in a subtransaction, a failing snapshot filter a
 * dead letter): set when an ERROR ended a load, cleared when one completes.
 */
void
pg2r_set_careful_load(bool on)
{
	SpinLockAcquire(&pg2r_shared->mutex);
	pg2r_shared->careful_load = on;
	SpinLockRelease(&pg2r_shared->mutex);
}

/* pg2r_careful_load returns what pg2r_set_careful_load set. */
bool
pg2r_careful_load(void)
{
	bool on;

	SpinLockAcquire(&pg2r_shared->mutex);
	on = pg2r_shared->careful_load;
	SpinLockRelease(&pg2r_shared->mutex);
	return on;
}

/* ---------------------------------------------------------------------------
 * Per-relation statistics
 * ---------------------------------------------------------------------------
 */

/*
 * pg2r_relstats_count adds to relation relid's counters in the worker's
 * local memory; pg2r_relstats_publish makes them visible.
 */
void
pg2r_relstats_count(Oid relid, uint64 changes, uint64 commands,
					uint64 dead_letters)
{
	Pg2rRelStats *e = relstats_last;
	bool		  found;

	/* consecutive changes and commands are mostly of one relation */
	if (e != NULL && e->relid == relid)
	{
		e->changes += changes;
		e->commands += commands;
		e->dead_letters += dead_letters;
		return;
	}
	if (relstats_local == NULL)
	{
		HASHCTL ctl = {0};

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(Pg2rRelStats);
		ctl.hcxt = TopMemoryContext;
		relstats_local = hash_create("pg2redis relation stats", 64, &ctl,
									 HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	e = hash_search(relstats_local, &relid, HASH_ENTER, &found);
	if (!found)
	{
		e->changes = e->commands = e->dead_letters = 0;
		e->last_applied = 0;
	}
	e->changes += changes;
	e->commands += commands;
	e->dead_letters += dead_letters;
	relstats_last = e;
}

/* relstats_slot returns relid's shared entry, claiming one (lock held). */
static Pg2rRelStats *
relstats_slot(Oid relid)
{
	uint32 h = (uint32) relid % PG2R_RELSTATS_MAX;

	for (int probe = 0; probe < PG2R_RELSTATS_MAX; probe++)
	{
		Pg2rRelStats *e = &relstats->entries[(h + probe) % PG2R_RELSTATS_MAX];

		if (e->relid == relid)
			return e;
		if (e->relid == InvalidOid)
		{
			e->relid = relid;
			relstats->used++;
			return e;
		}
	}
	return &relstats->others;
}

/*
 * pg2r_relstats_publish adds the worker's local counters to shared memory;
 * relations with commands among them were applied at applied_at.
 */
void
pg2r_relstats_publish(TimestampTz applied_at)
{
	HASH_SEQ_STATUS seq;
	Pg2rRelStats   *l;

	relstats_last = NULL; /* the entries are removed below */
	if (relstats_local == NULL || hash_get_num_entries(relstats_local) == 0)
		return;
	LWLockAcquire(relstats->lock, LW_EXCLUSIVE);
	hash_seq_init(&seq, relstats_local);
	while ((l = hash_seq_search(&seq)) != NULL)
	{
		Pg2rRelStats *e = relstats_slot(l->relid);

		e->changes += l->changes;
		e->commands += l->commands;
		e->dead_letters += l->dead_letters;
		if (l->commands > 0)
			e->last_applied = applied_at;
		(void) hash_search(relstats_local, &l->relid, HASH_REMOVE, NULL);
	}
	LWLockRelease(relstats->lock);
}

/*
 * pg2r_relstats_read returns a palloc'd copy of every used entry (a List of
 * Pg2rRelStats *), the overflow entry last when it counted anything.
 */
List *
pg2r_relstats_read(void)
{
	List *out = NIL;

	LWLockAcquire(relstats->lock, LW_SHARED);
	for (int i = 0; i < PG2R_RELSTATS_MAX; i++)
		if (relstats->entries[i].relid != InvalidOid)
		{
			Pg2rRelStats *c = palloc(sizeof(Pg2rRelStats));

			*c = relstats->entries[i];
			out = lappend(out, c);
		}
	if (relstats->others.changes + relstats->others.commands +
			relstats->others.dead_letters >
		0)
	{
		Pg2rRelStats *c = palloc(sizeof(Pg2rRelStats));

		*c = relstats->others;
		out = lappend(out, c);
	}
	LWLockRelease(relstats->lock);
	return out;
}
