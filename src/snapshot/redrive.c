/*-------------------------------------------------------------------------
 *
 * redrive.c
 *	  Dead letters that can be acted on: the key of each dead letter's row,
 *	  and pg2redis_redrive(), which reads those rows again.
 *
 * A dead letter whose row is known records the row's key: the columns of
 * the table's replica identity index, else of its primary key (the key a
 * snapshot on demand reads the table by, pg2r_row_key_index()), as text in the
 * index's column order, with the index's OID.  The decoder hands the key of
 * each change to the sender before its commands (redrive_note_row); each
 * command keeps a reference to it, so that a command Redis refuses later
 * still names its row.  A table without such an index, a key column that is
 * null or a TOAST pointer a decoded tuple cannot follow, and failures of a
 * whole table (the initial load's) record no key.
 *
 * pg2redis_redrive() does not replay the dead letter's command, which was
 * rendered from the row as it was, by the rules of then: it queues a
 * keys-only snapshot request (pg2redis.snapshots.keys_only) per table and
 * key index (per pg2redis.snapshot_batch_size keys), which the worker serves like any snapshot on demand, between
 * watermarks, so that the row is written as it is now, by the current
 * snapshot rules (else insert rules), at a point of the stream where no
 * later change of it was applied already.  A row deleted since is not
 * found and nothing is written for it: the stream applied its delete rules
 * when it was deleted.  The dead letters are marked redriven (when, and by
 * which request), and are not redriven again by accident.
 *
 * The caller needs SELECT on the tables, as for pg2redis_snapshot(); the
 * request's trigger checks it again.  The keys stay text until the worker
 * turns them into values with the key types' input functions as the
 * table's owner (ondemand.c's read_key): whoever can write a dead letter or
 * a request chooses that text.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/partition.h"
#include "catalog/pg_class.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "pg2redis/keyorder.h"
#include "pg2redis/pgarray.h"
#include "pg2redis/redrive.h"
#include "pg2redis/relutil.h"
#include "pg2redis/render.h"
#include "pg2redis/sender.h"
#include "pg2redis/settings.h"
#include "pg2redis/state.h"

PG_FUNCTION_INFO_V1(pg2redis_redrive);
PG_FUNCTION_INFO_V1(pg2redis_redrive_relation);

/* ---------------------------------------------------------------------------
 * The key of a dead letter's row (worker)
 * ---------------------------------------------------------------------------
 */

/*
 * redrive_note_row sets the sender's row key (sender_set_row_key) from a
 * tuple of rel, a table changes arrive for, with map (rel's): its key
 * index's columns (found once per relation, mapping.c) as text, as their
 * output functions write it (render_text).  Clears it when rel has no key index or the tuple no
 * readable key.
 */
void
redrive_note_row(Relation rel, RelMap *map, HeapTuple tuple)
{
	TupleDesc desc = RelationGetDescr(rel);
	char	**key;

	sender_clear_row_key();
	if (tuple == NULL || map->cols == NULL || !OidIsValid(map->keyindex))
		return;
	key = palloc(sizeof(char *) * Max(map->nkeys, 1));
	for (int k = 0; k < map->nkeys; k++)
	{
		AttrNumber attnum = map->keyatts[k];
		bool	   isnull;
		Datum	   v;
		int		   len;

		if (attnum <= 0 || attnum > map->natts)
			return;
		v = heap_getattr(tuple, attnum, desc, &isnull);
		/* null: a column the replica identity did not log */
		if (isnull || (TupleDescAttr(desc, attnum - 1)->attlen == -1 &&
					   VARATT_IS_EXTERNAL_ONDISK(DatumGetPointer(v))))
			return;
		/* render_text: the output function's text, byte for byte */
		key[k] = (char *) render_text(&map->cols[attnum - 1], v, &len);
	}
	sender_set_row_key(map->keyindex, map->nkeys, key);
}

/* ---------------------------------------------------------------------------
 * pg2redis_redrive() (any backend)
 * ---------------------------------------------------------------------------
 */

/*
 * may_read_table tells whether the user may SELECT table relid, or one of
 * the partitioned tables it is a partition of: PostgreSQL reads a
 * partition's rows through its parent with the parent's privilege, and a
 * dead letter names the partition a change was decoded for.
 */
static bool
may_read_table(Oid relid)
{
	List	 *ancestors;
	ListCell *lc;

	if (pg_class_aclcheck(relid, GetUserId(), ACL_SELECT) == ACLCHECK_OK)
		return true;
	if (!get_rel_relispartition(relid))
		return false;
	ancestors = get_partition_ancestors(relid);
	foreach(lc, ancestors)
	{
		if (pg_class_aclcheck(lfirst_oid(lc), GetUserId(), ACL_SELECT) ==
			ACLCHECK_OK)
			return true;
	}
	return false;
}

