/*-------------------------------------------------------------------------
 *
 * mapping.c
 *	  The mapping engine: one row change in, Redis commands out.
 *
 * Callers (the output plugin, pg2redis_preview, snapshots) hand a relation,
 * an op and the old and new tuples to mapping_change(); it runs the rules
 * that apply and hands each expanded command, or each render error, to a
 * CommandSink.  Nothing here depends on the worker or on Redis.
 *
 * Per relation, a RelMap caches what does not change from row to row: the
 * relation whose rules apply (for a partition, its nearest ancestor with
 * rules), the attribute map from that relation's columns to the partition's,
 * the output-function lookups of every column, the key columns for {%pk%}
 * and the replica identity.  It is rebuilt when a relcache invalidation
 * names the relation or when the rule cache is rebuilt.
 *
 * Per row, columns are deformed once and each column's text form is
 * rendered at most once, however many rules use it.  Values PostgreSQL did
 * not send are never rendered: an unchanged TOASTed column (an on-disk
 * pointer) and the non-identity columns of an old row.  Such a value is left
 * out of {pairs} (HSET keeps the field), is '' for {old:col}, is taken from
 * the old row when the old row has it (REPLICA IDENTITY FULL), and is a
 * render error where a single value is required ({col}, {diff:col}, {%pk%})
 * and in {json} (a JSON value is written whole: a column left out would be
 * lost).  An old row's non-identity columns are left out of {json} too.
 *
 * An update that changes the primary key runs the delete rules on the old
 * row, then the insert rules on the new row, so no stale key is left behind.
 * Its new row's unchanged TOASTed values come from the old row (REPLICA
 * IDENTITY FULL); without one they are render errors even in {pairs} and
 * {json}, since the old key, which held them, is deleted.
 *
 * Limits.  A value larger than pg2redis.max_argument_bytes (its raw size,
 * before any output function runs) and an expanded argument larger than
 * that are render errors: the stream records them as dead letters instead
 * of building a command Redis would refuse (proto-max-bulk-len) or that
 * passes PostgreSQL's 1 GB allocation limit.  Some growth happens inside
 * output functions (bytea's hex form, JSON escapes), so a render can still
 * raise an ERROR; a sink that asks for it (CommandSink.careful) then gets
 * each rule run in a subtransaction of its own, and the ERROR as a render
 * error of that rule.  The stream asks for it only when it decodes a
 * transaction again after such an ERROR ended the worker (worker.c), so
 * the common path pays nothing for it.
 *
 * Memory: everything per change is allocated in the caller's current
 * context, which the caller resets after each change.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/attmap.h"
#include "access/detoast.h"
#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/partition.h"
#include "catalog/pg_type.h"
#include "common/int.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/numeric.h"

#include "pg2redis/commands.h"
#include "pg2redis/compat.h"
#include "pg2redis/mapping.h"
#include "pg2redis/relutil.h"
#include "pg2redis/settings.h"

#include "expand_int.h"

static HTAB			*RelMaps = NULL;
static RelMap		*LastMap = NULL; /* the entry mapping_get found last */
static MemoryContext MapsCxt = NULL;

/*
 * relmap_invalidate is the relcache callback: entries for the relation, or
 * whose rules come from it, are rebuilt on next use.
 */
static void
relmap_invalidate(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS seq;
	RelMap		   *entry;

	if (RelMaps == NULL)
		return;
	hash_seq_init(&seq, RelMaps);
	while ((entry = hash_seq_search(&seq)) != NULL)
		if (relid == InvalidOid || entry->relid == relid ||
			entry->rulerelid == relid)
			entry->valid = false;
}

/*
 * rule_relation returns the relation whose rules apply to changes of rel:
 * rel itself if it has rules, else its nearest partition ancestor that
 * has; InvalidOid if none.
 */
static Oid
rule_relation(Relation rel)
{
	Oid		  relid = RelationGetRelid(rel);
	ListCell *lc;

	if (rules_exist_for(relid))
		return relid;
	if (!rel->rd_rel->relispartition)
		return InvalidOid;
	foreach(lc, get_partition_ancestors(relid))
		if (rules_exist_for(lfirst_oid(lc)))
			return lfirst_oid(lc);
	return InvalidOid;
}

