/*-------------------------------------------------------------------------
 *
 * keyorder.c
 *	  Reading a table in the order of its key.
 *
 * Snapshots on demand (ondemand.c) and the initial load (snapshot.c) read a
 * table in chunks, in key order, so that a reader can stop after any chunk
 * and resume after the last key it sent: nothing is read twice, whatever
 * happened to the table's storage in between (VACUUM FULL and CLUSTER move
 * every row; a key does not move).
 *
 * The key is the one whose old values PostgreSQL logs: the replica identity
 * index (the primary key under REPLICA IDENTITY DEFAULT, the chosen index
 * under USING INDEX), else the primary key.  A decoded delete carries only
 * the identity's columns, which is what the snapshots on demand match
 * changes by.
 *
 * Keys never go through text while a reader runs: they are Datums of the
 * key columns' base types, passed to the chunk's query as typed parameters
 * and compared with the operators of the key index's btree opfamilies,
 * named by schema (see keyorder_query).  A cast from text to the key type
 * would run a domain's CHECK or a user's cast as the superuser the worker
 * is.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "catalog/pg_am.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_operator.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "pg2redis/keyorder.h"
#include "pg2redis/owner.h"
#include "pg2redis/relutil.h"
#include "pg2redis/snapshot_filters.h"

/*
 * key_operator returns the operator of btree opfamily for strategy on
 * opcintype, written for SQL by its schema and name: OPERATOR(s.op).
 */
static char *
key_operator(Oid opfamily, Oid opcintype, int16 strategy)
{
	Oid opno = get_opfamily_member(opfamily, opcintype, opcintype, strategy);
	HeapTuple		 tup;
	Form_pg_operator op;
	char			*result;

	if (!OidIsValid(opno))
		elog(ERROR, "missing operator %d(%u,%u) in opfamily %u", strategy,
			 opcintype, opcintype, opfamily);
	tup = SearchSysCache1(OPEROID, ObjectIdGetDatum(opno));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for operator %u", opno);
	op = (Form_pg_operator) GETSTRUCT(tup);
	result = psprintf("OPERATOR(%s.%s)",
					  quote_identifier(get_namespace_name(op->oprnamespace)),
					  NameStr(op->oprname));
	ReleaseSysCache(tup);
	return result;
}

/*
 * key_collate returns the COLLATE clause of collation collid for SQL,
 * " COLLATE schema.name", or "" when collid is InvalidOid.
 */
static char *
key_collate(Oid collid)
{
	HeapTuple		  tup;
	Form_pg_collation coll;
	char			 *result;

	if (!OidIsValid(collid))
		return "";
	tup = SearchSysCache1(COLLOID, ObjectIdGetDatum(collid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for collation %u", collid);
	coll = (Form_pg_collation) GETSTRUCT(tup);
	result =
		psprintf(" COLLATE %s",
				 quote_qualified_identifier(get_namespace_name(coll->collnamespace),
											NameStr(coll->collname)));
	ReleaseSysCache(tup);
	return result;
}

/*
 * keyorder_setup fills *ko, allocated in cxt, with the key of rel
 * (pg2r_row_key_index): its columns' types, and the operators of the index's
 * opfamilies; false if rel has no such index.
 */
bool
keyorder_setup(Relation rel, MemoryContext cxt, KeyOrder *ko)
{
	Oid			  idxoid = pg2r_row_key_index(rel);
	Relation	  idx;
	int			  n;
	MemoryContext old;

	if (!OidIsValid(idxoid))
		return false;
	idx = index_open(idxoid, AccessShareLock);
	if (idx->rd_rel->relam != BTREE_AM_OID)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("the key index of table \"%s\" is not a btree index",
						RelationGetRelationName(rel)),
				 errhint("pg2redis reads tables by a primary key or a btree replica identity index.")));
	old = MemoryContextSwitchTo(cxt);
	ko->index = idxoid;
	n = ko->nkeys = idx->rd_index->indnkeyatts;
	ko->atts = palloc(sizeof(AttrNumber) * n);
	ko->types = palloc(sizeof(Oid) * n);
	ko->byval = palloc(sizeof(bool) * n);
	ko->len = palloc(sizeof(int16) * n);
	ko->out = palloc(sizeof(FmgrInfo) * n);
	ko->cols = palloc(sizeof(char *) * n);
	ko->collate = palloc(sizeof(char *) * n);
	ko->eqop = palloc(sizeof(char *) * n);
	ko->gtop = palloc(sizeof(char *) * n);
	ko->ltop = palloc(sizeof(char *) * n);
	for (int k = 0; k < n; k++)
	{
		AttrNumber		  attnum = idx->rd_index->indkey.values[k];
		Form_pg_attribute att;
		Oid				  outfunc;
		bool			  varlena;

		if (attnum <= 0)
			elog(ERROR, "key index of \"%s\" has an expression",
				 RelationGetRelationName(rel));
		att = TupleDescAttr(RelationGetDescr(rel), attnum - 1);
		ko->atts[k] = attnum;
		/* a domain's values are its base type's: no CHECK runs on them */
		ko->types[k] = getBaseType(att->atttypid);
		ko->byval[k] = att->attbyval;
		ko->len[k] = att->attlen;
		getTypeOutputInfo(ko->types[k], &outfunc, &varlena);
		fmgr_info_cxt(outfunc, &ko->out[k], cxt);
		ko->cols[k] = pstrdup(quote_identifier(NameStr(att->attname)));
		/* the index's order and equality, not the column's collation's */
		ko->collate[k] = key_collate(idx->rd_indcollation[k]);
		ko->eqop[k] = key_operator(idx->rd_opfamily[k], idx->rd_opcintype[k],
								   BTEqualStrategyNumber);
		ko->gtop[k] = key_operator(idx->rd_opfamily[k], idx->rd_opcintype[k],
								   BTGreaterStrategyNumber);
		ko->ltop[k] = key_operator(idx->rd_opfamily[k], idx->rd_opcintype[k],
								   BTLessStrategyNumber);
	}
	MemoryContextSwitchTo(old);
	index_close(idx, AccessShareLock);
	return true;
}

