/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The pg2redis background worker: slot lifecycle and the decoding loop.
 *
 * One static worker, started by the postmaster after recovery, connects to
 * pg2redis.database and waits (on its latch) until the extension exists
 * there.  Then:
 *
 * First start (no slot): in one REPEATABLE READ transaction, create the
 * slot as ephemeral, find its consistent start point, take the slot's
 * initial snapshot, copy every mapped table with it to Redis (snapshot.c),
 * then persist the slot.  The copy is exact at the slot's start point, and
 * a crash before the slot is persisted drops it, so the next start copies
 * again from a new start point.  The copy holds no table lock while it
 * waits for Redis; if Redis acknowledges nothing for
 * pg2redis.load_stall_timeout, the slot is persisted with snapshots on
 * demand queued for what Redis lacks, and a new worker streams from the
 * start point (or, when such a table has no key, the slot is dropped and
 * the next start copies everything again).
 *
 * Every start: acquire the slot, check it was not invalidated, create a
 * decoding context with the extension's own output plugin, and read WAL
 * from the slot's restart_lsn.  The plugin's callbacks hand commands to
 * the sender (sender.c), which writes them to Redis.
 *
 * The loop reads WAL records while complete ones are flushed, then sleeps
 * on its latch (set by the commit hook of every backend, see state.c) and
 * on the Redis socket.  The page reader never waits for WAL: waiting
 * inside XLogReadRecord would only see SIGTERM, not the latch, SIGHUP or
 * Redis.  Decoding runs outside any transaction, as in a walsender: the
 * reorder buffer starts one per decoded transaction.  The few SQL writes
 * the worker makes (dead letters) run between decoding batches, with
 * PROC_IN_LOGICAL_DECODING cleared and the caches reset on both sides
 * (pg2r_run_sql, xactsql.c).  The sender reaches back into the worker only
 * through the SenderHooks it is given at start (confirm the slot, its
 * confirmed position, serve interrupts); shared memory only through
 * state.c.
 *
 * The slot is confirmed only up to what Redis acknowledged (the end of the
 * last applied commit record), or, when nothing is pending, up to the last
 * record read, so that an idle stream does not pin WAL.  Confirmation
 * marks the slot dirty; it is saved every few seconds and at exit.
 *
 * Errors in this process are FATAL (no error recovery in a background
 * worker without its own sigsetjmp): the worker exits with code 1, its
 * slot is released, and the postmaster starts it again after 5 seconds.
 * The error is kept in last_error first.  An ERROR while decoding a
 * transaction would come back at the same change after every restart (a
 * "poison pill"), so the position it happened at is kept in shared memory,
 * and the next worker decodes transactions up to there carefully: each
 * rule in a subtransaction, an ERROR a dead letter (plugin.c, mapping.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "access/xlogutils.h"
#include "catalog/pg_extension.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "replication/decode.h"
#include "replication/logical.h"
#include "replication/slot.h"
#include "replication/snapbuild.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/pg_lsn.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

#include "pg2redis/compat.h"
#include "pg2redis/failover.h"
#include "pg2redis/ondemand.h"
#include "pg2redis/pgarray.h"
#include "pg2redis/render.h"
#include "pg2redis/sender.h"
#include "pg2redis/settings.h"
#include "pg2redis/snapshot.h"
#include "pg2redis/stages.h"
#include "pg2redis/state.h"
#include "pg2redis/xactsql.h"

#include "decode.h"

#define SLOT_SAVE_INTERVAL_MS 2000
#define DEAD_LETTER_INTERVAL_MS 200
#define DECODE_BATCH_RECORDS 10000
#define IDLE_TIMEOUT_MS 1000
#define EXTENSION_POLL_MS 10000
#define PROMOTION_POLL_MS 1000

PGDLLEXPORT void pg2redis_worker_main(Datum arg);

static MemoryContext		   WorkerCxt = NULL;
static LogicalDecodingContext *decoding = NULL;
static bool					   wal_exhausted = false;
static bool					   slot_dirty = false;
static TimestampTz			   last_slot_save = 0;
static XLogRecPtr			   last_restart_lsn = InvalidXLogRecPtr;
static TimestampTz			   last_dead_letters = 0;

/* ---------------------------------------------------------------------------
 * Small helpers
 * ---------------------------------------------------------------------------
 */

/*
 * apply_decoding_work_mem makes pg2redis.decoding_work_mem this process's
 * logical_decoding_work_mem (at start and on reload: the reorder buffer
 * reads it at each change, so a new value applies from the next one).
 */
static void
apply_decoding_work_mem(void)
{
	char mem[32];

	snprintf(mem, sizeof(mem), "%d", pg2r_decoding_work_mem_kb);
	SetConfigOption("logical_decoding_work_mem", mem, PGC_USERSET,
					PGC_S_OVERRIDE);
}

/*
 * worker_handle_interrupts serves SIGTERM (via CHECK_FOR_INTERRUPTS) and
 * SIGHUP: a reload re-reads the settings and applies a new Redis URL and
 * pg2redis.decoding_work_mem.  A stream stopped by a rejected command
 * restarts the worker on reload, so that it retries from its position.
 */
static void
worker_handle_interrupts(void)
{
	CHECK_FOR_INTERRUPTS();
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
		apply_decoding_work_mem();
		if (sender_stopped())
		{
			ereport(LOG,
					(errmsg("configuration reloaded, restarting the stopped stream")));
			proc_exit(1);
		}
		sender_reconfigure();
	}
}

