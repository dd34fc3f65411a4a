/*-------------------------------------------------------------------------
 *
 * relutil.c
 *	  Relation utilities shared by the stages: replica identity columns,
 *	  the key index of a table, a whole-row value read through SPI.
 *
 * Owns pg2r_identity_columns, pg2r_key_index, pg2r_key_attnums,
 * pg2r_spi_whole_row and pg2r_trigger_row.  Depends on nothing of pg2redis but its headers'
 * types; callers hold the locks (or, in decoding, the historic snapshot)
 * that make the relation's catalog entries stable.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/sysattr.h"
#include "catalog/pg_class.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/relcache.h"

#include "pg2redis/relutil.h"

/*
 * identity_columns returns the columns, by attnum of rel, whose old values
 * PostgreSQL logs for an update or delete of rel; *full is set for REPLICA
 * IDENTITY FULL, where that is every column.
 */
Bitmapset *
pg2r_identity_columns(Relation rel, bool *full)
{
	Bitmapset *keys;
	Bitmapset *result = NULL;
	int		   i = -1;

	*full = rel->rd_rel->relreplident == REPLICA_IDENTITY_FULL;
	if (*full)
	{
		for (int a = 0; a < RelationGetDescr(rel)->natts; a++)
			if (!TupleDescAttr(RelationGetDescr(rel), a)->attisdropped)
				result = bms_add_member(result, a + 1);
		return result;
	}
	if (rel->rd_rel->relreplident == REPLICA_IDENTITY_NOTHING)
		return NULL;
	keys = RelationGetIndexAttrBitmap(rel, INDEX_ATTR_BITMAP_IDENTITY_KEY);
	while ((i = bms_next_member(keys, i)) >= 0)
		result =
			bms_add_member(result, i + FirstLowInvalidHeapAttributeNumber);
	return result;
}

/*
 * pg2r_key_index returns the index that names a row of rel for {%pk%}: its
 * primary key, else its replica identity index; InvalidOid if it has
 * neither.
 */
Oid
pg2r_key_index(Relation rel)
{
	Oid keyidx = RelationGetPrimaryKeyIndex(rel);

	if (!OidIsValid(keyidx))
		keyidx = RelationGetReplicaIndex(rel);
	return keyidx;
}

/*
 * pg2r_key_attnums returns the key columns (attnums of rel) of
 * pg2r_key_index(rel), palloc'd in the current memory context, and sets *n
 * to their number; NULL with *n = 0 if rel has no such index.
 */
AttrNumber *
pg2r_key_attnums(Relation rel, int *n)
{
	Oid			keyidx = pg2r_key_index(rel);
	AttrNumber *result = NULL;

	*n = 0;
	if (OidIsValid(keyidx))
	{
		Relation idx = RelationIdGetRelation(keyidx);

		if (RelationIsValid(idx))
		{
			*n = idx->rd_index->indnkeyatts;
			result = palloc(sizeof(AttrNumber) * *n);
			for (int k = 0; k < *n; k++)
				result[k] = idx->rd_index->indkey.values[k];
			RelationClose(idx);
		}
	}
	return result;
}

/*
 * pg2r_spi_whole_row points *tuple at row i of the current SPI result, whose
 * first column is a whole-row value of relation relid ("SELECT t FROM rel
 * t"): a tuple in the relation's own format, dropped columns included.  A
 * null in that column, or a value of another type (which such a query
 * never gives), is an ERROR that names the snapshot filter: the snapshots
 * read rows through their filter; preview's jsonb_populate_record() query
 * cannot give either.
 */
void
pg2r_spi_whole_row(uint64 i, Oid relid, HeapTupleData *tuple)
{
	bool  isnull;
	Datum row = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1,
							  &isnull);
	HeapTupleHeader hdr;

	if (isnull || SPI_tuptable->tupdesc->natts < 1 ||
		TupleDescAttr(SPI_tuptable->tupdesc, 0)->atttypid !=
			get_rel_type_id(relid))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("a snapshot query of table \"%s\" returned a row that is not one of the table's",
						get_rel_name(relid)),
				 errhint("Check the table's snapshot filter in pg2redis.snapshot_filters.")));
	hdr = DatumGetHeapTupleHeader(row);
	tuple->t_len = HeapTupleHeaderGetDatumLength(hdr);
	ItemPointerSetInvalid(&tuple->t_self);
	tuple->t_tableOid = relid;
	tuple->t_data = hdr;
}

/*
 * pg2r_trigger_row checks that the function behind fcinfo, name, is called
 * as a row trigger (and, with before, a BEFORE trigger), and returns the
 * row it is fired for (the new row of an update), its descriptor in *desc.
 */
HeapTuple
pg2r_trigger_row(FunctionCallInfo fcinfo, const char *name, bool before,
				 TupleDesc *desc)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (before)
	{
		if (!CALLED_AS_TRIGGER(fcinfo) ||
			!TRIGGER_FIRED_BEFORE(trigdata->tg_event) ||
			!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
			elog(ERROR, "%s must be a BEFORE ROW trigger", name);
	}
	else if (!CALLED_AS_TRIGGER(fcinfo) ||
			 !TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
		elog(ERROR, "%s must be a row trigger", name);

	*desc = RelationGetDescr(trigdata->tg_relation);
	return TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event)
			   ? trigdata->tg_newtuple
			   : trigdata->tg_trigtuple;
}

/*
 * pg2r_row_key_index returns the index a row's key is taken from (and a
 * table is read by, in key order): its replica identity
 * index, else its primary key, else InvalidOid.  The identity index comes
 * first because a decoded delete carries only its columns.
 */
Oid
pg2r_row_key_index(Relation rel)
{
	Oid idxoid = RelationGetReplicaIndex(rel);

	return OidIsValid(idxoid) ? idxoid : RelationGetPrimaryKeyIndex(rel);
}
