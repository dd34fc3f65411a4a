/*-------------------------------------------------------------------------
 *
 * rules_validate.c
 *	  Validation of pg2redis.rules: the BEFORE ROW trigger that checks every
 *	  rule written, and pg2redis_validate_rules() that checks them again.
 *
 * A rule written is compiled (template.c, condition.c) and refused, with an
 * ERROR naming the rule, if it could not be sent: see rules.c's banner for
 * the list, and for why the writer's right to read the table is checked.
 * This file owns rules_validate (the checks on one rule), the trigger
 * pg2redis_validate_rule (a thin wrapper: deform the row, push the error
 * context, call rules_validate) and pg2redis_validate_rules.  It belongs to
 * the rules stage and calls only its compilers, the command table
 * (commands.c) and relation utilities (relutil.c); rules.c's cache never
 * calls it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/catalog.h"
#include "catalog/pg_inherits.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"

#include "pg2redis/commands.h"
#include "pg2redis/relutil.h"
#include "pg2redis/rules.h"

#include "rules_int.h"

PG_FUNCTION_INFO_V1(pg2redis_validate_rule);
PG_FUNCTION_INFO_V1(pg2redis_validate_rules);

/* what a rule's command and condition may take, stored inline in a page */
#define RULE_MAX_BYTES 7000

/* What the error context line says about the rule being validated. */
typedef struct ValidateContext
{
	int64		id;
	const char *op;
	Oid			relid;
} ValidateContext;

static void
validate_error_context(void *arg)
{
	ValidateContext *vc = arg;
	char *relname = OidIsValid(vc->relid) ? get_rel_name(vc->relid) : NULL;

	errcontext("pg2redis rule " INT64_FORMAT " (%s on %s)", vc->id,
			   vc->op ? vc->op : "?", relname ? relname : "?");
}

/*
 * check_identity refuses the rule when a column it needs from the old row
 * is not in the replica identity of leaf (a partition of ruledesc's
 * relation, or that relation itself).
 */
static void
check_identity(Relation leaf, TupleDesc ruledesc, Bitmapset *needed,
			   const char *why)
{
	bool	   full;
	Bitmapset *ident = pg2r_identity_columns(leaf, &full);
	int		   a = -1;

	while ((a = bms_next_member(needed, a)) >= 0)
	{
		const char *name = NameStr(TupleDescAttr(ruledesc, a - 1)->attname);
		AttrNumber	leafatt = get_attnum(RelationGetRelid(leaf), name);

		if (leafatt == InvalidAttrNumber || !bms_is_member(leafatt, ident))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("%s needs the old value of column \"%s\", which the replica identity of table \"%s\" does not include",
							why, name, RelationGetRelationName(leaf)),
					 errhint("Run ALTER TABLE %s REPLICA IDENTITY FULL, or use only replica identity columns in this rule.",
							 quote_qualified_identifier(
								 get_namespace_name(RelationGetNamespace(leaf)),
								 RelationGetRelationName(leaf)))));
	}
}

/*
 * check_relation refuses a relation rules may not map: anything but an
 * ordinary or partitioned, permanent user table role writer may read, all
 * of it (no row-level security applies to the role).
 */
