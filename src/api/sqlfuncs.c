/*-------------------------------------------------------------------------
 *
 * sqlfuncs.c
 *	  SQL-callable functions that need no worker: adding rules, splitting
 *	  redis-cli style commands, and previewing what the rules produce.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/relation.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/typcache.h"

#include "pg2redis/cli.h"
#include "pg2redis/mapping.h"
#include "pg2redis/pgarray.h"
#include "pg2redis/relutil.h"

PG_FUNCTION_INFO_V1(pg2redis_add_rule_array);
PG_FUNCTION_INFO_V1(pg2redis_add_rule_text);
PG_FUNCTION_INFO_V1(pg2redis_split_command);
PG_FUNCTION_INFO_V1(pg2redis_preview);

/*
 * parse_op returns the op named by text (case and surrounding blanks
 * ignored), raising an ERROR for an unknown name.
 */
static Pg2rOp
parse_op(text *optext)
{
	char  *name = text_to_cstring(optext);
	char  *end;
	Pg2rOp op;

	while (*name == ' ')
		name++;
	for (end = name; *end; end++)
		*end = pg_tolower((unsigned char) *end);
	while (end > name && end[-1] == ' ')
		*--end = '\0';

	if (!pg2r_op_parse(name, &op))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid rule op \"%s\"", name),
				 errhint("The op is one of insert, update, delete, truncate and snapshot.")));
	return op;
}

/*
 * split_or_error splits a redis-cli style command into a text[] datum,
 * raising an ERROR if it is malformed.
 */
static ArrayType *
split_or_error(text *command)
{
	Pg2rError err = {0};
	List	 *args = pg2r_split_cli(text_to_cstring(command), &err);

	if (args == NIL && err.message != NULL)
		pg2r_raise(&err);
	return DatumGetArrayTypeP(pg2r_text_array(args));
}

/*
 * add_rule inserts a rule through SPI, so that the validation trigger and
 * the table's privileges apply exactly as for a direct INSERT, and returns
 * the new rule's id.  The row count limit must stay 0: with a limit, the
 * executor stops before the INSERT's AFTER STATEMENT triggers fire, and the
 * rule caches would never hear of the new rule.
 */
static int64
add_rule(Oid relid, Pg2rOp op, ArrayType *command, Datum condition,
		 bool condnull)
{
	Oid	  argtypes[4] = {REGCLASSOID, TEXTOID, TEXTARRAYOID, JSONBOID};
	Datum values[4];
	char  nulls[4] = {' ', ' ', ' ', condnull ? 'n' : ' '};
	int64 id;
	bool  isnull;

	values[0] = ObjectIdGetDatum(relid);
	values[1] = CStringGetTextDatum(pg2r_op_name(op));
	values[2] = PointerGetDatum(command);
	values[3] = condition;

	SPI_connect();
	if (SPI_execute_with_args("INSERT INTO pg2redis.rules (relation, op, command, condition) "
							  "VALUES ($1, $2, $3, $4) RETURNING id",
							  4, argtypes, values, nulls, false,
							  0) != SPI_OK_INSERT_RETURNING ||
		SPI_processed != 1)
		elog(ERROR, "could not insert into pg2redis.rules");
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
									 SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	return id;
}

/*
 * pg2redis_add_rule(relation, op, command text[], condition) adds a
 * validated rule and returns its id.
 */
Datum
pg2redis_add_rule_array(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						errmsg("relation, op and command must not be null")));
	PG_RETURN_INT64(add_rule(PG_GETARG_OID(0), parse_op(PG_GETARG_TEXT_PP(1)),
							 PG_GETARG_ARRAYTYPE_P(2),
							 PG_ARGISNULL(3) ? (Datum) 0 : PG_GETARG_DATUM(3),
							 PG_ARGISNULL(3)));
}

/*
 * pg2redis_add_rule(relation, op, command text, condition) adds a validated
 * rule written as in redis-cli and returns its id.
 */
