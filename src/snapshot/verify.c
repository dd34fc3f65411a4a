/*-------------------------------------------------------------------------
 *
 * verify.c
 *	  pg2redis_verify(): does Redis hold what the rules make of the rows?
 *
 * For every row of the mapped tables (or a random sample of them), the
 * snapshot rules (else the insert rules) are rendered as the stream would
 * render them, and each command whose effect can be read back is checked
 * against Redis:
 *
 *		SET, SETEX, PSETEX, MSET		GET: the value
 *		HSET, HMSET						HMGET: each field's value
 *		SADD							SMISMEMBER: each member
 *		ZADD							ZMSCORE: each member's score
 *		JSON.SET						JSON.GET at the same path (as JSON)
 *		SETNX, HSETNX					GET / HGET: that it exists
 *
 * Commands whose effect is an event or depends on history (INCRBY, XADD,
 * PUBLISH, LPUSH, EXPIRE, DEL ...) and rules that render transaction facts
 * ({%xid%}, {%lsn%}, {%commit_time%}) are skipped and counted.  Then each
 * key pattern of those rules (product:{id} -> product:*) is scanned: a key
 * that matches it but that no row renders is an orphan.  A key the most
 * specific matching pattern attributes elsewhere is left alone: to a table
 * outside the check, or to a rule that is not checked (a key of any rule,
 * of any op, claims what its pattern matches: an INCRBY counter, the key of
 * an update-only rule); so are pg2redis's own keys.  A sample does not look
 * for orphans.
 *
 * Consistency: the rows are read under one snapshot (the transaction's),
 * and Redis is read once the stream has applied everything committed before
 * it (as pg2redis_wait()), so a quiet system shows no false difference.
 * Rows changed after the snapshot may show up as differences: each problem
 * found is checked again at the end, after the stream caught up once more,
 * and kept only if Redis still disagrees (for rows and orphans alike: the
 * Redis side is read again; a row changed meanwhile can still be reported,
 * which a second run settles).
 *
 * pg2redis_verify() writes nothing, in PostgreSQL or Redis.  The worker's
 * sweep after a reload (verify_sweep(), failover.c) runs the same search
 * for orphans, rendering rows for their keys only, and deletes what it
 * finds instead of reporting it.  A caller without SELECT on
 * a table, or to whom its row-level security applies, gets that table's
 * counts only, without keys or values.  Redis is
 * read through a session of its own (session_redis.c), in pipelined batches.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/heaptoast.h"
#include "access/relscan.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_class.h"
#include "catalog/pg_inherits.h"
#include "common/hashfn.h"
#include "common/pg_prng.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/rls.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "pg2redis/commands.h"
#include "pg2redis/mapping.h"
#include "pg2redis/rules.h"
#include "pg2redis/session_redis.h"
#include "pg2redis/settings.h"
#include "pg2redis/state.h"
#include "pg2redis/verify.h"

PG_FUNCTION_INFO_V1(pg2redis_verify);

#define VERIFY_BATCH_ROWS 1000
#define VERIFY_BATCH_CMDS 8000
#define VERIFY_SCAN_COUNT "1000"
#define VERIFY_MAX_RECHECK 100000
#define VERIFY_SCAN_DELS 1000

/*
 * The set of keys the rows render, for the orphan scan: 64-bit hashes of the
 * keys in an open-addressing table (a million keys take 16 MB, and a lookup
 * is one probe or two; dynahash's chains made it a fifth of the run).  The
 * hashes are already uniform, so their low bits are the table's hash.
 */
typedef struct KeyEntry
{
	uint64 hash;
	char   status;
} KeyEntry;

#define SH_PREFIX keyset
#define SH_ELEMENT_TYPE KeyEntry
#define SH_KEY_TYPE uint64
#define SH_KEY hash
#define SH_HASH_KEY(tb, key) ((uint32) ((key) ^ ((key) >> 32)))
#define SH_EQUAL(tb, a, b) ((a) == (b))
#define SH_SCOPE static inline
#define SH_DECLARE
#define SH_DEFINE
#include "lib/simplehash.h"

/* What one check reads back. */
typedef enum CheckKind
{
	CK_STRING, /* GET key = value */
	CK_HASH,   /* HMGET key fields = values */
	CK_SET,	   /* SMISMEMBER key members */
	CK_ZSET,   /* ZMSCORE key members = scores */
	CK_JSON,   /* JSON.GET key path = value (as JSON) */
	CK_EXISTS  /* GET key / HGET key field is not nil */
} CheckKind;

/* One key's expectation, and where its reply is. */
typedef struct Check
{
	CheckKind kind;
	Oid		  relid;
	char	 *key;
	int		  nitems;
	char	**items; /* fields, members; the path for CK_JSON */
	char	**vals;	 /* expected values, scores; NULL for sets */
	char	 *value; /* CK_STRING, CK_JSON: the expected value */
	int		  cmd;	 /* index in the batch */
} Check;

/* A problem found, kept for the second look at the end. */
typedef struct Problem
{
	Check *check;
	int	   item; /* -1: the whole key */
	char  *problem;
	char  *expected;
	char  *found;
} Problem;

/* Per table: what was checked and found. */
typedef struct RelStats
{
	Oid	  relid;
	bool  readable; /* the caller may SELECT it: keys and values shown */
	int64 rows;
	int64 checked;
	int64 missing;
	int64 differing;
	int64 orphans;
	int64 skipped;
	MemoryContext cxt;			 /* where the lists below live */
	keyset_hash	 *expected_keys; /* 64-bit hashes of every key rendered */
	List		 *skipped_why;	 /* "INCRBY" ... as rendered, counted below */
	List		 *skipped_n;
} RelStats;

/* A key pattern of a rule, for orphans. */
typedef struct KeyPattern
{
	char	 *glob;	 /* for SCAN MATCH: literal glob characters escaped */
	List	 *parts; /* literal parts between the stars, as char * */
	bool	  lead_star;
	bool	  trail_star;
	int		  literal; /* literal characters: specificity */
	Oid		  relid;   /* the rule's table */
	RelStats *stats;   /* NULL: a table outside the check */
} KeyPattern;

typedef struct VerifyState
{
	MemoryContext cxt;		/* lives for the call */
	MemoryContext batchcxt; /* reset after every batch */
	/* the batch Redis works on while the next one is built */
	SessionBatch	 flight;
	List			*flight_checks;
	MemoryContext	 flightcxt;
	bool			 in_flight;
	RedisSession	*session;
	SessionBatch	 batch;
	List			*checks; /* of the current batch */
	List			*problems;
	Tuplestorestate *store;
	TupleDesc		 desc;
	RelStats		*cur; /* table being checked */
	int				 batch_rows;
	bool			 sample;
	bool			 json_ok; /* the server knows JSON.GET (until told not) */
	bool			 sweep;	  /* verify_sweep: keys only, orphans removed */
	SessionBatch	 dels;	  /* verify_sweep: DELs not yet sent */
	int64			 swept;
} VerifyState;