/* relmap_build (re)fills entry for rel, for rule cache generation gen. */
static void
relmap_build(RelMap *entry, Relation rel, uint64 gen)
{
	TupleDesc	  desc = RelationGetDescr(rel);
	Oid			  rulerelid;
	Relation	  rulerel;
	Bitmapset	 *leafident;
	MemoryContext old;

	if (entry->cxt)
		MemoryContextDelete(entry->cxt);
	entry->cxt = NULL;
	/* Valid from now: an invalidation during the build marks it again. */
	entry->valid = true;
	entry->generation = gen;
	entry->rulerelid = InvalidOid;
	entry->attmap = NULL;
	entry->npk = 0;
	entry->pk = NULL;
	entry->identity = NULL;
	entry->natts = 0;
	entry->cols = NULL;

	rulerelid = rule_relation(rel);
	if (!OidIsValid(rulerelid))
		return;
	rulerel = rulerelid == RelationGetRelid(rel)
				  ? rel
				  : RelationIdGetRelation(rulerelid);
	if (!RelationIsValid(rulerel))
		return;

	/* only relations with rules get memory of their own */
	entry->cxt = AllocSetContextCreate(MapsCxt, "pg2redis relation map",
									   ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(entry->cxt);

	entry->natts = desc->natts;
	entry->cols = palloc0(sizeof(ColType) * Max(desc->natts, 1));
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (!att->attisdropped)
			render_coltype_init(&entry->cols[i], att->atttypid, entry->cxt);
	}

	if (rulerel != rel)
	{
		AttrMap *map =
			pg2r_build_attrmap_by_name(desc, RelationGetDescr(rulerel));

		entry->attmap = map->attnums;
	}
	entry->schema = get_namespace_name(RelationGetNamespace(rulerel));
	entry->table = pstrdup(RelationGetRelationName(rulerel));

	entry->pk = pg2r_key_attnums(rulerel, &entry->npk);

	/* The key dead letters name a row of relid by (redrive.c). */
	entry->keyindex = pg2r_row_key_index(rel);
	if (OidIsValid(entry->keyindex))
	{
		Relation idx = RelationIdGetRelation(entry->keyindex);

		if (RelationIsValid(idx))
		{
			entry->nkeys = idx->rd_index->indnkeyatts;
			entry->keyatts = palloc(sizeof(AttrNumber) * entry->nkeys);
			for (int k = 0; k < entry->nkeys; k++)
				entry->keyatts[k] = idx->rd_index->indkey.values[k];
			RelationClose(idx);
		}
		else
			entry->keyindex = InvalidOid;
	}

	/* Old tuples come from the partition: its replica identity counts. */
	leafident = pg2r_identity_columns(rel, &entry->identity_full);
	for (int a = 1; a <= RelationGetDescr(rulerel)->natts; a++)
	{
		AttrNumber leaf = entry->attmap ? entry->attmap[a - 1] : a;

		if (leaf > 0 && bms_is_member(leaf, leafident))
			entry->identity = bms_add_member(entry->identity, a);
	}

	MemoryContextSwitchTo(old);
	if (rulerel != rel)
		RelationClose(rulerel);
	entry->rulerelid = rulerelid;
}

/*
 * mapping_get returns the current RelMap of a relation changes arrive for,
 * building it if needed.  The result stays valid until the next call.
 */
