/*-------------------------------------------------------------------------
 *
 * reply_compact.c
 *	  Redis replies without an allocation for what the sender ignores.
 *
 * The reader functions of a ready link (see redis_io.c's redis_next_reply).
 * No PostgreSQL function is called here, so that bench/reply_parse.c can
 * time these functions against hiredis's own outside the server.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <hiredis/hiredis.h>

#include "pg2redis/reply_compact.h"

/*
 * Compact replies.  A data link reads, for every block, an +OK, one +QUEUED
 * per command and an EXEC array of one element per command, and the sender
 * looks only at the errors among them (their text and position) and at the
 * array's length.  hiredis's own functions allocate a redisReply and a copy
 * of its text for each reply and element, which were then walked and freed:
 * 0.40 us of CPU per row of two commands (bench/reply_parse.c), against 0.17
 * here.  A reply read by pg2r_reader_get_reply with compact set (a ready
 * link's: RedisConn.compact_replies) is built of:
 *   - for a top-level +QUEUED or +OK, a shared object, of the same type,
 *     text and length as hiredis's;
 *   - for an element of an array that is not an error, a shared object
 *     carrying only the element's type (no text, value or elements); the
 *     elements of such an element are not kept at all;
 *   - for everything else (errors, elements or not; other top-level
 *     replies: WAIT's integer, a nil EXEC, the EXEC array itself), a
 *     redisReply as hiredis builds it.
 * Once a reader has read compact, it keeps these functions; without compact
 * they build what hiredis's own build.  Every reply of such a reader must be
 * freed with redis_free_reply; other readers keep hiredis's functions, and
 * freeReplyObject.  The functions run inside hiredis: they never raise an
 * ERROR, and return NULL for out of memory, which hiredis reports as a
 * reader error (redis_next_reply returns -1).
 */

/* The shared objects: one per reply type (by its number), +QUEUED and +OK. */
#define SHARED_QUEUED 7
#define SHARED_OK 8
static redisReply shared_replies[9] = {
	[REDIS_REPLY_STRING] = {.type = REDIS_REPLY_STRING},
	[REDIS_REPLY_ARRAY] = {.type = REDIS_REPLY_ARRAY},
	[REDIS_REPLY_INTEGER] = {.type = REDIS_REPLY_INTEGER},
	[REDIS_REPLY_NIL] = {.type = REDIS_REPLY_NIL},
	[REDIS_REPLY_STATUS] = {.type = REDIS_REPLY_STATUS},
	[REDIS_REPLY_ERROR] = {.type = REDIS_REPLY_ERROR},
	[SHARED_QUEUED] = {.type = REDIS_REPLY_STATUS, .len = 6, .str = "QUEUED"},
	[SHARED_OK] = {.type = REDIS_REPLY_STATUS, .len = 2, .str = "OK"},
};

/* compact_now: the connection being parsed has compact_replies set. */
static bool compact_now = false;

/* reply_is_shared tells whether r is one of shared_replies. */
static inline bool
reply_is_shared(const redisReply *r)
{
	return (uintptr_t) r >= (uintptr_t) &shared_replies[0] &&
		   (uintptr_t) r <
			   (uintptr_t) &shared_replies[lengthof(shared_replies)];
}

/*
 * compact_shared returns the shared object to use for a reply of the given
 * type read by task, or NULL when it needs one of its own.
 */
static redisReply *
compact_shared(const redisReadTask *task, int type)
{
	if (task->parent != NULL)
	{
		/* under a shared element nothing is kept, errors included */
		if (reply_is_shared(task->parent->obj))
			return &shared_replies[type];
		if (compact_now && type != REDIS_REPLY_ERROR)
			return &shared_replies[type];
	}
	return NULL;
}

/*
 * compact_link puts r into its parent array, if any and not a shared object
 * (which has no room for elements), and returns r.
 */
