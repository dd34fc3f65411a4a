/*-------------------------------------------------------------------------
 *
 * snapshot.c
 *	  Loading existing rows of mapped tables into Redis.
 *
 * The initial load runs in the worker when it creates its slot, inside the
 * transaction that holds the slot's initial snapshot (see worker.c), so the
 * rows it reads are exactly those committed before the slot's start point
 * and the stream continues from there with nothing missed and nothing
 * doubled.  Every partition is read on its own and mapped exactly as its
 * changes are (its own rules, else its nearest ancestor's), with the
 * relation's snapshot rules, else its insert rules.  The load goes through
 * the sender as one transaction ending at the start point, so it is split
 * into atomic parts like any large transaction and fenced by the start
 * point when done.
 *
 * A table's snapshot filter is one boolean expression over the table
 * (snapshot_check_filter), run by SQL.  The query runs as the table's owner,
 * in a security-restricted operation with search_path pinned to pg_catalog,
 * pg_temp (snapshot_become_owner), as PostgreSQL's own maintenance commands
 * run index expressions: the worker is a superuser, and a filter, a domain
 * check or a cast on the table is the owner's code, which must not run with
 * more than the owner's rights.  The rows themselves are read with a plain
 * heap scan when there is no filter: no user code runs there.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/heaptoast.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/pg_class.h"
#include "catalog/pg_inherits.h"
#include "common/keywords.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "parser/parser.h"
#include "parser/scanner.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/timeout.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "pg2redis/mapping.h"
#include "pg2redis/ondemand.h"
#include "pg2redis/sender.h"
#include "pg2redis/settings.h"
#include "pg2redis/snapshot.h"
#include "pg2redis/state.h"
#include "pg2redis/worker.h"

/*
 * snapshot_mapped_leaves returns the OIDs, in order, of the tables whose
 * rows a snapshot of relid reads (InvalidOid: of every mapped table): the
 * table itself, or every leaf partition of a partitioned one, once each.
 */
List *
snapshot_mapped_leaves(Oid relid)
{
	List *result = NIL;
	List *roots =
		OidIsValid(relid) ? list_make1_oid(relid) : rules_relations();
	ListCell *lc;

	foreach(lc, roots)
	{
		ListCell *lc2;

		foreach(lc2,
				find_all_inheritors(lfirst_oid(lc), AccessShareLock, NULL))
		{
			Oid child = lfirst_oid(lc2);

			if (get_rel_relkind(child) == RELKIND_RELATION)
				result = list_append_unique_oid(result, child);
		}
	}
	list_sort(result, list_oid_cmp);
	return result;
}

/* the subtransaction the owner's statement timeout was armed in, if any */
static SubTransactionId armed_in = InvalidSubTransactionId;
static bool				timeout_callbacks = false;

/*
 * disarm_timeout stops the owner's statement timeout and forgets a cancel
 * it already requested: the worker has no other use for a query cancel.
 */
static void
disarm_timeout(void)
{
	if (get_timeout_active(STATEMENT_TIMEOUT))
		disable_timeout(STATEMENT_TIMEOUT, false);
	if (get_timeout_indicator(STATEMENT_TIMEOUT, true))
		QueryCancelPending = false;
	armed_in = InvalidSubTransactionId;
}

/*
 * timeout_at_subxact_abort disarms the timer when the subtransaction it
 * was armed in (or one around it) aborts; an inner subtransaction's abort
 * (a rule's render error) leaves it armed.
 */
static void
timeout_at_subxact_abort(SubXactEvent event, SubTransactionId mySubid,
						 SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB &&
		armed_in != InvalidSubTransactionId && armed_in >= mySubid)
		disarm_timeout();
}

/* timeout_at_xact_abort disarms the timer when the transaction aborts. */
static void
timeout_at_xact_abort(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_ABORT && armed_in != InvalidSubTransactionId)
		disarm_timeout();
}

/*
 * snapshot_become_owner makes owner the current user, in a security-
 * restricted operation with search_path pinned, as VACUUM, CLUSTER and
 * REFRESH MATERIALIZED VIEW do (CVE-2022-1552), and saves the identity in
 * *saved.  snapshot_restore_user restores it; an ERROR in between is undone
 * by the abort of the (sub)transaction.
 */