static void emit(VerifyState *vs, Oid relid, const char *key,
				 const char *problem, const char *expected, const char *found);

/* ---------------------------------------------------------------------------
 * Rendering rows into checks
 * ---------------------------------------------------------------------------
 */

/* note_skipped counts a command that cannot be checked, by name. */
static void
note_skipped(RelStats *st, const char *why)
{
	ListCell *a, *b;

	st->skipped++;
	forboth(a, st->skipped_why, b, st->skipped_n)
	{
		if (strcmp(lfirst(a), why) == 0)
		{
			lfirst_int(b)++;
			return;
		}
	}
	{
		/* rows are rendered in the batch's context: keep these longer */
		MemoryContext old = MemoryContextSwitchTo(st->cxt);

		st->skipped_why = lappend(st->skipped_why, pstrdup(why));
		st->skipped_n = lappend_int(st->skipped_n, 1);
		MemoryContextSwitchTo(old);
	}
}

/* note_key remembers a key the rows render, for the orphan scan. */
static void
note_key(RelStats *st, const char *key, size_t len)
{
	uint64 h = hash_bytes_extended((const unsigned char *) key, len, 0);
	bool   found;

	(void) keyset_insert(st->expected_keys, h, &found);
}

/*
 * uses_txn_facts tells whether a rule renders what a row alone does not
 * give: {%xid%}, {%lsn%}, {%commit_time%}, or {%op%} (the stream wrote
 * "insert" or "update" where a check, reading the row, renders
 * "snapshot").  Such a rule is not checked, and its keys are only claimed:
 * a sweep must not take them for orphans.
 */
static bool
uses_txn_facts(const Rule *rule)
{
	for (int a = 0; a < rule->tpl->nargs; a++)
		for (int p = 0; p < rule->tpl->args[a].nparts; p++)
		{
			TplKind k = rule->tpl->args[a].parts[p].kind;

			if (k == TPL_XID || k == TPL_LSN || k == TPL_COMMIT_TIME ||
				k == TPL_OP)
				return true;
		}
	return false;
}

/*
 * queue_read queues in b the command that reads back what check c expects
 * (the read of each CheckKind) and returns its index in the batch.
 */
static int
queue_read(SessionBatch *b, const Check *c)
{
	static const char *const reads[] =
		{[CK_STRING] = "GET",	  [CK_HASH] = "HMGET",
		 [CK_SET] = "SMISMEMBER", [CK_ZSET] = "ZMSCORE",
		 [CK_JSON] = "JSON.GET",  [CK_EXISTS] = "GET"};
	const char **argv = palloc(sizeof(char *) * (c->nitems + 2));
	size_t		*argvlen = palloc(sizeof(size_t) * (c->nitems + 2));
	int			 argc = 0;
	int			 i;

	/* HSETNX's check reads its one field */
	argv[argc++] =
		c->kind == CK_EXISTS && c->nitems > 0 ? "HGET" : reads[c->kind];
	argv[argc++] = c->key;
	for (int k = 0; k < c->nitems; k++)
		argv[argc++] = c->items[k];
	for (int k = 0; k < argc; k++)
		argvlen[k] = strlen(argv[k]);
	i = redis_batch_add(b, argc, argv, argvlen);
	pfree(argv);
	pfree(argvlen);
	return i;
}

/*
 * make_check builds the check of one key: its items (fields, members, the
 * JSON path) with their expected values (vals), or one expected value, and
 * queues the read that checks it.
 */
static void
make_check(VerifyState *vs, CheckKind kind, const char *key, size_t keylen,
		   int nitems, const char *const *items, const size_t *itemlen,
		   const char *const *vals, const size_t *vallen, const char *value,
		   size_t valuelen)
{
	Check *c;

	if (vs->sweep)
		return; /* only the keys are wanted (noted by the caller) */
	c = palloc0(sizeof(Check));
	c->kind = kind;
	c->relid = vs->cur->relid;
	c->key = pnstrdup(key, keylen);
	c->nitems = nitems;
	c->items = palloc(sizeof(char *) * Max(nitems, 1));
	c->vals = vals ? palloc(sizeof(char *) * Max(nitems, 1)) : NULL;
	c->value = value ? pnstrdup(value, valuelen) : NULL;
	for (int i = 0; i < nitems; i++)
	{
		c->items[i] = pnstrdup(items[i], itemlen[i]);
		if (vals)
			c->vals[i] = pnstrdup(vals[i], vallen[i]);
	}
	c->cmd = queue_read(&vs->batch, c);
	vs->checks = lappend(vs->checks, c);
	vs->cur->checked++;
}

/* is_zadd_flag tells whether a ZADD argument is one of its options. */
static bool
is_zadd_flag(const char *a, size_t len)
{
	static const char *const flags[] = {"NX", "XX", "GT", "LT", "CH", "INCR"};

	for (size_t i = 0; i < lengthof(flags); i++)
		if (len == strlen(flags[i]) && pg_strncasecmp(a, flags[i], len) == 0)
			return true;
	return false;
}

/* verify_hset checks HSET/HMSET key field value [field value ...]. */
static void
verify_hset(VerifyState *vs, int argc, const char *const *argv,
			const size_t *argvlen)
{
	int			 n = (argc - 2) / 2;
	const char **f = palloc(sizeof(char *) * n);
	const char **v = palloc(sizeof(char *) * n);
	size_t		*fl = palloc(sizeof(size_t) * n);
	size_t		*vl = palloc(sizeof(size_t) * n);

	for (int i = 0; i < n; i++)
	{
		f[i] = argv[2 + 2 * i], fl[i] = argvlen[2 + 2 * i];
		v[i] = argv[3 + 2 * i], vl[i] = argvlen[3 + 2 * i];
	}
	note_key(vs->cur, argv[1], argvlen[1]);
	make_check(vs, CK_HASH, argv[1], argvlen[1], n, f, fl, v, vl, NULL, 0);
}

/*
 * verify_zadd checks ZADD key [flags] score member [score member ...]; ZADD
 * INCR (an increment, not a score) and malformed ones are noted as skipped.
 */
static void
verify_zadd(VerifyState *vs, int argc, const char *const *argv,
			const size_t *argvlen)
{
	int			 a = 2, n;
	const char **m, **sc;
	size_t		*ml, *scl;

	while (a < argc && is_zadd_flag(argv[a], argvlen[a]))
	{
		if (argvlen[a] == 4) /* INCR: the score is an increment */
		{
			note_skipped(vs->cur, "ZADD INCR");
			return;
		}
		a++;
	}
	if ((argc - a) % 2 != 0 || argc - a == 0)
	{
		note_skipped(vs->cur, "ZADD");
		return;
	}
	n = (argc - a) / 2;
	m = palloc(sizeof(char *) * n);
	sc = palloc(sizeof(char *) * n);
	ml = palloc(sizeof(size_t) * n);
	scl = palloc(sizeof(size_t) * n);
	for (int i = 0; i < n; i++)
	{
		sc[i] = argv[a + 2 * i], scl[i] = argvlen[a + 2 * i];
		m[i] = argv[a + 1 + 2 * i], ml[i] = argvlen[a + 1 + 2 * i];
	}
	note_key(vs->cur, argv[1], argvlen[1]);
	make_check(vs, CK_ZSET, argv[1], argvlen[1], n, m, ml, sc, scl, NULL, 0);
}

