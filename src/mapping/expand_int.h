/*-------------------------------------------------------------------------
 *
 * expand_int.h
 *	  Private to the mapping stage (mapping.c, condition_eval.c): the state
 *	  of expanding one row change, the column accessors conditions and
 *	  templates read it through, and condition evaluation.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG2REDIS_EXPAND_INT_H
#define PG2REDIS_EXPAND_INT_H

#include "pg2redis/mapping.h"

/* One row as the expansion sees it: deformed, with its text forms cached. */
typedef struct RowState
{
	bool		 present;
	bool		 keyonly; /* only replica identity columns were sent */
	Datum		*values;  /* [attnum - 1] of the change's relation */
	bool		*isnull;
	const char **text; /* rendered text, NULL until needed */
	int			*textlen;
} RowState;

/* State of expanding one change; conditions read columns through it. */
typedef struct ExpandState
{
	RelMap	 *map;
	Pg2rOp	  op;			/* the op whose rules run */
	RowState *cur;			/* new row; the old row for a delete */
	RowState *old;			/* row before the change, or NULL */
	bool	  old_from_cur; /* update without old row: key unchanged */
	RowState *toast_from;	/* where an unchanged TOASTed value of cur is */
	bool	  key_changed;	/* cur is the new row of a key change */
	const ChangeMeta *meta;
	Pg2rError		  err;
} ExpandState;

/* Result of reading one column. */
typedef enum ColResult
{
	COL_VALUE,
	COL_NULL,
	COL_UNAVAILABLE,	 /* old value PostgreSQL did not send */
	COL_UNCHANGED_TOAST, /* unchanged TOASTed value, not sent */
	COL_ERROR
} ColResult;

extern ColResult mapping_column_text(ExpandState *st, AttrNumber rulecol,
									 bool old, const char **text, int *len);
extern bool		 mapping_expand_arg(ExpandState *st, const TplArg *arg,
									StringInfo out);
extern int		 condition_eval(const Condition *cond, ExpandState *st);
extern int		 pg2r_compare_values(const char *a, int alen, const char *b,
									 int blen);

#endif /* PG2REDIS_EXPAND_INT_H */