RelMap *
mapping_get(Relation rel)
{
	Oid		relid = RelationGetRelid(rel);
	uint64	gen = rules_generation();
	RelMap *entry;
	bool	found;

	if (RelMaps == NULL)
	{
		HASHCTL ctl;

		MapsCxt =
			AllocSetContextCreate(TopMemoryContext, "pg2redis relation maps",
								  ALLOCSET_DEFAULT_SIZES);
		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(RelMap);
		ctl.hcxt = MapsCxt;
		RelMaps = hash_create("pg2redis relation maps", 64, &ctl,
							  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		CacheRegisterRelcacheCallback(relmap_invalidate, (Datum) 0);
	}

	/* changes come in runs of one relation; entries are never removed */
	if (LastMap != NULL && LastMap->relid == relid)
	{
		entry = LastMap;
		found = true;
	}
	else
		entry = hash_search(RelMaps, &relid, HASH_ENTER, &found);
	LastMap = entry;
	if (!found)
	{
		entry->cxt = NULL;
		entry->valid = false;
		entry->rulerelid = InvalidOid;
	}
	if (!entry->valid || entry->generation != gen)
	{
		/* an error half-way leaves the entry to be built again next time */
		PG_TRY();
		{
			relmap_build(entry, rel, gen);
		}
		PG_CATCH();
		{
			entry->valid = false;
			PG_RE_THROW();
		}
		PG_END_TRY();
	}
	return entry;
}

/* mapping_has_rules tells whether any rule applies to the relation. */
bool
mapping_has_rules(RelMap *map)
{
	return OidIsValid(map->rulerelid);
}

/* row_init deforms tup (may be NULL) into *row. */
static void
row_init(RowState *row, TupleDesc desc, HeapTuple tup, bool keyonly)
{
	memset(row, 0, sizeof(*row));
	row->present = tup != NULL;
	row->keyonly = keyonly;
	if (tup == NULL)
		return;
	{
		/* one allocation for the four arrays, widest elements first */
		int	  n = Max(desc->natts, 1);
		char *mem = palloc(n * (sizeof(Datum) + sizeof(char *) + sizeof(int) +
								sizeof(bool)));

		row->values = (Datum *) mem;
		row->text = (const char **) (mem + n * sizeof(Datum));
		row->textlen = (int *) (mem + n * (sizeof(Datum) + sizeof(char *)));
		row->isnull = (bool *) (mem + n * (sizeof(Datum) + sizeof(char *) +
										   sizeof(int)));
		memset(row->text, 0, n * sizeof(char *));
	}
	heap_deform_tuple(tup, desc, row->values, row->isnull);
}

/* is_unchanged_toast tells whether a value is an on-disk TOAST pointer. */
static inline bool
is_unchanged_toast(const ColType *ct, Datum value)
{
	return ct->typlen == -1 &&
		   VARATT_IS_EXTERNAL_ONDISK(DatumGetPointer(value));
}

/*
 * resolve finds where the value of rule column rulecol lives for this
 * change (old or current row), following the rules in the header comment.
 * On COL_VALUE, *rowp and *idx locate a renderable, non-null value.
 */
static ColResult
resolve(ExpandState *st, AttrNumber rulecol, bool old, RowState **rowp,
		int *idx)
{
	RelMap	  *map = st->map;
	AttrNumber leafcol = map->attmap ? map->attmap[rulecol - 1] : rulecol;
	RowState  *row = old ? st->old : st->cur;
	int		   i;

	if (leafcol <= 0 || leafcol > map->natts)
	{
		pg2r_fail(&st->err, ERRCODE_UNDEFINED_COLUMN, NULL,
				  "column %d of relation \"%s\" does not exist in the changed relation",
				  rulecol, map->table);
		return COL_ERROR;
	}
	if (old && row == NULL)
	{
		/* An update without old row did not change the identity key. */
		if (st->old_from_cur && bms_is_member(rulecol, map->identity))
			row = st->cur;
		else
			return COL_UNAVAILABLE;
	}
	if (row == NULL || !row->present ||
		(row->keyonly && !bms_is_member(rulecol, map->identity)))
		return COL_UNAVAILABLE;

	i = leafcol - 1;
	if (row->isnull[i])
		return COL_NULL;
	if (is_unchanged_toast(&map->cols[i], row->values[i]))
	{
		RowState *alt = (row == st->cur) ? st->toast_from : NULL;

		if (alt == NULL || !alt->present || alt->keyonly || alt->isnull[i] ||
			is_unchanged_toast(&map->cols[i], alt->values[i]))
		{
			char *name;

			if (!st->key_changed || row != st->cur)
				return COL_UNCHANGED_TOAST;

			/*
			 * The insert rules of a key change write a new key and the
			 * delete rules removed the old one, which held the value:
			 * leaving it out would lose it without a trace.
			 */
			name = get_attname(map->rulerelid, rulecol, true);
			pg2r_fail(&st->err, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
					  "Set REPLICA IDENTITY FULL on the table: a key change is applied as a delete of the old key and an insert of the new one, which needs every value.",
					  "column \"%s\" is an unchanged TOASTed value that PostgreSQL did not send, and the row's key changed",
					  name ? name : "?");
			return COL_ERROR;
		}
		row = alt;
	}
	if (map->cols[i].typlen == -1 &&
		toast_raw_datum_size(row->values[i]) > (Size) pg2r_max_argument_bytes)
	{
		char *name = get_attname(map->rulerelid, rulecol, true);

		pg2r_fail(&st->err, ERRCODE_PROGRAM_LIMIT_EXCEEDED,
				  "Raise pg2redis.max_argument_bytes (up to Redis's proto-max-bulk-len), or leave the column out of the rule.",
				  "value of column \"%s\" is %zu bytes, more than pg2redis.max_argument_bytes (%d bytes)",
				  name ? name : "?", toast_raw_datum_size(row->values[i]),
				  pg2r_max_argument_bytes);
		return COL_ERROR;
	}
	*rowp = row;
	*idx = i;
	return COL_VALUE;
}

/*
 * mapping_column_text sets *text and *len to the text form of rule column
 * rulecol in the current (or, with old, the old) row, rendering it at most
 * once per row.  Returns what was found; COL_ERROR sets st->err.
 */
ColResult
mapping_column_text(ExpandState *st, AttrNumber rulecol, bool old,
					const char **text, int *len)
{
	RowState *row;
	int		  i;
	ColResult res = resolve(st, rulecol, old, &row, &i);

	if (res != COL_VALUE)
		return res;
	if (row->text[i] == NULL)
		row->text[i] =
			render_text(&st->map->cols[i], row->values[i], &row->textlen[i]);
	*text = row->text[i];
	*len = row->textlen[i];
	return COL_VALUE;
}

/* column_name returns the name of rule column attnum for messages. */
static const char *
column_name(const TplPart *part, AttrNumber attnum)
{
	for (int c = 0; c < part->ncols; c++)
		if (part->cols[c] == attnum)
			return part->colnames[c];
	return "?";
}

/*
 * required_text reads a column whose value a single placeholder needs;
 * NULL renders as nullval.  Returns false with st->err set if PostgreSQL
 * did not send the value.
 */
static bool
required_text(ExpandState *st, const TplPart *part, AttrNumber col, bool old,
			  const char *nullval, const char **text, int *len)
{
	ColResult res = mapping_column_text(st, col, old, text, len);

	switch (res)
	{
		case COL_VALUE:
			return true;
		case COL_NULL:
			*text = nullval;
			*len = strlen(nullval);
			return true;
		case COL_UNCHANGED_TOAST:
			return pg2r_fail(&st->err,
							 ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
							 "Set REPLICA IDENTITY FULL on the table, or use the column only in {pairs:…} and {json:…}, which leave unsent values out.",
							 "column \"%s\" is an unchanged TOASTed value that PostgreSQL did not send",
							 column_name(part, col));
		case COL_UNAVAILABLE:
			return pg2r_fail(&st->err,
							 ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
							 "Set REPLICA IDENTITY FULL on the table so that PostgreSQL logs every old value.",
							 "the old value of column \"%s\" was not sent by PostgreSQL",
							 column_name(part, col));
		default:
			return false;
	}
}

/*
 * append_diff appends {diff:col}: the new value minus the old, where a
 * missing row or NULL counts as 0.  Integers subtract exactly in int64,
 * anything else as numeric.
 */
static bool
append_diff(ExpandState *st, const TplPart *part, StringInfo out)
{
	AttrNumber	col = part->cols[0];
	const char *newt = "0", *oldt = "0";
	int			newlen = 1, oldlen = 1;
	int64		a, b, r;

	if (st->op != PG2R_OP_DELETE &&
		!required_text(st, part, col, false, "0", &newt, &newlen))
		return false;
	if ((st->old != NULL || st->old_from_cur) &&
		!required_text(st, part, col, true, "0", &oldt, &oldlen))
		return false;

	if (render_parse_int64(newt, newlen, &a) &&
		render_parse_int64(oldt, oldlen, &b) && !pg_sub_s64_overflow(a, b, &r))
	{
		appendStringInfo(out, INT64_FORMAT, r);
		return true;
	}
	if (!render_is_number(newt, newlen) || !render_is_number(oldt, oldlen))
		return pg2r_fail(&st->err, ERRCODE_INVALID_TEXT_REPRESENTATION,
						 "Use {diff:…} on numeric columns only.",
						 "{diff:%s} needs numbers, got \"%.*s\" and \"%.*s\"",
						 part->colnames[0], newlen, newt, oldlen, oldt);
	{
		Datum n = DirectFunctionCall3(numeric_in,
									  CStringGetDatum(pnstrdup(newt, newlen)),
									  ObjectIdGetDatum(InvalidOid),
									  Int32GetDatum(-1));
		Datum o = DirectFunctionCall3(numeric_in,
									  CStringGetDatum(pnstrdup(oldt, oldlen)),
									  ObjectIdGetDatum(InvalidOid),
									  Int32GetDatum(-1));

		appendStringInfoString(out,
							   DatumGetCString(DirectFunctionCall1(
								   numeric_out,
								   DirectFunctionCall2(numeric_sub, n, o))));
	}
	return true;
}

/*
 * append_json appends {json:…}: an object of the columns, those an old row
 * does not have left out; false with st->err set for an unchanged TOASTed
 * value PostgreSQL did not send.
 */
static bool
append_json(ExpandState *st, const TplPart *part, StringInfo out)
{
	bool first = true;

	appendStringInfoChar(out, '{');
	for (int c = 0; c < part->ncols; c++)
	{
		RowState *row = NULL;
		int		  i = 0;
		ColResult res = resolve(st, part->cols[c], false, &row, &i);

		if (res == COL_ERROR)
			return false;

		/*
		 * A JSON value is written whole (SET, JSON.SET, a hash field, an
		 * event): one left out of it is lost from Redis, not kept.
		 */
		if (res == COL_UNCHANGED_TOAST)
			return pg2r_fail(&st->err,
							 ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
							 "Set REPLICA IDENTITY FULL on the table, or write the column with HSET {pairs:…}, which keeps a field an update did not send.",
							 "column \"%s\" of {json:…} is an unchanged TOASTed value that PostgreSQL did not send",
							 part->colnames[c]);
		if (res == COL_UNAVAILABLE)
			continue;
		if (!first)
			appendStringInfoChar(out, ',');
		first = false;
		escape_json(out, part->colnames[c]);
		appendStringInfoChar(out, ':');
		if (res == COL_NULL)
			appendStringInfoString(out, "null");
		else
			render_json(&st->map->cols[i], row->values[i], false, out);
	}
	appendStringInfoChar(out, '}');
	return true;
}

/*
 * append_escaped appends len bytes of text with '%', ':', '{' and '}'
 * percent-encoded (%25, %3A, %7B, %7D), and nothing else changed: values so
 * encoded contain no ':' and no hash tag, so keys joined from them with ':'
 * are distinct for distinct values ({esc:col}, {%pk_escaped%}).
 */
static void
append_escaped(StringInfo out, const char *text, int len)
{
	int start = 0;

	for (int i = 0; i < len; i++)
	{
		const char *code;

		switch (text[i])
		{
			case '%':
				code = "%25";
				break;
			case ':':
				code = "%3A";
				break;
			case '{':
				code = "%7B";
				break;
			case '}':
				code = "%7D";
				break;
			default:
				continue;
		}
		appendBinaryStringInfo(out, text + start, i - start);
		appendStringInfoString(out, code);
		start = i + 1;
	}
	appendBinaryStringInfo(out, text + start, len - start);
}

/*
 * append_pk appends {%pk%}: the key columns' values joined with ':', as the
 * pgwalk tool renders it (so that two keys may collide: ("a:b", "c") and
 * ("a", "b:c") both give "a:b:c"), or, with escape ({%pk_escaped%}), each
 * value percent-encoded by append_escaped first, which cannot collide.
 */
static bool
append_pk(ExpandState *st, const TplPart *part, bool escape, StringInfo out)
{
	RelMap *map = st->map;

	if (map->npk == 0)
		return pg2r_fail(&st->err, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
						 "Add a primary key to the table.",
						 "{%%pk%%} needs a primary key, and table \"%s\" has none",
						 map->table);
	for (int k = 0; k < map->npk; k++)
	{
		const char *text;
		int			len;
		ColResult	res =
			mapping_column_text(st, map->pk[k], false, &text, &len);

		if (res == COL_ERROR)
			return false;
		if (res == COL_UNAVAILABLE || res == COL_UNCHANGED_TOAST)
			return pg2r_fail(&st->err,
							 ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
							 "Set REPLICA IDENTITY FULL on the table, or keep the primary key as replica identity.",
							 "a primary-key value of table \"%s\" was not sent by PostgreSQL",
							 map->table);
		if (k > 0)
			appendStringInfoChar(out, ':');
		if (res == COL_VALUE && escape)
			append_escaped(out, text, len);
		else if (res == COL_VALUE)
			appendBinaryStringInfo(out, text, len);
	}
	return true;
}

/*
 * mapping_expand_arg appends the expansion of a one-argument template
 * element to out.  Returns false with st->err set on a render error.
 */
bool
mapping_expand_arg(ExpandState *st, const TplArg *arg, StringInfo out)
{
	for (int p = 0; p < arg->nparts; p++)
	{
		const TplPart *part = &arg->parts[p];
		const char	  *text;
		int			   len;

		switch (part->kind)
		{
			case TPL_LITERAL:
				appendBinaryStringInfo(out, part->text, part->len);
				break;
			case TPL_COL:
				if (!required_text(st, part, part->cols[0], false, "", &text,
								   &len))
					return false;
				appendBinaryStringInfo(out, text, len);
				break;
			case TPL_ESC:
				if (!required_text(st, part, part->cols[0], false, "", &text,
								   &len))
					return false;
				append_escaped(out, text, len);
				break;
			case TPL_OLD:
			{
				ColResult res =
					mapping_column_text(st, part->cols[0], true, &text, &len);

				if (res == COL_ERROR)
					return false;
				if (res == COL_VALUE)
					appendBinaryStringInfo(out, text, len);
				break;
			}
			case TPL_DIFF:
				if (!append_diff(st, part, out))
					return false;
				break;
			case TPL_JSON:
				if (!append_json(st, part, out))
					return false;
				break;
			case TPL_PAIRS:
				elog(ERROR, "{pairs:…} expanded as a single argument");
				break;
			case TPL_SCHEMA:
				appendStringInfoString(out, st->map->schema);
				break;
			case TPL_TABLE:
				appendStringInfoString(out, st->map->table);
				break;
			case TPL_OP:
				appendStringInfoString(out, pg2r_op_name(st->op));
				break;
			case TPL_PK:
			case TPL_PK_ESCAPED:
				if (!append_pk(st, part, part->kind == TPL_PK_ESCAPED, out))
					return false;
				break;
			case TPL_XID:
				appendStringInfo(out, "%u", st->meta->xid);
				break;
			case TPL_LSN:
				appendStringInfo(out, "%X/%X", LSN_FORMAT_ARGS(st->meta->lsn));
				break;
			case TPL_COMMIT_TIME:
			{
				char buf[MAXDATELEN + 1];
				int	 utc = 0;

				JsonEncodeDateTime(buf,
								   TimestampTzGetDatum(st->meta->commit_time),
								   TIMESTAMPTZOID, &utc);
				appendStringInfoString(out, buf);
				break;
			}
		}
	}
	return true;
}

/*
 * Growable argument vector of one command being expanded.  An argument is
 * either bytes of data (built from a template) or, for a column name or a
 * value {pairs} writes whole, the column name or the row's rendered text
 * itself (ext), which stays valid until the change is done: no copy.
 */
typedef struct ArgVec
{
	StringInfoData data;
	int			   argc;
	int			   cap;
	int			  *off;
	size_t		  *len;
	const char	 **ext; /* [i]: the argument's bytes, or NULL: in data */
} ArgVec;

/* argvec_room makes room for one more argument in v. */
static inline void
argvec_room(ArgVec *v)
{
	if (v->argc == v->cap)
	{
		v->cap = v->cap ? v->cap * 2 : 16;
		v->off = v->off ? repalloc(v->off, sizeof(int) * v->cap)
						: palloc(sizeof(int) * v->cap);
		v->len = v->len ? repalloc(v->len, sizeof(size_t) * v->cap)
						: palloc(sizeof(size_t) * v->cap);
		v->ext = v->ext ? repalloc(v->ext, sizeof(char *) * v->cap)
						: palloc(sizeof(char *) * v->cap);
	}
}

/* argvec_push adds the bytes of data from start on as an argument. */
static void
argvec_push(ArgVec *v, int start)
{
	argvec_room(v);
	v->off[v->argc] = start;
	v->len[v->argc] = v->data.len - start;
	v->ext[v->argc] = NULL;
	v->argc++;
}

/*
 * argvec_push_ext adds s[0..len) as an argument, without copying it: s
 * must stay valid until the command is handed over.
 */
static inline void
argvec_push_ext(ArgVec *v, const char *s, size_t len)
{
	argvec_room(v);
	v->off[v->argc] = 0;
	v->len[v->argc] = len;
	v->ext[v->argc] = s;
	v->argc++;
}

/* argvec_arg returns where argument i of v is. */
static inline const char *
argvec_arg(const ArgVec *v, int i)
{
	return v->ext[i] ? v->ext[i] : v->data.data + v->off[i];
}

/*
 * expand_command expands one rule's template into v.  Returns false with
 * st->err set on a render error; sets *elided when {pairs} left out values
 * PostgreSQL did not send.
 */
static bool
expand_command(ExpandState *st, const Rule *rule, ArgVec *v, bool *elided)
{
	resetStringInfo(&v->data);
	v->argc = 0;
	*elided = false;
	for (int a = 0; a < rule->tpl->nargs; a++)
	{
		const TplArg *arg = &rule->tpl->args[a];

		if (arg->parts[0].kind == TPL_PAIRS)
		{
			const TplPart *part = &arg->parts[0];

			for (int c = 0; c < part->ncols; c++)
			{
				const char *text = "";
				int			len = 0;
				ColResult	res;

				if (part->names_only)
				{
					/* {columns:…}: the names, whatever the row sent */
					argvec_push_ext(v, part->colnames[c],
									strlen(part->colnames[c]));
					continue;
				}
				res =
					mapping_column_text(st, part->cols[c], false, &text, &len);

				if (res == COL_ERROR)
					return false;
				if (res == COL_UNAVAILABLE || res == COL_UNCHANGED_TOAST)
				{
					*elided = true;
					continue;
				}
				argvec_push_ext(v, part->colnames[c],
								strlen(part->colnames[c]));
				if (res == COL_VALUE)
					argvec_push_ext(v, text, len);
				else
					argvec_push_ext(v, "", 0);
			}
			continue;
		}
		{
			int start = v->data.len;

			if (!mapping_expand_arg(st, arg, &v->data))
				return false;
			argvec_push(v, start);
		}
	}
	for (int a = 0; a < v->argc; a++)
		if (v->len[a] > (size_t) pg2r_max_argument_bytes)
			return pg2r_fail(&st->err, ERRCODE_PROGRAM_LIMIT_EXCEEDED,
							 "Raise pg2redis.max_argument_bytes (up to Redis's proto-max-bulk-len), or render fewer columns into one argument.",
							 "argument %d of the command is %zu bytes, more than pg2redis.max_argument_bytes (%d bytes)",
							 a + 1, v->len[a], pg2r_max_argument_bytes);
	return true;
}

/*
 * reserved_key tells, with st->err set, whether a key of the expanded
 * command v of rule is under PG2R_KEY_PREFIX: a key that row values made
 * (validation refuses literal ones), which must not reach Redis.
 */
static bool
reserved_key(ExpandState *st, const Rule *rule, const ArgVec *v)
{
	const RedisCommandDef *def = rule->def;
	size_t				   plen = strlen(PG2R_KEY_PREFIX);
	int					   last;

	if (def == NULL || def->first_key <= 0)
		return false;
	last = def->last_key < 0 ? v->argc + def->last_key : def->last_key;
	for (int i = def->first_key; i <= last && i < v->argc; i += def->key_step)
		if (v->len[i] >= plen &&
			memcmp(argvec_arg(v, i), PG2R_KEY_PREFIX, plen) == 0)
		{
			pg2r_fail(&st->err, ERRCODE_RESERVED_NAME,
					  "Keep rows from rendering keys that start with \"" PG2R_KEY_PREFIX
					  "\", e.g. with a literal prefix before the placeholder.",
					  "key \"%.*s\" of Redis command \"%s\" starts with \"%s\", which pg2redis keeps for itself",
					  pg_mbcliplen(argvec_arg(v, i), v->len[i], 200),
					  argvec_arg(v, i), def->name, PG2R_KEY_PREFIX);
			return true;
		}
	return false;
}

/* Buffers of one run_rules call, reused from rule to rule. */
typedef struct RuleBufs
{
	ArgVec		 v;
	const char **argv;
	int			 argv_cap;
} RuleBufs;

/*
 * describe_key sets st->err.key to the change's primary key as
 * "col=value, ..." (NULL when the table has none or no row), for the dead
 * letters of the stream.  Only values already rendered or small are used,
 * and st->err is kept.
 */
static void
describe_key(ExpandState *st)
{
	Pg2rError	   saved = st->err;
	StringInfoData buf;

	if (st->cur == NULL || !st->cur->present || st->map->npk == 0)
		return;
	initStringInfo(&buf);
	for (int k = 0; k < st->map->npk; k++)
	{
		const char *text = "";
		int			len = 0;
		char	 *name = get_attname(st->map->rulerelid, st->map->pk[k], true);
		ColResult res =
			mapping_column_text(st, st->map->pk[k], false, &text, &len);

		appendStringInfo(&buf, "%s%s=", k > 0 ? ", " : "", name ? name : "?");
		if (res == COL_VALUE)
			appendBinaryStringInfo(&buf, text, Min(len, 200));
		else if (res == COL_NULL)
			appendStringInfoString(&buf, "NULL");
		else
			appendStringInfoString(&buf, "?");
	}
	st->err = saved;
	st->err.key = buf.data;
}

/* rule_error hands the render error in st->err of rule to the sink. */
static void
rule_error(ExpandState *st, const Rule *rule, Pg2rOp op,
		   const CommandSink *sink)
{
	describe_key(st);
	sink->error(sink->arg, rule, op, &st->err);
	st->err.key = NULL;
}

/* run_rule expands one rule for the change, if it applies. */
static void
run_rule(ExpandState *st, const Rule *rule, Pg2rOp op, const CommandSink *sink,
		 RuleBufs *b)
{
	bool elided;

	if (rule->broken)
	{
		sink->error(sink->arg, rule, op, rule->broken);
		return;
	}
	if (rule->cond)
	{
		int r = condition_eval(rule->cond, st);

		if (r < 0)
		{
			rule_error(st, rule, op, sink);
			return;
		}
		if (r == 0)
			return;
	}
	if (!expand_command(st, rule, &b->v, &elided) ||
		reserved_key(st, rule, &b->v))
	{
		rule_error(st, rule, op, sink);
		return;
	}
	/* Nothing left to write once unsent values were left out. */
	if (elided && rule->def && b->v.argc < rule->def->min_args)
		return;

	if (b->argv_cap < b->v.argc)
	{
		b->argv_cap = b->v.cap;
		b->argv = repalloc(b->argv, sizeof(char *) * b->argv_cap);
	}
	for (int i = 0; i < b->v.argc; i++)
		b->argv[i] = argvec_arg(&b->v, i);
	sink->command(sink->arg, rule, op, b->v.argc, b->argv, b->v.len);
}

/* Arguments of run_rule, for pg2r_run_guarded. */
typedef struct RuleCall
{
	ExpandState		  *st;
	const Rule		  *rule;
	Pg2rOp			   op;
	const CommandSink *sink;
	RuleBufs		  *b;
} RuleCall;

/* run_rule_call runs run_rule with the arguments in arg (a RuleCall). */
static void
run_rule_call(void *arg)
{
	RuleCall *c = arg;

	run_rule(c->st, c->rule, c->op, c->sink, c->b);
}

/*
 * run_rule_guarded runs one rule in a subtransaction of its own, so that an
 * ERROR raised while rendering it (an output function's, or PostgreSQL's
 * 1 GB limit) becomes a render error of that rule, and the change's other
 * rules still run.  The sink's command callback must leave nothing behind
 * when it raises (sender.c appends a command whole or not at all).
 */
static void
run_rule_guarded(ExpandState *st, const Rule *rule, Pg2rOp op,
				 const CommandSink *sink, RuleBufs *b)
{
	RuleCall   call = {st, rule, op, sink, b};
	ErrorData *edata = pg2r_run_guarded(run_rule_call, &call);

	if (edata == NULL)
		return;
	pg2r_fail(&st->err, edata->sqlerrcode, NULL, "rendering failed: %s",
			  edata->message);
	FreeErrorData(edata);
	/* the buffers may hold a half-built command: start afresh (in place) */
	resetStringInfo(&b->v.data);
	b->v.argc = 0;
	rule_error(st, rule, op, sink);
}

/*
 * The buffers of run_rules, kept from change to change (RuleBufsCxt) rather
 * than allocated for each; a call made while they are in use (none is
 * expected) gets buffers of its own.
 */
static RuleBufs		 rule_bufs;
static MemoryContext RuleBufsCxt = NULL;
static bool			 rule_bufs_busy = false;

/* A command buffer grown larger than this is not kept for the next change. */
#define RULE_BUFS_KEEP_MAX (1024 * 1024)

/* rule_bufs_init gives *b empty buffers allocated in cxt. */
static void
rule_bufs_init(RuleBufs *b, MemoryContext cxt)
{
	MemoryContext old = MemoryContextSwitchTo(cxt);

	memset(b, 0, sizeof(*b));
	initStringInfo(&b->v.data);
	argvec_room(&b->v);
	b->argv_cap = b->v.cap;
	b->argv = palloc(sizeof(char *) * b->argv_cap);
	MemoryContextSwitchTo(old);
}

/* run_rules expands every rule of st->op that applies to the change. */
static void
run_rules(ExpandState *st, Pg2rOp op, const CommandSink *sink)
{
	List	 *rules = rules_for(st->map->rulerelid, op);
	ListCell *lc;
	RuleBufs  own;
	RuleBufs *b = &rule_bufs;

	if (op == PG2R_OP_SNAPSHOT && rules == NIL)
		rules = rules_for(st->map->rulerelid, PG2R_OP_INSERT);
	st->op = op;
	if (rules == NIL)
		return;
	if (RuleBufsCxt == NULL)
	{
		RuleBufsCxt =
			AllocSetContextCreate(TopMemoryContext, "pg2redis rule buffers",
								  ALLOCSET_SMALL_SIZES);
		rule_bufs_init(&rule_bufs, RuleBufsCxt);
	}
	if (rule_bufs_busy)
	{
		b = &own;
		rule_bufs_init(b, CurrentMemoryContext);
	}
	else
		rule_bufs_busy = true;

	PG_TRY();
	{
		foreach(lc, rules)
		{
			Rule *rule = lfirst(lc);

			if (sink->careful)
				run_rule_guarded(st, rule, op, sink, b);
			else
				run_rule(st, rule, op, sink, b);
		}
	}
	PG_FINALLY();
	{
		if (b == &rule_bufs)
		{
			rule_bufs_busy = false;
			if (rule_bufs.v.data.maxlen > RULE_BUFS_KEEP_MAX)
			{
				MemoryContextReset(RuleBufsCxt);
				rule_bufs_init(&rule_bufs, RuleBufsCxt);
			}
		}
	}
	PG_END_TRY();
}

/*
 * pk_changed tells whether an update changed the rule relation's key: the
 * text of a key column differs between old and new row.  A key whose old
 * value was not sent counts as unchanged.
 */
static bool
pk_changed(ExpandState *st)
{
	for (int k = 0; k < st->map->npk; k++)
	{
		const char *n = NULL, *o = NULL;
		int			nlen = 0, olen = 0;
		ColResult	nres =
			mapping_column_text(st, st->map->pk[k], false, &n, &nlen);
		ColResult ores =
			mapping_column_text(st, st->map->pk[k], true, &o, &olen);

		if (nres == COL_ERROR || ores == COL_ERROR ||
			ores == COL_UNAVAILABLE || ores == COL_UNCHANGED_TOAST ||
			nres == COL_UNCHANGED_TOAST)
			continue;
		if (nres != ores ||
			(nres == COL_VALUE && (nlen != olen || memcmp(n, o, nlen) != 0)))
			return true;
	}
	return false;
}

/*
 * mapping_change expands the rules of one row change of rel (op insert,
 * update, delete or snapshot; tuples in rel's format, either may be NULL)
 * and hands the commands and render errors to sink in rule order.
 */
void
mapping_change(RelMap *map, Relation rel, Pg2rOp op, HeapTuple oldtuple,
			   HeapTuple newtuple, const ChangeMeta *meta,
			   const CommandSink *sink)
{
	ExpandState st = {0};
	RowState	newrow, oldrow;
	TupleDesc	desc = rel ? RelationGetDescr(rel) : NULL;

	if (!mapping_has_rules(map))
		return;
	st.map = map;
	st.meta = meta;
	row_init(&newrow, desc, newtuple, false);
	row_init(&oldrow, desc, oldtuple, !map->identity_full);

	switch (op)
	{
		case PG2R_OP_INSERT:
		case PG2R_OP_SNAPSHOT:
			st.cur = &newrow;
			run_rules(&st, op, sink);
			break;
		case PG2R_OP_DELETE:
			st.cur = &oldrow;
			st.old = &oldrow;
			run_rules(&st, op, sink);
			break;
		case PG2R_OP_UPDATE:
			st.cur = &newrow;
			st.old = oldrow.present ? &oldrow : NULL;
			st.old_from_cur = !oldrow.present;
			/* the old row has unchanged TOASTed values (REPLICA IDENTITY FULL) */
			st.toast_from = st.old;
			if (oldrow.present && pk_changed(&st))
			{
				st.cur = &oldrow;
				st.old = &oldrow;
				run_rules(&st, PG2R_OP_DELETE, sink);
				st.cur = &newrow;
				st.old = NULL;
				st.key_changed = true;
				run_rules(&st, PG2R_OP_INSERT, sink);
			}
			else
				run_rules(&st, PG2R_OP_UPDATE, sink);
			break;
		case PG2R_OP_TRUNCATE:
			run_rules(&st, op, sink);
			break;
	}
}

/*
 * mapping_truncate expands the truncate rules of the relation map's rule
 * relation once.
 */
void
mapping_truncate(RelMap *map, const ChangeMeta *meta, const CommandSink *sink)
{
	mapping_change(map, NULL, PG2R_OP_TRUNCATE, NULL, NULL, meta, sink);
}
