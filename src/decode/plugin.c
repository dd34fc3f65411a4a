/*-------------------------------------------------------------------------
 *
 * plugin.c
 *	  The logical decoding output plugin "pg2redis".
 *
 * The library is its own output plugin: a slot created with plugin
 * pg2redis decodes committed changes into the Redis commands the rules
 * produce.  Read through SQL (pg_logical_slot_get_changes), each command is
 * one row whose data is a JSON array of strings, one per Redis argument:
 *
 *		["HSET","product:1","id","1","name","Keyboard"]
 *
 * A change a rule cannot render gives a JSON object instead, so the two
 * never look alike:
 *
 *		{"error":"column \"x\" ...","rule":12,"op":"update"}
 *
 * Transactions whose changes produce no command produce no row.
 *
 * Rules are read under the historic snapshot of the transaction being
 * decoded (see rules.c), so the commands are those the rules in force at
 * that point of the stream produce.  Output settings (ISO dates in UTC,
 * ...) are fixed for the whole decoding session, from startup to shutdown.
 *
 * No streaming or two-phase callbacks are defined: Redis cannot roll back,
 * so only committed transactions are decoded.
 *
 * The worker decodes through the same callbacks: it installs DecodeHooks
 * (decode.h) at start, which get every transaction, change, truncate and
 * message, and whose sinks get the commands.  This file knows nothing of
 * the worker beyond that table; with no hooks it is in SQL mode.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_class.h"
#include "catalog/pg_inherits.h"
#include "replication/logical.h"
#include "replication/output_plugin.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/rel.h"

#include "pg2redis/compat.h"
#include "pg2redis/mapping.h"
#include "pg2redis/settings.h"

#include "decode.h"

typedef struct PluginState
{
	MemoryContext change_cxt; /* reset after every change */
	int			  guc_level;  /* from render_push_settings */
	bool		  careful;	  /* the worker decodes this transaction again
							   * after an ERROR: rules in subtransactions */
} PluginState;

void _PG_output_plugin_init(OutputPluginCallbacks *cb);

/* Installed by the worker; NULL: SQL mode. */
static const DecodeHooks *hooks = NULL;

/*
 * decode_set_hooks makes the plugin hand its work to hooks (NULL: write
 * commands as rows, for SQL readers).  The table must outlive decoding.
 */
void
decode_set_hooks(const DecodeHooks *h)
{
	hooks = h;
}

static bool truncates_all_partitions(Oid parent, Relation relations[],
									 int nrelations);

/*
 * plugin_startup checks the options (pg2redis takes none) and fixes the
 * output settings for the session.
 */
static void
plugin_startup(LogicalDecodingContext *ctx, OutputPluginOptions *opt,
			   bool is_init)
{
	PluginState *state;
	ListCell	*lc;

	foreach(lc, ctx->output_plugin_options)
	{
		DefElem *elem = lfirst(lc);

		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("option \"%s\" is not recognized by output plugin pg2redis",
						elem->defname),
				 errhint("The pg2redis output plugin takes no options; its output is set by the rules in pg2redis.rules.")));
	}

	/* the worker's slot feeds Redis; SQL reading it would steal changes */
	if (hooks == NULL && ctx->slot &&
		strcmp(NameStr(ctx->slot->data.name), pg2r_slot_name) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("replication slot \"%s\" belongs to the pg2redis worker",
						pg2r_slot_name),
				 errhint("Create another slot with plugin pg2redis to read commands through SQL.")));

	state = palloc0(sizeof(PluginState));
	state->change_cxt = AllocSetContextCreate(ctx->context, "pg2redis change",
											  ALLOCSET_DEFAULT_SIZES);
	/* the worker fixes the output settings for its whole process */
	state->guc_level = hooks ? -1 : render_push_settings();
	ctx->output_plugin_private = state;
	opt->output_type = OUTPUT_PLUGIN_TEXTUAL_OUTPUT;
	opt->receive_rewrites = false;
}

/* plugin_shutdown restores the session's output settings. */
static void
plugin_shutdown(LogicalDecodingContext *ctx)
{
	PluginState *state = ctx->output_plugin_private;

	if (state && state->guc_level >= 0)
		render_pop_settings(state->guc_level);
}

/*
 * plugin_begin starts a transaction in the worker (carefully when an ERROR
 * ended a worker while it decoded this transaction); SQL writes nothing.
 */
static void
plugin_begin(LogicalDecodingContext *ctx, ReorderBufferTXN *txn)
{
	PluginState *state = ctx->output_plugin_private;

	if (hooks == NULL)
		return;
	state->careful = hooks->begin(txn);
}

