/*-------------------------------------------------------------------------
 *
 * template.c
 *	  Parsing command templates into their compiled form.
 *
 * A rule's command is an array of elements, one per Redis argument.  Each
 * element mixes literal text with placeholders in braces; "{{" and "}}" are
 * literal braces.  Parsing happens once per rule (when it is validated and
 * when the rule cache is built): column names are resolved to attribute
 * numbers of the rule's relation here, so that expanding a template per row
 * (mapping.c) is a walk over parts with no lookups by name.
 *
 * Errors are returned as values (Pg2rError), never raised: a rule that no
 * longer compiles (a column dropped after it was written) must turn into a
 * dead letter in the stream, not into an ERROR inside the decoder.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/tupdesc.h"
#include "catalog/pg_attribute.h"
#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "utils/builtins.h"

#include "pg2redis/template.h"

/* Meta placeholders, written {%name%}. */
static const struct
{
	const char *name;
	TplKind		kind;
} meta_placeholders[] = {
	{"schema", TPL_SCHEMA},
	{"table", TPL_TABLE},
	{"op", TPL_OP},
	{"pk", TPL_PK},
	{"pk_escaped", TPL_PK_ESCAPED},
	{"xid", TPL_XID},
	{"lsn", TPL_LSN},
	{"commit_time", TPL_COMMIT_TIME},
};

/* Trim ASCII white space from both ends of s[0..len) in place. */
static char *
trim_name(char *s)
{
	char *end;

	while (*s == ' ' || *s == '\t')
		s++;
	end = s + strlen(s);
	while (end > s && (end[-1] == ' ' || end[-1] == '\t'))
		*--end = '\0';
	return s;
}

/*
 * find_column returns the attnum of the live column called name in desc,
 * or InvalidAttrNumber.
 */
static AttrNumber
find_column(TupleDesc desc, const char *name)
{
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (!att->attisdropped && strcmp(NameStr(att->attname), name) == 0)
			return att->attnum;
	}
	return InvalidAttrNumber;
}

/*
 * resolve_columns fills part's column arrays from a comma-separated list of
 * names, or from every live column for "*".  Returns false with *err set if
 * a name is empty or not a column of desc.
 */
static bool
resolve_columns(char *list, TupleDesc desc, TplPart *part, Pg2rError *err)
{
	char *trimmed = trim_name(list);

	if (strcmp(trimmed, "*") == 0)
	{
		part->cols = palloc(sizeof(AttrNumber) * Max(desc->natts, 1));
		part->colnames = palloc(sizeof(char *) * Max(desc->natts, 1));
		part->ncols = 0;
		for (int i = 0; i < desc->natts; i++)
		{
			Form_pg_attribute att = TupleDescAttr(desc, i);

			if (att->attisdropped)
				continue;
			part->cols[part->ncols] = att->attnum;
			part->colnames[part->ncols] = pstrdup(NameStr(att->attname));
			part->ncols++;
		}
		return true;
	}

	{
		int	  n = 1;
		char *p;

		for (p = trimmed; *p; p++)
			if (*p == ',')
				n++;
		part->cols = palloc(sizeof(AttrNumber) * n);
		part->colnames = palloc(sizeof(char *) * n);
		part->ncols = 0;
	}

	for (char *tok = trimmed;;)
	{
		char	  *comma = strchr(tok, ',');
		char	  *name;
		AttrNumber attnum;

		if (comma)
			*comma = '\0';
		name = trim_name(tok);
		if (*name == '\0')
			return pg2r_fail(err, ERRCODE_SYNTAX_ERROR,
							 "List columns separated by commas, or write * for all columns.",
							 "empty column name in a column list");
		attnum = find_column(desc, name);
		if (attnum == InvalidAttrNumber)
			return pg2r_fail(err, ERRCODE_UNDEFINED_COLUMN,
							 "Placeholders name columns exactly as the table spells them.",
							 "column \"%s\" does not exist", name);
		part->cols[part->ncols] = attnum;
		part->colnames[part->ncols] = pstrdup(name);
		part->ncols++;
		if (!comma)
			break;
		tok = comma + 1;
	}
	return true;
}