void
snapshot_become_owner(Oid owner, SnapshotOwner *saved)
{
	GetUserIdAndSecContext(&saved->save_userid, &saved->save_sec_context);
	SetUserIdAndSecContext(owner, saved->save_sec_context |
									  SECURITY_RESTRICTED_OPERATION);
	saved->save_nestlevel = NewGUCNestLevel();
	/* in the worker the setting is already pinned (worker.c): this is a no-op */
	(void) set_config_option("search_path", PG2R_SAFE_SEARCH_PATH, PGC_USERSET,
							 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);

	/*
	 * The owner's code (a filter, a policy, a domain check) must not hold up
	 * the one worker that streams for everyone: it gets
	 * pg2redis.snapshot_statement_timeout, as a statement would.  The timer
	 * is disarmed by snapshot_restore_user, or, when an ERROR skips that, by
	 * the abort of the (sub)transaction it was armed in (timeout_at_abort).
	 */
	if (pg2r_in_worker && pg2r_snapshot_statement_timeout_ms > 0)
	{
		if (!timeout_callbacks)
		{
			RegisterXactCallback(timeout_at_xact_abort, NULL);
			RegisterSubXactCallback(timeout_at_subxact_abort, NULL);
			timeout_callbacks = true;
		}
		armed_in = GetCurrentSubTransactionId();
		enable_timeout_after(STATEMENT_TIMEOUT,
							 pg2r_snapshot_statement_timeout_ms);
	}
}

/* snapshot_restore_user undoes snapshot_become_owner. */
void
snapshot_restore_user(const SnapshotOwner *saved)
{
	if (armed_in != InvalidSubTransactionId)
	{
		/*
		 * A timeout that fired while the worker was busy with no interrupt
		 * check (rendering the rows) is raised here, inside the caller's
		 * guard, not later in the decoding loop, where it would end the
		 * worker.
		 */
		CHECK_FOR_INTERRUPTS();
		disarm_timeout();
	}
	AtEOXact_GUC(false, saved->save_nestlevel);
	SetUserIdAndSecContext(saved->save_userid, saved->save_sec_context);
}

#define FILTER_HINT                                                           \
	"Write one condition on the table's columns, such as \"status <> "        \
	"'archived'\", and schema-qualify your own functions and operators."

/*
 * filter_position reports the position of an error in a filter (or in the
 * query around it) as a position in that text, not in the user's query, and
 * gives a syntax error of the parser the hint on what a filter is.
 */
static void
filter_position(void *arg)
{
	int pos = geterrposition();

	if (pos > 0)
	{
		errposition(0);
		internalerrposition(pos);
		internalerrquery((const char *) arg);
	}
	if (geterrcode() == ERRCODE_SYNTAX_ERROR)
		errhint(FILTER_HINT);
}

/*
 * snapshot_check_filter refuses a snapshot filter of table relname (quoted,
 * qualified) that is not one boolean expression.  The filter is pasted into
 * SQL as "WHERE (<newline> filter <newline>)" (snapshot_filter_clause), so
 * it is refused if its tokens close more parentheses than they open, leave
 * one open, or hold a semicolon: nothing can then end the condition early
 * (a comment ends at the newline).  The query is then parsed, and must be
 * one plain SELECT whose only clauses are ours.  Whether the expression is
 * boolean and names what exists is for the planner (the trigger prepares
 * it).
 */
void
snapshot_check_filter(const char *relname, const char *filter)
{
	core_yyscan_t		 scanner;
	core_yy_extra_type	 yyextra;
	core_YYSTYPE		 yylval;
	YYLTYPE				 yylloc;
	int					 depth = 0;
	int					 ntokens = 0;
	char				*sql;
	List				*stmts;
	Node				*stmt;
	SelectStmt			*select;
	ErrorContextCallback errcb;

	errcb.callback = filter_position;
	errcb.arg = (void *) filter;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;

	scanner = scanner_init(filter, &yyextra, &ScanKeywords, ScanKeywordTokens);
	for (;;)
	{
		int tok = core_yylex(&yylval, &yylloc, scanner);

		if (tok == 0)
			break;
		ntokens++;
		if (tok == '(')
			depth++;
		else if ((tok == ')' && --depth < 0) || tok == ';')
			ereport(ERROR,
					(errcode(ERRCODE_SYNTAX_ERROR),
					 errmsg("invalid snapshot filter: it must be one boolean expression"),
					 errdetail(tok == ';'
								   ? "A semicolon ends the condition."
								   : "A closing parenthesis ends the condition early."),
					 errhint(FILTER_HINT),
					 errposition(pg_mbstrlen_with_len(filter, yylloc) + 1)));
	}
	scanner_finish(scanner);
	if (ntokens == 0)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						errmsg("invalid snapshot filter: it is empty"),
						errhint(FILTER_HINT)));
	if (depth > 0)
		ereport(ERROR,
				(errcode(ERRCODE_SYNTAX_ERROR),
				 errmsg("invalid snapshot filter: it must be one boolean expression"),
				 errdetail("It leaves a parenthesis open."),
				 errhint(FILTER_HINT)));

	sql = psprintf("SELECT t FROM ONLY %s t WHERE %s", relname,
				   snapshot_filter_clause(filter));
	errcb.arg = sql;
	stmts = raw_parser(sql, RAW_PARSE_DEFAULT);
	stmt =
		list_length(stmts) == 1 ? linitial_node(RawStmt, stmts)->stmt : NULL;
	select = stmt && IsA(stmt, SelectStmt) ? (SelectStmt *) stmt : NULL;
	if (select == NULL || select->op != SETOP_NONE || select->withClause ||
		select->intoClause || select->sortClause || select->limitCount ||
		select->limitOffset || select->lockingClause || select->groupClause ||
		select->havingClause || select->windowClause ||
		select->distinctClause || select->valuesLists ||
		list_length(select->targetList) != 1 ||
		list_length(select->fromClause) != 1 || select->whereClause == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid snapshot filter: it must be one boolean expression"),
				 errdetail("It adds to the query it is part of."),
				 errhint(FILTER_HINT)));
	error_context_stack = errcb.previous;
}

