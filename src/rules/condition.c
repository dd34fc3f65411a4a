/*-------------------------------------------------------------------------
 *
 * condition.c
 *	  The condition language of rules, compile half: jsonb to Condition, once
 *	  per rule (condition_eval.c evaluates it per row).
 *
 * A condition is a JSON object: a leaf {"column", "op", "value" | "values",
 * "old"}, or a combination {"all": [...]}, {"any": [...]}, {"not": {...}}.
 * Values may hold placeholders; they are compiled as one-argument templates.
 * Values compare numerically when both sides parse as numbers, else as text
 * (byte order).  A comparison with a NULL column is false, as in SQL, except
 * for is_null, is_not_null, is_distinct_from and changed, which are null-safe.
 *
 * Compilation is strict: an unknown key or op, a missing value, a column the
 * relation lacks are all errors, returned as values (see template.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

#include "pg2redis/condition.h"

static const struct
{
	const char *name;
	CondOp		op;
} cond_ops[] = {
	{"=", CONDOP_EQ},
	{"<>", CONDOP_NE},
	{"!=", CONDOP_NE},
	{"<", CONDOP_LT},
	{"<=", CONDOP_LE},
	{">", CONDOP_GT},
	{">=", CONDOP_GE},
	{"in", CONDOP_IN},
	{"not_in", CONDOP_NOT_IN},
	{"is_null", CONDOP_IS_NULL},
	{"is_not_null", CONDOP_IS_NOT_NULL},
	{"is_distinct_from", CONDOP_IS_DISTINCT_FROM},
	{"changed", CONDOP_CHANGED},
};

#define COND_HINT_SHAPE                                                       \
	"A condition is {\"column\": …, \"op\": …, \"value\": …} or {\"all\": […]}, {\"any\": […]}, {\"not\": {…}}."

static Condition *compile_node(JsonbContainer *obj, TupleDesc desc,
							   Pg2rError *err);

/* scalar_text returns a JSON scalar as the text conditions compare. */
static char *
scalar_text(const JsonbValue *v)
{
	switch (v->type)
	{
		case jbvString:
			return pnstrdup(v->val.string.val, v->val.string.len);
		case jbvNumeric:
			return DatumGetCString(DirectFunctionCall1(numeric_out,
													   NumericGetDatum(v->val
																		   .numeric)));
		case jbvBool:
			return pstrdup(v->val.boolean ? "true" : "false");
		default:
			return NULL;
	}
}

/*
 * compile_value compiles one condition value (a JSON string, number or
 * boolean, possibly with placeholders) into *arg.
 */
static bool
compile_value(const JsonbValue *v, TupleDesc desc, TplArg *arg, Pg2rError *err)
{
	char *text = scalar_text(v);

	if (text == NULL)
		return pg2r_fail(err, ERRCODE_INVALID_PARAMETER_VALUE,
						 "Write values as JSON strings, numbers or booleans; test NULL with is_null.",
						 "condition value must be a string, number or boolean");
	return template_parse_arg(text, desc, false, arg, err);
}

/* compile_list compiles the array of conditions under all/any. */
static bool
compile_list(const JsonbValue *v, const char *key, TupleDesc desc,
			 Condition *cond, Pg2rError *err)
{
	JsonbIterator	  *it;
	JsonbValue		   elem;
	JsonbIteratorToken tok;
	List			  *children = NIL;
	ListCell		  *lc;
	int				   i = 0;

	if (v->type != jbvBinary || !JsonContainerIsArray(v->val.binary.data))
		return pg2r_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, COND_HINT_SHAPE,
						 "condition \"%s\" must be an array of conditions",
						 key);
	it = JsonbIteratorInit(v->val.binary.data);
	while ((tok = JsonbIteratorNext(&it, &elem, true)) != WJB_DONE)
	{
		Condition *child;

		if (tok != WJB_ELEM)
			continue;
		if (elem.type != jbvBinary ||
			!JsonContainerIsObject(elem.val.binary.data))
			return pg2r_fail(err, ERRCODE_INVALID_PARAMETER_VALUE,
							 COND_HINT_SHAPE,
							 "each element of \"%s\" must be a condition object",
							 key);
		child = compile_node(elem.val.binary.data, desc, err);
		if (child == NULL)
			return false;
		children = lappend(children, child);
	}
	if (children == NIL)
		return pg2r_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, COND_HINT_SHAPE,
						 "condition \"%s\" must not be empty", key);
	cond->nchildren = list_length(children);
	cond->children = palloc(sizeof(Condition *) * cond->nchildren);
	foreach(lc, children)
		cond->children[i++] = lfirst(lc);
	return true;
}