static void
check_relation(Relation rel, Oid writer)
{
	Oid			relid = RelationGetRelid(rel);
	Oid			nsp = RelationGetNamespace(rel);
	const char *name = RelationGetRelationName(rel);

	if (IsCatalogRelation(rel) || IsCatalogNamespace(nsp) ||
		IsToastNamespace(nsp) ||
		strcmp(get_namespace_name(nsp), "information_schema") == 0)
		ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
						errmsg("cannot map system table \"%s\"", name),
						errhint("Rules map user tables only.")));
	if (strcmp(get_namespace_name(nsp), PG2R_SCHEMA) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("cannot map pg2redis's own table \"%s\"", name)));
	if (rel->rd_rel->relkind != RELKIND_RELATION &&
		rel->rd_rel->relkind != RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not a table", name),
				 errhint("Rules map ordinary and partitioned tables; views and other relations have no changes in the WAL.")));
	if (rel->rd_rel->relpersistence != RELPERSISTENCE_PERMANENT)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot map %s table \"%s\"",
						rel->rd_rel->relpersistence == RELPERSISTENCE_TEMP
							? "temporary"
							: "unlogged",
						name),
				 errdetail("Changes of temporary and unlogged tables are not written to the WAL."),
				 errhint("Use ALTER TABLE %s SET LOGGED, or map another table.",
						 name)));
	switch (rules_writer_access(relid, writer))
	{
		case WRITER_DROPPED:
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("the role that wrote the rule no longer exists"),
					 errdetail("It had OID %u.", writer),
					 errhint("Have a role that may read the table write the rule again, or delete the rule.")));
			break;
		case WRITER_NO_SELECT:
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("permission denied for table %s", name),
					 errdetail("The worker reads mapped tables with superuser rights, so writing a rule requires SELECT on its table."),
					 errhint("Have the table's owner grant SELECT on it to the role that writes the rule.")));
			break;
		case WRITER_RLS:
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("cannot map table \"%s\": its row-level security applies to role \"%s\"",
							name, GetUserNameFromId(writer, false)),
					 errdetail("The worker reads mapped tables with superuser rights, so the rule would copy rows the role may not see into Redis."),
					 errhint("Have a role that bypasses the table's row-level security (its owner, a role with BYPASSRLS, or a superuser) write the rule.")));
			break;
		case WRITER_MAY_READ:
			break;
	}
}

/*
 * is_key_position tells whether argument pos (0 being the command name) of
 * command def is a key, by the key positions commands.c gives it.
 */
static bool
is_key_position(const RedisCommandDef *def, int pos)
{
	if (def->first_key <= 0 || pos < def->first_key)
		return false;
	if (def->last_key > 0 && pos > def->last_key)
		return false;
	return (pos - def->first_key) % def->key_step == 0;
}

/*
 * check_key_prefix refuses a key whose literal beginning (the text before
 * any placeholder: literal, of length len) starts with PG2R_KEY_PREFIX;
 * source is the template element, for the message.
 */
static void
check_key_prefix(const RedisCommandDef *def, const char *literal, int len,
				 const char *source)
{
	if (len < (int) strlen(PG2R_KEY_PREFIX) ||
		strncmp(literal, PG2R_KEY_PREFIX, strlen(PG2R_KEY_PREFIX)) != 0)
		return;
	ereport(ERROR,
			(errcode(ERRCODE_RESERVED_NAME),
			 errmsg("key \"%s\" of Redis command \"%s\" starts with \"%s\", which pg2redis keeps for itself",
					source, def->name, PG2R_KEY_PREFIX),
			 errdetail("pg2redis keeps its stream positions and other keys of its own under that prefix; a rule writing there could make a pg2redis instance skip or repeat transactions."),
			 errhint("Choose another prefix for the rule's keys.")));
}

/*
 * check_command refuses an empty, unknown or server-level command, a
 * command name with placeholders, a command with too few arguments, and
 * keys under pg2redis's own prefix (a literal key, or a column name that
 * {pairs:…} puts where a key goes).
 */