/* worker_confirmed_lsn returns the slot's confirmed position. */
static XLogRecPtr
worker_confirmed_lsn(void)
{
	if (MyReplicationSlot == NULL)
		return InvalidXLogRecPtr;
	return MyReplicationSlot->data.confirmed_flush;
}

/*
 * worker_confirm tells the slot that Redis has everything before lsn; the
 * slot is saved later (maybe_save_slot).
 */
static void
worker_confirm(XLogRecPtr lsn)
{
	if (MyReplicationSlot == NULL || decoding == NULL ||
		lsn <= MyReplicationSlot->data.confirmed_flush)
		return;
	LogicalConfirmReceivedLocation(lsn);
	ReplicationSlotMarkDirty();
	slot_dirty = true;
	if (MyReplicationSlot->data.restart_lsn != last_restart_lsn)
	{
		/* a restart_lsn move alone does not recompute what WAL to keep */
		last_restart_lsn = MyReplicationSlot->data.restart_lsn;
		ReplicationSlotsComputeRequiredLSN();
	}
	pg2r_report_confirmed(MyReplicationSlot->data.confirmed_flush);
}

/* maybe_save_slot writes a dirty slot to disk every few seconds. */
static void
maybe_save_slot(bool force)
{
	if (!slot_dirty || MyReplicationSlot == NULL)
		return;
	if (!force &&
		!TimestampDifferenceExceeds(last_slot_save, GetCurrentTimestamp(),
									SLOT_SAVE_INTERVAL_MS))
		return;
	ReplicationSlotSave();
	slot_dirty = false;
	last_slot_save = GetCurrentTimestamp();
}

/* worker_exit saves the slot and clears the worker's entry (shmem exit). */
static void
worker_exit(int code, Datum arg)
{
	if (MyReplicationSlot != NULL && slot_dirty)
	{
		/* best effort: the Redis fence makes a lost save harmless */
		MyReplicationSlot->just_dirtied = true;
		MyReplicationSlot->dirty = true;
	}
	sender_disconnect();
	pg2r_worker_detach();
}

/*
 * set_process_settings fixes, for this process, the settings that shape
 * rendering, the decoder's memory, and lets it load its own plugin on
 * servers that restrict output plugins (Debian 15.19+), without widening
 * the server-wide list.  search_path is pinned to pg_catalog, pg_temp: the
 * worker is a superuser, and ALTER DATABASE/ROLE ... SET search_path (which
 * apply to background workers) must not put anyone's functions or
 * operators in front of the built-in ones its SQL means.  The worker's own
 * commits (dead letters, snapshot progress and requests) are bookkeeping:
 * synchronous_commit is local, so that a synchronous standby that is down
 * or slow never stops the stream (they are durable locally, and the slot
 * they describe is not replicated anyway).  PGC_S_OVERRIDE wins over those
 * settings, over postgresql.conf on reload, and over SET.
 */
