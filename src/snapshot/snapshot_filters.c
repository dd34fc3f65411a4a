/*-------------------------------------------------------------------------
 *
 * snapshot_filters.c
 *	  Requests for snapshots on demand, and snapshot filters: the SQL side.
 *
 * pg2redis_snapshot() checks what a caller asks for (a mapped table it may
 * read, with a key to chunk it by), queues the request in
 * pg2redis.snapshots and flags it for the worker (state.c);
 * pg2redis_validate_snapshot_filter() is the trigger that checks a row of
 * pg2redis.snapshot_filters; ondemand_filter_for() reads a table's filter
 * for the loads (snapshot.c, ondemand.c).  It owns no state; it may call
 * the mapping and rules caches, snapshot.c's filter checks and state.c.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "common/keywords.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "parser/parser.h"
#include "parser/scanner.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "pg2redis/mapping.h"
#include "pg2redis/owner.h"
#include "pg2redis/relutil.h"
#include "pg2redis/rules.h"
#include "pg2redis/snapshot_filters.h"
#include "pg2redis/state.h"

PG_FUNCTION_INFO_V1(pg2redis_snapshot);
PG_FUNCTION_INFO_V1(pg2redis_validate_snapshot_filter);

/*
 * check_snapshot_table refuses a table an on-demand snapshot cannot read:
 * one without rules that apply to it, or without a primary key or replica
 * identity index to chunk it by.
 */
static void
check_snapshot_table(Oid leaf)
{
	Relation rel = table_open(leaf, AccessShareLock);

	if (!mapping_has_rules(mapping_get(rel)))
		ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						errmsg("table \"%s\" has no pg2redis rules",
							   RelationGetRelationName(rel)),
						errhint("Add rules with pg2redis_add_rule() first.")));
	if (!OidIsValid(pg2r_key_index(rel)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s\" has no primary key or replica identity index",
						RelationGetRelationName(rel)),
				 errdetail("Snapshots on demand read a table in chunks by key."),
				 errhint("Add a primary key, or use pg2redis_resync() to load every table with the slot's own snapshot.")));
	table_close(rel, AccessShareLock);
}

/*
 * pg2redis_snapshot(relation) queues a snapshot of one mapped table (or of
 * all, when NULL) and returns the request id; the worker serves it while
 * streaming goes on.  The request is visible to the worker at commit.
 */
Datum
pg2redis_snapshot(PG_FUNCTION_ARGS)
{
	Oid		  relid = PG_ARGISNULL(0) ? InvalidOid : PG_GETARG_OID(0);
	List	 *requested;
	List	 *leaves;
	ListCell *lc;
	Oid		  types[1] = {REGCLASSOID};
	Datum	  values[1] = {ObjectIdGetDatum(relid)};
	char	  nulls[1] = {OidIsValid(relid) ? ' ' : 'n'};
	bool	  isnull;
	int64	  id;

	if (OidIsValid(relid))
	{
		char kind = get_rel_relkind(relid);

		if (kind != RELKIND_RELATION && kind != RELKIND_PARTITIONED_TABLE)
			ereport(ERROR,
					(errcode(ERRCODE_WRONG_OBJECT_TYPE),
					 errmsg("\"%s\" is not a table", get_rel_name(relid))));
	}

	/*
	 * A snapshot sends the table's rows to Redis: require SELECT on the table
	 * requested, or on every mapped table for a snapshot of all (in OID order,
	 * so that the error names the same table every time).
	 */
	requested = OidIsValid(relid) ? list_make1_oid(relid) : rules_relations();
	list_sort(requested, list_oid_cmp);
	foreach(lc, requested)
	{
		Oid checked = lfirst_oid(lc);

		if (pg_class_aclcheck(checked, GetUserId(), ACL_SELECT) != ACLCHECK_OK)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("permission denied for table %s",
							get_rel_name(checked)),
					 errdetail("Requesting a snapshot of a table requires SELECT on it."),
					 errhint("Have the table's owner grant SELECT on it to your role, or request a snapshot of a table you may read.")));
	}
	leaves = rules_mapped_leaves(relid);
	if (leaves == NIL && OidIsValid(relid))
		ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						errmsg("table \"%s\" has no partitions to snapshot",
							   get_rel_name(relid)),
						errhint("Add rules with pg2redis_add_rule() first.")));
	if (leaves == NIL)
		ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						errmsg("no table has pg2redis rules"),
						errhint("Add rules with pg2redis_add_rule() first.")));
	foreach(lc, leaves)
		check_snapshot_table(lfirst_oid(lc));

	SPI_connect();
	if (SPI_execute_with_args("INSERT INTO pg2redis.snapshots (relation) VALUES ($1) RETURNING id",
							  1, types, values, nulls, false,
							  0) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not insert into pg2redis.snapshots");
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
									 SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();

	/* the commit hook wakes the worker; the flag tells it to look */
	if (!pg2r_request_snapshot())
		ereport(NOTICE,
				(errmsg("the pg2redis worker is not running; the request waits for it")));
	PG_RETURN_INT64(id);
}