static void
check_command(const Template *tpl, Datum *elems, int n)
{
	char				  *name;
	const RedisCommandDef *def;
	int					   argc = 0;

	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("rule command is empty"),
				 errhint("Give the Redis command and its arguments, one per array element.")));
	name = TextDatumGetCString(elems[0]);
	if (!template_is_literal(&tpl->args[0]))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("Redis command name \"%s\" cannot contain placeholders",
						name),
				 errhint("Write one rule per command; choose between them with conditions.")));
	if (redis_command_is_forbidden(name))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("Redis command \"%s\" is not allowed in rules", name),
				 errdetail("Rules may send data commands only; server-level, scripting and transaction commands are refused."),
				 errhint("See the list of supported commands in the README.")));
	def = redis_command_lookup(name);
	if (def == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("unsupported Redis command \"%s\"", name),
				 errhint("See the list of supported commands in the README.")));

	for (int i = 0; i < tpl->nargs; i++)
	{
		const TplArg *arg = &tpl->args[i];
		/* {pairs:…} renders two arguments per column, {columns:…} one */
		int step = arg->parts[0].names_only ? 1 : 2;

		if (arg->parts[0].kind != TPL_PAIRS)
		{
			/* argc is the position this element renders at */
			if (i > 0 && is_key_position(def, argc) &&
				arg->parts[0].kind == TPL_LITERAL)
				check_key_prefix(def, arg->parts[0].text, arg->parts[0].len,
								 arg->source);
			argc++;
			continue;
		}
		if (def->first_key > 0 &&
			(i == def->first_key ||
			 (def->last_key < 0 && def->key_step == 1 && i > def->first_key)))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("{%s:…} cannot stand where Redis command \"%s\" expects a key",
							arg->parts[0].names_only ? "columns" : "pairs",
							def->name),
					 errhint("Build keys from single columns, e.g. \"item:{id}\".")));
		for (int c = 0; c < arg->parts[0].ncols; c++)
			if (is_key_position(def, argc + step * c))
				check_key_prefix(def, arg->parts[0].colnames[c],
								 strlen(arg->parts[0].colnames[c]),
								 arg->parts[0].colnames[c]);
		argc += step * arg->parts[0].ncols;
	}
	if (argc < def->min_args)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("Redis command \"%s\" needs at least %d arguments, the rule gives %d",
						def->name, def->min_args - 1, argc - 1)));
}

/*
 * check_needs refuses a rule that reads what its op cannot supply: any
 * column for truncate, an old row for insert and snapshot, and old values
 * outside the replica identity for update and delete (checked on every
 * partition of a partitioned table).  While restoring, what depends on
 * indexes (the primary key, the replica identity) is not checked: those are
 * restored after the rules.
 */
static void
check_needs(Relation rel, Pg2rOp op, const TplNeeds *needs, bool restoring)
{
	Bitmapset *fromold = NULL;
	List	  *leaves;
	ListCell  *lc;

	if (op == PG2R_OP_TRUNCATE)
	{
		if (needs->any_column || needs->needs_pk)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("truncate rules cannot use column placeholders"),
					 errhint("A TRUNCATE has no rows: use literal keys and {%%schema%%}, {%%table%%}, {%%op%%}, {%%xid%%}, {%%lsn%%} or {%%commit_time%%}.")));
		return;
	}
	if (needs->needs_pk && !restoring)
	{
		if (!OidIsValid(pg2r_key_index(rel)))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("{%%pk%%} and {%%pk_escaped%%} need a primary key, and table \"%s\" has none",
							RelationGetRelationName(rel)),
					 errhint("Add a primary key, or name the key columns in placeholders.")));
	}
	if (op == PG2R_OP_INSERT || op == PG2R_OP_SNAPSHOT)
	{
		if (!bms_is_empty(needs->old))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s rules have no old row, but the rule reads the old value of column \"%s\"",
							pg2r_op_name(op),
							NameStr(TupleDescAttr(RelationGetDescr(rel),
												  bms_next_member(needs->old,
																  -1) -
													  1)
										->attname)),
					 errhint("Use {old:…}, {diff:…} on old values, \"old\": true and \"changed\" in update and delete rules.")));
		return;
	}

	if (restoring)
		return;
	fromold = bms_union(needs->old, needs->diff);
	if (op == PG2R_OP_DELETE)
		fromold = bms_add_members(fromold, needs->cur);
	if (needs->needs_pk && op == PG2R_OP_DELETE)
	{
		int			npk;
		AttrNumber *pk = pg2r_key_attnums(rel, &npk);

		for (int k = 0; k < npk; k++)
			fromold = bms_add_member(fromold, pk[k]);
	}
	if (bms_is_empty(fromold))
		return;

	if (rel->rd_rel->relkind != RELKIND_PARTITIONED_TABLE)
	{
		check_identity(rel, RelationGetDescr(rel), fromold,
					   op == PG2R_OP_DELETE ? "a delete rule"
											: "an update rule");
		return;
	}
	leaves = find_all_inheritors(RelationGetRelid(rel), AccessShareLock, NULL);
	foreach(lc, leaves)
	{
		Relation leaf = table_open(lfirst_oid(lc), NoLock);

		if (leaf->rd_rel->relkind == RELKIND_RELATION)
			check_identity(leaf, RelationGetDescr(rel), fromold,
						   op == PG2R_OP_DELETE ? "a delete rule"
												: "an update rule");
		table_close(leaf, NoLock);
	}
}