static void
set_process_settings(void)
{
	const char *plugins;

	render_apply_settings(PGC_USERSET, PGC_S_OVERRIDE, GUC_ACTION_SET);
	SetConfigOption("search_path", PG2R_SAFE_SEARCH_PATH, PGC_USERSET,
					PGC_S_OVERRIDE);
	SetConfigOption("synchronous_commit", "local", PGC_USERSET,
					PGC_S_OVERRIDE);
	apply_decoding_work_mem();

	plugins = GetConfigOption("output_plugin_libraries", true, false);
	if (plugins != NULL)
	{
		char	 *copy = pstrdup(plugins);
		List	 *names = NIL;
		ListCell *lc;
		bool	  found = false;

		if (SplitGUCList(copy, ',', &names))
			foreach(lc, names)
				if (strcmp(lfirst(lc), "pg2redis") == 0)
					found = true;
		if (!found)
			SetConfigOption("output_plugin_libraries",
							plugins[0] ? psprintf("%s, pg2redis", plugins)
									   : "pg2redis",
							PGC_SUSET, PGC_S_SESSION);
	}
}

/* ---------------------------------------------------------------------------
 * Dead letters
 * ---------------------------------------------------------------------------
 */

/* insert_dead_letters inserts the dead letters in arg (a List). */
static bool
insert_dead_letters(void *arg)
{
	List	 *letters = arg;
	ListCell *lc;
	Oid		  types[8] = {PG_LSNOID,	XIDOID,	 REGCLASSOID, TEXTOID,
						  TEXTARRAYOID, TEXTOID, OIDOID,	  TEXTARRAYOID};

	pgstat_report_activity(STATE_RUNNING, "pg2redis: recording dead letters");
	foreach(lc, letters)
	{
		DeadLetter *dl = lfirst(lc);
		Datum		values[8];
		char		nulls[8] = {' ', ' ', ' ', ' ', ' ', ' ', 'n', 'n'};
		values[0] = LSNGetDatum(dl->lsn);
		values[1] = TransactionIdGetDatum(dl->xid);
		values[2] = ObjectIdGetDatum(dl->relid);
		values[3] = CStringGetTextDatum(pg2r_op_name(dl->op));
		values[4] =
			pg2r_cstring_array((const char *const *) dl->argv, dl->argc);
		values[5] = CStringGetTextDatum(dl->error);
		if (!TransactionIdIsValid(dl->xid))
			nulls[1] = 'n';
		if (OidIsValid(dl->keyindex))
		{
			/* the row's key, for pg2redis_redrive() */
			values[6] = ObjectIdGetDatum(dl->keyindex);
			values[7] =
				pg2r_cstring_array((const char *const *) dl->key, dl->nkeys);
			nulls[6] = nulls[7] = ' ';
		}
		if (SPI_execute_with_args("INSERT INTO pg2redis.dead_letters "
								  "(lsn, xid, relation, op, command, error, key_index, key) "
								  "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
								  8, types, values, nulls, false,
								  0) != SPI_OK_INSERT)
			elog(ERROR, "could not record a pg2redis dead letter");
	}

	/*
	 * Listeners learn at commit how many were recorded.  Not when the
	 * notification queue is over half full (a listener that never reads
	 * holds it back): a full queue would fail the commit, and with it the
	 * dead letters.
	 */
	{
		Oid	  ntype = TEXTOID;
		Datum count =
			CStringGetTextDatum(psprintf("%d", list_length(letters)));

		if (SPI_execute_with_args("SELECT pg_catalog.pg_notify('pg2redis_dead_letter', $1) "
								  "WHERE pg_catalog.pg_notification_queue_usage() < 0.5",
								  1, &ntype, &count, NULL, false,
								  0) != SPI_OK_SELECT)
			elog(ERROR, "could not notify of pg2redis dead letters");
	}
	return true;
}

/*
 * prune_dead_letters deletes the dead letters older than
 * pg2redis.dead_letter_retention.
 */
static bool
prune_dead_letters(void *arg)
{
	Oid	  type = INT4OID;
	Datum secs = Int32GetDatum(pg2r_dead_letter_retention_s);

	pgstat_report_activity(STATE_RUNNING, "pg2redis: pruning dead letters");
	if (SPI_execute_with_args("DELETE FROM pg2redis.dead_letters "
							  "WHERE created_at < now() - pg_catalog.make_interval(secs => $1)",
							  1, &type, &secs, NULL, false,
							  0) != SPI_OK_DELETE)
		elog(ERROR, "could not prune pg2redis dead letters");
	return true;
}

/*
 * maybe_prune_dead_letters prunes old dead letters once a minute, and at
 * once when pg2redis.dead_letter_retention changed; 0 keeps them all.  A
 * failure (the table locked) is a WARNING: the next minute tries again.
 */
