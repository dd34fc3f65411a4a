/*-------------------------------------------------------------------------
 *
 * cmdbuf.h
 *	  Rendered commands kept in a buffer until they can be sent.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG2REDIS_CMDBUF_H
#define PG2REDIS_CMDBUF_H

#include "lib/stringinfo.h"
#include "pg2redis/rules.h"

/* Reads a buffer of commands back; its argument arrays are reused. */
typedef struct CmdBufReader
{
	const char	 *p;
	const char	 *end;
	const char	**argv;
	size_t		 *lens;
	int			  maxargs;
	MemoryContext cxt; /* where argv and lens grow */
} CmdBufReader;

extern Size cmdbuf_command_size(int argc, const size_t *argvlen);
extern void cmdbuf_append(StringInfo buf, const Rule *rule, int argc,
						  const char *const *argv, const size_t *argvlen);
extern void cmdbuf_append_error(StringInfo buf, const Rule *rule,
								const char *message);
extern void cmdbuf_reader_init(CmdBufReader *r, const char *data, Size len,
							   MemoryContext cxt);
extern bool cmdbuf_next(CmdBufReader *r, Rule *rule, int *argc,
						const char **error);

#endif /* PG2REDIS_CMDBUF_H */
