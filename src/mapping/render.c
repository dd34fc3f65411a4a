/*-------------------------------------------------------------------------
 *
 * render.c
 *	  Column values to the text and JSON forms placeholders expand to.
 *
 * Text form: the type's output function, except booleans (true/false).
 * The session settings that shape output (DateStyle ISO, TimeZone UTC,
 * IntervalStyle postgres, extra_float_digits 1, bytea_output hex) are fixed
 * by the callers that render (see render_push_settings).  For the common
 * built-in output functions (integers, oid, text, varchar, char(n), float8,
 * date, timestamp, timestamptz, jsonb, and one-dimensional arrays of these)
 * render_text runs the function's own
 * body (the same PostgreSQL routines, reading the same settings) without
 * the call through fmgr and without copying the result: the text is the
 * output function's, byte for byte, under any setting (sql/rendering.sql
 * compares them on edge values).  The choice is made by the column's
 * output function, so a type or domain with another output function never
 * takes a fast path.
 *
 * JSON form: integers are numbers; numeric and float are numbers or strings
 * by pg2redis.numeric_mode (NaN and infinities always strings, since JSON
 * has no such numbers); json and jsonb are embedded; arrays become JSON
 * arrays of their elements, nested by dimension; dates and timestamps are
 * ISO 8601 strings with a T and a +00:00 offset, and composites objects of
 * their attributes, both exactly as to_jsonb() writes them (it writes time
 * and timetz in their text form); everything else is a
 * JSON string of its text form.  JSON is written directly into a StringInfo:
 * numbers are copied as PostgreSQL prints them, so no precision is lost to
 * a double on the way.
 *
 * Type lookups happen once per column (render_coltype_init), never per row.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/datetime.h"
#include "utils/float.h"
#include "utils/fmgroids.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/typcache.h"

#include "pg2redis/common.h"
#include "pg2redis/render.h"
#include "pg2redis/settings.h"

/*
 * At most this many types are looked up ahead for one column: the
 * attributes of a composite, and theirs, and so on.  A composite type can
 * hold many attributes of another composite type that holds many of a
 * third: a column of a type four levels deep with 40 attributes a level
 * made the worker look up 2.5 million types (300 MB) before it rendered
 * anything, five levels 100 million, when its table's map was built, so a
 * table owner adding such a column to a table with a rule took the worker,
 * and with it the cluster, down.  Attributes beyond the budget are looked
 * up as a value has them (render_composite), a cost bounded by the value.
 */
#define COLTYPE_LOOKAHEAD 256

static void coltype_init(ColType *ct, Oid typid, MemoryContext cxt,
						 int *budget);

/*
 * coltype_init_fields makes *ct a composite of row type typid, with the type
 * of each attribute it has now (render_composite copes with later ones),
 * while *budget lasts; else with no attributes known ahead.
 */
static void
coltype_init_fields(ColType *ct, Oid typid, MemoryContext cxt, int *budget)
{
	TupleDesc desc;

	ct->kind = VK_COMPOSITE;
	if (*budget < 1)
		return;
	desc = lookup_rowtype_tupdesc_copy(typid, -1);
	if (desc->natts > *budget)
	{
		*budget = 0;
		FreeTupleDesc(desc);
		return;
	}
	*budget -= desc->natts;
	ct->nfields = desc->natts;
	ct->fields = MemoryContextAllocZero(cxt, sizeof(ColType) * desc->natts);
	ct->fieldtypes = MemoryContextAllocZero(cxt, sizeof(Oid) * desc->natts);
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped)
			continue;
		ct->fieldtypes[i] = att->atttypid;
		coltype_init(&ct->fields[i], att->atttypid, cxt, budget);
	}
	FreeTupleDesc(desc);
}

