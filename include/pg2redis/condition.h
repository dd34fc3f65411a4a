/*-------------------------------------------------------------------------
 *
 * condition.h
 *	  The condition language of rules: the compiled form and its compiler
 *	  (evaluation is declared in expand_int.h, owned by the mapping stage).
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG2REDIS_CONDITION_H
#define PG2REDIS_CONDITION_H

#include "pg2redis/template.h"
#include "utils/jsonb.h"

typedef enum CondKind
{
	COND_ALL,
	COND_ANY,
	COND_NOT,
	COND_LEAF
} CondKind;

typedef enum CondOp
{
	CONDOP_EQ,
	CONDOP_NE,
	CONDOP_LT,
	CONDOP_LE,
	CONDOP_GT,
	CONDOP_GE,
	CONDOP_IN,
	CONDOP_NOT_IN,
	CONDOP_IS_NULL,
	CONDOP_IS_NOT_NULL,
	CONDOP_IS_DISTINCT_FROM,
	CONDOP_CHANGED
} CondOp;

typedef struct Condition
{
	CondKind		   kind;
	int				   nchildren; /* all/any/not */
	struct Condition **children;
	/* leaf */
	AttrNumber col; /* attnum in the rule's relation */
	char	  *colname;
	bool	   old; /* test the value before the change */
	CondOp	   op;
	int		   nvalues; /* 1 for comparisons, n for in/not_in */
	TplArg	  *values;	/* each a one-argument template */
} Condition;

extern Condition *condition_compile(Jsonb *json, TupleDesc desc,
									Pg2rError *err);
extern void		  condition_needs(const Condition *cond, TplNeeds *needs);

#endif /* PG2REDIS_CONDITION_H */