/*
 * compile_in_values compiles the "values" array of an in / not_in leaf
 * into cond->values.  Returns false with *err set on error.
 */
static bool
compile_in_values(JsonbContainer *obj, TupleDesc desc, Condition *cond,
				  const char *opname, Pg2rError *err)
{
	JsonbValue		   val;
	JsonbIterator	  *it;
	JsonbValue		   elem;
	JsonbIteratorToken tok;
	int				   n = 0;

	if (!getKeyJsonValueFromContainer(obj, "values", 6, &val) ||
		val.type != jbvBinary || !JsonContainerIsArray(val.val.binary.data))
		return pg2r_fail(err, ERRCODE_INVALID_PARAMETER_VALUE,
						 "Write {\"column\": …, \"op\": \"in\", \"values\": [ … ]}.",
						 "condition op \"%s\" needs a \"values\" array",
						 opname);
	cond->nvalues = JsonContainerSize(val.val.binary.data);
	cond->values = palloc0(sizeof(TplArg) * Max(cond->nvalues, 1));
	it = JsonbIteratorInit(val.val.binary.data);
	while ((tok = JsonbIteratorNext(&it, &elem, true)) != WJB_DONE)
		if (tok == WJB_ELEM &&
			!compile_value(&elem, desc, &cond->values[n++], err))
			return false;
	return true;
}

/*
 * check_no_value checks that an is_null / is_not_null / changed leaf has no
 * "value" or "values", and that "changed" has no "old".  Returns false with
 * *err set otherwise.
 */
static bool
check_no_value(JsonbContainer *obj, const Condition *cond, const char *opname,
			   Pg2rError *err)
{
	JsonbValue val;

	if (getKeyJsonValueFromContainer(obj, "value", 5, &val) ||
		getKeyJsonValueFromContainer(obj, "values", 6, &val))
		return pg2r_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, NULL,
						 "condition op \"%s\" takes no value", opname);
	if (cond->op == CONDOP_CHANGED && cond->old)
		return pg2r_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, NULL,
						 "condition op \"changed\" already compares old and new; remove \"old\"");
	return true;
}

/* compile_leaf compiles {"column", "op", "value" | "values", "old"}. */
static bool
compile_leaf(JsonbContainer *obj, TupleDesc desc, Condition *cond,
			 Pg2rError *err)
{
	JsonbValue col, op, val, old;
	char	  *opname;
	bool	   found = false;
	TplArg	   colarg;

	if (!getKeyJsonValueFromContainer(obj, "column", 6, &col) ||
		col.type != jbvString)
		return pg2r_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, COND_HINT_SHAPE,
						 "condition needs a \"column\" string");
	if (!getKeyJsonValueFromContainer(obj, "op", 2, &op) ||
		op.type != jbvString)
		return pg2r_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, COND_HINT_SHAPE,
						 "condition needs an \"op\" string");

	/* Resolve the column as a {col} placeholder would be. */
	cond->colname = pnstrdup(col.val.string.val, col.val.string.len);
	if (!template_parse_arg(psprintf("{%s}", cond->colname), desc, false,
							&colarg, err))
		return false;
	if (colarg.nparts != 1 || colarg.parts[0].kind != TPL_COL)
		return pg2r_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, NULL,
						 "condition column \"%s\" is not a column name",
						 cond->colname);
	cond->col = colarg.parts[0].cols[0];

	opname = pnstrdup(op.val.string.val, op.val.string.len);
	for (size_t i = 0; i < lengthof(cond_ops); i++)
		if (strcmp(opname, cond_ops[i].name) == 0)
		{
			cond->op = cond_ops[i].op;
			found = true;
		}
	if (!found)
		return pg2r_fail(err, ERRCODE_INVALID_PARAMETER_VALUE,
						 "Known ops are =, <>, !=, <, <=, >, >=, in, not_in, is_null, is_not_null, is_distinct_from and changed.",
						 "unknown condition op \"%s\"", opname);

	if (getKeyJsonValueFromContainer(obj, "old", 3, &old))
	{
		if (old.type != jbvBool)
			return pg2r_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, NULL,
							 "condition key \"old\" must be true or false");
		cond->old = old.val.boolean;
	}

	switch (cond->op)
	{
		case CONDOP_IN:
		case CONDOP_NOT_IN:
			return compile_in_values(obj, desc, cond, opname, err);
		case CONDOP_IS_NULL:
		case CONDOP_IS_NOT_NULL:
		case CONDOP_CHANGED:
			return check_no_value(obj, cond, opname, err);
		default:
			if (!getKeyJsonValueFromContainer(obj, "value", 5, &val))
				return pg2r_fail(err, ERRCODE_INVALID_PARAMETER_VALUE,
								 "Write {\"column\": …, \"op\": …, \"value\": …}.",
								 "condition op \"%s\" needs a \"value\"",
								 opname);
			cond->nvalues = 1;
			cond->values = palloc0(sizeof(TplArg));
			if (!compile_value(&val, desc, &cond->values[0], err))
				return false;
			break;
	}
	return true;
}