/* text_fast returns render_text's own writer for output function outfunc. */
static TextFast
text_fast(Oid outfunc)
{
	switch (outfunc)
	{
		case F_INT2OUT:
			return TF_INT2;
		case F_INT4OUT:
			return TF_INT4;
		case F_INT8OUT:
			return TF_INT8;
		case F_OIDOUT:
			return TF_OID;
		case F_TEXTOUT:
		case F_VARCHAROUT:
		case F_BPCHAROUT:
			return TF_TEXT;
		case F_FLOAT8OUT:
			return TF_FLOAT8;
		case F_DATE_OUT:
			return TF_DATE;
		case F_TIMESTAMP_OUT:
			return TF_TIMESTAMP;
		case F_TIMESTAMPTZ_OUT:
			return TF_TIMESTAMPTZ;
		case F_JSONB_OUT:
			return TF_JSONB;
		default:
			return TF_NONE;
	}
}

/*
 * render_coltype_init fills *ct for values of type typid, allocating what
 * it keeps (element type info, output function) in cxt.
 */
void
render_coltype_init(ColType *ct, Oid typid, MemoryContext cxt)
{
	int budget = COLTYPE_LOOKAHEAD;

	coltype_init(ct, typid, cxt, &budget);
}

/*
 * coltype_init is render_coltype_init looking up at most *budget composite
 * attributes ahead, less what it used.
 */
static void
coltype_init(ColType *ct, Oid typid, MemoryContext cxt, int *budget)
{
	Oid	 base = getBaseType(typid);
	Oid	 outfunc;
	bool isvarlena;
	Oid	 elemtype;

	check_stack_depth();
	memset(ct, 0, sizeof(*ct));
	ct->typid = typid;
	ct->base = base;
	get_typlenbyvalalign(typid, &ct->typlen, &ct->typbyval, &ct->typalign);
	getTypeOutputInfo(typid, &outfunc, &isvarlena);
	fmgr_info_cxt(outfunc, &ct->outfunc, cxt);
	ct->fast = text_fast(outfunc);

	switch (base)
	{
		case BOOLOID:
			ct->kind = VK_BOOL;
			break;
		case INT2OID:
		case INT4OID:
		case INT8OID:
		case OIDOID:
			ct->kind = VK_INTEGER;
			break;
		case NUMERICOID:
		case FLOAT4OID:
		case FLOAT8OID:
			ct->kind = VK_FLOAT;
			break;
		case JSONOID:
		case JSONBOID:
			ct->kind = VK_JSON;
			break;
		case DATEOID:
		case TIMESTAMPOID:
		case TIMESTAMPTZOID:
			ct->kind = VK_DATETIME;
			break;
		default:
			if (base != RECORDOID && type_is_rowtype(base))
			{
				coltype_init_fields(ct, base, cxt, budget);
				break;
			}
			elemtype = get_element_type(base);
			if (OidIsValid(elemtype) && type_is_array(base))
			{
				int16 elen;
				bool  ebyval;
				char  ealign;
				Oid	  eioparam;
				Oid	  efunc;

				ct->kind = VK_ARRAY;
				ct->elem = MemoryContextAlloc(cxt, sizeof(ColType));
				coltype_init(ct->elem, elemtype, cxt, budget);
				get_type_io_data(elemtype, IOFunc_output, &elen, &ebyval,
								 &ealign, &ct->typdelim, &eioparam, &efunc);
				if (outfunc == F_ARRAY_OUT && ct->elem->fast != TF_NONE)
					ct->fast = TF_ARRAY;
			}
			else
				ct->kind = VK_STRING;
			break;
	}
}

/*
 * datetime_text writes the text of a date, timestamp or timestamptz (fast
 * says which) into buf as date_out, timestamp_out and timestamptz_out do:
 * the same routines under the same DateStyle and TimeZone.  False when the
 * value is out of range, where those functions raise their error.
 */
