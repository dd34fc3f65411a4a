/*-------------------------------------------------------------------------
 *
 * rules.c
 *	  The rule catalog pg2redis.rules: a per-backend cache of compiled rules
 *	  when rules are read.  Validation when a rule is written is in
 *	  rules_validate.c; this banner describes both.
 *
 * Writing.  A BEFORE ROW trigger (pg2redis_validate_rule) compiles every
 * rule written and refuses, with an ERROR naming the rule, anything that
 * could not be sent: an unknown op, an empty, unknown or server-level
 * command, a placeholder naming a missing column, a malformed condition, a
 * relation that is not a user table the writer may read, or an update or
 * delete rule that needs old values the table's replica identity does not
 * log.  An AFTER STATEMENT trigger (pg2redis_rules_changed) sends a relcache
 * invalidation for the rules table, which every backend's cache listens to.
 *
 * Authorization.  The worker reads mapped tables with superuser rights, so a
 * rule lets its writer copy every row of the table into Redis.  The trigger
 * therefore requires SELECT on the table and refuses a table whose
 * row-level security applies to the writer, and records the writer in
 * created_by.  Because privileges change after a rule is written, the same
 * check runs again for the recorded writer whenever the rule cache is built
 * (rule_writer_check): a rule whose writer may no longer read its table, or
 * was dropped, is kept as "broken" (see below) and logged with a WARNING.
 * Superusers' rules are exempt.
 *
 * Reading.  rules_for() serves the enabled rules of one relation and op,
 * sorted by (position, id), from a hash built in one scan of the table and
 * kept in a dedicated memory context until an invalidation arrives.  The
 * scan uses the catalog snapshot: inside logical decoding that is the
 * historic snapshot of the transaction being decoded, and because the
 * rules table is a user_catalog_table, the rules read there are exactly
 * those committed before that transaction, and the invalidations the
 * rules' own changes carry arrive at their place in the stream.  That is
 * what makes rule changes take effect in stream order.
 *
 * A rule that no longer compiles when the cache is built (a column dropped
 * or renamed since) is kept as "broken" with the reason: expanding it
 * yields a render error, which the stream records as a dead letter.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_inherits.h"
#include "commands/trigger.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "pg2redis/commands.h"
#include "pg2redis/relutil.h"
#include "pg2redis/rules.h"
#include "pg2redis/state.h"

#include "rules_int.h"

/* The rules of one relation, per op. */
typedef struct RuleRel
{
	Oid	  relid; /* hash key */
	List *byop[PG2R_NUM_OPS];
} RuleRel;

static MemoryContext RulesCxt = NULL;
static HTAB			*RuleRels = NULL;
static List			*DisabledRels = NIL; /* relations with a disabled rule */
static bool			 rules_valid = false;
static uint64		 rules_gen = 0;
static Oid			 rules_table = InvalidOid;
static bool			 callback_registered = false;

PG_FUNCTION_INFO_V1(pg2redis_rules_changed);

/*
 * rules_invalidate is the relcache callback: the rule cache goes stale when
 * the rules table changes or when a relation that has rules changes (a
 * column dropped or renamed makes its rules recompile).
 */
static void
rules_invalidate(Datum arg, Oid relid)
{
	if (!rules_valid)
		return;
	/* without a rules table (no extension yet), any DDL may create it */
	if (relid == InvalidOid || relid == rules_table ||
		!OidIsValid(rules_table) ||
		(RuleRels && hash_search(RuleRels, &relid, HASH_FIND, NULL)))
		rules_valid = false;
}

/*
 * rules_role_changed is the syscache callback for roles and role
 * memberships: a writer's privileges may have changed, so the rules are
 * checked again on next use.
 */
static void
rules_role_changed(Datum arg, int cacheid, uint32 hashvalue)
{
	rules_valid = false;
}

/* rule_cmp orders rules by (position, id). */
static int
rule_cmp(const ListCell *a, const ListCell *b)
{
	const Rule *ra = lfirst(a);
	const Rule *rb = lfirst(b);

	if (ra->position != rb->position)
		return ra->position < rb->position ? -1 : 1;
	return ra->id < rb->id ? -1 : (ra->id > rb->id ? 1 : 0);
}

/*
 * rules_lookup_table returns the OID of pg2redis.rules as the catalog
 * snapshot sees it, or InvalidOid when the extension is not there.
 */
static Oid
rules_lookup_table(void)
{
	Oid nsp = get_namespace_oid(PG2R_SCHEMA, true);

	if (!OidIsValid(nsp))
		return InvalidOid;
	return get_relname_relid(PG2R_RULES, nsp);
}

/*
 * rules_writer_access tells whether every row of relation relid may be read on
 * behalf of role roleid: the role exists and is a superuser, or it may
 * SELECT from the relation and its row-level security does not apply to the
 * role (BYPASSRLS, or the owner of a table that does not force it).
 */