/*
 * verify_command turns one rendered command into checks (CommandSink
 * callback); commands that cannot be read back are counted as skipped.
 */
static void
verify_command(void *arg, const Rule *rule, Pg2rOp op, int argc,
			   const char *const *argv, const size_t *argvlen)
{
	VerifyState *vs = arg;
	const char	*name = rule->def ? rule->def->name : argv[0];

	if (uses_txn_facts(rule))
	{
		note_skipped(vs->cur,
					 "rules rendering {%xid%}, {%lsn%} or {%commit_time%}");
		return;
	}
	if (pg_strcasecmp(name, "SET") == 0 && argc >= 3)
	{
		note_key(vs->cur, argv[1], argvlen[1]);
		make_check(vs, CK_STRING, argv[1], argvlen[1], 0, NULL, NULL, NULL,
				   NULL, argv[2], argvlen[2]);
	}
	else if ((pg_strcasecmp(name, "SETEX") == 0 ||
			  pg_strcasecmp(name, "PSETEX") == 0) &&
			 argc >= 4)
	{
		note_key(vs->cur, argv[1], argvlen[1]);
		make_check(vs, CK_STRING, argv[1], argvlen[1], 0, NULL, NULL, NULL,
				   NULL, argv[3], argvlen[3]);
	}
	else if (pg_strcasecmp(name, "MSET") == 0)
	{
		for (int i = 1; i + 1 < argc; i += 2)
		{
			note_key(vs->cur, argv[i], argvlen[i]);
			make_check(vs, CK_STRING, argv[i], argvlen[i], 0, NULL, NULL, NULL,
					   NULL, argv[i + 1], argvlen[i + 1]);
		}
	}
	else if ((pg_strcasecmp(name, "HSET") == 0 ||
			  pg_strcasecmp(name, "HMSET") == 0) &&
			 argc >= 4 && (argc - 2) % 2 == 0)
		verify_hset(vs, argc, argv, argvlen);
	else if (pg_strcasecmp(name, "SADD") == 0 && argc >= 3)
	{
		note_key(vs->cur, argv[1], argvlen[1]);
		make_check(vs, CK_SET, argv[1], argvlen[1], argc - 2, &argv[2],
				   &argvlen[2], NULL, NULL, NULL, 0);
	}
	else if (pg_strcasecmp(name, "ZADD") == 0 && argc >= 4)
		verify_zadd(vs, argc, argv, argvlen);
	else if (pg_strcasecmp(name, "JSON.SET") == 0 && argc >= 4 && vs->json_ok)
	{
		note_key(vs->cur, argv[1], argvlen[1]);
		make_check(vs, CK_JSON, argv[1], argvlen[1], 1, &argv[2], &argvlen[2],
				   NULL, NULL, argv[3], argvlen[3]);
	}
	else if (pg_strcasecmp(name, "SETNX") == 0 && argc >= 3)
	{
		note_key(vs->cur, argv[1], argvlen[1]);
		make_check(vs, CK_EXISTS, argv[1], argvlen[1], 0, NULL, NULL, NULL,
				   NULL, NULL, 0);
	}
	else if (pg_strcasecmp(name, "HSETNX") == 0 && argc >= 4)
	{
		note_key(vs->cur, argv[1], argvlen[1]);
		make_check(vs, CK_EXISTS, argv[1], argvlen[1], 1, &argv[2],
				   &argvlen[2], NULL, NULL, NULL, 0);
	}
	else
		note_skipped(vs->cur, name);
}

/* verify_error reports a row the rules cannot render (CommandSink). */
static void
verify_error(void *arg, const Rule *rule, Pg2rOp op, const Pg2rError *err)
{
	VerifyState *vs = arg;

	note_skipped(vs->cur, "rows a rule cannot render");
	if (vs->cur->readable)
		emit(vs, vs->cur->relid, NULL, "render error",
			 psprintf("rule " INT64_FORMAT, rule->id), err->message);
}

/* ---------------------------------------------------------------------------
 * Comparing
 * ---------------------------------------------------------------------------
 */

/* emit writes one result row. */
static void
emit(VerifyState *vs, Oid relid, const char *key, const char *problem,
	 const char *expected, const char *found)
{
	Datum values[5];
	bool  nulls[5] = {false, key == NULL, false, expected == NULL,
					  found == NULL};

	values[0] = ObjectIdGetDatum(relid);
	values[1] = key ? CStringGetTextDatum(key) : (Datum) 0;
	values[2] = CStringGetTextDatum(problem);
	values[3] = expected ? CStringGetTextDatum(expected) : (Datum) 0;
	values[4] = found ? CStringGetTextDatum(found) : (Datum) 0;
	tuplestore_putvalues(vs->store, vs->desc, values, nulls);
}

/*
 * reply_text returns a string reply's text, or NULL for nil and others.
 * Bytes that are not valid text in the database's encoding (or hold a NUL)
 * come back as \x and their hex digits, so that no invalid text is returned.
 */
static char *
reply_text(const redisReply *r)
{
	if (r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS))
	{
		char *hex;

		if (memchr(r->str, '\0', r->len) == NULL &&
			pg_verifymbstr(r->str, r->len, true))
			return pnstrdup(r->str, r->len);
		hex = palloc(r->len * 2 + 3);
		hex[0] = '\\';
		hex[1] = 'x';
		hex[2 + hex_encode(r->str, r->len, hex + 2)] = '\0';
		return hex;
	}
	if (r && r->type == REDIS_REPLY_INTEGER)
		return psprintf("%lld", r->integer);
	return NULL;
}

/* same_score tells whether two ZSET scores are the same number. */
static bool
same_score(const char *a, const char *b)
{
	char  *ea, *eb;
	double x = strtod(a, &ea), y = strtod(b, &eb);

	return *ea == '\0' && *eb == '\0' ? x == y : strcmp(a, b) == 0;
}

/* same_json tells whether two JSON texts are the same JSON value. */
static bool
same_json(const char *a, const char *b)
{
	volatile bool same = false;
	MemoryContext cxt = CurrentMemoryContext;

	/* a value Redis holds may not be JSON PostgreSQL reads: then unequal */
	PG_TRY();
	{
		Datum x = DirectFunctionCall1(jsonb_in, CStringGetDatum(a));
		Datum y = DirectFunctionCall1(jsonb_in, CStringGetDatum(b));

		same = DatumGetBool(DirectFunctionCall2(jsonb_eq, x, y));
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		FlushErrorState();
	}
	PG_END_TRY();
	return same;
}

