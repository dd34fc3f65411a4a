/*-------------------------------------------------------------------------
 *
 * error.c
 *	  Soft errors (Pg2rError): filling one, and raising one as an ERROR.
 *
 * Compile and render steps report a Pg2rError instead of raising, so that
 * their caller decides whether it becomes an ERROR (rule validation,
 * preview, SQL functions) or a dead letter (the stream).  This file owns
 * pg2r_fail and pg2r_raise; it calls nothing of pg2redis.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/stringinfo.h"

#include "pg2redis/common.h"

/*
 * pg2r_fail fills *err and returns false, so that callers can write
 * "return pg2r_fail(...)".
 */
bool
pg2r_fail(Pg2rError *err, int sqlerrcode, const char *hint, const char *fmt,
		  ...)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (;;)
	{
		va_list args;
		int		needed;

		va_start(args, fmt);
		needed = appendStringInfoVA(&buf, fmt, args);
		va_end(args);
		if (needed == 0)
			break;
		enlargeStringInfo(&buf, needed);
	}
	err->sqlerrcode = sqlerrcode;
	err->message = buf.data;
	err->hint = hint ? pstrdup(hint) : NULL;
	err->key = NULL;
	return false;
}

/*
 * pg2r_raise raises *err as an ERROR with its errcode, message and hint.
 * It does not return.
 */
void
pg2r_raise(const Pg2rError *err)
{
	ereport(ERROR,
			(errcode(err->sqlerrcode), errmsg_internal("%s", err->message),
			 err->hint ? errhint("%s", err->hint) : 0));
}