Datum
pg2redis_add_rule_text(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						errmsg("relation, op and command must not be null")));
	PG_RETURN_INT64(add_rule(PG_GETARG_OID(0), parse_op(PG_GETARG_TEXT_PP(1)),
							 split_or_error(PG_GETARG_TEXT_PP(2)),
							 PG_ARGISNULL(3) ? (Datum) 0 : PG_GETARG_DATUM(3),
							 PG_ARGISNULL(3)));
}

/*
 * pg2redis_split_command(text) returns the arguments of a command written
 * as in redis-cli, as pg2redis_add_rule splits it.
 */
Datum
pg2redis_split_command(PG_FUNCTION_ARGS)
{
	PG_RETURN_ARRAYTYPE_P(split_or_error(PG_GETARG_TEXT_PP(0)));
}

/*
 * row_from_json builds a tuple of rel from a JSON object of column values,
 * as jsonb_populate_record reads it; keys that are not columns are an
 * ERROR.  Returns NULL for a NULL object.
 */
static HeapTuple
row_from_json(Relation rel, Jsonb *json, const char *what)
{
	TupleDesc		   desc = RelationGetDescr(rel);
	JsonbIterator	  *it;
	JsonbValue		   v;
	JsonbIteratorToken tok;
	Oid				   argtypes[1] = {JSONBOID};
	Datum			   values[1];
	HeapTupleData	   tmp;
	HeapTuple		   result;
	MemoryContext	   caller = CurrentMemoryContext;
	char			  *sql;

	if (json == NULL)
		return NULL;
	if (!JB_ROOT_IS_OBJECT(json))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be a JSON object of column values", what)));

	it = JsonbIteratorInit(&json->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		char *key;

		if (tok != WJB_KEY)
			continue;
		key = pnstrdup(v.val.string.val, v.val.string.len);
		if (get_attnum(RelationGetRelid(rel), key) <= 0)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("column \"%s\" of relation \"%s\" does not exist",
							key, RelationGetRelationName(rel)),
					 errdetail("The key is in %s.", what)));
	}

	sql = psprintf("SELECT pg_catalog.jsonb_populate_record(NULL::%s, $1)",
				   format_type_be_qualified(rel->rd_rel->reltype));
	values[0] = JsonbPGetDatum(json);
	SPI_connect();
	if (SPI_execute_with_args(sql, 1, argtypes, values, NULL, true, 1) !=
			SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not build a row from %s", what);
	pg2r_spi_whole_row(0, RelationGetRelid(rel), &tmp);
	{
		MemoryContext spi = MemoryContextSwitchTo(caller);

		/* Re-form in the relation's own descriptor, outside SPI memory. */
		Datum *vals = palloc(sizeof(Datum) * Max(desc->natts, 1));
		bool  *nulls = palloc(sizeof(bool) * Max(desc->natts, 1));

		heap_deform_tuple(&tmp, desc, vals, nulls);
		result = heap_form_tuple(desc, vals, nulls);
		MemoryContextSwitchTo(spi);
	}
	SPI_finish();
	return result;
}

/* What preview's sink collects into. */
typedef struct PreviewSink
{
	Tuplestorestate *store;
	TupleDesc		 desc;
	Oid				 relid;
} PreviewSink;

static void
preview_command(void *arg, const Rule *rule, Pg2rOp op, int argc,
				const char *const *argv, const size_t *argvlen)
{
	PreviewSink *ps = arg;
	Datum		*elems = palloc(sizeof(Datum) * Max(argc, 1));
	Datum		 value;
	bool		 isnull = false;

	for (int i = 0; i < argc; i++)
		elems[i] =
			PointerGetDatum(cstring_to_text_with_len(argv[i], argvlen[i]));
	value = PointerGetDatum(construct_array(elems, argc, TEXTOID, -1, false,
											TYPALIGN_INT));
	tuplestore_putvalues(ps->store, ps->desc, &value, &isnull);
}

