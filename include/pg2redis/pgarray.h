/*-------------------------------------------------------------------------
 *
 * pgarray.h
 *	  SQL arrays to and from C values: text[] of strings, oid[], argv.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG2REDIS_PGARRAY_H
#define PG2REDIS_PGARRAY_H

#include "nodes/pg_list.h"
#include "utils/array.h"

extern Datum pg2r_text_array(List *strings);
extern Datum pg2r_cstring_array(const char *const *s, int n);
extern Datum pg2r_text_array_2d(List *rows);
extern Datum pg2r_oid_array(List *oids);
extern List *pg2r_text_array_list(ArrayType *array);
extern List *pg2r_text_array_rows(ArrayType *array);
extern int	 pg2r_text_array_argv(ArrayType *array, const char ***argv,
								  size_t **argvlen, int *null_at);

#endif /* PG2REDIS_PGARRAY_H */