static void
maybe_prune_dead_letters(void)
{
	static TimestampTz last = 0;
	static int		   last_retention = 0;
	TimestampTz		   now = GetCurrentTimestamp();
	char			  *err = NULL;

	if (pg2r_dead_letter_retention_s <= 0)
		return;
	if (last_retention == pg2r_dead_letter_retention_s &&
		!TimestampDifferenceExceeds(last, now, 60 * 1000))
		return;
	last = now;
	last_retention = pg2r_dead_letter_retention_s;
	if (!pg2r_run_sql(prune_dead_letters, NULL, NULL, &err))
		ereport(WARNING,
				(errcode(ERRCODE_WARNING),
				 errmsg("could not prune old dead letters: %s", err)));
}

/*
 * write_dead_letters records queued dead letters in pg2redis.dead_letters.
 * If that fails (the table locked or gone), they are logged instead: they
 * are counted in pg2redis_status() either way, and the stream goes on.
 */
static void
write_dead_letters(void)
{
	List *letters;
	char *err = NULL;

	if (!sender_has_dead_letters())
		return;
	letters = sender_take_dead_letters();
	if (!pg2r_run_sql(insert_dead_letters, letters, NULL, &err))
	{
		DeadLetter *first = linitial(letters);

		ereport(WARNING,
				(errcode(ERRCODE_WARNING),
				 errmsg("could not record %d dead letters: %s",
						list_length(letters), err),
				 errdetail("The first: relation %u, %s at %X/%X: %s",
						   first->relid, pg2r_op_name(first->op),
						   LSN_FORMAT_ARGS(first->lsn), first->error)));
	}
	(void) sender_take_dead_letters(); /* frees the list just handled */
	last_dead_letters = GetCurrentTimestamp();
}

/* ---------------------------------------------------------------------------
 * The slot
 * ---------------------------------------------------------------------------
 */

/*
 * page_read reads WAL pages that are flushed, and reports the end of WAL
 * instead of waiting for more.  Its flag is a static, not private_data:
 * that belongs to the decoding context.
 */
static int
page_read(XLogReaderState *state, XLogRecPtr targetPagePtr, int reqLen,
		  XLogRecPtr targetRecPtr, char *cur_page)
{
	if (targetPagePtr + reqLen > GetFlushRecPtr(NULL))
	{
		wal_exhausted = true;
		return -1;
	}
	return read_local_xlog_page(state, targetPagePtr, reqLen, targetRecPtr,
								cur_page);
}

/* The worker never writes plugin output through these; the sender does. */
static void
no_write(LogicalDecodingContext *ctx, XLogRecPtr lsn, TransactionId xid,
		 bool last_write)
{
	elog(ERROR, "pg2redis worker does not write plugin output");
}

/*
 * extension_version returns the installed version of the pg2redis extension
 * (palloc'd in the current memory context), or NULL when it is not there.
 * Call inside a transaction.
 */
static char *
extension_version(void)
{
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	char	   *version = NULL;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber,
				F_NAMEEQ, CStringGetDatum("pg2redis"));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		bool  isnull;
		Datum d = heap_getattr(tup, Anum_pg_extension_extversion,
							   RelationGetDescr(rel), &isnull);

		if (!isnull)
			version = TextDatumGetCString(d);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return version;
}

/*
 * wait_for_extension sleeps until CREATE EXTENSION pg2redis is done, at the
 * version this library is built for: after the library was upgraded, the
 * tables and functions of an older version are not what the worker reads,
 * so it waits (state waiting_for_extension, a LOG once) for ALTER EXTENSION
 * pg2redis UPDATE.
 */
static void
wait_for_extension(void)
{
	bool logged = false;

	for (;;)
	{
		char *version;

		/* clear before looking, so that the next commit wakes us again */
		pg2r_clear_wakeup();
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		version = extension_version();
		if (version != NULL)
			version = MemoryContextStrdup(WorkerCxt, version);
		CommitTransactionCommand();
		MemoryContextSwitchTo(WorkerCxt);
		if (version != NULL && strcmp(version, PG2R_EXTVERSION) == 0)
			return;
		if (version != NULL && !logged)
		{
			ereport(LOG,
					(errmsg("the worker waits for ALTER EXTENSION pg2redis UPDATE: the library is version %s, the extension in database \"%s\" version %s",
							PG2R_EXTVERSION, pg2r_database, version),
					 errhint("Run ALTER EXTENSION pg2redis UPDATE in that database.")));
			logged = true;
		}
		pg2r_report_state(PG2R_STATE_WAITING_FOR_EXTENSION);
		(void) WaitLatch(MyLatch,
						 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 EXTENSION_POLL_MS,
						 pg2r_wait_event(PG2R_WAIT_EXTENSION));
		ResetLatch(MyLatch);
		worker_handle_interrupts();
	}
}