/* note_problem keeps a problem of check c (item, or -1 for the key). */
static void
note_problem(VerifyState *vs, Check *c, int item, const char *problem,
			 char *expected, char *found)
{
	MemoryContext old = MemoryContextSwitchTo(vs->cxt);
	Problem		 *p = palloc(sizeof(Problem));
	Check		 *keep = palloc(sizeof(Check));

	/* the batch's memory goes: copy what the second look needs */
	*keep = *c;
	keep->key = pstrdup(c->key);
	keep->value = c->value ? pstrdup(c->value) : NULL;
	keep->items = palloc(sizeof(char *) * Max(c->nitems, 1));
	keep->vals = c->vals ? palloc(sizeof(char *) * Max(c->nitems, 1)) : NULL;
	for (int i = 0; i < c->nitems; i++)
	{
		keep->items[i] = pstrdup(c->items[i]);
		if (c->vals)
			keep->vals[i] = pstrdup(c->vals[i]);
	}
	p->check = keep;
	p->item = item;
	p->problem = pstrdup(problem);
	p->expected = expected ? pstrdup(expected) : NULL;
	p->found = found ? pstrdup(found) : NULL;
	if (list_length(vs->problems) < VERIFY_MAX_RECHECK)
		vs->problems = lappend(vs->problems, p);
	MemoryContextSwitchTo(old);
}

/*
 * compare_items compares the reply r to HMGET, SMISMEMBER or ZMSCORE with
 * the fields or members of check c (a hash, set or sorted set), calling
 * found_cb for what is missing or differs.
 */
static void
compare_items(VerifyState *vs, Check *c, const redisReply *r,
			  void (*found_cb)(VerifyState *, Check *, int, const char *,
							   char *, char *))
{
	int nmissing = 0;

	if (r == NULL || r->type != REDIS_REPLY_ARRAY ||
		r->elements != (size_t) c->nitems)
	{
		found_cb(vs, c, -1, "differing", NULL,
				 "not a hash, set or sorted set");
		return;
	}
	for (int i = 0; i < c->nitems; i++)
	{
		const redisReply *e = r->element[i];

		if (c->kind == CK_SET ? e->integer == 0 : e->type == REDIS_REPLY_NIL)
			nmissing++;
	}
	if (nmissing == c->nitems && c->nitems > 1)
	{
		found_cb(vs, c, -1, "missing",
				 psprintf("%d %s", c->nitems,
						  c->kind == CK_HASH ? "field(s)" : "member(s)"),
				 NULL);
		return;
	}
	for (int i = 0; i < c->nitems; i++)
	{
		const redisReply *e = r->element[i];
		const char		 *what = c->kind == CK_HASH ? "field" : "member";

		if (c->kind == CK_SET ? e->integer == 0 : e->type == REDIS_REPLY_NIL)
			found_cb(vs, c, i, "missing", psprintf("%s %s", what, c->items[i]),
					 NULL);
		else if (c->kind == CK_HASH &&
				 (e->len != strlen(c->vals[i]) ||
				  memcmp(e->str, c->vals[i], e->len) != 0))
			found_cb(vs, c, i, "differing",
					 psprintf("%s: %s", c->items[i], c->vals[i]),
					 psprintf("%s: %.*s", c->items[i], (int) e->len, e->str));
		else if (c->kind == CK_ZSET)
		{
			char *got = reply_text(e);

			if (got && !same_score(got, c->vals[i]))
				found_cb(vs, c, i, "differing",
						 psprintf("%s: %s", c->items[i], c->vals[i]),
						 psprintf("%s: %s", c->items[i], got));
		}
	}
}

/*
 * compare checks one reply against its expectation; calls found_cb for each
 * problem (the first pass keeps them, the second reports those that
 * remain).  Returns false when the reply says the command is unknown.
 */
static bool
compare(VerifyState *vs, Check *c, const redisReply *r,
		void (*found_cb)(VerifyState *, Check *, int, const char *, char *,
						 char *))
{
	if (r && r->type == REDIS_REPLY_ERROR)
	{
		if (c->kind == CK_JSON &&
			pg_strncasecmp(r->str, "ERR unknown command", 19) == 0)
			return false;
		found_cb(vs, c, -1, "error", NULL, pnstrdup(r->str, r->len));
		return true;
	}
	switch (c->kind)
	{
		case CK_STRING:
		{
			char *v = reply_text(r);

			/*
			 * Bytes, not reply_text's form: a value it shows in hex would
			 * equal a row whose text is that hex.
			 */
			if (v == NULL)
				found_cb(vs, c, -1, "missing", c->value, NULL);
			else if (r->type == REDIS_REPLY_INTEGER
						 ? strcmp(v, c->value) != 0
						 : (r->len != strlen(c->value) ||
							memcmp(r->str, c->value, r->len) != 0))
				found_cb(vs, c, -1, "differing", c->value, v);
			break;
		}
		case CK_EXISTS:
			if (reply_text(r) == NULL)
				found_cb(vs, c, -1, "missing",
						 c->nitems > 0 ? psprintf("field %s", c->items[0])
									   : "a value",
						 NULL);
			break;
		case CK_JSON:
		{
			char *v = reply_text(r);
			char *want = c->value;

			/* at a JSONPath ($...), JSON.GET answers with an array */
			if (c->items[0][0] == '$')
				want = psprintf("[%s]", want);
			if (v == NULL)
				found_cb(vs, c, -1, "missing", c->value, NULL);
			else if (!same_json(want, v))
				found_cb(vs, c, -1, "differing", want, v);
			break;
		}
		case CK_HASH:
		case CK_SET:
		case CK_ZSET:
			compare_items(vs, c, r, found_cb);
			break;
	}
	return true;
}

/* finish_flight reads the replies of the batch in flight and compares. */
static void
finish_flight(VerifyState *vs)
{
	ListCell *lc;

	if (!vs->in_flight)
		return;
	redis_session_finish(vs->session, &vs->flight);
	foreach(lc, vs->flight_checks)
	{
		Check *c = lfirst(lc);

		if (!compare(vs, c, vs->flight.cmds[c->cmd].reply, note_problem))
		{
			/* no RedisJSON on this server: JSON.SET is not checked */
			vs->json_ok = false;
			vs->cur->checked--;
			note_skipped(vs->cur, "JSON.SET (the server has no JSON.GET)");
		}
	}
	redis_batch_reset(&vs->flight);
	vs->flight_checks = NIL;
	MemoryContextReset(vs->flightcxt);
	vs->in_flight = false;
}

/*
 * run_batch sends the batch being built, after the one in flight is
 * finished, and starts a new one: Redis reads back one batch while the next
 * is rendered.
 */
static void
run_batch(VerifyState *vs)
{
	SessionBatch  sent;
	MemoryContext cxt;

	finish_flight(vs);
	if (vs->batch.ncmds == 0)
		return;
	redis_session_send(vs->session, &vs->batch);
	sent = vs->batch;
	cxt = vs->batchcxt;
	vs->batch = vs->flight;
	vs->flight = sent;
	vs->flight_checks = vs->checks;
	vs->checks = NIL;
	vs->batchcxt = vs->flightcxt;
	vs->flightcxt = cxt;
	vs->in_flight = true;
	vs->batch_rows = 0;
}