/*
 * check_dead_letter refuses to redrive dead letter id (of table relid, key
 * of index keyindex with nkeys columns; keyindex invalid if it has none)
 * unless the caller may SELECT the table (or a partitioned table it is a
 * partition of), the table still has rules, and
 * the key is still the one its rows are read by.  The table is locked
 * (AccessShareLock) until the end of the transaction.
 */
static void
check_dead_letter(int64 id, Oid relid, Oid keyindex, int nkeys)
{
	Relation rel;
	Oid		 current;
	char	*name;

	if (!OidIsValid(keyindex))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("dead letter " INT64_FORMAT " has no key", id),
				 errdetail("Its row is not known: its table has no primary key or replica identity index, or the dead letter is of a whole table."),
				 errhint("Run pg2redis_snapshot() on the table to write all its rows again.")));
	if (!OidIsValid(relid) || get_rel_relkind(relid) != RELKIND_RELATION)
		ereport(ERROR, (errcode(ERRCODE_UNDEFINED_TABLE),
						errmsg("the table of dead letter " INT64_FORMAT
							   " no longer exists",
							   id)));
	name = get_rel_name(relid);
	if (!may_read_table(relid))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for table %s", name),
				 errdetail("Redriving a dead letter reads its row again, which requires SELECT on its table.")));
	rel = table_open(relid, AccessShareLock);
	if (!mapping_has_rules(mapping_get(rel)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s\" has no pg2redis rules", name),
				 errdetail("Dead letter " INT64_FORMAT " would write nothing.",
						   id)));
	current = pg2r_row_key_index(rel);
	if (current == keyindex)
	{
		Relation idx = index_open(keyindex, AccessShareLock);

		if (idx->rd_index->indnkeyatts != nkeys)
			current = InvalidOid;
		index_close(idx, NoLock);
	}
	if (current != keyindex)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the key of table \"%s\" changed since dead letter " INT64_FORMAT
						" was recorded",
						name, id),
				 errhint("Run pg2redis_snapshot() on the table to write all its rows again.")));
	table_close(rel, NoLock);
}

/*
 * redrive_check_exist raises an ERROR naming the first of ids (an int8[]
 * Datum) that is not a dead letter (SPI connected).
 */
static void
redrive_check_exist(Datum ids)
{
	Oid	  types[1] = {INT8ARRAYOID};
	Datum values[1];
	bool  isnull;

	values[0] = ids;
	if (SPI_execute_with_args("SELECT i FROM pg_catalog.unnest($1) i "
							  "WHERE NOT EXISTS (SELECT FROM pg2redis.dead_letters d "
							  "WHERE d.id OPERATOR(pg_catalog.=) i) "
							  "ORDER BY i LIMIT 1",
							  1, types, values, NULL, true,
							  0) != SPI_OK_SELECT)
		elog(ERROR, "could not read pg2redis.dead_letters");
	if (SPI_processed > 0)
	{
		Datum missing = SPI_getbinval(SPI_tuptable->vals[0],
									  SPI_tuptable->tupdesc, 1, &isnull);

		if (isnull)
			ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
							errmsg("a dead letter id is null")));
		ereport(ERROR, (errcode(ERRCODE_UNDEFINED_OBJECT),
						errmsg("dead letter " INT64_FORMAT " does not exist",
							   DatumGetInt64(missing))));
	}
}

/*
 * redrive_lock_and_check locks the dead letters ids (FOR UPDATE), so that
 * two sessions cannot redrive one twice, and raises an ERROR for the first
 * that was redriven already or whose row cannot be read again (SPI
 * connected).
 */
static void
redrive_lock_and_check(Datum ids)
{
	Oid	  types[1] = {INT8ARRAYOID};
	Datum values[1] = {ids};
	bool  isnull;

	if (SPI_execute_with_args("SELECT d.id, d.relation, d.key_index, "
							  "pg_catalog.array_length(d.key, 1), d.redrive_request, "
							  "d.redriven_at IS NOT NULL "
							  "FROM pg2redis.dead_letters d "
							  "WHERE d.id OPERATOR(pg_catalog.=) ANY ($1) "
							  "ORDER BY d.id FOR UPDATE",
							  1, types, values, NULL, false,
							  0) != SPI_OK_SELECT)
		elog(ERROR, "could not read pg2redis.dead_letters");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple tup = SPI_tuptable->vals[i];
		TupleDesc desc = SPI_tuptable->tupdesc;
		int64	  id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		Datum	  relid = SPI_getbinval(tup, desc, 2, &isnull);
		Oid		  rel = isnull ? InvalidOid : DatumGetObjectId(relid);
		Datum	  keyindex = SPI_getbinval(tup, desc, 3, &isnull);
		Oid		  idx = isnull ? InvalidOid : DatumGetObjectId(keyindex);
		Datum	  nkeys = SPI_getbinval(tup, desc, 4, &isnull);
		int		  n = isnull ? 0 : DatumGetInt32(nkeys);
		Datum	  request = SPI_getbinval(tup, desc, 5, &isnull);
		bool	  norequest = isnull;
		bool redriven = DatumGetBool(SPI_getbinval(tup, desc, 6, &isnull));

		if (redriven)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("dead letter " INT64_FORMAT
							" was already redriven",
							id),
					 norequest
						 ? 0
						 : errdetail("Snapshot request " INT64_FORMAT
									 " was queued to read its row again.",
									 DatumGetInt64(request)),
					 errhint("To redrive it again, set its redriven_at to NULL first.")));
		if (n == 0)
			idx = InvalidOid;
		check_dead_letter(id, rel, idx, n);
	}
}