/*
 * parse_placeholder compiles the text between braces into *part.  Returns
 * false with *err set for an unknown or malformed placeholder.
 */
static bool
parse_placeholder(char *body, TupleDesc desc, TplPart *part, Pg2rError *err)
{
	size_t blen = strlen(body);
	char  *colon;

	memset(part, 0, sizeof(*part));

	if (blen >= 2 && body[0] == '%' && body[blen - 1] == '%')
	{
		body[blen - 1] = '\0';
		for (size_t i = 0; i < lengthof(meta_placeholders); i++)
		{
			if (strcmp(body + 1, meta_placeholders[i].name) == 0)
			{
				part->kind = meta_placeholders[i].kind;
				return true;
			}
		}
		return pg2r_fail(err, ERRCODE_SYNTAX_ERROR,
						 "Known are {%schema%}, {%table%}, {%op%}, {%pk%}, {%pk_escaped%}, {%xid%}, {%lsn%} and {%commit_time%}.",
						 "unknown placeholder \"{%s%%}\"", body);
	}

	colon = strchr(body, ':');
	if (colon)
	{
		char *prefix = body;
		char *rest = colon + 1;

		*colon = '\0';
		prefix = trim_name(prefix);
		if (strcmp(prefix, "pairs") == 0 || strcmp(prefix, "json") == 0 ||
			strcmp(prefix, "columns") == 0)
		{
			part->kind = prefix[0] == 'j' ? TPL_JSON : TPL_PAIRS;
			part->names_only = prefix[0] == 'c';
			return resolve_columns(rest, desc, part, err);
		}
		if (strcmp(prefix, "old") == 0 || strcmp(prefix, "diff") == 0 ||
			strcmp(prefix, "esc") == 0)
		{
			part->kind = prefix[0] == 'o'	? TPL_OLD
						 : prefix[0] == 'd' ? TPL_DIFF
											: TPL_ESC;
			rest = trim_name(rest);
			if (strchr(rest, ',') || strcmp(rest, "*") == 0)
				return pg2r_fail(err, ERRCODE_SYNTAX_ERROR,
								 "{old:…}, {diff:…} and {esc:…} take exactly one column.",
								 "placeholder \"{%s:%s}\" names more than one column",
								 prefix, rest);
			return resolve_columns(rest, desc, part, err);
		}
		return pg2r_fail(err, ERRCODE_SYNTAX_ERROR,
						 "Known prefixes are old:, diff:, esc:, pairs:, columns: and json:; write {{ and }} for literal braces.",
						 "unknown placeholder prefix \"%s:\"", prefix);
	}

	part->kind = TPL_COL;
	if (strchr(body, ',') || strcmp(trim_name(body), "*") == 0)
		return pg2r_fail(err, ERRCODE_SYNTAX_ERROR,
						 "Use {pairs:…} or {json:…} for several columns.",
						 "placeholder \"{%s}\" names more than one column",
						 body);
	return resolve_columns(body, desc, part, err);
}

/*
 * template_parse_arg compiles one template element.  allow_multi permits
 * {pairs:…}, which must then be the whole element.  Returns false with *err
 * set when the element is malformed or names an unknown column.
 */