/*
 * rules_validate raises an ERROR unless a rule of op on rel, with the
 * stored command and condition (NULL for none), is valid for role writer:
 * the relation may be mapped and read by writer, the command is one the
 * stream can send, the template and condition compile, and the replica
 * identity logs what they read.  While restoring, the checks that depend on
 * indexes are skipped (see check_needs).
 */
void
rules_validate(Relation rel, Pg2rOp op, ArrayType *command, Jsonb *condition,
			   Oid writer, bool restoring)
{
	Datum	  *elems;
	bool	  *nulls;
	int		   n;
	Template  *tpl;
	Condition *cond = NULL;
	TplNeeds   needs = {0};
	Pg2rError  err;

	check_relation(rel, writer);

	if (ARR_NDIM(command) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("rule command must be a one-dimensional array")));
	deconstruct_array(command, TEXTOID, -1, false, TYPALIGN_INT, &elems,
					  &nulls, &n);
	for (int i = 0; i < n; i++)
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("rule command argument %d is null", i + 1),
					 errhint("Write an empty string for an empty argument.")));

	if (n == 0)
		check_command(NULL, elems, 0);
	tpl = template_compile(elems, n, RelationGetDescr(rel), &err);
	if (tpl == NULL)
		pg2r_raise(&err);
	check_command(tpl, elems, n);
	template_needs(tpl, &needs);

	if (condition != NULL)
	{
		cond = condition_compile(condition, RelationGetDescr(rel), &err);
		if (cond == NULL)
			pg2r_raise(&err);
		condition_needs(cond, &needs);
	}
	check_needs(rel, op, &needs, restoring);
}

/*
 * validate_rule_row raises an ERROR, with a context line naming the rule,
 * unless the rule in values/isnull (a row of pg2redis.rules) is valid for
 * role writer.  While restoring, the checks that depend on indexes are
 * skipped (see check_needs).
 */
static void
validate_rule_row(Datum *values, bool *isnull, Oid writer, bool restoring)
{
	ValidateContext		 vc = {0};
	ErrorContextCallback errcb;
	Pg2rOp				 op;
	Relation			 rel;

	vc.id = isnull[Anum_rules_id - 1]
				? 0
				: DatumGetInt64(values[Anum_rules_id - 1]);
	vc.op = isnull[Anum_rules_op - 1]
				? NULL
				: TextDatumGetCString(values[Anum_rules_op - 1]);
	vc.relid = isnull[Anum_rules_relation - 1]
				   ? InvalidOid
				   : DatumGetObjectId(values[Anum_rules_relation - 1]);
	errcb.callback = validate_error_context;
	errcb.arg = &vc;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;

	if (vc.op == NULL || !pg2r_op_parse(vc.op, &op))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid rule op \"%s\"", vc.op ? vc.op : ""),
				 errhint("The op is one of insert, update, delete, truncate and snapshot.")));

	/* NOT NULL constraints run after BEFORE triggers: check here too. */
	if (isnull[Anum_rules_relation - 1] || isnull[Anum_rules_command - 1])
		ereport(ERROR, (errcode(ERRCODE_NOT_NULL_VIOLATION),
						errmsg("a rule needs a relation and a command")));

	/*
	 * Rules are stored inline (STORAGE PLAIN): the decoder reads them under
	 * historic snapshots, and a TOAST table is not protected by the slot's
	 * catalog horizon.  Refuse what cannot fit in a page, with a clear error.
	 */
	if (toast_raw_datum_size(values[Anum_rules_command - 1]) +
			(isnull[Anum_rules_condition - 1]
				 ? 0
				 : toast_raw_datum_size(values[Anum_rules_condition - 1])) >
		RULE_MAX_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("rule is too large: its command and condition take more than %d bytes",
						RULE_MAX_BYTES),
				 errhint("Split it into several rules, or use shorter \"in\" lists.")));

	rel = try_relation_open(vc.relid, AccessShareLock);
	if (rel == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", vc.relid)));
	rules_validate(rel, op, DatumGetArrayTypeP(values[Anum_rules_command - 1]),
				   isnull[Anum_rules_condition - 1]
					   ? NULL
					   : DatumGetJsonbP(values[Anum_rules_condition - 1]),
				   writer, restoring);

	relation_close(rel, AccessShareLock);
	error_context_stack = errcb.previous;
}