/* flush_batches runs what is built and in flight, and waits for it. */
static void
flush_batches(VerifyState *vs)
{
	run_batch(vs);
	finish_flight(vs);
}

/* ---------------------------------------------------------------------------
 * Rows
 * ---------------------------------------------------------------------------
 */

/* check_row renders one row of rel (any toasted value fetched first). */
static void
check_row(VerifyState *vs, Relation rel, RelMap *map, HeapTuple tuple)
{
	CommandSink	  sink = {verify_command, verify_error, vs, false};
	ChangeMeta	  meta = {InvalidTransactionId, InvalidXLogRecPtr, 0};
	MemoryContext old = MemoryContextSwitchTo(vs->batchcxt);

	if (HeapTupleHasExternal(tuple))
		tuple = toast_flatten_tuple(tuple, RelationGetDescr(rel));
	meta.commit_time = GetCurrentTransactionStartTimestamp();
	vs->cur->rows++;
	mapping_change(map, rel, PG2R_OP_SNAPSHOT, NULL, tuple, &meta, &sink);
	MemoryContextSwitchTo(old);
	if (++vs->batch_rows >= VERIFY_BATCH_ROWS ||
		vs->batch.ncmds >= VERIFY_BATCH_CMDS)
		run_batch(vs);
}

/* A row kept by the reservoir sample, with its leaf relation. */
typedef struct SampledRow
{
	Oid		  leaf;
	HeapTuple tuple;
} SampledRow;

/*
 * check_relation checks every row (or a sample of size sample) of the
 * leaves of relation relid under the active snapshot.
 */
static void
check_relation(VerifyState *vs, Oid relid, int sample)
{
	/* a sweep holds no lock once it read a table (it waits for Redis then) */
	List *leaves =
		find_all_inheritors(relid, vs->sweep ? NoLock : AccessShareLock, NULL);
	ListCell   *lc;
	SampledRow *kept = sample > 0 ? palloc(sizeof(SampledRow) * sample) : NULL;
	int64		seen = 0;
	int			nkept = 0;
	pg_prng_state rng;

	pg_prng_seed(&rng, (uint64) GetCurrentTimestamp() ^ MyProcPid);
	foreach(lc, leaves)
	{
		Oid			  leaf = lfirst_oid(lc);
		Relation	  rel;
		TableScanDesc scan;
		HeapTuple	  tuple;
		RelMap		 *map;

		if (get_rel_relkind(leaf) != RELKIND_RELATION)
			continue;
		rel = vs->sweep ? try_table_open(leaf, AccessShareLock)
						: table_open(leaf, AccessShareLock);
		if (rel == NULL)
			continue; /* dropped meanwhile */
		map = mapping_get(rel);
		scan = table_beginscan(rel, GetActiveSnapshot(), 0, NULL);
		while ((tuple = heap_getnext(scan, ForwardScanDirection)) != NULL)
		{
			CHECK_FOR_INTERRUPTS();
			if (kept == NULL)
			{
				check_row(vs, rel, map, tuple);
				continue;
			}
			/* reservoir sampling: every row equally likely to be kept */
			seen++;
			if (nkept < sample)
			{
				kept[nkept].leaf = leaf;
				kept[nkept++].tuple = heap_copytuple(tuple);
			}
			else
			{
				int64 j = (int64) pg_prng_uint64_range(&rng, 0, seen - 1);

				if (j < sample)
				{
					heap_freetuple(kept[j].tuple);
					kept[j].leaf = leaf;
					kept[j].tuple = heap_copytuple(tuple);
				}
			}
		}
		table_endscan(scan);
		table_close(rel, vs->sweep ? AccessShareLock : NoLock);
	}
	for (int i = 0; i < nkept; i++)
	{
		Relation rel = table_open(kept[i].leaf, NoLock);

		check_row(vs, rel, mapping_get(rel), kept[i].tuple);
		table_close(rel, NoLock);
	}
	flush_batches(vs);
}

/* ---------------------------------------------------------------------------
 * Orphans
 * ---------------------------------------------------------------------------
 */

/* verifiable tells whether a command's key is one verify expects to exist. */
static bool
verifiable(const char *name)
{
	static const char *const names[] = {"SET",		"SETEX", "PSETEX", "MSET",
										"HSET",		"HMSET", "SADD",   "ZADD",
										"JSON.SET", "SETNX", "HSETNX"};

	for (size_t i = 0; i < lengthof(names); i++)
		if (pg_strcasecmp(name, names[i]) == 0)
			return true;
	return false;
}

/*
 * make_pattern makes the key pattern of argument a of a rule (a key):
 * literal text kept (glob characters escaped for SCAN), and the names
 * {%schema%} and {%table%} render; each other placeholder a star.
 */
static KeyPattern *
make_pattern(const Rule *rule, int a)
{
	const TplArg  *arg = &rule->tpl->args[a];
	KeyPattern	  *kp = palloc0(sizeof(KeyPattern));
	StringInfoData glob, lit;

	initStringInfo(&glob);
	initStringInfo(&lit);
	for (int p = 0; p < arg->nparts; p++)
	{
		const TplPart *part = &arg->parts[p];
		const char	  *text = part->text;
		int			   len = part->len;
		char		  *name = NULL;

		/*
		 * {%schema%} and {%table%} render the names of the rule's table
		 * (mapping.c): literal text, not a star (*.*:* matched every key
		 * with a '.' and a ':', other applications' too)
		 */
		if (part->kind == TPL_SCHEMA)
			name = get_namespace_name(get_rel_namespace(rule->relid));
		else if (part->kind == TPL_TABLE)
			name = get_rel_name(rule->relid);
		if (name != NULL)
		{
			text = name;
			len = strlen(name);
		}
		if (part->kind == TPL_LITERAL || name != NULL)
		{
			for (int i = 0; i < len; i++)
			{
				char ch = text[i];

				if (ch == '*' || ch == '?' || ch == '[' || ch == ']' ||
					ch == '\\')
					appendStringInfoChar(&glob, '\\');
				appendStringInfoChar(&glob, ch);
				appendStringInfoChar(&lit, ch);
			}
			kp->literal += len;
			continue;
		}
		/* a placeholder: a star, unless one precedes it */
		if (glob.len > 0 && glob.data[glob.len - 1] == '*' && lit.len == 0)
			continue;
		if (glob.len == 0)
			kp->lead_star = true;
		else
			kp->parts = lappend(kp->parts, pstrdup(lit.data));
		resetStringInfo(&lit);
		appendStringInfoChar(&glob, '*');
	}
	if (glob.len > 0 && glob.data[glob.len - 1] == '*' && lit.len == 0 &&
		(glob.len < 2 || glob.data[glob.len - 2] != '\\'))
		kp->trail_star = true;
	else
		kp->parts = lappend(kp->parts, pstrdup(lit.data));
	kp->glob = glob.data;
	kp->relid = rule->relid;
	return kp;
}

