/*-------------------------------------------------------------------------
 *
 * cli.c
 *	  Splitting a command written as in redis-cli into template elements.
 *
 * Owns pg2r_split_cli (used by pg2redis_add_rule's text form and
 * pg2redis_split_command); calls only pg2r_fail.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "nodes/pg_list.h"

#include "pg2redis/cli.h"

/*
 * pg2r_split_cli splits a command written as in redis-cli into a list of
 * palloc'd arguments: white space separates arguments, "…" groups one
 * argument that may contain spaces (\" and \\ inside it are a quote and a
 * backslash), and white space inside a placeholder's braces does not split.
 * Returns NIL with *err set for an unterminated quote or a quote glued to
 * other text.
 */
List *
pg2r_split_cli(const char *command, Pg2rError *err)
{
	List		  *args = NIL;
	const char	  *p = command;
	StringInfoData cur;

	initStringInfo(&cur);
	for (;;)
	{
		int depth = 0;

		while (*p && isspace((unsigned char) *p))
			p++;
		if (*p == '\0')
			break;
		resetStringInfo(&cur);
		if (*p == '"')
		{
			p++;
			for (;;)
			{
				if (*p == '\0')
				{
					pg2r_fail(err, ERRCODE_SYNTAX_ERROR,
							  "Close every quoted argument with \".",
							  "unterminated quoted argument in command \"%s\"",
							  command);
					return NIL;
				}
				if (*p == '\\' && (p[1] == '"' || p[1] == '\\'))
				{
					appendStringInfoChar(&cur, p[1]);
					p += 2;
				}
				else if (*p == '"')
				{
					p++;
					break;
				}
				else
					appendStringInfoChar(&cur, *p++);
			}
			if (*p && !isspace((unsigned char) *p))
			{
				pg2r_fail(err, ERRCODE_SYNTAX_ERROR,
						  "Separate a quoted argument from the next one with a space.",
						  "closing quote must be followed by a space in command \"%s\"",
						  command);
				return NIL;
			}
		}
		else
		{
			while (*p && (depth > 0 || !isspace((unsigned char) *p)))
			{
				if (p[0] == '{' && p[1] == '{')
					appendStringInfoChar(&cur, *p++);
				else if (p[0] == '{')
					depth++;
				else if (p[0] == '}' && depth > 0)
					depth--;
				appendStringInfoChar(&cur, *p++);
			}
		}
		args = lappend(args, pnstrdup(cur.data, cur.len));
	}
	return args;
}