static bool
datetime_text(TextFast fast, Datum value, char *buf)
{
	struct pg_tm tt;
	fsec_t		 fsec;
	int			 tz;
	const char	*tzn;

	switch (fast)
	{
		case TF_DATE:
		{
			DateADT d = DatumGetDateADT(value);

			if (DATE_NOT_FINITE(d))
				EncodeSpecialDate(d, buf);
			else
			{
				j2date(d + POSTGRES_EPOCH_JDATE, &tt.tm_year, &tt.tm_mon,
					   &tt.tm_mday);
				EncodeDateOnly(&tt, DateStyle, buf);
			}
			return true;
		}
		case TF_TIMESTAMP:
		{
			Timestamp ts = DatumGetTimestamp(value);

			if (TIMESTAMP_NOT_FINITE(ts))
				EncodeSpecialTimestamp(ts, buf);
			else if (timestamp2tm(ts, NULL, &tt, &fsec, NULL, NULL) == 0)
				EncodeDateTime(&tt, fsec, false, 0, NULL, DateStyle, buf);
			else
				return false;
			return true;
		}
		default:
		{
			TimestampTz ts = DatumGetTimestampTz(value);

			if (TIMESTAMP_NOT_FINITE(ts))
				EncodeSpecialTimestamp(ts, buf);
			else if (timestamp2tm(ts, &tz, &tt, &fsec, &tzn, NULL) == 0)
				EncodeDateTime(&tt, fsec, true, tz, tzn, DateStyle, buf);
			else
				return false;
			return true;
		}
	}
}

/* array_isspace is array_out's notion of white space. */
static inline bool
array_isspace(char ch)
{
	return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\v' ||
		   ch == '\f';
}

/*
 * array_text returns the text of a one-dimensional array with lower bound 1
 * whose elements have a writer of render_text's, as array_out writes it:
 * elements quoted when empty, "NULL" in any case, or holding a quote, a
 * backslash, a brace, the delimiter or white space, with quotes and
 * backslashes escaped; NULL elements as NULL.  NULL for any other array
 * (more dimensions, other bounds), which array_out itself writes.
 */
static char *
array_text(const ColType *ct, Datum value, int *len)
{
	ArrayType	  *arr = DatumGetArrayTypeP(value);
	const ColType *elem = ct->elem;
	StringInfoData out;
	Datum		  *items;
	bool		  *nulls;
	int			   n;

	if (ARR_NDIM(arr) == 0)
	{
		*len = 2;
		return pstrdup("{}");
	}
	if (ARR_NDIM(arr) != 1 || ARR_LBOUND(arr)[0] != 1)
		return NULL;
	deconstruct_array(arr, elem->typid, elem->typlen, elem->typbyval,
					  elem->typalign, &items, &nulls, &n);
	initStringInfo(&out);
	appendStringInfoChar(&out, '{');
	for (int i = 0; i < n; i++)
	{
		const char *s;
		int			slen;
		bool		quote;

		if (i > 0)
			appendStringInfoChar(&out, ct->typdelim);
		if (nulls[i])
		{
			appendStringInfoString(&out, "NULL");
			continue;
		}
		s = render_text(elem, items[i], &slen);
		quote = slen == 0 || pg_strcasecmp(s, "NULL") == 0;
		for (int k = 0; k < slen && !quote; k++)
		{
			char ch = s[k];

			quote = ch == '"' || ch == '\\' || ch == '{' || ch == '}' ||
					ch == ct->typdelim || array_isspace(ch);
		}
		if (!quote)
			appendBinaryStringInfo(&out, s, slen);
		else
		{
			appendStringInfoChar(&out, '"');
			for (int k = 0; k < slen; k++)
			{
				if (s[k] == '"' || s[k] == '\\')
					appendStringInfoChar(&out, '\\');
				appendStringInfoChar(&out, s[k]);
			}
			appendStringInfoChar(&out, '"');
		}
		pfree(unconstify(char *, s));
	}
	appendStringInfoChar(&out, '}');
	pfree(items);
	pfree(nulls);
	*len = out.len;
	return out.data;
}