/*
 * snapshot_filter_clause returns a checked filter as an SQL condition: in
 * parentheses, on lines of its own so that a trailing comment ends there.
 */
char *
snapshot_filter_clause(const char *filter)
{
	return psprintf("(\n%s\n)", filter);
}

/*
 * load_filtered sends the rows of rel that its snapshot filter keeps,
 * reading them with SQL under the active snapshot, as the table's owner
 * (snapshot_become_owner); the rows are rendered and sent as the worker.
 */
static uint64
load_filtered(Relation rel, RelMap *map, const char *filter,
			  const ChangeMeta *meta, const CommandSink *sink,
			  MemoryContext rowcxt)
{
	char *relname =
		quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
								   RelationGetRelationName(rel));
	char		 *sql;
	Portal		  portal;
	uint64		  rows = 0;
	SPIPlanPtr	  plan;
	SnapshotOwner saved;

	snapshot_check_filter(relname, filter);
	sql = psprintf("SELECT t FROM ONLY %s t WHERE %s", relname,
				   snapshot_filter_clause(filter));
	snapshot_become_owner(rel->rd_rel->relowner, &saved);
	plan = SPI_prepare(sql, 0, NULL);
	if (plan == NULL)
		elog(ERROR, "could not prepare the snapshot filter of \"%s\"",
			 RelationGetRelationName(rel));
	portal = SPI_cursor_open(NULL, plan, NULL, NULL, true);
	snapshot_restore_user(&saved);
	for (;;)
	{
		snapshot_become_owner(rel->rd_rel->relowner, &saved);
		SPI_cursor_fetch(portal, true, 10000);
		snapshot_restore_user(&saved);
		if (SPI_processed == 0)
			break;
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			HeapTupleData tuple;
			MemoryContext old = MemoryContextSwitchTo(rowcxt);

			mapping_spi_row(i, RelationGetRelid(rel), &tuple);
			sender_count_change();
			mapping_change(map, rel, PG2R_OP_SNAPSHOT, NULL, &tuple, meta,
						   sink);
			MemoryContextSwitchTo(old);
			MemoryContextReset(rowcxt);
			rows++;
			CHECK_FOR_INTERRUPTS();
		}
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);
	return rows;
}

/* Arguments of load_filtered, for pg2r_run_guarded. */
typedef struct LoadCall
{
	Relation		   rel;
	RelMap			  *map;
	const char		  *filter;
	const ChangeMeta  *meta;
	const CommandSink *sink;
	MemoryContext	   rowcxt;
	uint64			   rows;
} LoadCall;

/* load_filtered_call runs load_filtered with the arguments in arg. */
static void
load_filtered_call(void *arg)
{
	LoadCall *c = arg;

	c->rows =
		load_filtered(c->rel, c->map, c->filter, c->meta, c->sink, c->rowcxt);
}

/*
 * load_filtered_careful runs load_filtered in a subtransaction: a filter
 * that fails (its owner's code, privileges or policies) leaves the rest of
 * that table to a dead letter and a WARNING, and the load goes on.
 */
static uint64
load_filtered_careful(LoadCall *call)
{
	ErrorData *edata = pg2r_run_guarded(load_filtered_call, call);
	char	  *msg;

	if (edata == NULL)
		return call->rows;
	msg =
		psprintf("the snapshot filter of table \"%s\" failed: %s; the initial load skipped the rest of the table",
				 RelationGetRelationName(call->rel), edata->message);
	ereport(WARNING,
			(errcode(edata->sqlerrcode), errmsg("pg2redis: %s", msg),
			 errhint("Fix or delete the filter in pg2redis.snapshot_filters, then run pg2redis_snapshot() for the table.")));
	sender_change_error(RelationGetRelid(call->rel), PG2R_OP_SNAPSHOT, msg);
	return 0;
}