/*
 * wait_for_promotion sleeps while the server is a standby (state standby),
 * before the worker touches Redis or makes a slot: PostgreSQL 15 decodes
 * only on a primary, and a standby has no slot of its own to continue
 * (slots are not replicated; see compat.h for 17's failover slots).  The
 * worker is started once the standby is consistent, so that
 * pg2redis_status() can say so there.  Nothing wakes a background worker
 * at promotion: RecoveryInProgress() is looked at once a second.  Only
 * SIGTERM and SIGHUP are served meanwhile (the sender is not set up yet).
 */
static void
wait_for_promotion(void)
{
	bool waited = false;

	while (RecoveryInProgress())
	{
		if (!waited)
			ereport(LOG,
					(errmsg("the server is a standby; the worker waits for its promotion")));
		waited = true;
		pg2r_report_state(PG2R_STATE_STANDBY);
		(void) WaitLatch(MyLatch,
						 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 PROMOTION_POLL_MS,
						 pg2r_wait_event(PG2R_WAIT_STANDBY));
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			apply_decoding_work_mem();
		}
	}
	if (waited)
	{
		ereport(LOG,
				(errmsg("the server was promoted (timeline %u); the worker starts",
						GetWALInsertionTimeLine())));
		pg2r_report_state(PG2R_STATE_STARTING);
	}
}

/*
 * wait_while_paused sleeps while pg2redis.enabled is off, before the worker
 * touches Redis or the slot: paused means no write anywhere, also on the
 * first start (no slot made, no initial load, no snapshot request served).
 */
static void
wait_while_paused(void)
{
	while (!pg2r_enabled)
	{
		pg2r_report_state(PG2R_STATE_PAUSED);
		(void) WaitLatch(MyLatch,
						 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 IDLE_TIMEOUT_MS, pg2r_wait_event(PG2R_WAIT_PAUSED));
		ResetLatch(MyLatch);
		worker_handle_interrupts();
	}
}

/* wait_for_redis serves the sender until Redis is ready. */
static void
wait_for_redis(void)
{
	while (!sender_ready())
		sender_service(IDLE_TIMEOUT_MS);
}

/*
 * create_slot creates the slot and loads every mapped table into Redis
 * with the slot's initial snapshot, then persists the slot; a load that
 * Redis stalled ends the worker (see the file's header).
 */
static void
create_slot(void)
{
	LogicalDecodingContext *ctx;
	Snapshot				snap;
	XLogRecPtr				start;
	LoadOutcome				outcome;
	bool					sweep;

	ereport(LOG, (errmsg("creating replication slot \"%s\"", pg2r_slot_name)));
	pg2r_report_state(PG2R_STATE_STARTING);

	/* the initial load needs Redis; do not hold a slot while waiting */
	wait_for_redis();
	/* before the reset: whether Redis holds an earlier stream */
	sweep = failover_load_needs_sweep(sender_has_position());
	if (!sender_reset_fence())
		proc_exit(1);

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	XactIsoLevel = XACT_REPEATABLE_READ;
	CheckLogicalDecodingRequirements();
	PG2R_REPLICATION_SLOT_CREATE(pg2r_slot_name, RS_EPHEMERAL);
	ctx =
		CreateInitDecodingContext("pg2redis", NIL, true, InvalidXLogRecPtr,
								  XL_ROUTINE(.page_read = read_local_xlog_page,
											 .segment_open = wal_segment_open,
											 .segment_close =
												 wal_segment_close),
								  no_write, no_write, NULL);
	DecodingContextFindStartpoint(ctx);
	MemoryContextSwitchTo(TopTransactionContext);
	if (FirstSnapshotSet)
		elog(ERROR,
			 "pg2redis: a snapshot was taken before the slot's initial snapshot");
	InvalidateCatalogSnapshot();
	snap = SnapBuildInitialSnapshot(ctx->snapshot_builder);
	RestoreTransactionSnapshot(snap, MyProc);
	start = MyReplicationSlot->data.confirmed_flush;
	FreeDecodingContext(ctx);

	pg2r_report_state(PG2R_STATE_SNAPSHOTTING);
	outcome = snapshot_initial_load(start);
	if (outcome == LOAD_START_OVER)
		proc_exit(1); /* the ephemeral slot goes with us; load again later */
	failover_after_load(sweep, outcome == LOAD_DONE);

	ReplicationSlotPersist();
	ReplicationSlotRelease();
	CommitTransactionCommand();
	MemoryContextSwitchTo(WorkerCxt);
	ereport(LOG, (errmsg("replication slot \"%s\" created at %X/%X",
						 pg2r_slot_name, LSN_FORMAT_ARGS(start))));
	if (outcome == LOAD_GAVE_UP)
	{
		/*
		 * Redis stalled: the snapshots on demand that load the rest are
		 * committed with the slot.  A new worker streams from the slot's
		 * start point with a sender of its own, not one holding blocks of
		 * the load that Redis may never acknowledge.
		 */
		write_dead_letters();
		proc_exit(1);
	}
}

