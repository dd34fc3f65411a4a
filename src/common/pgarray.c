/*-------------------------------------------------------------------------
 *
 * pgarray.c
 *	  SQL arrays to and from C values: text[] of strings, oid[], argv.
 *
 * The snapshot code records keys as text[] (one key) and text[][] (one key
 * a row), the redrive code passes table lists as oid[], and the SQL
 * functions that take a Redis command take it as text[].  The array
 * plumbing for all of them is here, so that each caller says only what it
 * puts in.  Everything is allocated in the current memory context; nothing
 * here runs anyone's code (text and oid are built in).
 *
 * Owns: nothing (pure conversions).  May call: PostgreSQL only; a future
 * src/common/ file.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "utils/builtins.h"

#include "pg2redis/pgarray.h"

/*
 * pg2r_text_array returns a one-dimensional text[] of a List of C strings
 * (an empty array for NIL).
 */
Datum
pg2r_text_array(List *strings)
{
	const char **s = palloc(sizeof(char *) * Max(list_length(strings), 1));
	ListCell	*lc;

	foreach(lc, strings)
		s[foreach_current_index(lc)] = lfirst(lc);
	return pg2r_cstring_array(s, list_length(strings));
}

/* pg2r_cstring_array returns a text[] of the n C strings s. */
Datum
pg2r_cstring_array(const char *const *s, int n)
{
	Datum *elems = palloc(sizeof(Datum) * Max(n, 1));

	for (int i = 0; i < n; i++)
		elems[i] = CStringGetTextDatum(s[i]);
	return PointerGetDatum(construct_array(elems, n, TEXTOID, -1, false,
										   TYPALIGN_INT));
}

/*
 * pg2r_text_array_2d returns a two-dimensional text[][] of rows, each a
 * List of C strings as long as the first one; (Datum) 0 when rows is NIL.
 */
Datum
pg2r_text_array_2d(List *rows)
{
	int		  width;
	Datum	 *elems;
	int		  dims[2];
	int		  lbs[2] = {1, 1};
	int		  i = 0;
	ListCell *lc;

	if (rows == NIL)
		return (Datum) 0;
	width = list_length(linitial(rows));
	elems = palloc(sizeof(Datum) * list_length(rows) * Max(width, 1));
	foreach(lc, rows)
	{
		ListCell *lk;

		Assert(list_length(lfirst(lc)) == width);
		foreach(lk, (List *) lfirst(lc))
			elems[i++] = CStringGetTextDatum(lfirst(lk));
	}
	dims[0] = list_length(rows);
	dims[1] = width;
	return PointerGetDatum(construct_md_array(elems, NULL, 2, dims, lbs,
											  TEXTOID, -1, false,
											  TYPALIGN_INT));
}

/* pg2r_oid_array returns a one-dimensional oid[] of an OID List. */
Datum
pg2r_oid_array(List *oids)
{
	Datum	 *elems = palloc(sizeof(Datum) * Max(list_length(oids), 1));
	ListCell *lc;

	foreach(lc, oids)
		elems[foreach_current_index(lc)] = ObjectIdGetDatum(lfirst_oid(lc));
	return PointerGetDatum(construct_array(elems, list_length(oids), OIDOID,
										   sizeof(Oid), true, TYPALIGN_INT));
}

/*
 * pg2r_text_array_list returns the elements of a text[] as a List of C
 * strings, in order; a null element becomes "".
 */
List *
pg2r_text_array_list(ArrayType *array)
{
	Datum *elems;
	bool  *nulls;
	int	   n;
	List  *strings = NIL;

	deconstruct_array(array, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls,
					  &n);
	for (int i = 0; i < n; i++)
		strings = lappend(strings, nulls[i] ? pstrdup("")
											: TextDatumGetCString(elems[i]));
	return strings;
}

/*
 * pg2r_text_array_rows returns the rows of a two-dimensional text[][] (as
 * pg2r_text_array_2d makes them) as Lists of C strings; a null element
 * becomes "".  NIL for an array of another shape.
 */
List *
pg2r_text_array_rows(ArrayType *array)
{
	Datum *elems;
	bool  *nulls;
	int	   n;
	int	   width;
	List  *rows = NIL;

	if (ARR_NDIM(array) != 2 || ARR_DIMS(array)[1] < 1)
		return NIL;
	width = ARR_DIMS(array)[1];
	deconstruct_array(array, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls,
					  &n);
	for (int i = 0; i + width <= n; i += width)
	{
		List *row = NIL;

		for (int k = 0; k < width; k++)
			row =
				lappend(row, nulls[i + k] ? pstrdup("")
										  : TextDatumGetCString(elems[i + k]));
		rows = lappend(rows, row);
	}
	return rows;
}

/*
 * pg2r_text_array_argv turns a text[] into an argument vector: *argv
 * points at each element's bytes (not terminated, except argv[0], which
 * is made a C string for command lookups) and *argvlen holds their lengths.
 * Returns the number of elements.  *null_at is the index of the first null
 * element, or -1: the caller reports it, in its own words.
 */
int
pg2r_text_array_argv(ArrayType *array, const char ***argv, size_t **argvlen,
					 int *null_at)
{
	Datum *elems;
	bool  *nulls;
	int	   argc;

	deconstruct_array(array, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls,
					  &argc);
	*argv = palloc(sizeof(char *) * Max(argc, 1));
	*argvlen = palloc(sizeof(size_t) * Max(argc, 1));
	*null_at = -1;
	for (int i = 0; i < argc; i++)
	{
		if (nulls[i])
		{
			*null_at = i;
			return argc;
		}
		(*argv)[i] = VARDATA_ANY(DatumGetPointer(elems[i]));
		(*argvlen)[i] = VARSIZE_ANY_EXHDR(DatumGetPointer(elems[i]));
	}
	if (argc > 0)
		(*argv)[0] = TextDatumGetCString(elems[0]);
	return argc;
}