/*
 * keyorder_still tells whether rel can still be read by the key ko was set
 * up with, whatever its key index is now: each key column still exists with
 * the same base type, so that the keys read so far still compare with its
 * values in the same order (ko's operators and collations do not depend on
 * the index).  Rows that were unique by that key under a snapshot stay so
 * under it, whatever DDL came since.  The columns' names are taken again
 * (into cxt): a column may have been renamed.
 */
bool
keyorder_still(KeyOrder *ko, Relation rel, MemoryContext cxt)
{
	TupleDesc desc = RelationGetDescr(rel);

	for (int k = 0; k < ko->nkeys; k++)
	{
		Form_pg_attribute att;

		if (ko->atts[k] > desc->natts)
			return false;
		att = TupleDescAttr(desc, ko->atts[k] - 1);
		if (att->attisdropped || getBaseType(att->atttypid) != ko->types[k])
			return false;
	}
	for (int k = 0; k < ko->nkeys; k++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, ko->atts[k] - 1);
		const char		 *name = quote_identifier(NameStr(att->attname));

		if (strcmp(name, ko->cols[k]) != 0)
			ko->cols[k] = MemoryContextStrdup(cxt, name);
	}
	return true;
}

/*
 * keyorder_query returns the SQL that selects rows of rel (relname, quoted
 * and qualified) as whole-row values, or their TIDs when tids is set (the
 * caller fetches the tuples itself): the first limit rows in key order
 * (KEYQ_FIRST), the next limit rows after the key $1..$n (KEYQ_AFTER), or
 * the one row whose key is $1..$n (KEYQ_EQUAL); only rows a snapshot filter
 * keeps, when filter is given (checked: snapshot_check_filter).
 *
 * The parameters are Datums of the key columns' base types: no key is cast
 * from text, and no domain coercion happens.  They are compared with the
 * operators of the key index's btree opfamilies, written OPERATOR(schema.
 * name), so the order is the index's and the search_path plays no part.
 * Resolving such a name for the column's type (a domain, an enum, a binary-
 * coercible type) considers the operators of that one schema, normally
 * pg_catalog, where only superusers create anything; and the callers run
 * the query as the table's owner, so even an operator added there could
 * only run with the owner's rights.  An index scan with ScanKeys would need
 * no SQL, but a filter is SQL, and the query gives visibility, ordering and
 * the row format for free.
 *
 * Without a filter the query runs no one's code: the comparisons are the
 * btree support functions of the key index's operator classes, which only
 * a superuser can create, on parameters of base types (no domain check, no
 * input function), and no expression, trigger or default is evaluated.  So
 * the callers run it as the worker, not as the owner, and no row-level
 * security policy applies, as none does to the heap scans of PostgreSQL's
 * own maintenance commands; a filter makes them run it as the owner.
 */