/*
 * compile_node compiles one condition object, refusing keys it does not
 * know.  Returns NULL with *err set on error.
 */
static Condition *
compile_node(JsonbContainer *obj, TupleDesc desc, Pg2rError *err)
{
	Condition		  *cond = palloc0(sizeof(Condition));
	JsonbIterator	  *it;
	JsonbValue		   v;
	JsonbIteratorToken tok;
	bool			   combinator = false;
	bool			   leaf = false;
	int				   nkeys = 0;

	check_stack_depth();
	it = JsonbIteratorInit(obj);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		char *key;

		if (tok != WJB_KEY)
			continue;
		key = pnstrdup(v.val.string.val, v.val.string.len);
		nkeys++;
		if (strcmp(key, "all") == 0 || strcmp(key, "any") == 0 ||
			strcmp(key, "not") == 0)
			combinator = true;
		else if (strcmp(key, "column") == 0 || strcmp(key, "op") == 0 ||
				 strcmp(key, "value") == 0 || strcmp(key, "values") == 0 ||
				 strcmp(key, "old") == 0)
			leaf = true;
		else
		{
			pg2r_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, COND_HINT_SHAPE,
					  "unknown condition key \"%s\"", key);
			return NULL;
		}
	}
	if (nkeys == 0 || (combinator && (leaf || nkeys > 1)))
	{
		pg2r_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, COND_HINT_SHAPE,
				  nkeys == 0
					  ? "condition object is empty"
					  : "condition mixes \"all\", \"any\" or \"not\" with other keys");
		return NULL;
	}

	if (leaf)
	{
		cond->kind = COND_LEAF;
		return compile_leaf(obj, desc, cond, err) ? cond : NULL;
	}
	if (getKeyJsonValueFromContainer(obj, "not", 3, &v))
	{
		cond->kind = COND_NOT;
		if (v.type != jbvBinary || !JsonContainerIsObject(v.val.binary.data))
		{
			pg2r_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, COND_HINT_SHAPE,
					  "condition \"not\" must hold a condition object");
			return NULL;
		}
		cond->nchildren = 1;
		cond->children = palloc(sizeof(Condition *));
		cond->children[0] = compile_node(v.val.binary.data, desc, err);
		return cond->children[0] ? cond : NULL;
	}
	if (getKeyJsonValueFromContainer(obj, "all", 3, &v))
	{
		cond->kind = COND_ALL;
		return compile_list(&v, "all", desc, cond, err) ? cond : NULL;
	}
	getKeyJsonValueFromContainer(obj, "any", 3, &v);
	cond->kind = COND_ANY;
	return compile_list(&v, "any", desc, cond, err) ? cond : NULL;
}

/*
 * condition_compile compiles a rule's condition against its relation.
 * Returns NULL with *err set when the condition is malformed.
 */
Condition *
condition_compile(Jsonb *json, TupleDesc desc, Pg2rError *err)
{
	if (!JB_ROOT_IS_OBJECT(json))
	{
		pg2r_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, COND_HINT_SHAPE,
				  "condition must be a JSON object");
		return NULL;
	}
	return compile_node(&json->root, desc, err);
}

/* condition_needs adds the columns a condition reads to *needs. */
void
condition_needs(const Condition *cond, TplNeeds *needs)
{
	if (cond->kind != COND_LEAF)
	{
		for (int i = 0; i < cond->nchildren; i++)
			condition_needs(cond->children[i], needs);
		return;
	}
	needs->any_column = true;
	if (cond->op == CONDOP_CHANGED)
	{
		needs->cur = bms_add_member(needs->cur, cond->col);
		needs->old = bms_add_member(needs->old, cond->col);
	}
	else if (cond->old)
		needs->old = bms_add_member(needs->old, cond->col);
	else
		needs->cur = bms_add_member(needs->cur, cond->col);
	for (int i = 0; i < cond->nvalues; i++)
		template_arg_needs(&cond->values[i], needs);
}