/* pattern_match tells whether key (len bytes) matches pattern kp. */
static bool
pattern_match(const KeyPattern *kp, const char *key, size_t len)
{
	size_t	  pos = 0;
	ListCell *lc;
	int		  n = list_length(kp->parts), i = 0;

	foreach(lc, kp->parts)
	{
		const char *part = lfirst(lc);
		size_t		plen = strlen(part);
		bool		first = (i == 0 && !kp->lead_star);
		bool		last = (i == n - 1 && !kp->trail_star);

		if (first)
		{
			if (len < plen || memcmp(key, part, plen) != 0)
				return false;
			pos = plen;
		}
		else if (last)
		{
			if (len - pos < plen || memcmp(key + len - plen, part, plen) != 0)
				return false;
			pos = len;
		}
		else
		{
			const char *hit = NULL;

			for (size_t s = pos; s + plen <= len && !hit; s++)
				if (memcmp(key + s, part, plen) == 0)
					hit = key + s;
			if (!hit)
				return false;
			pos = (hit - key) + plen;
		}
		i++;
	}
	return kp->trail_star || pos == len || n == 0;
}

/*
 * claim_patterns appends to patterns the pattern of every key argument of
 * every rule of relation relid, of every op, with no stats: a key such a
 * pattern matches more specifically than a checked rule's is that rule's
 * (an INCRBY counter, the key of an update-only rule), not an orphan.
 */
static List *
claim_patterns(List *patterns, Oid relid)
{
	for (int op = 0; op < PG2R_NUM_OPS; op++)
	{
		ListCell *r;

		foreach(r, rules_for(relid, (Pg2rOp) op))
		{
			Rule *rule = lfirst(r);
			int	  nargs, last;

			if (rule->broken || rule->tpl == NULL || rule->def == NULL ||
				rule->def->first_key <= 0)
				continue;
			nargs = rule->tpl->nargs;
			last = rule->def->last_key < 0 ? nargs + rule->def->last_key
										   : rule->def->last_key;
			for (int a = rule->def->first_key; a <= last && a < nargs;
				 a += Max(rule->def->key_step, 1))
			{
				/* {pairs} shifts the keys after it: they are not known */
				if (rule->tpl->args[a].nparts > 0 &&
					rule->tpl->args[a].parts[0].kind == TPL_PAIRS)
					break;
				patterns = lappend(patterns, make_pattern(rule, a));
			}
		}
	}
	return patterns;
}

/*
 * collect_patterns makes the key pattern of every checkable rule, then
 * those that only claim keys (claim_patterns).  Checkable ones come first:
 * of equally specific patterns, find_orphans attributes a key to the first.
 */
static List *
collect_patterns(VerifyState *vs, List *stats)
{
	List	 *patterns = NIL;
	List	 *relids = rules_relations();
	ListCell *lc;

	foreach(lc, relids)
	{
		Oid		  relid = lfirst_oid(lc);
		RelStats *st = NULL;
		List	 *rules = rules_for(relid, PG2R_OP_SNAPSHOT);
		ListCell *r, *s;
		bool	  warned = false;

		if (rules == NIL)
			rules = rules_for(relid, PG2R_OP_INSERT);
		foreach(s, stats)
			if (((RelStats *) lfirst(s))->relid == relid)
				st = lfirst(s);
		foreach(r, rules)
		{
			Rule	   *rule = lfirst(r);
			KeyPattern *kp;

			if (rule->broken || rule->tpl == NULL || rule->def == NULL ||
				rule->def->first_key <= 0 ||
				rule->def->first_key >= rule->tpl->nargs ||
				!verifiable(rule->def->name) || uses_txn_facts(rule))
				continue;
			kp = make_pattern(rule, rule->def->first_key);
			kp->stats = st;
			/*
			 * A key of no literal text ({k}) matches every key of the
			 * database, other applications' too: the sweep deletes none
			 * of them (its keys stay claimed); pg2redis_verify() lists them.
			 */
			if (vs->sweep && rules_have_disabled(relid))
			{
				/* its disabled rules' keys are no enabled rule's */
				if (!warned)
					ereport(WARNING,
							(errcode(ERRCODE_WARNING),
							 errmsg("the sweep leaves alone the keys of table \"%s\": it has disabled rules",
									get_rel_name(relid) ? get_rel_name(relid)
														: "?"),
							 errdetail("Keys that a disabled rule wrote match no enabled rule, and would be taken for orphans."),
							 errhint("Run pg2redis_verify() on the table once its rules are enabled or deleted.")));
				warned = true;
				kp->stats = NULL;
			}
			else if (vs->sweep && kp->literal == 0)
			{
				ereport(WARNING,
						(errcode(ERRCODE_WARNING),
						 errmsg("the sweep leaves alone the keys of rule " INT64_FORMAT
								" of table \"%s\": its key pattern has no literal text",
								rule->id,
								get_rel_name(relid) ? get_rel_name(relid)
													: "?"),
						 errdetail("The pattern \"%s\" matches every key of the Redis database, including keys of other applications.",
								   kp->glob),
						 errhint("Run pg2redis_verify() and delete the orphans it lists, or give the rule's key a prefix.")));
				kp->stats = NULL;
			}
			patterns = lappend(patterns, kp);
		}
	}
	foreach(lc, relids)
		patterns = claim_patterns(patterns, lfirst_oid(lc));
	return patterns;
}

/*
 * run_dels sends the DELs of the orphans a sweep found, and counts the keys
 * they removed.  SCAN may return a key twice, and it is then deleted once.
 */
static void
run_dels(VerifyState *vs)
{
	if (vs->dels.ncmds == 0)
		return;
	redis_session_run(vs->session, &vs->dels);
	for (int i = 0; i < vs->dels.ncmds; i++)
	{
		const redisReply *r = vs->dels.cmds[i].reply;

		if (r->type == REDIS_REPLY_ERROR)
			ereport(ERROR,
					(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
					 errmsg("Redis refused to delete a key the sweep found"),
					 errdetail("Redis said: %s", r->str)));
		if (r->type == REDIS_REPLY_INTEGER)
			vs->swept += r->integer;
	}
	redis_batch_reset(&vs->dels);
}

/*
 * renders_glob tells whether the table of claim pattern kp has a checked
 * pattern of the same glob: then its rows' keys say what is an orphan, and
 * the claim (the same rule seen for its other ops) adds nothing.
 */
static bool
renders_glob(List *patterns, const KeyPattern *kp)
{
	ListCell *p;

	foreach(p, patterns)
	{
		KeyPattern *cand = lfirst(p);

		if (cand->stats != NULL && cand->relid == kp->relid &&
			strcmp(cand->glob, kp->glob) == 0)
			return true;
	}
	return false;
}

/*
 * claimed_by_tie tells whether a pattern as specific as best (the first of
 * them, to which find_orphans attributes key) claims the key for someone
 * else: another table's rows render it (two tables writing the same key
 * pattern, user:{id} from staff and from customers), or a rule of another
 * table that is not checked writes it.  Without this, the keys of the
 * second table of a pattern were orphans, and the sweep deleted them.  A
 * claim of a table that renders that very pattern is its rows' business.
 */