/*
 * redrive_queue queues keys-only snapshot requests for the dead letters ids
 * (SPI connected, checked and locked), one per table and key index of at
 * most pg2redis.snapshot_batch_size distinct keys, marks the dead letters,
 * and returns a row per request in rsinfo (request, relation, keys);
 * returns the number of requests.
 */
static uint64
redrive_queue(ReturnSetInfo *rsinfo, Datum ids)
{
	Oid			   types[2] = {INT8ARRAYOID, INT8OID};
	Datum		   values[2];
	bool		   isnull;
	SPITupleTable *groups;
	uint64		   ngroups;

	values[0] = ids;

	/*
	 * One request per table and key index, of at most
	 * pg2redis.snapshot_batch_size distinct keys: the worker records the keys
	 * a request has left after each chunk, so one request of all the keys
	 * would write them over and over (quadratic in their number), and hold
	 * them all in memory at once.
	 */
	values[1] = Int64GetDatum((int64) Max(pg2r_snapshot_batch_size, 1));
	if (SPI_execute_with_args("SELECT k.relation, k.key_index, "
							  "pg_catalog.array_agg(DISTINCT k.key), "
							  "pg_catalog.array_agg(k.id) "
							  "FROM (SELECT d.id, d.relation, d.key_index, d.key, "
							  "pg_catalog.dense_rank() OVER (PARTITION BY d.relation, "
							  "d.key_index ORDER BY d.key) AS r "
							  "FROM pg2redis.dead_letters d "
							  "WHERE d.id OPERATOR(pg_catalog.=) ANY ($1)) k "
							  "GROUP BY k.relation, k.key_index, "
							  "(k.r OPERATOR(pg_catalog.-) 1) OPERATOR(pg_catalog./) $2 "
							  "ORDER BY pg_catalog.min(k.id)",
							  2, types, values, NULL, false,
							  0) != SPI_OK_SELECT)
		elog(ERROR, "could not read pg2redis.dead_letters");
	groups = SPI_tuptable;
	ngroups = SPI_processed;
	for (uint64 g = 0; g < ngroups; g++)
	{
		HeapTuple tup = groups->vals[g];
		Datum	  rel = SPI_getbinval(tup, groups->tupdesc, 1, &isnull);
		Datum	  keyindex = SPI_getbinval(tup, groups->tupdesc, 2, &isnull);
		Datum	  keys = SPI_getbinval(tup, groups->tupdesc, 3, &isnull);
		Datum	  letters = SPI_getbinval(tup, groups->tupdesc, 4, &isnull);
		Oid		  itypes[3] = {REGCLASSOID, TEXTARRAYOID, OIDOID};
		Datum	  ivalues[3] = {rel, keys, keyindex};
		Oid		  utypes[2] = {INT8ARRAYOID, INT8OID};
		Datum	  uvalues[2];
		Datum	  out[3];
		bool	  outnull[3] = {false, false, false};
		int64	  request;

		if (SPI_execute_with_args("INSERT INTO pg2redis.snapshots "
								  "(relation, keys_only, retry_keys, key_index) "
								  "VALUES ($1, true, $2, $3) RETURNING id",
								  3, itypes, ivalues, NULL, false,
								  0) != SPI_OK_INSERT_RETURNING)
			elog(ERROR, "could not insert into pg2redis.snapshots");
		request =
			DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
										SPI_tuptable->tupdesc, 1, &isnull));
		uvalues[0] = letters;
		uvalues[1] = Int64GetDatum(request);
		if (SPI_execute_with_args("UPDATE pg2redis.dead_letters "
								  "SET redriven_at = pg_catalog.now(), redrive_request = $2 "
								  "WHERE id OPERATOR(pg_catalog.=) ANY ($1)",
								  2, utypes, uvalues, NULL, false,
								  0) != SPI_OK_UPDATE)
			elog(ERROR, "could not update pg2redis.dead_letters");
		out[0] = Int64GetDatum(request);
		out[1] = rel;
		out[2] = Int32GetDatum(ARR_DIMS(DatumGetArrayTypeP(keys))[0]);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, out, outnull);
	}
	return ngroups;
}