/* One row of the initial load's heap scan, for load_row_call. */
typedef struct LoadRow
{
	Relation		   rel;
	RelMap			  *map;
	HeapTuple		   tuple;
	const ChangeMeta  *meta;
	const CommandSink *sink;
} LoadRow;

/*
 * load_row_call maps one row of the initial load.  A value stored out of
 * line is an on-disk TOAST pointer in a heap tuple, which the mapping takes
 * for an unchanged value of an update (never sent): such values are
 * fetched first.
 */
static void
load_row_call(void *arg)
{
	LoadRow	 *lr = arg;
	HeapTuple tuple = lr->tuple;

	if (HeapTupleHasExternal(tuple))
		tuple = toast_flatten_tuple(tuple, RelationGetDescr(lr->rel));
	sender_count_change();
	mapping_change(lr->map, lr->rel, PG2R_OP_SNAPSHOT, NULL, tuple, lr->meta,
				   lr->sink);
}

/*
 * snapshot_initial_load sends every row of every mapped table, as the
 * current transaction snapshot sees it, to Redis, fenced at start.
 */
void
snapshot_initial_load(XLogRecPtr start)
{
	MemoryContext rowcxt =
		AllocSetContextCreate(CurrentMemoryContext, "pg2redis snapshot row",
							  ALLOCSET_DEFAULT_SIZES);
	ChangeMeta meta;
	Snapshot   snap;
	List	  *leaves;
	ListCell  *lc;
	uint64	   rows = 0;
	/* an ERROR ended the last load: each rule in a subtransaction now */
	bool careful = pg2r_careful_load();

	PushActiveSnapshot(GetTransactionSnapshot());
	snap = GetActiveSnapshot();
	SPI_connect();
	meta.xid = InvalidTransactionId;
	meta.lsn = start;
	meta.commit_time = GetCurrentTimestamp();

	leaves = snapshot_mapped_leaves(InvalidOid);
	sender_begin_txn(InvalidTransactionId, start, start, meta.commit_time);
	foreach(lc, leaves)
	{
		Relation	  rel = table_open(lfirst_oid(lc), AccessShareLock);
		RelMap		 *map = mapping_get(rel);
		Oid			  relid = RelationGetRelid(rel);
		CommandSink	  sink = {sender_command, sender_render_error, &relid,
							  careful};
		TableScanDesc scan;
		HeapTuple	  tuple;
		char		 *filter;

		if (!mapping_has_rules(map))
		{
			table_close(rel, AccessShareLock);
			continue;
		}
		pgstat_report_activity(STATE_RUNNING, "pg2redis: initial load");
		filter = ondemand_filter_for(map->rulerelid);
		if (filter && careful)
		{
			LoadCall call = {rel, map, filter, &meta, &sink, rowcxt, 0};

			rows += load_filtered_careful(&call);
			table_close(rel, AccessShareLock);
			continue;
		}
		if (filter)
		{
			rows += load_filtered(rel, map, filter, &meta, &sink, rowcxt);
			table_close(rel, AccessShareLock);
			continue;
		}
		scan = table_beginscan(rel, snap, 0, NULL);
		while ((tuple = heap_getnext(scan, ForwardScanDirection)) != NULL)
		{
			MemoryContext old = MemoryContextSwitchTo(rowcxt);

			LoadRow lr = {rel, map, tuple, &meta, &sink};

			if (careful)
			{
				/* anything a row can raise (a tuple past 1 GB) is its own */
				ErrorData *edata = pg2r_run_guarded(load_row_call, &lr);

				if (edata)
					sender_change_error(relid, PG2R_OP_SNAPSHOT,
										psprintf("row %s of table \"%s\" could not be loaded: %s",
												 DatumGetCString(DirectFunctionCall1(
													 tidout,
													 PointerGetDatum(&tuple
																		  ->t_self))),
												 RelationGetRelationName(rel),
												 edata->message));
			}
			else
				load_row_call(&lr);
			MemoryContextSwitchTo(old);
			MemoryContextReset(rowcxt);
			rows++;
			CHECK_FOR_INTERRUPTS();
		}
		table_endscan(scan);
		table_close(rel, AccessShareLock);
	}
	sender_commit_txn();
	sender_flush();
	while (!sender_idle())
		sender_service(1000);
	SPI_finish();
	PopActiveSnapshot();
	MemoryContextDelete(rowcxt);
	pg2r_set_careful_load(false);
	ereport(LOG, (errmsg("pg2redis: initial load sent " UINT64_FORMAT
						 " rows of %d tables",
						 rows, list_length(leaves))));
}
