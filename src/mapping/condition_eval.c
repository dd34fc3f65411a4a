/*-------------------------------------------------------------------------
 *
 * condition_eval.c
 *	  The condition language of rules, eval half: a compiled Condition
 *	  evaluated on one row change (condition.c compiles it).
 *
 * Owns pg2r_compare_values (how conditions compare two values) and
 * condition_eval.  It belongs to the mapping stage: it reads columns through
 * mapping_column_text and expands values through mapping_expand_arg
 * (expand_int.h), and calls nothing in the rules stage but the Condition
 * type of condition.h.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/builtins.h"
#include "utils/numeric.h"

#include "pg2redis/condition.h"
#include "pg2redis/render.h"

#include "expand_int.h"

/*
 * pg2r_compare_values compares two values as conditions do: numerically
 * when both are numbers, else as bytes.  Returns <0, 0 or >0.
 */
int
pg2r_compare_values(const char *a, int alen, const char *b, int blen)
{
	int64 ia, ib;

	if (render_parse_int64(a, alen, &ia) && render_parse_int64(b, blen, &ib))
		return ia < ib ? -1 : (ia > ib ? 1 : 0);
	if (render_is_number(a, alen) && render_is_number(b, blen))
	{
		Datum na =
			DirectFunctionCall3(numeric_in, CStringGetDatum(pnstrdup(a, alen)),
								ObjectIdGetDatum(InvalidOid),
								Int32GetDatum(-1));
		Datum nb =
			DirectFunctionCall3(numeric_in, CStringGetDatum(pnstrdup(b, blen)),
								ObjectIdGetDatum(InvalidOid),
								Int32GetDatum(-1));

		return DatumGetInt32(DirectFunctionCall2(numeric_cmp, na, nb));
	}
	{
		int cmp = memcmp(a, b, Min(alen, blen));

		if (cmp != 0)
			return cmp;
		return alen < blen ? -1 : (alen > blen ? 1 : 0);
	}
}

/*
 * leaf_value expands condition value i; returns false with the error in
 * st->err.
 */
static bool
leaf_value(const Condition *cond, int i, ExpandState *st, StringInfo out)
{
	resetStringInfo(out);
	return mapping_expand_arg(st, &cond->values[i], out);
}

/*
 * eval_null_test evaluates is_null / is_not_null on a column read as res:
 * 1 true, 0 false, -1 when the value is unavailable.
 */
static int
eval_null_test(const Condition *cond, ColResult res)
{
	if (res == COL_UNAVAILABLE)
		return -1;
	/* an unchanged TOASTed value is not null */
	return (res == COL_NULL) == (cond->op == CONDOP_IS_NULL);
}

/*
 * eval_changed evaluates "changed" on the new value (res, text, len) against
 * the old one: 1 true, 0 false, -1 error in st->err, -2 when a value is
 * unavailable.
 */
static int
eval_changed(const Condition *cond, ExpandState *st, ColResult res,
			 const char *text, int len)
{
	const char *otext = NULL;
	int			olen = 0;
	ColResult	ores;

	if (res == COL_UNCHANGED_TOAST)
		return 0;
	ores = mapping_column_text(st, cond->col, true, &otext, &olen);
	if (ores == COL_ERROR)
		return -1;
	if (ores == COL_UNAVAILABLE || res == COL_UNAVAILABLE)
		return -2;
	if (ores == COL_UNCHANGED_TOAST)
		return 0;
	if ((res == COL_NULL) != (ores == COL_NULL))
		return 1;
	if (res == COL_NULL)
		return 0;
	return len != olen || memcmp(text, otext, len) != 0;
}

/*
 * eval_in evaluates in / not_in on a non-null value: 1 true, 0 false, -1
 * error in st->err.
 */
static int
eval_in(const Condition *cond, ExpandState *st, const char *text, int len,
		StringInfo val)
{
	for (int i = 0; i < cond->nvalues; i++)
	{
		if (!leaf_value(cond, i, st, val))
			return -1;
		if (pg2r_compare_values(text, len, val->data, val->len) == 0)
			return cond->op == CONDOP_IN;
	}
	return cond->op == CONDOP_NOT_IN;
}

/*
 * eval_compare evaluates is_distinct_from and the comparisons (=, <>, <, <=,
 * >, >=, in, not_in) on a column read as res: 1 true, 0 false, -1 error in
 * st->err.  The value must be available (not COL_UNAVAILABLE or
 * COL_UNCHANGED_TOAST).
 */
static int
eval_compare(const Condition *cond, ExpandState *st, ColResult res,
			 const char *text, int len)
{
	StringInfoData val;

	initStringInfo(&val);
	if (cond->op == CONDOP_IS_DISTINCT_FROM)
	{
		if (!leaf_value(cond, 0, st, &val))
			return -1;
		if (res == COL_NULL)
			return 1;
		return pg2r_compare_values(text, len, val.data, val.len) != 0;
	}
	if (res == COL_NULL)
		return 0;
	if (cond->op == CONDOP_IN || cond->op == CONDOP_NOT_IN)
		return eval_in(cond, st, text, len, &val);
	if (!leaf_value(cond, 0, st, &val))
		return -1;
	{
		int cmp = pg2r_compare_values(text, len, val.data, val.len);

		switch (cond->op)
		{
			case CONDOP_EQ:
				return cmp == 0;
			case CONDOP_NE:
				return cmp != 0;
			case CONDOP_LT:
				return cmp < 0;
			case CONDOP_LE:
				return cmp <= 0;
			case CONDOP_GT:
				return cmp > 0;
			default:
				return cmp >= 0;
		}
	}
}

/* eval_leaf evaluates a leaf: 1 true, 0 false, -1 error in st->err. */
static int
eval_leaf(const Condition *cond, ExpandState *st)
{
	const char *text = NULL;
	int			len = 0;
	ColResult	res;
	int			r;

	res = mapping_column_text(st, cond->col, cond->old, &text, &len);
	if (res == COL_ERROR)
		return -1;

	switch (cond->op)
	{
		case CONDOP_IS_NULL:
		case CONDOP_IS_NOT_NULL:
			r = eval_null_test(cond, res);
			if (r >= 0)
				return r;
			break;
		case CONDOP_CHANGED:
			r = eval_changed(cond, st, res, text, len);
			if (r != -2)
				return r;
			break;
		default:
			if (res == COL_UNAVAILABLE || res == COL_UNCHANGED_TOAST)
				break;
			return eval_compare(cond, st, res, text, len);
	}

	pg2r_fail(&st->err, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
			  "Set REPLICA IDENTITY FULL on the table so that PostgreSQL logs every old value.",
			  "condition on column \"%s\" needs a value PostgreSQL did not send",
			  cond->colname);
	return -1;
}

/*
 * condition_eval evaluates a compiled condition on the change in *st:
 * 1 true, 0 false, -1 on error (st->err says why).
 */
int
condition_eval(const Condition *cond, ExpandState *st)
{
	int r;

	switch (cond->kind)
	{
		case COND_LEAF:
			return eval_leaf(cond, st);
		case COND_NOT:
			r = condition_eval(cond->children[0], st);
			return r < 0 ? r : !r;
		case COND_ALL:
		case COND_ANY:
			for (int i = 0; i < cond->nchildren; i++)
			{
				r = condition_eval(cond->children[i], st);
				if (r < 0)
					return r;
				if (r == (cond->kind == COND_ANY))
					return r;
			}
			return cond->kind == COND_ALL;
	}
	return 0;
}