WriterAccess
rules_writer_access(Oid relid, Oid roleid)
{
	if (!SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum(roleid)))
		return WRITER_DROPPED;
	if (superuser_arg(roleid))
		return WRITER_MAY_READ;
	if (pg_class_aclcheck(relid, roleid, ACL_SELECT) != ACLCHECK_OK)
		return WRITER_NO_SELECT;
	if (check_enable_rls(relid, roleid, true) == RLS_ENABLED)
		return WRITER_RLS;
	return WRITER_MAY_READ;
}

/*
 * rule_writer_check marks rule broken, and says so in a WARNING naming the
 * rule, its table and its writer, when role writer may no longer read the
 * rule's relation; every change the rule would handle then becomes a render
 * error (a dead letter in the stream) instead of a command.
 *
 * The check reads privileges through the catalog snapshot in effect when
 * the cache is built.  Inside decoding that is the historic snapshot of the
 * transaction being decoded, under which the rules themselves are read (the
 * rules table is a user_catalog_table): a REVOKE, like a rule change, takes
 * effect in stream order, at the commit that carries its invalidation.
 * Role changes (pg_authid, pg_auth_members) are shared catalogs whose
 * invalidations may come from other databases; they are acted upon when
 * they arrive, against the catalogs the cache build sees then.  Either is
 * what PostgreSQL's own privilege checks would see at that point.
 */
static void
rule_writer_check(Rule *rule, Oid writer)
{
	WriterAccess access = rules_writer_access(rule->relid, writer);
	char		*relname;
	char		*rolname;
	char		*reason;

	if (access == WRITER_MAY_READ)
		return;
	relname = get_rel_name(rule->relid);
	rolname = GetUserNameFromId(writer, true);
	switch (access)
	{
		case WRITER_DROPPED:
			reason = pstrdup("the role that wrote it no longer exists");
			break;
		case WRITER_NO_SELECT:
			reason =
				psprintf("role \"%s\" that wrote it may no longer SELECT from the table",
						 rolname);
			break;
		default:
			reason =
				psprintf("row-level security of the table applies to role \"%s\" that wrote it",
						 rolname);
			break;
	}
	rule->broken = palloc(sizeof(Pg2rError));
	pg2r_fail(rule->broken, ERRCODE_INSUFFICIENT_PRIVILEGE,
			  access == WRITER_DROPPED
				  ? "Have a role that may read the table write the rule again, or delete the rule."
				  : "Give the role that wrote the rule SELECT on the table (and a way past its row-level security) again, or have a role that may read the table write the rule again.",
			  "pg2redis rule " INT64_FORMAT
			  " on table \"%s\" no longer applies: %s",
			  rule->id, relname ? relname : "?", reason);

	/*
	 * The worker warns in the server log; a backend that merely loads the
	 * rules (a monitoring role's pg2redis_verify(), a preview) must not show
	 * other roles' rules and writers to its client: there it goes to the
	 * server log only (preview raises the error itself).
	 */
	ereport(pg2r_in_worker ? WARNING : LOG_SERVER_ONLY,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg_internal("%s", rule->broken->message),
			 access == WRITER_DROPPED
				 ? errdetail("The role had OID %u. Each change the rule would handle is recorded in pg2redis.dead_letters instead.",
							 writer)
				 : errdetail("Each change the rule would handle is recorded in pg2redis.dead_letters instead."),
			 errhint("%s", rule->broken->hint)));
}

/*
 * compile_rule fills rule->tpl and rule->cond from the stored command and
 * condition, compiled against the rule's relation; on failure the rule is
 * marked broken with the reason.
 */
static void
compile_rule(Rule *rule, ArrayType *command, Jsonb *condition)
{
	Relation  rel;
	Datum	 *elems;
	bool	 *nulls;
	int		  n;
	Pg2rError err;

	deconstruct_array(command, TEXTOID, -1, false, TYPALIGN_INT, &elems,
					  &nulls, &n);
	rule->ncommand = n;
	rule->command = palloc(sizeof(char *) * Max(n, 1));
	for (int i = 0; i < n; i++)
		rule->command[i] =
			nulls[i] ? pstrdup("") : TextDatumGetCString(elems[i]);

	rule->def = n > 0 ? redis_command_lookup(rule->command[0]) : NULL;
	rel = RelationIdGetRelation(rule->relid);
	if (!RelationIsValid(rel))
	{
		rule->broken = palloc(sizeof(Pg2rError));
		pg2r_fail(rule->broken, ERRCODE_UNDEFINED_TABLE, NULL,
				  "relation with OID %u of rule " INT64_FORMAT
				  " does not exist",
				  rule->relid, rule->id);
		return;
	}
	rule->tpl = template_compile(elems, n, RelationGetDescr(rel), &err);
	if (rule->tpl && condition)
		rule->cond = condition_compile(condition, RelationGetDescr(rel), &err);
	if (rule->tpl == NULL || (condition && rule->cond == NULL))
	{
		rule->broken = palloc(sizeof(Pg2rError));
		*rule->broken = err;
		rule->tpl = NULL;
	}
	RelationClose(rel);
}