/*
 * wait_for_resync keeps an old primary from streaming (state stopped, with
 * last_error saying why) until pg2redis_resync() makes it the source again.
 */
static void
wait_for_resync(void)
{
	pg2r_report_error("not streaming: Redis holds the stream of a later timeline of this server (an old primary after a failover); run pg2redis_resync() to make this server the source again");
	while (!pg2r_resync_requested())
	{
		pg2r_report_state(PG2R_STATE_STOPPED);
		(void) WaitLatch(MyLatch,
						 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 IDLE_TIMEOUT_MS, pg2r_wait_event(PG2R_WAIT_STOPPED));
		ResetLatch(MyLatch);
		worker_handle_interrupts();
	}
	pg2r_clear_resync_request();
	pg2r_clear_error();
	ereport(LOG, (errmsg("resync requested")));
}

/*
 * start_decoding acquires the slot (creating it on first start), checks it
 * is usable, and creates the decoding context.
 */
static void
start_decoding(void)
{
	ReplicationSlot *slot;

	if (SearchNamedReplicationSlot(pg2r_slot_name, true) == NULL)
		create_slot();
	else
		switch (failover_check_slot())
		{
			case SLOT_STREAM:
				break;
			case SLOT_SUPERSEDED:
				wait_for_resync();
				/* FALLTHROUGH */
			case SLOT_RELOAD:
				ReplicationSlotDrop(pg2r_slot_name, true);
				create_slot();
				break;
		}

	ReplicationSlotAcquire(pg2r_slot_name, true);
	slot = MyReplicationSlot;
	if (slot->data.database != MyDatabaseId ||
		strcmp(NameStr(slot->data.plugin), "pg2redis") != 0)
		ereport(FATAL,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("replication slot \"%s\" was not created by pg2redis for this database",
						pg2r_slot_name),
				 errhint("Drop the slot, or set pg2redis.slot_name to another name.")));
	if (XLogRecPtrIsInvalid(slot->data.restart_lsn))
	{
		/* invalidated (max_slot_wal_keep_size): the WAL it needs is gone */
		ereport(WARNING,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("replication slot \"%s\" was invalidated; the WAL it needed was removed",
						pg2r_slot_name),
				 errdetail("Changes made while the worker could not keep up are lost from the stream."),
				 errhint("The worker recreates the slot and loads every mapped table again.")));
		ReplicationSlotRelease();
		ReplicationSlotDrop(pg2r_slot_name, true);
		create_slot();
		ReplicationSlotAcquire(pg2r_slot_name, true);
	}

	MemoryContextSwitchTo(WorkerCxt);
	decoding =
		CreateDecodingContext(InvalidXLogRecPtr, NIL, false,
							  XL_ROUTINE(.page_read = page_read,
										 .segment_open = wal_segment_open,
										 .segment_close = wal_segment_close),
							  no_write, no_write, NULL);
	pg2r_xactsql_set_decoding(true);

	/*
	 * The initial load (create_slot) built relcache entries, relation maps
	 * and the rule cache from the current catalogs; decoding must rebuild
	 * them under its historic snapshots, as pg_logical_slot_get_changes()
	 * does, or WAL written before a DDL that committed during the load
	 * would be read with the new row shape.
	 */
	InvalidateSystemCaches();
	XLogBeginRead(decoding->reader, MyReplicationSlot->data.restart_lsn);
	last_restart_lsn = MyReplicationSlot->data.restart_lsn;
	MemoryContextSwitchTo(WorkerCxt);
	pg2r_report_confirmed(MyReplicationSlot->data.confirmed_flush);
	pg2r_report_applied(MyReplicationSlot->data.confirmed_flush, 0, 0, 0, 0);
}