/*
 * only_disabled tells whether an update of a rule from oldtup to newtup
 * only disables it: enabled turns false and no other column changes.  Such
 * an update needs no check (a disabled rule is never used, and enabling it
 * again is checked), so that a rule a schema change broke can be disabled.
 */
static bool
only_disabled(HeapTuple oldtup, HeapTuple newtup, TupleDesc desc)
{
	bool enabled_isnull;
	bool enabled = DatumGetBool(heap_getattr(newtup, Anum_rules_enabled, desc,
											 &enabled_isnull));

	if (enabled_isnull || enabled)
		return false;
	for (int att = 1; att <= desc->natts; att++)
	{
		Form_pg_attribute attr = TupleDescAttr(desc, att - 1);
		bool			  oldnull;
		bool			  newnull;
		Datum			  oldval = heap_getattr(oldtup, att, desc, &oldnull);
		Datum			  newval = heap_getattr(newtup, att, desc, &newnull);

		if (att == Anum_rules_enabled)
			continue;
		if (oldnull != newnull ||
			(!oldnull &&
			 !datumIsEqual(oldval, newval, attr->attbyval, attr->attlen)))
			return false;
	}
	return true;
}

/*
 * pg2redis_validate_rule is the BEFORE INSERT OR UPDATE trigger on
 * pg2redis.rules: it raises an ERROR saying which rule and why if the rule
 * is invalid, and otherwise returns the row with created_by set to the role
 * writing it.
 *
 * A restore (a pg_dump script, pg_restore) copies the rules before the
 * primary keys and replica identity indexes, which are restored post-data;
 * it is recognized, as PL validators recognize it, by check_function_bodies
 * being off, and the checks that need those indexes are then skipped
 * (pg2redis_validate_rules() runs them afterwards; the stream turns a rule
 * that still fails them into dead letters).  A restore by a superuser also
 * keeps the recorded writer: check_function_bodies is a user setting, so
 * anyone else writing a rule, restoring or not, is recorded as its writer.
 */
Datum
pg2redis_validate_rule(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	HeapTuple	 tuple;
	TupleDesc	 desc;
	Datum		 values[Natts_rules];
	bool		 isnull[Natts_rules];
	bool		 restoring = !check_function_bodies;
	Datum		 writer = ObjectIdGetDatum(GetUserId());
	bool		 writernull = false;
	int			 writeratt = Anum_rules_created_by;

	tuple = pg2r_trigger_row(fcinfo, "pg2redis_validate_rule", true, &desc);
	if (desc->natts != Natts_rules)
		elog(ERROR, "pg2redis.rules has %d columns, expected %d", desc->natts,
			 Natts_rules);
	heap_deform_tuple(tuple, desc, values, isnull);

	/* a rule a schema change broke can still be disabled */
	if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) &&
		only_disabled(trigdata->tg_trigtuple, tuple, desc))
		return PointerGetDatum(tuple);

	validate_rule_row(values, isnull, GetUserId(), restoring);

	/*
	 * Only a superuser's restore keeps the recorded writer: anyone may turn
	 * check_function_bodies off, and a writer naming a group role it
	 * belongs to would keep the rule alive after losing that membership.
	 */
	if (restoring && !isnull[Anum_rules_created_by - 1] && superuser())
		writer = values[Anum_rules_created_by - 1];
	return PointerGetDatum(heap_modify_tuple_by_cols(tuple, desc, 1,
													 &writeratt, &writer,
													 &writernull));
}