/*
 * rules_table_dropped tells, inside decoding, whether the rules table the
 * historic catalogs show (relid) has been dropped since, by a DROP
 * EXTENSION committed after the transaction being decoded.  The relcache
 * finds the storage of a table read during decoding by its current
 * pg_class row, so opening it would fail with "could not find pg_class
 * entry" on every restart: the current catalogs are asked first.
 */
static bool
rules_table_dropped(Oid relid)
{
	Relation	pgclass;
	ScanKeyData key;
	SysScanDesc scan;
	bool		exists;

	pgclass = table_open(RelationRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_class_oid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(relid));
	scan =
		systable_beginscan(pgclass, ClassOidIndexId, true,
						   GetNonHistoricCatalogSnapshot(RelationRelationId),
						   1, &key);
	exists = HeapTupleIsValid(systable_getnext(scan));
	systable_endscan(scan);
	table_close(pgclass, AccessShareLock);
	return !exists;
}

/*
 * rules_add compiles the rule in tuple (a row of pg2redis.rules, of
 * descriptor desc) into the cache, in RulesCxt; a disabled rule only marks
 * its relation as having one.
 */
static void
rules_add(HeapTuple tuple, TupleDesc desc)
{
	Datum	 values[Natts_rules];
	bool	 isnull[Natts_rules];
	Rule	*rule;
	RuleRel *entry;
	bool	 found;
	Pg2rOp	 op;

	heap_deform_tuple(tuple, desc, values, isnull);
	if (!DatumGetBool(values[Anum_rules_enabled - 1]))
	{
		Oid relid = DatumGetObjectId(values[Anum_rules_relation - 1]);

		DisabledRels = list_append_unique_oid(DisabledRels, relid);
		return;
	}
	if (!pg2r_op_parse(TextDatumGetCString(values[Anum_rules_op - 1]), &op))
		return;

	rule = palloc0(sizeof(Rule));
	rule->id = DatumGetInt64(values[Anum_rules_id - 1]);
	rule->relid = DatumGetObjectId(values[Anum_rules_relation - 1]);
	rule->op = op;
	rule->position = DatumGetInt32(values[Anum_rules_position - 1]);
	compile_rule(rule, DatumGetArrayTypeP(values[Anum_rules_command - 1]),
				 isnull[Anum_rules_condition - 1]
					 ? NULL
					 : DatumGetJsonbP(values[Anum_rules_condition - 1]));
	if (rule->broken == NULL)
		rule_writer_check(rule,
						  DatumGetObjectId(values[Anum_rules_created_by - 1]));

	entry = hash_search(RuleRels, &rule->relid, HASH_ENTER, &found);
	if (!found)
		memset(entry->byop, 0, sizeof(entry->byop));
	entry->byop[op] = lappend(entry->byop[op], rule);
}

/* rules_sort puts each relation's rules of each op in their order. */
static void
rules_sort(void)
{
	HASH_SEQ_STATUS seq;
	RuleRel		   *entry;

	hash_seq_init(&seq, RuleRels);
	while ((entry = hash_seq_search(&seq)) != NULL)
		for (int op = 0; op < PG2R_NUM_OPS; op++)
			list_sort(entry->byop[op], rule_cmp);
}

/*
 * rules_load reads every enabled rule into a fresh cache.  The cache is
 * marked valid before the scan, so that an invalidation arriving during the
 * scan makes the next caller load again.
 */