char *
keyorder_query(const KeyOrder *ko, Relation rel, const char *relname,
			   KeyQuery kind, const char *filter, int limit, bool tids)
{
	StringInfoData sql;

	initStringInfo(&sql);
	appendStringInfo(&sql, "SELECT %s FROM ONLY %s t WHERE true",
					 tids ? "t.ctid" : "t", relname);
	if (kind == KEYQ_EQUAL)
	{
		for (int k = 0; k < ko->nkeys; k++)
			appendStringInfo(&sql, " AND t.%s%s %s $%d", ko->cols[k],
							 ko->collate[k], ko->eqop[k], k + 1);
	}
	else if (kind == KEYQ_AFTER && ko->nkeys == 1)
		appendStringInfo(&sql, " AND t.%s%s %s $1", ko->cols[0],
						 ko->collate[0], ko->gtop[0]);
	else if (kind == KEYQ_AFTER)
	{
		/* a row comparison takes one operator name for every column */
		for (int k = 1; k < ko->nkeys; k++)
			if (strcmp(ko->gtop[k], ko->gtop[0]) != 0)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("the key columns of table \"%s\" are ordered by operators of different names",
								RelationGetRelationName(rel)),
						 errhint("Give the table a primary key, whose columns use their types' default operator classes.")));
		appendStringInfoString(&sql, " AND ROW(");
		for (int k = 0; k < ko->nkeys; k++)
			appendStringInfo(&sql, "%st.%s%s", k ? ", " : "", ko->cols[k],
							 ko->collate[k]);
		appendStringInfo(&sql, ") %s ROW(", ko->gtop[0]);
		for (int k = 0; k < ko->nkeys; k++)
			appendStringInfo(&sql, "%s$%d", k ? ", " : "", k + 1);
		appendStringInfoChar(&sql, ')');
	}
	if (filter)
		appendStringInfo(&sql, " AND %s", snapshot_filter_clause(filter));
	if (kind != KEYQ_EQUAL)
	{
		appendStringInfoString(&sql, " ORDER BY ");
		for (int k = 0; k < ko->nkeys; k++)
			appendStringInfo(&sql, "%st.%s%s USING %s", k ? ", " : "",
							 ko->cols[k], ko->collate[k], ko->ltop[k]);
		appendStringInfo(&sql, " LIMIT %d", limit);
	}
	return sql.data;
}

/*
 * keyorder_row_key returns the key of a tuple of the table: one value per
 * key column, copied into the current memory context if copy is set, or
 * NULL if a key column is null.  *unreadable tells that a value is a TOAST
 * pointer a decoded tuple cannot follow: the row's key is then unknown.
 */
Datum *
keyorder_row_key(const KeyOrder *ko, TupleDesc desc, HeapTuple tuple,
				 bool copy, bool *unreadable)
{
	Datum *key = palloc(sizeof(Datum) * ko->nkeys);

	*unreadable = false;
	for (int k = 0; k < ko->nkeys; k++)
	{
		bool  isnull;
		Datum v = heap_getattr(tuple, ko->atts[k], desc, &isnull);

		if (isnull)
			return NULL;
		if (ko->len[k] == -1 && VARATT_IS_EXTERNAL_ONDISK(DatumGetPointer(v)))
		{
			*unreadable = true;
			return NULL;
		}
		key[k] = copy ? datumCopy(v, ko->byval[k], ko->len[k]) : v;
	}
	return key;
}

/* keyorder_copy_key copies a key into the current memory context. */
Datum *
keyorder_copy_key(const KeyOrder *ko, const Datum *key)
{
	Datum *copy = palloc(sizeof(Datum) * ko->nkeys);

	for (int k = 0; k < ko->nkeys; k++)
		copy[k] = datumCopy(key[k], ko->byval[k], ko->len[k]);
	return copy;
}

/* keyorder_free_key frees a key keyorder_copy_key made. */
void
keyorder_free_key(const KeyOrder *ko, Datum *key)
{
	for (int k = 0; k < ko->nkeys; k++)
		if (!ko->byval[k])
			pfree(DatumGetPointer(key[k]));
	pfree(key);
}

/*
 * keyorder_key_text returns a key as a List of its columns' texts, in the
 * current memory context, for pg2redis.snapshots.  The key types' output
 * functions are those of base types; a user's type runs the code a
 * superuser installed for it.  The text parses back to the same key
 * (ondemand.c, read_key) because the worker pins the settings that shape
 * output (DateStyle, TimeZone, IntervalStyle, extra_float_digits: see
 * worker.c) whatever postgresql.conf says (t/189).
 */
List *
keyorder_key_text(const KeyOrder *ko, const Datum *key)
{
	List *result = NIL;

	for (int k = 0; k < ko->nkeys; k++)
		result = lappend(result, OutputFunctionCall(&ko->out[k], key[k]));
	return result;
}