/*
 * error_is_rules tells whether an error raised while a rule was checked is
 * the rule's problem, rather than the session's: a query cancel or a
 * statement_timeout (57), a lock_timeout (55P03), a deadlock or
 * serialization failure (40), a lack of memory or disk (53), an I/O error
 * (58).  Those say nothing about the rule, and the caller controls most of
 * them: pg2redis.check_ddl disables the rules found failing, as the
 * extension's owner, after any REVOKE by anyone, so counting a lock_timeout
 * the caller set as the rule's problem let any role disable every rule.
 */
static bool
error_is_rules(const ErrorData *edata)
{
	int category = ERRCODE_TO_CATEGORY(edata->sqlerrcode);

	return edata->sqlerrcode != ERRCODE_LOCK_NOT_AVAILABLE &&
		   category != ERRCODE_OPERATOR_INTERVENTION &&
		   category != ERRCODE_TRANSACTION_ROLLBACK &&
		   category != ERRCODE_INSUFFICIENT_RESOURCES &&
		   category != ERRCODE_SYSTEM_ERROR;
}

/*
 * pg2redis_validate_rules() checks every rule of pg2redis.rules (as the
 * caller may read it) again, as its recorded writer and with nothing
 * skipped, and returns one row (id, relation, op, created_by, problem) per
 * rule that fails, with the first problem found; no row means every rule
 * passes.  It is what to run after a restore, which skips the checks that
 * need indexes, and after privilege changes.
 */
Datum
pg2redis_validate_rules(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MemoryContext  caller = CurrentMemoryContext;
	ResourceOwner  owner = CurrentResourceOwner;
	TupleDesc	   desc;
	HeapTuple	  *rows;
	uint64		   nrows;

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);

	/* Read through SPI, so that the caller's privileges on the table apply. */
	SPI_connect();
	if (SPI_execute("SELECT * FROM " PG2R_SCHEMA "." PG2R_RULES " ORDER BY id",
					true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read pg2redis.rules");
	nrows = SPI_processed;
	MemoryContextSwitchTo(caller);
	desc = CreateTupleDescCopy(SPI_tuptable->tupdesc);
	rows = palloc(sizeof(HeapTuple) * Max(nrows, 1));
	for (uint64 i = 0; i < nrows; i++)
		rows[i] = heap_copytuple(SPI_tuptable->vals[i]);
	SPI_finish();
	if (desc->natts != Natts_rules)
		elog(ERROR, "pg2redis.rules has %d columns, expected %d", desc->natts,
			 Natts_rules);

	for (uint64 i = 0; i < nrows; i++)
	{
		Datum	   values[Natts_rules];
		bool	   isnull[Natts_rules];
		ErrorData *problem = NULL;

		heap_deform_tuple(rows[i], desc, values, isnull);

		/* each rule in a subtransaction: a failed check is its problem */
		BeginInternalSubTransaction(NULL);
		MemoryContextSwitchTo(caller);
		PG_TRY();
		{
			validate_rule_row(values, isnull,
							  isnull[Anum_rules_created_by - 1]
								  ? InvalidOid
								  : DatumGetObjectId(values
														 [Anum_rules_created_by -
														  1]),
							  false);
			ReleaseCurrentSubTransaction();
			MemoryContextSwitchTo(caller);
			CurrentResourceOwner = owner;
		}
		PG_CATCH();
		{
			MemoryContextSwitchTo(caller);
			problem = CopyErrorData();
			FlushErrorState();
			RollbackAndReleaseCurrentSubTransaction();
			MemoryContextSwitchTo(caller);
			CurrentResourceOwner = owner;
			/* a cancel, a timeout, a lack of memory is not the rule's */
			if (!error_is_rules(problem))
				ReThrowError(problem);
		}
		PG_END_TRY();

		if (problem != NULL)
		{
			Datum out[5];
			bool  outnull[5] = {false, false, false, false, false};

			out[0] = values[Anum_rules_id - 1];
			out[1] = values[Anum_rules_relation - 1];
			out[2] = values[Anum_rules_op - 1];
			out[3] = values[Anum_rules_created_by - 1];
			outnull[3] = isnull[Anum_rules_created_by - 1];
			out[4] = CStringGetTextDatum(problem->message);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, out,
								 outnull);
			FreeErrorData(problem);
		}
	}
	return (Datum) 0;
}