static void
rules_load(void)
{
	HASHCTL		  ctl;
	Relation	  rel;
	SysScanDesc	  scan;
	HeapTuple	  tuple;
	MemoryContext old;

	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(rules_invalidate, (Datum) 0);
		CacheRegisterSyscacheCallback(AUTHOID, rules_role_changed, (Datum) 0);
		CacheRegisterSyscacheCallback(AUTHMEMROLEMEM, rules_role_changed,
									  (Datum) 0);
		callback_registered = true;
	}
	if (RulesCxt == NULL)
		RulesCxt = AllocSetContextCreate(TopMemoryContext, "pg2redis rules",
										 ALLOCSET_DEFAULT_SIZES);
	else
		MemoryContextReset(RulesCxt);

	RuleRels = NULL;
	DisabledRels = NIL;
	rules_valid = true;
	rules_gen++;

	old = MemoryContextSwitchTo(RulesCxt);
	ctl.keysize = sizeof(Oid);
	ctl.entrysize = sizeof(RuleRel);
	ctl.hcxt = RulesCxt;
	RuleRels = hash_create("pg2redis rules by relation", 64, &ctl,
						   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);

	rules_table = rules_lookup_table();
	if (!OidIsValid(rules_table))
	{
		MemoryContextSwitchTo(old);
		return;
	}
	if (HistoricSnapshotActive() && rules_table_dropped(rules_table))
	{
		/* TRUNCATE is refused and DROP EXTENSION waits: this one got through */
		ereport(WARNING,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table pg2redis.rules was dropped before the stream applied changes committed before that"),
				 errdetail("Those changes are not sent to Redis."),
				 errhint("Check Redis with pg2redis_verify(), or run pg2redis_resync() to load every mapped table again.")));
		MemoryContextSwitchTo(old);
		return;
	}

	/*
	 * Inside decoding, NULL means the historic snapshot of the transaction
	 * being decoded; elsewhere, read with the active snapshot (that of the
	 * statement, or of the worker's initial load), not a newer one.
	 */
	rel = table_open(rules_table, AccessShareLock);
	scan = systable_beginscan(rel, InvalidOid, false,
							  !HistoricSnapshotActive() && ActiveSnapshotSet()
								  ? GetActiveSnapshot()
								  : NULL,
							  0, NULL);
	while (HeapTupleIsValid(tuple = systable_getnext(scan)))
		rules_add(tuple, RelationGetDescr(rel));
	systable_endscan(scan);
	table_close(rel, AccessShareLock);

	rules_sort();
	MemoryContextSwitchTo(old);
}

/* rules_ensure loads the cache if it is stale. */
static void
rules_ensure(void)
{
	if (!rules_valid)
		rules_load();
}

/*
 * rules_for returns the enabled rules of relation relid for op, in order.
 * The list belongs to the cache: valid until the next invalidation is
 * processed.
 */
List *
rules_for(Oid relid, Pg2rOp op)
{
	RuleRel *entry;

	rules_ensure();
	entry = hash_search(RuleRels, &relid, HASH_FIND, NULL);
	return entry ? entry->byop[op] : NIL;
}

/* rules_exist_for tells whether relation relid has any enabled rule. */
bool
rules_exist_for(Oid relid)
{
	rules_ensure();
	return hash_search(RuleRels, &relid, HASH_FIND, NULL) != NULL;
}

/*
 * rules_generation returns a number that changes whenever the cache is
 * rebuilt, after making sure it is current; structures that point into the
 * cache remember it to know when to rebuild themselves.
 */
uint64
rules_generation(void)
{
	rules_ensure();
	return rules_gen;
}

/*
 * rules_have_disabled tells whether relation relid has a disabled rule,
 * whose keys no enabled rule accounts for (the sweep leaves such a
 * relation's keys alone).
 */
bool
rules_have_disabled(Oid relid)
{
	rules_ensure();
	return list_member_oid(DisabledRels, relid);
}

/* rules_relations returns the OIDs of all relations with enabled rules. */
List *
rules_relations(void)
{
	HASH_SEQ_STATUS seq;
	RuleRel		   *entry;
	List		   *result = NIL;

	rules_ensure();
	hash_seq_init(&seq, RuleRels);
	while ((entry = hash_seq_search(&seq)) != NULL)
		result = lappend_oid(result, entry->relid);
	return result;
}

/*
 * rules_mapped_leaves returns the OIDs, in order, of the tables whose
 * rows a snapshot of relid reads (InvalidOid: of every mapped table): the
 * table itself, or every leaf partition of a partitioned one, once each.
 */
List *
rules_mapped_leaves(Oid relid)
{
	List *result = NIL;
	List *roots =
		OidIsValid(relid) ? list_make1_oid(relid) : rules_relations();
	ListCell *lc;

	foreach(lc, roots)
	{
		ListCell *lc2;

		/* no lock: the initial load locks each leaf only while reading it */
		foreach(lc2, find_all_inheritors(lfirst_oid(lc), NoLock, NULL))
		{
			Oid child = lfirst_oid(lc2);

			if (get_rel_relkind(child) == RELKIND_RELATION)
				result = list_append_unique_oid(result, child);
		}
	}
	list_sort(result, list_oid_cmp);
	return result;
}

/*
 * pg2redis_rules_changed is the AFTER STATEMENT trigger on pg2redis.rules:
 * it makes every backend's rule cache, and the decoder's at this point of
 * the stream, reload the rules.
 */
Datum
pg2redis_rules_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "pg2redis_rules_changed must be called as a trigger");
	CacheInvalidateRelcache(trigdata->tg_relation);
	return PointerGetDatum(NULL);
}