/*
 * render_text returns the text form of a non-null value and sets *len to
 * its length: palloc'd in the current memory context, except for booleans
 * (constants); NUL-terminated either way.
 */
const char *
render_text(const ColType *ct, Datum value, int *len)
{
	char *s;

	if (ct->kind == VK_BOOL)
	{
		*len = DatumGetBool(value) ? 4 : 5;
		return DatumGetBool(value) ? "true" : "false";
	}
	switch (ct->fast)
	{
		case TF_INT2:
			s = palloc(7);
			*len = pg_itoa(DatumGetInt16(value), s);
			return s;
		case TF_INT4:
			s = palloc(12);
			*len = pg_ltoa(DatumGetInt32(value), s);
			return s;
		case TF_INT8:
			s = palloc(MAXINT8LEN + 1);
			*len = pg_lltoa(DatumGetInt64(value), s);
			return s;
		case TF_OID:
			s = palloc(12);
			*len = pg_ultoa_n(DatumGetObjectId(value), s);
			s[*len] = '\0';
			return s;
		case TF_TEXT:
		{
			/* text_to_cstring, as textout, varcharout and bpcharout */
			text *t = pg_detoast_datum_packed((struct varlena *)
												  DatumGetPointer(value));

			*len = VARSIZE_ANY_EXHDR(t);
			s = palloc(*len + 1);
			memcpy(s, VARDATA_ANY(t), *len);
			s[*len] = '\0';
			if (t != (text *) DatumGetPointer(value))
				pfree(t);
			return s;
		}
		case TF_FLOAT8:
			s = float8out_internal(DatumGetFloat8(value));
			break;
		case TF_DATE:
		case TF_TIMESTAMP:
		case TF_TIMESTAMPTZ:
			s = palloc(MAXDATELEN + 1);
			if (!datetime_text(ct->fast, value, s))
			{
				/* out of range: the output function raises its error */
				pfree(s);
				s = OutputFunctionCall((FmgrInfo *) &ct->outfunc, value);
			}
			break;
		case TF_JSONB:
		{
			Jsonb *jb = DatumGetJsonbP(value);

			s = JsonbToCString(NULL, &jb->root, VARSIZE(jb));
			break;
		}
		case TF_ARRAY:
			s = array_text(ct, value, len);
			if (s != NULL)
				return s;
			s = OutputFunctionCall((FmgrInfo *) &ct->outfunc, value);
			break;
		default:
			s = OutputFunctionCall((FmgrInfo *) &ct->outfunc, value);
			break;
	}
	*len = strlen(s);
	return s;
}

/*
 * render_is_json_number tells whether s, as PostgreSQL printed a number,
 * is also a valid JSON number (not NaN, Infinity or a form JSON lacks).
 */
bool
render_is_json_number(const char *s)
{
	const char *p = s;

	if (*p == '-')
		p++;
	if (!isdigit((unsigned char) *p))
		return false;
	if (*p == '0' && isdigit((unsigned char) p[1]))
		return false;
	while (isdigit((unsigned char) *p))
		p++;
	if (*p == '.')
	{
		p++;
		if (!isdigit((unsigned char) *p))
			return false;
		while (isdigit((unsigned char) *p))
			p++;
	}
	if (*p == 'e' || *p == 'E')
	{
		p++;
		if (*p == '+' || *p == '-')
			p++;
		if (!isdigit((unsigned char) *p))
			return false;
		while (isdigit((unsigned char) *p))
			p++;
	}
	return *p == '\0';
}

/*
 * render_parse_int64 reads s[0..len) as a plain decimal integer; false if it is
 * not one or does not fit.
 */
bool
render_parse_int64(const char *s, int len, int64 *out)
{
	int64 v = 0;
	bool  neg = false;
	int	  i = 0;

	if (len > 0 && (s[0] == '-' || s[0] == '+'))
	{
		neg = s[0] == '-';
		i++;
	}
	if (i == len || len - i > 18)
		return false;
	for (; i < len; i++)
	{
		if (!isdigit((unsigned char) s[i]))
			return false;
		v = v * 10 + (s[i] - '0');
	}
	*out = neg ? -v : v;
	return true;
}