static void *
compact_link(const redisReadTask *task, redisReply *r)
{
	if (r != NULL && task->parent != NULL &&
		!reply_is_shared(task->parent->obj))
		((redisReply *) task->parent->obj)->element[task->idx] = r;
	return r;
}

/* compact_new allocates a zeroed reply of the given type (NULL: no memory). */
static redisReply *
compact_new(int type)
{
	redisReply *r = calloc(1, sizeof(redisReply));

	if (r != NULL)
		r->type = type;
	return r;
}

/* compact_string builds a status, error or bulk string reply. */
static void *
compact_string(const redisReadTask *task, char *str, size_t len)
{
	redisReply *r = compact_shared(task, task->type);

	if (r != NULL)
		return compact_link(task, r);
	if (compact_now && task->parent == NULL &&
		task->type == REDIS_REPLY_STATUS)
	{
		if (len == 6 && memcmp(str, "QUEUED", 6) == 0)
			return &shared_replies[SHARED_QUEUED];
		if (len == 2 && memcmp(str, "OK", 2) == 0)
			return &shared_replies[SHARED_OK];
	}
	r = compact_new(task->type);
	if (r == NULL)
		return NULL;
	r->str = malloc(len + 1);
	if (r->str == NULL)
	{
		free(r);
		return NULL;
	}
	memcpy(r->str, str, len);
	r->str[len] = '\0';
	r->len = len;
	return compact_link(task, r);
}

/* compact_array builds an array reply of the given number of elements. */
static void *
compact_array(const redisReadTask *task, int elements)
{
	redisReply *r = compact_shared(task, REDIS_REPLY_ARRAY);

	if (r != NULL)
		return compact_link(task, r);
	r = compact_new(REDIS_REPLY_ARRAY);
	if (r == NULL)
		return NULL;
	if (elements > 0)
	{
		r->element = calloc(elements, sizeof(redisReply *));
		if (r->element == NULL)
		{
			free(r);
			return NULL;
		}
	}
	r->elements = elements;
	return compact_link(task, r);
}

/* compact_integer builds an integer reply. */
static void *
compact_integer(const redisReadTask *task, long long value)
{
	redisReply *r = compact_shared(task, REDIS_REPLY_INTEGER);

	if (r != NULL)
		return compact_link(task, r);
	r = compact_new(REDIS_REPLY_INTEGER);
	if (r == NULL)
		return NULL;
	r->integer = value;
	return compact_link(task, r);
}

/* compact_nil builds a nil reply. */
static void *
compact_nil(const redisReadTask *task)
{
	redisReply *r = compact_shared(task, REDIS_REPLY_NIL);

	if (r != NULL)
		return compact_link(task, r);
	return compact_link(task, compact_new(REDIS_REPLY_NIL));
}

/*
 * redis_free_reply frees a reply from redis_next_reply, shared objects and
 * empty element slots (a reply hiredis gave up on half built) included.
 */
void
redis_free_reply(void *reply)
{
	redisReply *r = reply;

	if (r == NULL || reply_is_shared(r))
		return;
	if (r->type == REDIS_REPLY_ARRAY)
	{
		for (size_t j = 0; j < r->elements; j++)
			redis_free_reply(r->element[j]);
		free(r->element);
	}
	else
		free(r->str);
	free(r);
}

static redisReplyObjectFunctions compact_functions = {compact_string,
													  compact_array,
													  compact_integer,
													  compact_nil,
													  redis_free_reply};

/*
 * pg2r_reader_get_reply takes the next complete reply out of reader, as
 * redisReaderGetReply does; with compact set, built compact (from then on,
 * every reply of that reader must be freed with redis_free_reply).
 */
int
pg2r_reader_get_reply(redisReader *reader, bool compact, void **reply)
{
	int rc;

	if (compact)
		reader->fn = &compact_functions;
	compact_now = compact;
	rc = redisReaderGetReply(reader, reply);
	compact_now = false;
	return rc;
}