/*
 * resync drops the slot and the Redis position, then restarts the worker,
 * which creates a new slot and loads every mapped table again.
 */
static void
resync(void)
{
	ereport(LOG, (errmsg("resync requested")));
	pg2r_clear_resync_request();
	if (decoding)
	{
		FreeDecodingContext(decoding);
		decoding = NULL;
		pg2r_xactsql_set_decoding(false);
	}
	if (MyReplicationSlot)
		ReplicationSlotRelease();
	ReplicationSlotDrop(pg2r_slot_name, true);
	proc_exit(1);
}

/* ---------------------------------------------------------------------------
 * The loop
 * ---------------------------------------------------------------------------
 */

/*
 * decode_available reads and decodes complete WAL records while there are
 * some, up to a batch; returns true when it stopped at the end of WAL.
 */
static bool
decode_available(void)
{
	for (int n = 0; n < DECODE_BATCH_RECORDS; n++)
	{
		XLogRecord *record;
		char	   *errm = NULL;

		wal_exhausted = false;
		record = XLogReadRecord(decoding->reader, &errm);
		if (errm)
			ereport(ERROR, (errcode(ERRCODE_DATA_CORRUPTED),
							errmsg("could not read WAL: %s", errm)));
		if (record == NULL)
			return true;
		PG_TRY();
		{
			LogicalDecodingProcessRecord(decoding, decoding->reader);
		}
		PG_CATCH();
		{
			/*
			 * The record ends a transaction whose decoding failed (a commit
			 * record replays the whole transaction): the next worker decodes
			 * it, and every one before it, carefully (see plugin.c).
			 */
			pg2r_set_careful_until(decoding->reader->EndRecPtr);
			PG_RE_THROW();
		}
		PG_END_TRY();
		MemoryContextSwitchTo(WorkerCxt);
		worker_handle_interrupts();
		if (!sender_ready() || !pg2r_enabled || pg2r_resync_requested())
			return false;
		/* a partial batch goes out once it waited long enough */
		if (sender_batch_open_longer_than(pg2r_flush_interval_ms))
			sender_flush();
	}
	return false;
}

/* stream is the main loop: decode, send, confirm, sleep. */
static void
stream(void)
{
	for (;;)
	{
		bool	  at_end = false;
		Pg2rStage stage;

		worker_handle_interrupts();
		if (pg2r_resync_requested())
			resync();

		if (!pg2r_enabled)
		{
			/* let what is in flight land, then sleep until re-enabled */
			sender_flush();
			pg2r_stage_report();
			if (sender_idle())
				pg2r_report_state(PG2R_STATE_PAUSED);
			sender_service(IDLE_TIMEOUT_MS);
			continue;
		}
		if (sender_stopped())
		{
			pg2r_report_state(PG2R_STATE_STOPPED);
			write_dead_letters();
			sender_service(IDLE_TIMEOUT_MS);
			continue;
		}
		if (!sender_ready())
		{
			sender_service(IDLE_TIMEOUT_MS);
			continue;
		}
		pg2r_report_state(PG2R_STATE_STREAMING);

		/* clear before reading, so that a commit racing with us wakes us */
		pg2r_clear_wakeup();
		pgstat_report_activity(STATE_RUNNING, "pg2redis: streaming");
		stage = pg2r_stage_enter(PG2R_STAGE_DECODE);
		at_end = decode_available();
		pg2r_stage_leave(stage);

		if (at_end)
			sender_flush();
		sender_service(0);

		/*
		 * With nothing in flight or waiting, every transaction that ended
		 * before the read position is applied (or mapped to nothing): confirm
		 * it, also when a full batch stopped short of the end of WAL, so that
		 * a long stretch of changes to unmapped tables does not pin WAL.
		 */
		if (sender_idle())
		{
			XLogRecPtr end = decoding->reader->EndRecPtr;

			worker_confirm(end);
			sender_set_idle_position(end);
		}

		if (sender_has_dead_letters() &&
			TimestampDifferenceExceeds(last_dead_letters,
									   GetCurrentTimestamp(),
									   DEAD_LETTER_INTERVAL_MS))
			write_dead_letters();
		maybe_prune_dead_letters();
		maybe_save_slot(false);
		ondemand_step();

		if (at_end)
		{
			/*
			 * Sleep until woken: not at all when a snapshot chunk waits for
			 * its own (flushed) watermark, briefly when WAL is written but
			 * not flushed (async commit) or a snapshot was just requested.
			 */
			long timeout = IDLE_TIMEOUT_MS;
			long poll = ondemand_poll_timeout();

			pgstat_report_activity(STATE_IDLE, NULL);
			pg2r_stage_report();
			if (ondemand_busy())
				timeout = 0;
			else if (pg2r_wal_record_start(GetXLogInsertRecPtr()) >
					 GetFlushRecPtr(NULL))
				timeout = 50;
			if (poll >= 0)
				timeout = Min(timeout, poll);

			/*
			 * A commit may have set the flag (and the latch, which Redis
			 * I/O since then may have reset): then there is WAL to read.
			 */
			if (pg2r_wakeup_pending())
				timeout = 0;
			sender_service(timeout);
		}
	}
}

