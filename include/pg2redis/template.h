/*-------------------------------------------------------------------------
 *
 * template.h
 *	  Command templates: parsed once per rule, expanded per row.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG2REDIS_TEMPLATE_H
#define PG2REDIS_TEMPLATE_H

#include "access/tupdesc.h"
#include "nodes/bitmapset.h"
#include "pg2redis/common.h"

typedef enum TplKind
{
	TPL_LITERAL, /* literal text */
	TPL_COL,	 /* {col} */
	TPL_OLD,	 /* {old:col} */
	TPL_DIFF,	 /* {diff:col} */
	TPL_ESC,	 /* {esc:col}: the value with ':' etc. percent-encoded */
	TPL_PAIRS,	 /* {pairs:*}, {pairs:a,b}, {columns:…}: several arguments */
	TPL_JSON,	 /* {json:*} or {json:a,b} */
	TPL_SCHEMA,	 /* {%schema%} */
	TPL_TABLE,	 /* {%table%} */
	TPL_OP,		 /* {%op%} */
	TPL_PK,		 /* {%pk%} */
	TPL_PK_ESCAPED, /* {%pk_escaped%}: {%pk%} of percent-encoded values */
	TPL_XID,		/* {%xid%} */
	TPL_LSN,		/* {%lsn%} */
	TPL_COMMIT_TIME /* {%commit_time%} */
} TplKind;

/* One piece of an argument: literal text or one placeholder. */
typedef struct TplPart
{
	TplKind		kind;
	char	   *text;		/* TPL_LITERAL: the text (braces unescaped) */
	int			len;		/* TPL_LITERAL: its length */
	int			ncols;		/* column placeholders: number of columns */
	AttrNumber *cols;		/* their attnums in the rule's relation */
	char	  **colnames;	/* and their names (JSON keys, pairs fields) */
	bool		names_only; /* TPL_PAIRS of {columns:…}: names, no values */
} TplPart;

/* One template element: becomes one Redis argument, or several for pairs. */
typedef struct TplArg
{
	int		 nparts;
	TplPart *parts;
	char	*source; /* the element as written, for messages */
} TplArg;

typedef struct Template
{
	int		nargs;
	TplArg *args;
} Template;

/*
 * Which columns expanding a template (or evaluating a condition) reads.
 * "cur" columns are read from the row the change is about (the new row,
 * or the old row of a delete); "old" from the row before the change;
 * "diff" from both.  needs_pk is set by {%pk%}.
 */
typedef struct TplNeeds
{
	Bitmapset *cur;
	Bitmapset *old;
	Bitmapset *diff;
	bool	   needs_pk;
	bool	   any_column; /* any column placeholder at all */
} TplNeeds;

extern bool		 template_parse_arg(const char *source, TupleDesc desc,
									bool allow_multi, TplArg *arg, Pg2rError *err);
extern Template *template_compile(Datum *elems, int nelems, TupleDesc desc,
								  Pg2rError *err);
extern void		 template_arg_needs(const TplArg *arg, TplNeeds *needs);
extern void		 template_needs(const Template *tpl, TplNeeds *needs);
extern bool		 template_is_literal(const TplArg *arg);

#endif /* PG2REDIS_TEMPLATE_H */