static bool
claimed_by_tie(List *patterns, const KeyPattern *best, const char *key,
			   size_t len, uint64 h)
{
	ListCell *p;

	foreach(p, patterns)
	{
		KeyPattern *cand = lfirst(p);

		if (cand == best || cand->literal != best->literal ||
			cand->relid == best->relid || !pattern_match(cand, key, len))
			continue;
		if (cand->stats != NULL
				? keyset_lookup(cand->stats->expected_keys, h) != NULL
				: !renders_glob(patterns, cand))
			return true;
	}
	return false;
}

/*
 * find_orphans scans the keys of each pattern of a checked table and
 * reports those that no row rendered and that no more specific pattern of
 * another rule claims.
 */
static void
find_orphans(VerifyState *vs, List *patterns)
{
	ListCell *lc;
	int		  nnodes = redis_session_nodes(vs->session);
	List	 *globs = NIL; /* each glob scanned once */

	foreach(lc, patterns)
	{
		KeyPattern *kp = lfirst(lc);

		if (kp->stats == NULL || list_member(globs, makeString(kp->glob)))
			continue;
		globs = lappend(globs, makeString(kp->glob));
		for (int node = 0; node < nnodes; node++)
		{
			char *cursor = pstrdup("0");

			do
			{
				const char *argv[6] = {"SCAN",	 cursor,  "MATCH",
									   kp->glob, "COUNT", VERIFY_SCAN_COUNT};
				size_t		argvlen[6];
				redisReply *r, *keys;

				for (int i = 0; i < 6; i++)
					argvlen[i] = strlen(argv[i]);
				redis_batch_add_node(&vs->batch, node, 6, argv, argvlen);
				redis_session_run(vs->session, &vs->batch);
				r = vs->batch.cmds[0].reply;
				if (r->type != REDIS_REPLY_ARRAY || r->elements != 2)
					ereport(ERROR,
							(errcode(ERRCODE_PROTOCOL_VIOLATION),
							 errmsg("unexpected reply to SCAN from Redis")));
				cursor = pnstrdup(r->element[0]->str, r->element[0]->len);
				keys = r->element[1];
				for (size_t k = 0; k < keys->elements; k++)
				{
					const char *key = keys->element[k]->str;
					size_t		len = keys->element[k]->len;
					KeyPattern *best = NULL;
					ListCell   *p;
					uint64		h;

					foreach(p, patterns)
					{
						KeyPattern *cand = lfirst(p);

						if ((best == NULL || cand->literal > best->literal) &&
							pattern_match(cand, key, len))
							best = cand;
					}
					/*
					 * pg2redis's own keys (stream positions) no rule writes;
					 * a key another pattern claims is checked in its scan
					 */
					if (len >= strlen(PG2R_KEY_PREFIX) &&
						memcmp(key, PG2R_KEY_PREFIX,
							   strlen(PG2R_KEY_PREFIX)) == 0)
						continue;
					if (best == NULL || best->stats == NULL ||
						strcmp(best->glob, kp->glob) != 0)
						continue;
					h = hash_bytes_extended((const unsigned char *) key, len,
											0);
					if (keyset_lookup(best->stats->expected_keys, h) != NULL ||
						claimed_by_tie(patterns, best, key, len, h))
						continue;
					if (vs->sweep)
					{
						const char *argv[2] = {"DEL", key};
						size_t		argvlen[2] = {3, len};

						redis_batch_add(&vs->dels, 2, argv, argvlen);
						best->stats->orphans++;
					}
					else
					{
						Check c = {0};

						c.relid = best->relid;
						c.key = pnstrdup(key, len);
						note_problem(vs, &c, -1, "orphan", NULL,
									 "a key no row renders");
					}
				}
				redis_batch_reset(&vs->batch);
				if (vs->dels.ncmds >= VERIFY_SCAN_DELS)
					run_dels(vs);
			} while (strcmp(cursor, "0") != 0);
		}
	}
	if (vs->sweep)
		run_dels(vs);
}

/* ---------------------------------------------------------------------------
 * The second look, and the results
 * ---------------------------------------------------------------------------
 */

/* stats_of returns the counts of table relid, or NULL if not checked. */
static RelStats *
stats_of(List *stats, Oid relid)
{
	ListCell *lc;

	foreach(lc, stats)
		if (((RelStats *) lfirst(lc))->relid == relid)
			return lfirst(lc);
	return NULL;
}

/*
 * recheck reads again, once the stream caught up, the keys of every
 * problem found, and reports those Redis still disagrees with.
 */
static void
recheck(VerifyState *vs, List *stats)
{
	ListCell *lc;
	List	 *kept = NIL;

	if (vs->problems == NIL)
		return;
	(void) pg2r_wait_applied(pg2r_wal_record_start(GetXLogInsertRecPtr()),
							 pg2r_redis_timeout_ms);
	/* one read per problem key; an orphan is read back with EXISTS */
	foreach(lc, vs->problems)
	{
		Problem *p = lfirst(lc);

		if (strcmp(p->problem, "orphan") == 0)
		{
			const char *argv[2] = {"EXISTS", p->check->key};
			size_t		argvlen[2] = {6, strlen(p->check->key)};

			p->check->cmd = redis_batch_add(&vs->batch, 2, argv, argvlen);
		}
		else
		{
			/* the same read as the first time */
			p->check->cmd = queue_read(&vs->batch, p->check);
		}
	}
	redis_session_run(vs->session, &vs->batch);
	foreach(lc, vs->problems)
	{
		Problem			 *p = lfirst(lc);
		const redisReply *r = vs->batch.cmds[p->check->cmd].reply;
		bool			  still;

		if (strcmp(p->problem, "orphan") == 0)
			still = r->type == REDIS_REPLY_INTEGER && r->integer == 1;
		else
		{
			List *before = vs->problems;

			/* compare again: any problem of the key keeps this one */
			vs->problems = NIL;
			(void) compare(vs, p->check, r, note_problem);
			still = vs->problems != NIL;
			vs->problems = before;
		}
		if (still)
			kept = lappend(kept, p);
	}
	redis_batch_reset(&vs->batch);
	foreach(lc, kept)
	{
		Problem	 *p = lfirst(lc);
		RelStats *st = stats_of(stats, p->check->relid);

		if (st == NULL)
			continue;
		if (strcmp(p->problem, "orphan") == 0)
			st->orphans++;
		else if (strcmp(p->problem, "differing") == 0)
			st->differing++;
		else
			st->missing++;
		if (st->readable)
			emit(vs, st->relid, p->check->key, p->problem, p->expected,
				 p->found);
	}
}