/*
 * report_exit_error puts the ERROR that is about to end the worker into
 * last_error, so that pg2redis_status() says why the stream stopped (and,
 * for a decode that failed, that the next worker renders that transaction
 * again rule by rule).
 */
static void
report_exit_error(void)
{
	MemoryContext old = MemoryContextSwitchTo(WorkerCxt);
	ErrorData	 *edata = CopyErrorData();

	MemoryContextSwitchTo(old);
	if (pg2r_worker_state() == PG2R_STATE_SNAPSHOTTING)
	{
		pg2r_set_careful_load(true);
		pg2r_report_error("worker stopped during the initial load: %s (the next load renders each rule in a subtransaction and skips a table whose snapshot filter fails, failures as dead letters)",
						  edata->message);
	}
	else if (XLogRecPtrIsInvalid(pg2r_careful_until()))
		pg2r_report_error("worker stopped: %s", edata->message);
	else
		pg2r_report_error("worker stopped: %s (transactions up to %X/%X are rendered again rule by rule, failures as dead letters)",
						  edata->message,
						  LSN_FORMAT_ARGS(pg2r_careful_until()));
}

/*
 * pg2redis_worker_main is the worker's entry point: it waits for the
 * extension and Redis, starts decoding, and streams until told to stop.
 */
void
pg2redis_worker_main(Datum arg)
{
	static const SenderHooks hooks = {
		.confirm = worker_confirm,
		.confirmed_lsn = worker_confirmed_lsn,
		.interrupts = worker_handle_interrupts,
	};

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	pg2r_in_worker = true;
	decode_set_hooks(&pg2r_worker_decode_hooks);

	WorkerCxt = AllocSetContextCreate(TopMemoryContext, "pg2redis worker",
									  ALLOCSET_DEFAULT_SIZES);
	MemoryContextSwitchTo(WorkerCxt);
	xactsql_init(WorkerCxt);

	BackgroundWorkerInitializeConnection(pg2r_database, NULL, 0);
	pgstat_report_appname("pg2redis");
	before_shmem_exit(worker_exit, (Datum) 0);

	pg2r_worker_attach();

	if (wal_level < WAL_LEVEL_LOGICAL)
	{
		pg2r_report_error("wal_level must be logical");
		ereport(LOG,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the worker cannot stream: \"wal_level\" is \"%s\"",
						GetConfigOption("wal_level", false, false)),
				 errhint("Set wal_level = logical in postgresql.conf and restart the server.")));
		proc_exit(0); /* do not restart: the setting needs a restart */
	}

	set_process_settings();
	PG_TRY();
	{
		wait_for_promotion();
		sender_init(&hooks);
		ondemand_init();
		wait_for_extension();
		wait_while_paused();
		pg2r_report_state(PG2R_STATE_STARTING);
		wait_for_redis();
		ondemand_resolve_resumes();
		start_decoding();
		stream();
	}
	PG_CATCH();
	{
		report_exit_error();
		PG_RE_THROW();
	}
	PG_END_TRY();
}