/*
 * redrive_ids redrives the dead letters ids (SPI connected): checks each,
 * queues keys-only snapshot requests per table and key index, marks the
 * dead letters, and returns a row per request in fcinfo's result (request,
 * relation, keys); then wakes the worker.
 */
static void
redrive_ids(FunctionCallInfo fcinfo, Datum ids)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	uint64		   ngroups;

	redrive_check_exist(ids);
	redrive_lock_and_check(ids);
	ngroups = redrive_queue(rsinfo, ids);
	if (ngroups > 0)
	{
		/* the commit hook wakes the worker; the flag tells it to look */
		if (!pg2r_request_snapshot())
			ereport(NOTICE,
					(errmsg("the pg2redis worker is not running; the requests wait for it")));
	}
}

/*
 * pg2redis_redrive(ids) reads the rows of dead letters ids again by their
 * keys and applies the current rules, in the stream's order (see the top of
 * the file); returns the keys-only snapshot requests it queued.  Refuses
 * the whole call if one of them cannot be redriven.
 */
Datum
pg2redis_redrive(PG_FUNCTION_ARGS)
{
	ArrayType *ids = PG_GETARG_ARRAYTYPE_P(0);

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	if (ArrayGetNItems(ARR_NDIM(ids), ARR_DIMS(ids)) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("no dead letter to redrive"),
				 errhint("Give the ids of rows of pg2redis.dead_letters.")));
	SPI_connect();
	redrive_ids(fcinfo, PointerGetDatum(ids));
	SPI_finish();
	return (Datum) 0;
}

/*
 * pg2redis_redrive_relation(relation, since) redrives the dead letters of a
 * table (of its partitions, for a partitioned one) that were not redriven
 * yet, recorded at or after since (all when NULL).  Those without a key are
 * left, with a WARNING that counts them.
 */
Datum
pg2redis_redrive_relation(PG_FUNCTION_ARGS)
{
	Oid	  relid;
	char  kind;
	List *tables;
	Oid	  types[2] = {OIDARRAYOID, TIMESTAMPTZOID};
	Datum values[2];
	char  nulls[2] = {' ', ' '};
	bool  isnull;
	int64 keyless;

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	if (PG_ARGISNULL(0))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						errmsg("relation must not be null"),
						errhint("Give a table, or dead letter ids.")));
	relid = PG_GETARG_OID(0);
	kind = get_rel_relkind(relid);
	if (kind != RELKIND_RELATION && kind != RELKIND_PARTITIONED_TABLE)
		ereport(ERROR, (errcode(ERRCODE_WRONG_OBJECT_TYPE),
						errmsg("\"%s\" is not a table", get_rel_name(relid))));
	if (pg_class_aclcheck(relid, GetUserId(), ACL_SELECT) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for table %s", get_rel_name(relid)),
				 errdetail("Redriving a dead letter reads its row again, which requires SELECT on its table.")));

	/* dead letters name the table a change was decoded for: a leaf */
	tables = find_all_inheritors(relid, AccessShareLock, NULL);
	values[0] = pg2r_oid_array(tables);
	values[1] = PG_ARGISNULL(1) ? (Datum) 0 : PG_GETARG_DATUM(1);
	nulls[1] = PG_ARGISNULL(1) ? 'n' : ' ';

	SPI_connect();
	if (SPI_execute_with_args("SELECT pg_catalog.count(*) FILTER (WHERE d.key IS NULL), "
							  "pg_catalog.array_agg(d.id ORDER BY d.id) FILTER (WHERE d.key IS NOT NULL) "
							  "FROM pg2redis.dead_letters d "
							  "WHERE d.relation::pg_catalog.oid OPERATOR(pg_catalog.=) ANY ($1) "
							  "AND d.redriven_at IS NULL "
							  "AND ($2 IS NULL OR d.created_at OPERATOR(pg_catalog.>=) $2)",
							  2, types, values, nulls, true,
							  0) != SPI_OK_SELECT)
		elog(ERROR, "could not read pg2redis.dead_letters");
	keyless = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
										  SPI_tuptable->tupdesc, 1, &isnull));
	if (keyless > 0)
		ereport(WARNING,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg_plural(INT64_FORMAT
							   " dead letter of table \"%s\" has no key",
							   INT64_FORMAT
							   " dead letters of table \"%s\" have no key",
							   keyless, keyless, get_rel_name(relid)),
				 errdetail("They are left as they are: their rows are not known."),
				 errhint("Run pg2redis_snapshot() on the table to write all its rows again.")));
	{
		Datum ids = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
								  2, &isnull);

		if (!isnull)
			redrive_ids(fcinfo, ids);
	}
	SPI_finish();
	return (Datum) 0;
}
