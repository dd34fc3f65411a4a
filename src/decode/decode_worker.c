/*-------------------------------------------------------------------------
 *
 * decode_worker.c
 *	  The worker's DecodeHooks: what the output plugin does, in the worker,
 *	  besides mapping changes.
 *
 * The plugin (plugin.c) writes commands as rows for SQL readers and knows
 * nothing of the worker; the worker installs pg2r_worker_decode_hooks at
 * start (decode_set_hooks), through which each transaction goes to the
 * sender (a careful transaction when an ERROR ended a worker while it was
 * decoding it), each change and truncate is noted for the snapshots on
 * demand and the row's key for its dead letters, the snapshot watermarks
 * are passed on, and the CPU time of each stage is charged
 * (pg2redis.stage_timing).  It belongs to the decode stage: it calls the
 * sender, ondemand, redrive, stage timing and shared state.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "pg2redis/ondemand.h"
#include "pg2redis/redrive.h"
#include "pg2redis/sender.h"
#include "pg2redis/stages.h"
#include "pg2redis/state.h"

#include "decode.h"

/*
 * worker_begin starts a transaction in the sender; it is mapped carefully
 * when an ERROR ended a worker while it decoded this transaction.
 */
static bool
worker_begin(ReorderBufferTXN *txn)
{
	bool careful = txn->end_lsn <= pg2r_careful_until();

	sender_begin_txn(txn->xid, txn->final_lsn, txn->end_lsn,
					 txn->xact_time.commit_time);
	return careful;
}

/* worker_commit ends a transaction in the sender. */
static void
worker_commit(ReorderBufferTXN *txn)
{
	Pg2rStage back = pg2r_stage_enter(PG2R_STAGE_APPEND);

	ondemand_note_commit(txn->xid);
	sender_commit_txn();
	pg2r_stage_leave(back);
}

/*
 * worker_change_start enters the map stage, counts the change and notes it
 * for the snapshots on demand; returns the stage to go back to.
 */
static int
worker_change_start(Relation rel, ReorderBufferTXN *txn, Pg2rOp op,
					HeapTuple oldtup, HeapTuple newtup)
{
	Pg2rStage back = pg2r_stage_enter(PG2R_STAGE_MAP);

	pg2r_stage_count_changes(1);
	ondemand_note_change(rel, txn->xid, op, oldtup, newtup);
	return (int) back;
}

/*
 * worker_change_mapped counts a change of a relation with rules; false when
 * the sender skips the transaction.
 */
static bool
worker_change_mapped(Relation rel)
{
	sender_count_change();
	pg2r_relstats_count(RelationGetRelid(rel), 1, 0, 0);
	return !sender_txn_skipped();
}

/* worker_change_end forgets the row's key and leaves the map stage. */
static void
worker_change_end(int token, bool mapped)
{
	if (mapped)
		sender_clear_row_key();
	pg2r_stage_leave((Pg2rStage) token);
}

/*
 * worker_truncate notes a truncate for the snapshots on demand; false when
 * the sender skips the transaction.
 */
static bool
worker_truncate(ReorderBufferTXN *txn, int nrelations, Relation relations[])
{
	for (int i = 0; i < nrelations; i++)
		ondemand_note_truncate(RelationGetRelid(relations[i]), txn->xid);
	return !sender_txn_skipped();
}

/*
 * worker_command hands one command to the sender, its time charged to the
 * append stage (pg2redis.stage_timing).
 */
static void
worker_command(void *arg, const Rule *rule, Pg2rOp op, int argc,
			   const char *const *argv, const size_t *argvlen)
{
	Pg2rStage back = pg2r_stage_enter(PG2R_STAGE_APPEND);

	sender_command(arg, rule, op, argc, argv, argvlen);
	pg2r_stage_leave(back);
}

const DecodeHooks pg2r_worker_decode_hooks = {
	.begin = worker_begin,
	.commit = worker_commit,
	.change_start = worker_change_start,
	.change_mapped = worker_change_mapped,
	.row_key = redrive_note_row,
	.change_end = worker_change_end,
	.change_error = sender_change_error,
	.truncate = worker_truncate,
	.message = ondemand_on_message,
	.change_sink = {worker_command, sender_render_error, NULL, false},
	.truncate_sink = {sender_command, sender_render_error, NULL, false},
};