bool
template_parse_arg(const char *source, TupleDesc desc, bool allow_multi,
				   TplArg *arg, Pg2rError *err)
{
	const char	  *p = source;
	StringInfoData lit;
	List		  *parts = NIL;
	ListCell	  *lc;
	int			   i;

	initStringInfo(&lit);
	arg->source = pstrdup(source);

	while (*p)
	{
		if (p[0] == '{' && p[1] == '{')
		{
			appendStringInfoChar(&lit, '{');
			p += 2;
		}
		else if (p[0] == '}' && p[1] == '}')
		{
			appendStringInfoChar(&lit, '}');
			p += 2;
		}
		else if (p[0] == '}')
			return pg2r_fail(err, ERRCODE_SYNTAX_ERROR,
							 "Write }} for a literal closing brace.",
							 "unmatched \"}\" in template argument \"%s\"",
							 source);
		else if (p[0] == '{')
		{
			const char *close = strchr(p + 1, '}');
			TplPart	   *part;

			if (close == NULL)
				return pg2r_fail(err, ERRCODE_SYNTAX_ERROR,
								 "Close the placeholder with }, or write {{ for a literal brace.",
								 "unterminated placeholder in template argument \"%s\"",
								 source);
			if (lit.len > 0)
			{
				part = palloc0(sizeof(TplPart));
				part->kind = TPL_LITERAL;
				part->text = pnstrdup(lit.data, lit.len);
				part->len = lit.len;
				parts = lappend(parts, part);
				resetStringInfo(&lit);
			}
			part = palloc0(sizeof(TplPart));
			if (!parse_placeholder(pnstrdup(p + 1, close - p - 1), desc, part,
								   err))
				return false;
			parts = lappend(parts, part);
			p = close + 1;
		}
		else
			appendStringInfoChar(&lit, *p++);
	}
	if (lit.len > 0 || parts == NIL)
	{
		TplPart *part = palloc0(sizeof(TplPart));

		part->kind = TPL_LITERAL;
		part->text = pnstrdup(lit.data, lit.len);
		part->len = lit.len;
		parts = lappend(parts, part);
	}

	arg->nparts = list_length(parts);
	arg->parts = palloc(sizeof(TplPart) * arg->nparts);
	i = 0;
	foreach(lc, parts)
	{
		TplPart *part = lfirst(lc);

		if (part->kind == TPL_PAIRS && (!allow_multi || arg->nparts != 1))
			return pg2r_fail(err, ERRCODE_SYNTAX_ERROR,
							 allow_multi
								 ? "Write {pairs:…} and {columns:…} as an argument of their own."
								 : "Use {json:…} to put several columns into one value.",
							 "{%s:…} must be a whole command argument, in \"%s\"",
							 part->names_only ? "columns" : "pairs", source);
		arg->parts[i++] = *part;
	}
	return true;
}

/*
 * template_compile parses every element of a command array against the
 * rule's relation.  Returns NULL with *err set on the first bad element;
 * the message says which element.
 */
Template *
template_compile(Datum *elems, int nelems, TupleDesc desc, Pg2rError *err)
{
	Template *tpl = palloc0(sizeof(Template));

	tpl->nargs = nelems;
	tpl->args = palloc0(sizeof(TplArg) * Max(nelems, 1));
	for (int i = 0; i < nelems; i++)
	{
		char *source = TextDatumGetCString(elems[i]);

		if (!template_parse_arg(source, desc, i > 0, &tpl->args[i], err))
		{
			err->message =
				psprintf("%s (command argument %d)", err->message, i + 1);
			return NULL;
		}
	}
	return tpl;
}

/* template_is_literal tells whether an element has no placeholder. */
bool
template_is_literal(const TplArg *arg)
{
	return arg->nparts == 1 && arg->parts[0].kind == TPL_LITERAL;
}

/* template_arg_needs adds the columns one element reads to *needs. */
void
template_arg_needs(const TplArg *arg, TplNeeds *needs)
{
	for (int i = 0; i < arg->nparts; i++)
	{
		const TplPart *part = &arg->parts[i];
		Bitmapset	 **set;

		switch (part->kind)
		{
			case TPL_PAIRS:
				/* {columns:…} renders names only: no value is read */
				if (part->names_only)
					continue;
				set = &needs->cur;
				break;
			case TPL_COL:
			case TPL_ESC:
			case TPL_JSON:
				set = &needs->cur;
				break;
			case TPL_OLD:
				set = &needs->old;
				break;
			case TPL_DIFF:
				set = &needs->diff;
				break;
			case TPL_PK:
			case TPL_PK_ESCAPED:
				needs->needs_pk = true;
				continue;
			default:
				continue;
		}
		needs->any_column = true;
		for (int c = 0; c < part->ncols; c++)
			*set = bms_add_member(*set, part->cols[c]);
	}
}

/* template_needs adds the columns a whole template reads to *needs. */
void
template_needs(const Template *tpl, TplNeeds *needs)
{
	for (int i = 0; i < tpl->nargs; i++)
		template_arg_needs(&tpl->args[i], needs);
}
