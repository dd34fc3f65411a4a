/*-------------------------------------------------------------------------
 *
 * keyorder.h
 *	  Reading a table in the order of its key (keyorder.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG2REDIS_KEYORDER_H
#define PG2REDIS_KEYORDER_H

#include "access/htup.h"
#include "access/tupdesc.h"
#include "fmgr.h"
#include "nodes/pg_list.h"
#include "utils/relcache.h"

/*
 * The key a table is read by: the columns of its replica identity index,
 * else of its primary key, with what comparing them in SQL needs.
 */
typedef struct KeyOrder
{
	Oid			index; /* the index giving the key */
	int			nkeys; /* key columns, and per column: */
	AttrNumber *atts;  /* attribute number */
	Oid		   *types; /* base type, of the queries' parameters */
	bool	   *byval;
	int16	   *len;
	FmgrInfo   *out;	 /* output function */
	char	  **cols;	 /* quoted name */
	char	  **collate; /* " COLLATE s.c" of the index's collation, or "" */
	char	  **eqop;	 /* OPERATOR(schema.=) of the index opfamily */
	char	  **gtop;	 /* ... > */
	char	  **ltop;	 /* ... < */
} KeyOrder;

/* What a query of keyorder_query selects. */
typedef enum KeyQuery
{
	KEYQ_FIRST, /* the first rows in key order */
	KEYQ_AFTER, /* the next rows after the key $1..$n */
	KEYQ_EQUAL	/* the row whose key is $1..$n */
} KeyQuery;

extern bool	  keyorder_setup(Relation rel, MemoryContext cxt, KeyOrder *ko);
extern bool	  keyorder_still(KeyOrder *ko, Relation rel, MemoryContext cxt);
extern char	 *keyorder_query(const KeyOrder *ko, Relation rel,
							 const char *relname, KeyQuery kind,
							 const char *filter, int limit, bool tids);
extern Datum *keyorder_row_key(const KeyOrder *ko, TupleDesc desc,
							   HeapTuple tuple, bool copy, bool *unreadable);
extern Datum *keyorder_copy_key(const KeyOrder *ko, const Datum *key);
extern void	  keyorder_free_key(const KeyOrder *ko, Datum *key);
extern List	 *keyorder_key_text(const KeyOrder *ko, const Datum *key);

#endif /* PG2REDIS_KEYORDER_H */