/* emit_summary writes the summary row of one table. */
static void
emit_summary(VerifyState *vs, RelStats *st)
{
	StringInfoData exp, found;
	ListCell	  *a, *b;

	initStringInfo(&exp);
	initStringInfo(&found);
	appendStringInfo(&exp,
					 INT64_FORMAT " rows%s, " INT64_FORMAT
								  " commands checked, " INT64_FORMAT
								  " skipped",
					 st->rows, vs->sample ? " (a sample)" : "", st->checked,
					 st->skipped);
	forboth(a, st->skipped_why, b, st->skipped_n)
		appendStringInfo(&exp, "%s%s: %d",
						 a == list_head(st->skipped_why) ? " (" : ", ",
						 (char *) lfirst(a), lfirst_int(b));
	if (st->skipped_why)
		appendStringInfoChar(&exp, ')');
	appendStringInfo(&found,
					 INT64_FORMAT " missing, " INT64_FORMAT " differing, %s",
					 st->missing, st->differing,
					 vs->sample
						 ? "orphans not looked for (a sample)"
						 : psprintf(INT64_FORMAT " orphans", st->orphans));
	if (!st->readable)
		appendStringInfoString(&found,
							   " (no SELECT privilege, or row-level security applies: keys not shown)");
	emit(vs, st->relid, NULL, "summary", exp.data, found.data);
}

/*
 * pg2redis_verify(relation, sample) compares Redis with what the rules make
 * of the rows of relation (NULL: every table with rules), or of a random
 * sample of sample rows per table; returns one row per problem (relation,
 * key, problem, expected, found) and a summary row per table.
 */
Datum
pg2redis_verify(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	VerifyState	   vs = {0};
	List		  *relids;
	List		  *stats = NIL;
	ListCell	  *lc;
	int			   sample = PG_ARGISNULL(1) ? 0 : PG_GETARG_INT32(1);
	int			   level;

	if (!PG_ARGISNULL(1) && sample <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("sample must be positive"),
				 errhint("Give the number of rows to check per table, or NULL for every row.")));
	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	vs.store = rsinfo->setResult;
	vs.desc = rsinfo->setDesc;
	vs.cxt = CurrentMemoryContext;
	vs.sample = sample > 0;
	vs.json_ok = true;
	vs.batchcxt =
		AllocSetContextCreate(CurrentMemoryContext, "pg2redis verify batch",
							  ALLOCSET_DEFAULT_SIZES);
	vs.flightcxt =
		AllocSetContextCreate(CurrentMemoryContext, "pg2redis verify batch",
							  ALLOCSET_DEFAULT_SIZES);

	if (PG_ARGISNULL(0))
		relids = rules_relations();
	else
	{
		Oid relid = PG_GETARG_OID(0);

		if (!rules_exist_for(relid))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("table \"%s\" has no pg2redis rules",
							get_rel_name(relid) ? get_rel_name(relid) : "?"),
					 errhint("Call pg2redis_verify() without a table to check every mapped table.")));
		relids = list_make1_oid(relid);
	}

	/* the rows as of now: Redis must first have everything before it */
	PushActiveSnapshot(GetTransactionSnapshot());
	if (!pg2r_wait_applied(pg2r_wal_record_start(GetXLogInsertRecPtr()),
						   pg2r_redis_timeout_ms))
		ereport(NOTICE,
				(errmsg("the stream has not caught up with this snapshot"),
				 errdetail("Redis may lack changes committed before it: they show up as problems."),
				 errhint("Check pg2redis_status(); run pg2redis_verify() again once lag_bytes is small.")));

	vs.session = redis_session_open();
	redis_batch_init(&vs.batch);
	redis_batch_init(&vs.flight);
	level = render_push_settings();
	foreach(lc, relids)
	{
		Oid		  relid = lfirst_oid(lc);
		RelStats *st = palloc0(sizeof(RelStats));

		st->relid = relid;
		st->cxt = vs.cxt;
		/* rows row-level security hides from the caller must not show */
		st->readable =
			pg_class_aclcheck(relid, GetUserId(), ACL_SELECT) == ACLCHECK_OK &&
			check_enable_rls(relid, InvalidOid, true) != RLS_ENABLED;
		st->expected_keys = keyset_create(vs.cxt, 1024, NULL);
		stats = lappend(stats, st);
		vs.cur = st;
		check_relation(&vs, relid, sample);
	}
	if (!vs.sample)
		find_orphans(&vs, collect_patterns(&vs, stats));
	recheck(&vs, stats);
	render_pop_settings(level);
	foreach(lc, stats)
		emit_summary(&vs, lfirst(lc));
	redis_session_close(vs.session);
	PopActiveSnapshot();
	return (Datum) 0;
}

/*
 * verify_sweep removes from Redis the orphans of every mapped table, found
 * as pg2redis_verify() finds them, under the active snapshot: keys that
 * match the key pattern of a table's snapshot (else insert) rule whose
 * effect can be read back, that no row renders, and that no more specific
 * pattern of another rule claims.  pg2redis's own keys and keys of rules
 * that count or log (INCRBY, XADD ...) are never touched.  The worker calls
 * it after it loaded every table under the same snapshot and before its
 * stream starts (failover.c): nothing of pg2redis writes those keys
 * meanwhile, so no second look is needed.  Returns the number of keys
 * removed; *detail gets them per table ("orders: 3, items: 1"), for the
 * log.  A Redis failure is an ERROR.
 */
int64
verify_sweep(char **detail)
{
	VerifyState	   vs = {0};
	List		  *stats = NIL;
	ListCell	  *lc;
	StringInfoData buf;
	int			   level;

	vs.cxt = CurrentMemoryContext;
	vs.sweep = true;
	vs.json_ok = true;
	vs.batchcxt =
		AllocSetContextCreate(CurrentMemoryContext, "pg2redis sweep batch",
							  ALLOCSET_DEFAULT_SIZES);
	vs.flightcxt =
		AllocSetContextCreate(CurrentMemoryContext, "pg2redis sweep batch",
							  ALLOCSET_DEFAULT_SIZES);
	vs.session = redis_session_open();
	redis_batch_init(&vs.batch);
	redis_batch_init(&vs.flight);
	redis_batch_init(&vs.dels);
	level = render_push_settings();
	foreach(lc, rules_relations())
	{
		RelStats *st = palloc0(sizeof(RelStats));

		st->relid = lfirst_oid(lc);
		st->cxt = vs.cxt;
		st->expected_keys = keyset_create(vs.cxt, 1024, NULL);
		stats = lappend(stats, st);
		vs.cur = st;
		check_relation(&vs, st->relid, 0);
	}
	find_orphans(&vs, collect_patterns(&vs, stats));
	render_pop_settings(level);
	redis_session_close(vs.session);

	initStringInfo(&buf);
	foreach(lc, stats)
	{
		RelStats   *st = lfirst(lc);
		const char *name = get_rel_name(st->relid);

		if (st->orphans == 0)
			continue;
		appendStringInfo(&buf, "%s%s: " INT64_FORMAT, buf.len > 0 ? ", " : "",
						 name ? quote_identifier(name) : "?", st->orphans);
	}
	*detail = buf.data;
	return vs.swept;
}