/* The rule and op a preview error is raised for, for its context line. */
typedef struct PreviewErrorContext
{
	const Rule *rule;
	Pg2rOp		op;
} PreviewErrorContext;

/* preview_error_context adds the context line naming the rule. */
static void
preview_error_context(void *arg)
{
	PreviewErrorContext *ctx = arg;

	errcontext("pg2redis rule " INT64_FORMAT " (%s)", ctx->rule->id,
			   pg2r_op_name(ctx->op));
}

/* preview_error raises a render error as an ERROR naming the rule. */
static void
preview_error(void *arg, const Rule *rule, Pg2rOp op, const Pg2rError *err)
{
	PreviewErrorContext	 ctx = {rule, op};
	ErrorContextCallback errcb;

	errcb.callback = preview_error_context;
	errcb.arg = &ctx;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;
	pg2r_raise(err);
}

/*
 * pg2redis_preview(relation, op, new_row, old_row) returns the commands the
 * current rules would send for that change, one text[] per command, as the
 * stream would render them; it touches no Redis.  {%xid%} renders as 0,
 * {%lsn%} as 0/0 and {%commit_time%} as the transaction's start time.
 */
Datum
pg2redis_preview(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Relation	   rel;
	Pg2rOp		   op;
	HeapTuple	   newtup, oldtup;
	PreviewSink	   ps;
	CommandSink	   sink = {preview_command, preview_error, &ps, false};
	ChangeMeta	   meta;
	RelMap		  *map;
	int			   level;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						errmsg("relation and op must not be null")));
	op = parse_op(PG_GETARG_TEXT_PP(1));
	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	ps.store = rsinfo->setResult;
	ps.desc = rsinfo->setDesc;

	/* the rules of a table, literals included, are as secret as its rows */
	if (pg_class_aclcheck(PG_GETARG_OID(0), GetUserId(), ACL_SELECT) !=
		ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for table %s",
						get_rel_name(PG_GETARG_OID(0))),
				 errdetail("Previewing the rules of a table requires SELECT on it."),
				 errhint("Have the table's owner grant SELECT on it to your role.")));
	rel = relation_open(PG_GETARG_OID(0), AccessShareLock);
	if (rel->rd_rel->relkind != RELKIND_RELATION &&
		rel->rd_rel->relkind != RELKIND_PARTITIONED_TABLE)
		ereport(ERROR, (errcode(ERRCODE_WRONG_OBJECT_TYPE),
						errmsg("\"%s\" is not a table",
							   RelationGetRelationName(rel))));
	ps.relid = RelationGetRelid(rel);

	newtup = row_from_json(rel, PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2),
						   "new_row");
	oldtup = row_from_json(rel, PG_ARGISNULL(3) ? NULL : PG_GETARG_JSONB_P(3),
						   "old_row");
	if ((op == PG2R_OP_INSERT || op == PG2R_OP_SNAPSHOT ||
		 op == PG2R_OP_UPDATE) &&
		newtup == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("a preview of %s needs new_row", pg2r_op_name(op))));
	if (op == PG2R_OP_DELETE && oldtup == NULL)
	{
		/* A delete's row may be given as new_row or old_row. */
		oldtup = newtup;
	}

	meta.xid = InvalidTransactionId;
	meta.lsn = InvalidXLogRecPtr;
	meta.commit_time = GetCurrentTransactionStartTimestamp();

	level = render_push_settings();
	map = mapping_get(rel);
	if (op == PG2R_OP_TRUNCATE)
		mapping_truncate(map, &meta, &sink);
	else
		mapping_change(map, rel, op, oldtup,
					   op == PG2R_OP_DELETE ? NULL : newtup, &meta, &sink);
	render_pop_settings(level);

	relation_close(rel, AccessShareLock);
	return (Datum) 0;
}