/* filter_error_context names the table whose filter is being checked. */
static void
filter_error_context(void *arg)
{
	errcontext("snapshot filter of table \"%s\"", (const char *) arg);
}

/*
 * pg2redis_validate_snapshot_filter is the BEFORE ROW trigger of
 * pg2redis.snapshot_filters: the filter must be one boolean expression over
 * its relation (snapshot_check_filter), and the query the snapshots run
 * with it must plan, as the table's owner under the worker's search_path,
 * as the snapshots run it.
 */
Datum
pg2redis_validate_snapshot_filter(PG_FUNCTION_ARGS)
{
	TupleDesc			 desc;
	HeapTuple			 tuple;
	bool				 relnull;
	bool				 filternull;
	Oid					 relid;
	char				 kind;
	char				*filter;
	char				*relname;
	char				*sql;
	Relation			 rel;
	SPIPlanPtr			 plan;
	SnapshotOwner		 saved;
	ErrorContextCallback errcb;

	tuple = pg2r_trigger_row(fcinfo, "pg2redis_validate_snapshot_filter",
							 false, &desc);
	relid = DatumGetObjectId(heap_getattr(tuple, 1, desc, &relnull));
	filter = DatumGetPointer(heap_getattr(tuple, 2, desc, &filternull));
	if (relnull || filternull)
		ereport(ERROR,
				(errcode(ERRCODE_NOT_NULL_VIOLATION),
				 errmsg("a snapshot filter needs a relation and a filter")));
	kind = get_rel_relkind(relid);
	if (kind != RELKIND_RELATION && kind != RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("relation with OID %u is not a table", relid),
				 errhint("Snapshot filters apply to ordinary and partitioned tables.")));
	filter = TextDatumGetCString(PointerGetDatum(filter));
	rel = table_open(relid, AccessShareLock);
	relname =
		quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
								   RelationGetRelationName(rel));
	errcb.callback = filter_error_context;
	errcb.arg = pstrdup(RelationGetRelationName(rel));
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;
	snapshot_check_filter(relname, filter);
	sql = psprintf("SELECT t FROM ONLY %s t WHERE %s", relname,
				   snapshot_filter_clause(filter));
	snapshot_become_owner(rel->rd_rel->relowner, &saved);
	SPI_connect();
	plan = SPI_prepare(sql, 0, NULL);
	if (plan == NULL)
		ereport(ERROR, (errcode(ERRCODE_SYNTAX_ERROR),
						errmsg("invalid snapshot filter: %s",
							   SPI_result_code_string(SPI_result))));
	SPI_finish();
	snapshot_restore_user(&saved);
	error_context_stack = errcb.previous;
	table_close(rel, AccessShareLock);
	return PointerGetDatum(tuple);
}

/*
 * ondemand_filter_for returns the snapshot filter of relation relid, or NULL
 * (in a transaction, SPI connected).  Its operator is named by schema, like
 * every name in the worker's SQL.
 */
char *
ondemand_filter_for(Oid relid)
{
	Oid	  types[1] = {OIDOID};
	Datum values[1] = {ObjectIdGetDatum(relid)};

	if (SPI_execute_with_args("SELECT filter FROM pg2redis.snapshot_filters "
							  "WHERE relation::pg_catalog.oid OPERATOR(pg_catalog.=) $1",
							  1, types, values, NULL, true,
							  1) != SPI_OK_SELECT)
		elog(ERROR, "could not read pg2redis.snapshot_filters");
	if (SPI_processed == 0)
		return NULL;
	return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
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