/* plugin_commit ends a transaction in the worker; SQL writes nothing. */
static void
plugin_commit(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
			  XLogRecPtr commit_lsn)
{
	if (hooks)
		hooks->commit(txn);
}

/* sql_command writes one command as a JSON array row. */
static void
sql_command(void *arg, const Rule *rule, Pg2rOp op, int argc,
			const char *const *argv, const size_t *argvlen)
{
	LogicalDecodingContext *ctx = arg;

	OutputPluginPrepareWrite(ctx, true);
	appendStringInfoChar(ctx->out, '[');
	for (int i = 0; i < argc; i++)
	{
		if (i > 0)
			appendStringInfoChar(ctx->out, ',');
		render_json_string(ctx->out, argv[i], argvlen[i]);
	}
	appendStringInfoChar(ctx->out, ']');
	OutputPluginWrite(ctx, true);
}

/* sql_error writes a render error as a JSON object row. */
static void
sql_error(void *arg, const Rule *rule, Pg2rOp op, const Pg2rError *err)
{
	LogicalDecodingContext *ctx = arg;

	OutputPluginPrepareWrite(ctx, true);
	appendStringInfoString(ctx->out, "{\"error\":");
	escape_json(ctx->out, err->message);
	appendStringInfo(ctx->out, ",\"rule\":" INT64_FORMAT ",\"op\":\"%s\"}",
					 rule->id, pg2r_op_name(op));
	OutputPluginWrite(ctx, true);
}

/* txn_meta fills the transaction facts placeholders render. */
static void
txn_meta(ReorderBufferTXN *txn, ChangeMeta *meta)
{
	meta->xid = txn->xid;
	meta->lsn = txn->final_lsn;
	meta->commit_time = txn->xact_time.commit_time;
}

/* Arguments of mapping_change, for pg2r_run_guarded. */
typedef struct ChangeCall
{
	RelMap				*map;
	Relation			 relation;
	Pg2rOp				 op;
	ReorderBufferChange *change;
	const ChangeMeta	*meta;
	const CommandSink	*sink;
} ChangeCall;

/*
 * note_row_key gives the sender the key of the changed row (the new row's,
 * or the old one's for a delete), which the change's dead letters record.
 */
static void
note_row_key(RelMap *map, Relation relation, Pg2rOp op,
			 ReorderBufferChange *change)
{
	if (hooks)
		hooks->row_key(relation, map,
					   op == PG2R_OP_DELETE ? PG2R_CHANGE_OLDTUPLE(change)
											: PG2R_CHANGE_NEWTUPLE(change));
}

/* change_call runs mapping_change with the arguments in arg (a ChangeCall). */
static void
change_call(void *arg)
{
	ChangeCall *c = arg;

	note_row_key(c->map, c->relation, c->op, c->change);
	mapping_change(c->map, c->relation, c->op, PG2R_CHANGE_OLDTUPLE(c->change),
				   PG2R_CHANGE_NEWTUPLE(c->change), c->meta, c->sink);
}

/*
 * careful_change maps one change in a subtransaction (only with hooks,
 * whose begin asks for it): each rule already runs in one of its own
 * (sink->careful), and an ERROR outside any rule becomes a dead letter of
 * the whole change instead of ending the worker.
 */
static void
careful_change(RelMap *map, Relation relation, Pg2rOp op,
			   ReorderBufferChange *change, const ChangeMeta *meta,
			   const CommandSink *sink)
{
	ChangeCall call = {map, relation, op, change, meta, sink};
	ErrorData *edata = pg2r_run_guarded(change_call, &call);

	if (edata)
		hooks->change_error(RelationGetRelid(relation), op,
							psprintf("mapping the change failed: %s",
									 edata->message));
}