/*
 * render_is_number tells whether s[0..len) is a decimal number numeric_in
 * accepts: one sign, digits, optional fraction, optional exponent of at most
 * 1000 in magnitude (numeric_in's own limit).  Callers pass such strings to
 * numeric_in in the decoder, where an error would stop the stream, so
 * anything doubtful is "not a number" (and compared as text).
 */
bool
render_is_number(const char *s, int len)
{
	char	   *copy;
	const char *e;
	bool		ok;

	if (len == 0 || len > 1000)
		return false;
	copy = pnstrdup(s, len);
	/* a leading '+' is accepted, but not followed by another sign */
	ok = !(copy[0] == '+' && (copy[1] == '-' || copy[1] == '+')) &&
		 render_is_json_number(copy[0] == '+' ? copy + 1 : copy);
	if (ok &&
		((e = strchr(copy, 'e')) != NULL || (e = strchr(copy, 'E')) != NULL))
	{
		const char *d = e + 1;

		if (*d == '+' || *d == '-')
			d++;
		while (*d == '0')
			d++;
		/* more than four significant digits, or above 1000 */
		ok = strlen(d) < 4 || (strlen(d) == 4 && strcmp(d, "1000") <= 0);
	}
	pfree(copy);
	return ok;
}

/* render_json_string appends s[0..len) as a JSON string. */
void
render_json_string(StringInfo out, const char *s, int len)
{
	if (s[len] == '\0')
		escape_json(out, s);
	else
	{
		char *copy = pnstrdup(s, len);

		escape_json(out, copy);
		pfree(copy);
	}
}

/*
 * render_array_dim appends dimension dim of an array (elements from *next
 * on) as a nested JSON array.
 */
static void
render_array_dim(const ColType *elem, int ndim, const int *dims, int dim,
				 Datum *values, bool *nulls, int *next, StringInfo out)
{
	appendStringInfoChar(out, '[');
	for (int i = 0; i < dims[dim]; i++)
	{
		if (i > 0)
			appendStringInfoChar(out, ',');
		if (dim + 1 < ndim)
			render_array_dim(elem, ndim, dims, dim + 1, values, nulls, next,
							 out);
		else
		{
			render_json(elem, values[*next], nulls[*next], out);
			(*next)++;
		}
	}
	appendStringInfoChar(out, ']');
}

/*
 * render_composite appends a composite value as a JSON object of its
 * attributes, named as the type names them, as to_jsonb() does.  The type
 * is read from the value itself: an attribute added or retyped since the
 * column's type was cached gets its lookups here, once per value.
 */
static void
render_composite(const ColType *ct, Datum value, StringInfo out)
{
	HeapTupleHeader td = DatumGetHeapTupleHeader(value);
	TupleDesc desc = lookup_rowtype_tupdesc_copy(HeapTupleHeaderGetTypeId(td),
												 HeapTupleHeaderGetTypMod(td));
	HeapTupleData tuple;
	Datum		 *values = palloc(sizeof(Datum) * desc->natts);
	bool		 *nulls = palloc(sizeof(bool) * desc->natts);
	bool		  first = true;

	check_stack_depth();
	tuple.t_len = HeapTupleHeaderGetDatumLength(td);
	ItemPointerSetInvalid(&tuple.t_self);
	tuple.t_tableOid = InvalidOid;
	tuple.t_data = td;
	heap_deform_tuple(&tuple, desc, values, nulls);

	appendStringInfoChar(out, '{');
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		ColType			  fresh;
		const ColType	 *field = &fresh;

		if (att->attisdropped)
			continue;
		if (!first)
			appendStringInfoChar(out, ',');
		first = false;
		escape_json(out, NameStr(att->attname));
		appendStringInfoChar(out, ':');
		if (i < ct->nfields && ct->fieldtypes[i] == att->atttypid)
			field = &ct->fields[i];
		else
		{
			/* no look ahead: the value's own attributes bound the cost */
			int budget = 0;

			coltype_init(&fresh, att->atttypid, CurrentMemoryContext, &budget);
		}
		render_json(field, values[i], nulls[i], out);
	}
	appendStringInfoChar(out, '}');
}

