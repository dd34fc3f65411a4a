/*-------------------------------------------------------------------------
 *
 * cmdbuf.c
 *	  Rendered commands kept in a buffer until they can be sent.
 *
 * The initial load renders a chunk of rows while it holds the table's lock,
 * and an on-demand snapshot renders a chunk before its high watermark is
 * decoded; both send the commands later.  They keep them here, back to back
 * in one StringInfo: the rule's id and command (its position in the
 * command table, redis_command_index), argc, then each argument's length
 * and bytes.  A render error is kept in its place as
 * argc -1 and the message, so that it becomes a dead letter in order.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/memutils.h"

#include "pg2redis/cmdbuf.h"
#include "pg2redis/commands.h"

/* cmdbuf_command_size returns the bytes cmdbuf_append adds for a command. */
Size
cmdbuf_command_size(int argc, const size_t *argvlen)
{
	Size need = sizeof(int64) + sizeof(int32) + sizeof(int32);

	for (int i = 0; i < argc; i++)
		need += sizeof(int32) + argvlen[i];
	return need;
}

/*
 * append_head appends the rule's id and command (read back by read_head),
 * and n.
 */
static void
append_head(StringInfo buf, const Rule *rule, int32 n)
{
	int32 cmd = redis_command_index(rule->def);

	appendBinaryStringInfo(buf, (const char *) &rule->id, sizeof(int64));
	appendBinaryStringInfo(buf, (const char *) &cmd, sizeof(int32));
	appendBinaryStringInfo(buf, (const char *) &n, sizeof(int32));
}

/*
 * read_head reads what append_head wrote at r->p into *rule (id and
 * command) and *n, and moves r->p past it.
 */
static void
read_head(CmdBufReader *r, Rule *rule, int32 *n)
{
	int32 cmd;

	memset(rule, 0, sizeof(Rule));
	memcpy(&rule->id, r->p, sizeof(int64));
	r->p += sizeof(int64);
	memcpy(&cmd, r->p, sizeof(int32));
	r->p += sizeof(int32);
	rule->def = redis_command_at(cmd);
	memcpy(n, r->p, sizeof(int32));
	r->p += sizeof(int32);
}

/*
 * cmdbuf_append appends one command of rule to buf (enlarged once, so that
 * a command is appended whole or, when memory runs out, not at all).
 */
void
cmdbuf_append(StringInfo buf, const Rule *rule, int argc,
			  const char *const *argv, const size_t *argvlen)
{
	enlargeStringInfo(buf, (int) cmdbuf_command_size(argc, argvlen));
	append_head(buf, rule, argc);
	for (int i = 0; i < argc; i++)
	{
		int32 len = (int32) argvlen[i];

		appendBinaryStringInfo(buf, (const char *) &len, sizeof(int32));
		appendBinaryStringInfo(buf, argv[i], len);
	}
}

/* cmdbuf_append_error appends a render error of rule to buf. */
void
cmdbuf_append_error(StringInfo buf, const Rule *rule, const char *message)
{
	append_head(buf, rule, -1);
	appendBinaryStringInfo(buf, message, strlen(message) + 1);
}

/* cmdbuf_reader_init starts reading the len bytes of commands at data. */
void
cmdbuf_reader_init(CmdBufReader *r, const char *data, Size len,
				   MemoryContext cxt)
{
	r->p = data;
	r->end = data + len;
	if (r->cxt != cxt || r->argv == NULL)
	{
		r->argv = NULL;
		r->lens = NULL;
		r->maxargs = 0;
	}
	r->cxt = cxt;
}

/*
 * cmdbuf_next reads the next entry: false at the end; otherwise *rule
 * (id and command definition) and either *error (a render error's message)
 * or *argc with the arguments in r->argv and r->lens, which point into the
 * buffer and stay valid until it changes.
 */
bool
cmdbuf_next(CmdBufReader *r, Rule *rule, int *argc, const char **error)
{
	int32 n;

	if (r->p >= r->end)
		return false;
	read_head(r, rule, &n);
	*error = NULL;
	*argc = 0;
	if (n < 0)
	{
		*error = r->p;
		r->p += strlen(r->p) + 1;
		return true;
	}
	if (n > r->maxargs)
	{
		r->maxargs = Max(n, 2 * r->maxargs);
		r->argv = MemoryContextAlloc(r->cxt, sizeof(char *) * r->maxargs);
		r->lens = MemoryContextAlloc(r->cxt, sizeof(size_t) * r->maxargs);
	}
	for (int i = 0; i < n; i++)
	{
		int32 len;

		memcpy(&len, r->p, sizeof(int32));
		r->p += sizeof(int32);
		r->argv[i] = r->p;
		r->lens[i] = len;
		r->p += len;
	}
	*argc = n;
	return true;
}