/* plugin_change expands the rules of one row change. */
static void
plugin_change(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
			  Relation relation, ReorderBufferChange *change)
{
	PluginState	 *state = ctx->output_plugin_private;
	CommandSink	  sink = {sql_command, sql_error, ctx, false};
	RelMap		 *map;
	ChangeMeta	  meta;
	Pg2rOp		  op;
	MemoryContext old;
	Oid			  relid = RelationGetRelid(relation);
	int			  token = 0;

	switch (change->action)
	{
		case REORDER_BUFFER_CHANGE_INSERT:
			op = PG2R_OP_INSERT;
			break;
		case REORDER_BUFFER_CHANGE_UPDATE:
			op = PG2R_OP_UPDATE;
			break;
		case REORDER_BUFFER_CHANGE_DELETE:
			op = PG2R_OP_DELETE;
			break;
		default:
			return;
	}

	if (hooks)
		token = hooks->change_start(relation, txn, op,
									PG2R_CHANGE_OLDTUPLE(change),
									PG2R_CHANGE_NEWTUPLE(change));
	map = mapping_get(relation);
	if (!mapping_has_rules(map))
	{
		if (hooks)
			hooks->change_end(token, false);
		return;
	}
	if (hooks)
	{
		if (!hooks->change_mapped(relation))
		{
			hooks->change_end(token, false);
			return;
		}
		sink = hooks->change_sink;
		sink.arg = &relid;
	}

	txn_meta(txn, &meta);
	old = MemoryContextSwitchTo(state->change_cxt);
	if (state->careful)
	{
		sink.careful = true;
		careful_change(map, relation, op, change, &meta, &sink);
	}
	else
	{
		note_row_key(map, relation, op, change);
		mapping_change(map, relation, op, PG2R_CHANGE_OLDTUPLE(change),
					   PG2R_CHANGE_NEWTUPLE(change), &meta, &sink);
	}
	MemoryContextSwitchTo(old);
	MemoryContextReset(state->change_cxt);
	if (hooks)
		hooks->change_end(token, true);
}

/*
 * plugin_truncate expands the truncate rules once per rule relation: a
 * truncated partitioned table arrives as its partitions.
 */
static void
plugin_truncate(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
				int nrelations, Relation relations[],
				ReorderBufferChange *change)
{
	PluginState	 *state = ctx->output_plugin_private;
	CommandSink	  sink = {sql_command, sql_error, ctx, false};
	ChangeMeta	  meta;
	MemoryContext old;
	List		 *done = NIL;
	Oid			  relid = InvalidOid;

	if (hooks)
	{
		if (!hooks->truncate(txn, nrelations, relations))
			return;
		sink = hooks->truncate_sink;
		sink.arg = &relid;
	}
	txn_meta(txn, &meta);
	old = MemoryContextSwitchTo(state->change_cxt);
	for (int i = 0; i < nrelations; i++)
	{
		RelMap *map = mapping_get(relations[i]);

		if (!mapping_has_rules(map) || list_member_oid(done, map->rulerelid))
			continue;
		/* each rule relation is considered once, whatever the outcome */
		done = lappend_oid(done, map->rulerelid);
		/* a partitioned table is emptied only with all of its partitions */
		if (map->rulerelid != RelationGetRelid(relations[i]) &&
			!truncates_all_partitions(map->rulerelid, relations, nrelations))
			continue;
		relid = map->rulerelid;
		sink.careful = state->careful;
		mapping_truncate(map, &meta, &sink);
	}
	MemoryContextSwitchTo(old);
	MemoryContextReset(state->change_cxt);
}

/*
 * truncates_all_partitions tells whether relations[] holds every leaf
 * partition of the partitioned table parent: only then was the table itself
 * emptied (the WAL names the leaves only), and only then do its truncate
 * rules run.  A partition truncated alone runs its own truncate rules.
 */
static bool
truncates_all_partitions(Oid parent, Relation relations[], int nrelations)
{
	ListCell *lc;

	foreach(lc, find_all_inheritors(parent, NoLock, NULL))
	{
		Oid	 child = lfirst_oid(lc);
		bool found = false;

		if (get_rel_relkind(child) != RELKIND_RELATION)
			continue;
		for (int i = 0; i < nrelations && !found; i++)
			found = RelationGetRelid(relations[i]) == child;
		if (!found)
			return false;
	}
	return true;
}

/*
 * plugin_message passes the worker's snapshot watermarks on; SQL readers
 * get nothing for messages.
 */
static void
plugin_message(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
			   XLogRecPtr message_lsn, bool transactional, const char *prefix,
			   Size message_size, const char *message)
{
	/*
	 * The end of the message's record: strictly after the end of every
	 * transaction committed before it, so the chunk's fence never equals one.
	 */
	if (hooks && !transactional)
		hooks->message(ctx->reader->EndRecPtr, prefix, message_size, message);
}

/*
 * _PG_output_plugin_init registers the callbacks of output plugin
 * pg2redis.
 */
void
_PG_output_plugin_init(OutputPluginCallbacks *cb)
{
	cb->startup_cb = plugin_startup;
	cb->begin_cb = plugin_begin;
	cb->change_cb = plugin_change;
	cb->truncate_cb = plugin_truncate;
	cb->commit_cb = plugin_commit;
	cb->message_cb = plugin_message;
	cb->shutdown_cb = plugin_shutdown;
}