/*
 * render_json appends the JSON form of a value (null included) to out.
 */
void
render_json(const ColType *ct, Datum value, bool isnull, StringInfo out)
{
	char *text;
	int	  len;

	if (isnull)
	{
		appendStringInfoString(out, "null");
		return;
	}

	switch (ct->kind)
	{
		case VK_BOOL:
			appendStringInfoString(out,
								   DatumGetBool(value) ? "true" : "false");
			return;
		case VK_ARRAY:
		{
			ArrayType *arr = DatumGetArrayTypeP(value);
			Datum	  *values;
			bool	  *nulls;
			int		   n;
			int		   next = 0;

			deconstruct_array(arr, ct->elem->typid, ct->elem->typlen,
							  ct->elem->typbyval, ct->elem->typalign, &values,
							  &nulls, &n);
			if (ARR_NDIM(arr) == 0)
				appendStringInfoString(out, "[]");
			else
				render_array_dim(ct->elem, ARR_NDIM(arr), ARR_DIMS(arr), 0,
								 values, nulls, &next, out);
			return;
		}
		case VK_DATETIME:
		{
			char buf[MAXDATELEN + 1];

			/* the session's TimeZone is UTC (render_push_settings) */
			JsonEncodeDateTime(buf, value, ct->base, NULL);
			appendStringInfoChar(out, '"');
			appendStringInfoString(out, buf);
			appendStringInfoChar(out, '"');
			return;
		}
		case VK_COMPOSITE:
			render_composite(ct, value, out);
			return;
		default:
			break;
	}

	text = unconstify(char *, render_text(ct, value, &len));
	switch (ct->kind)
	{
		case VK_INTEGER:
		case VK_JSON:
			appendBinaryStringInfo(out, text, len);
			break;
		case VK_FLOAT:
			if (pg2r_numeric_mode == PG2R_NUMERIC_NUMBER &&
				render_is_json_number(text))
				appendStringInfoString(out, text);
			else
				escape_json(out, text);
			break;
		default:
			escape_json(out, text);
			break;
	}
	pfree(text);
}

/*
 * The settings that shape output functions' text, fixed so that what the
 * rules render does not depend on the session: ISO dates in UTC,
 * PostgreSQL intervals, shortest exact floats, hex bytea.  The worker and
 * the SQL functions that render (preview) apply this one table, so that
 * they render identically.
 */
static const char *const output_settings[][2] = {
	{"DateStyle", "ISO, YMD"},	   {"TimeZone", "UTC"},
	{"IntervalStyle", "postgres"}, {"extra_float_digits", "1"},
	{"bytea_output", "hex"},
};

/*
 * render_apply_settings sets the output settings above with the given
 * context, source and action (see set_config_option).
 */
void
render_apply_settings(GucContext context, GucSource source, GucAction action)
{
	for (size_t i = 0; i < lengthof(output_settings); i++)
		(void) set_config_option(output_settings[i][0], output_settings[i][1],
								 context, source, action, true, 0, false);
}

/*
 * render_push_settings fixes, until render_pop_settings(level), the
 * settings that shape output functions' text (render_apply_settings).
 * Returns the GUC nest level to pop; an error in between is undone by
 * transaction abort.
 */
int
render_push_settings(void)
{
	int level = NewGUCNestLevel();

	render_apply_settings(PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE);
	return level;
}

/* render_pop_settings restores the settings render_push_settings changed. */
void
render_pop_settings(int level)
{
	AtEOXact_GUC(true, level);
}
