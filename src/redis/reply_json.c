/*-------------------------------------------------------------------------
 *
 * reply_json.c
 *	  Redis replies to JSON text, with jansson.
 *
 * Kept apart from PostgreSQL's headers on purpose: jansson's json_object()
 * and PostgreSQL's SQL-callable json_object() share a name.  Not only at
 * compile time: the postgres executable exports an unversioned json_object,
 * which the dynamic linker prefers to libjansson's versioned one for any
 * call from this library, so calling json_object() here would run the SQL
 * function with a garbage fcinfo and crash the backend.  Objects are
 * therefore made with json_pack(), whose own call to json_object() stays
 * inside libjansson (no PLT entry: checked by test/symbols.sh, which lists
 * every symbol this library imports that the server also exports).
 *
 * Nothing here raises an error; failures are a NULL result.
 *
 *-------------------------------------------------------------------------
 */
#include <stdlib.h>

#include <hiredis/hiredis.h>
#include <jansson.h>

char *redis_reply_to_json(const redisReply *reply, int *not_utf8);

/*
 * to_json converts a reply into a jansson value; NULL when out of memory or
 * when a string is not valid UTF-8 (then *not_utf8 is set).
 */
static json_t *
to_json(const redisReply *r, int *not_utf8)
{
	json_t *v;

	switch (r->type)
	{
		case REDIS_REPLY_STRING:
		case REDIS_REPLY_STATUS:
			v = json_stringn(r->str, r->len);
			if (v == NULL)
				*not_utf8 = 1;
			return v;
		case REDIS_REPLY_INTEGER:
			return json_integer(r->integer);
		case REDIS_REPLY_ERROR:
		{
			json_t *msg = json_stringn(r->str, r->len);

			if (msg == NULL)
			{
				*not_utf8 = 1;
				return NULL;
			}
			/* "o" steals msg, also when json_pack fails */
			return json_pack("{s:o}", "error", msg);
		}
		case REDIS_REPLY_ARRAY:
			v = json_array();
			for (size_t i = 0; v && i < r->elements; i++)
			{
				json_t *elem = to_json(r->element[i], not_utf8);

				if (elem == NULL || json_array_append_new(v, elem) != 0)
				{
					json_decref(v);
					return NULL;
				}
			}
			return v;
		default:
			return json_null();
	}
}

/*
 * redis_reply_to_json returns the reply as compact JSON text, malloc'd
 * (free() it), or NULL: then *not_utf8 says whether a string of the reply
 * was not valid UTF-8 (else memory ran out).
 */
char *
redis_reply_to_json(const redisReply *reply, int *not_utf8)
{
	json_t *v;
	char   *text;

	*not_utf8 = 0;
	v = to_json(reply, not_utf8);
	if (v == NULL)
		return NULL;
	text = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
	json_decref(v);
	return text;
}
