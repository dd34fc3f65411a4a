/*-------------------------------------------------------------------------
 *
 * reply_parse.c
 *	  The CPU time of reading a block's replies: hiredis's own reply objects
 *	  against the compact ones of a ready link (src/redis/reply_compact.c).
 *
 * A block of 1,000 rows of two commands (HSET, SADD) is answered by +OK
 * (MULTI), 2,001 +QUEUED (the fence's SET included) and an EXEC array of
 * 2,001 elements.  This feeds those replies to a reader in pieces of the
 * given size (64 KB, the worker's reads, by default), takes every reply out
 * and frees it, 300 times, and prints the thread's CPU time per row, five
 * rounds of each alternately (a program of its own, not the server's: no
 * postgres.h here):
 *
 *	  cc -O2 -Iinclude -I"$(pg_config --includedir-server)" \
 *		  bench/reply_parse.c src/redis/reply_compact.c -lhiredis -o /tmp/reply_parse
 *	  /tmp/reply_parse [piece bytes]
 *
 *-------------------------------------------------------------------------
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <hiredis/hiredis.h>

#include "pg2redis/reply_compact.h"

#define ROWS 1000
#define ROUNDS 300

/* cpu_now returns the thread's CPU time in seconds. */
static double
cpu_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* make_stream writes one block's replies into buf; returns their length. */
static size_t
make_stream(char *buf)
{
	size_t n = 0;

	n += sprintf(buf + n, "+OK\r\n");
	for (int i = 0; i < 2 * ROWS + 1; i++)
		n += sprintf(buf + n, "+QUEUED\r\n");
	n += sprintf(buf + n, "*%d\r\n", 2 * ROWS + 1);
	for (int i = 0; i < ROWS; i++)
		n += sprintf(buf + n, ":7\r\n:1\r\n");
	n += sprintf(buf + n, "+OK\r\n");
	return n;
}

/* run reads ROUNDS blocks' replies; returns the CPU time per row in us. */
static double
run(bool compact, size_t piece)
{
	static char	 buf[1 << 16];
	size_t		 len = make_stream(buf);
	long		 got = 0;
	redisReader *rd = redisReaderCreate();
	double		 t0 = cpu_now();
	double		 t;

	for (int it = 0; it < ROUNDS; it++)
		for (size_t off = 0; off < len; off += piece)
		{
			void *r;

			redisReaderFeed(rd, buf + off,
							piece < len - off ? piece : len - off);
			while (pg2r_reader_get_reply(rd, compact, &r) == REDIS_OK &&
				   r != NULL)
			{
				redisReply *rr = r;

				/* what the sender looks at */
				if (rr->type == REDIS_REPLY_ARRAY)
					for (size_t i = 0; i < rr->elements; i++)
						if (rr->element[i]->type == REDIS_REPLY_ERROR)
							abort();
				got++;
				if (compact)
					redis_free_reply(r);
				else
					freeReplyObject(r);
			}
		}
	t = cpu_now() - t0;
	redisReaderFree(rd);
	if (got != (long) ROUNDS * (2 * ROWS + 3))
		abort();
	return t / ROUNDS / ROWS * 1e6;
}

int
main(int argc, char **argv)
{
	size_t piece = argc > 1 ? (size_t) atol(argv[1]) : 65536;

	if (piece == 0)
		piece = 65536;
	for (int round = 0; round < 5; round++)
	{
		double a = run(false, piece);
		double b = run(true, piece);

		printf("pieces of %zu bytes: hiredis's objects %.3f us/row, compact %.3f us/row\n",
			   piece, a, b);
	}
	return 0;
}
