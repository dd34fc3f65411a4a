/*-------------------------------------------------------------------------
 *
 * redis_io.h
 *	  Redis connections: URLs, non-blocking sockets, RESP out, replies in.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG2REDIS_REDIS_IO_H
#define PG2REDIS_REDIS_IO_H

#include <hiredis/hiredis.h>

#include "lib/stringinfo.h"
#include "port.h"

#include "pg2redis/reply_compact.h"
#include "pg2redis/settings.h"

/* Where to connect, parsed from pg2redis.redis_url. */
typedef struct RedisTarget
{
	bool		unix_socket;
	char	   *path; /* unix socket path */
	char	   *host; /* TCP host as written */
	int			port;
	int			db;
	char	   *user;				 /* NULL: no ACL user */
	char	   *password;			 /* NULL: no AUTH */
	bool		password_from_colon; /* written as user:password@ */
	char	   *display;			 /* the URL with the password masked */
	bool		tls;				 /* rediss:// */
	bool		cluster;			 /* redis-cluster://: hosts are seeds */
	bool		sentinel;		   /* redis-sentinel://: hosts are sentinels */
	char	   *master_name;	   /* sentinel: the primary's name */
	char	   *sentinel_user;	   /* sentinel: AUTH user, or NULL */
	char	   *sentinel_password; /* sentinel: AUTH password, or NULL:
									  * the data nodes' credentials */
	int			nseeds;			   /* TCP hosts in the URL (1 unless cluster or
						 * sentinel) */
	char	  **seed_hosts;
	int		   *seed_ports;
	const char *tls_ca_file;   /* NULL or "": the system's CAs */
	const char *tls_cert_file; /* client certificate, or NULL */
	const char *tls_key_file;  /* its key (default: in the cert file) */
	int			tls_verify;	   /* RedisTlsVerify */
} RedisTarget;

/* Why the Redis settings cannot be used, for an ereport by the caller. */
typedef struct RedisSetupError
{
	int	 sqlerrcode;
	char message[512];
	char hint[512]; /* "" for none */
} RedisSetupError;

/*
 * The Redis layer's one way of returning an error: a function that fails
 * returns false (or -1) and writes the reason with snprintf/strlcpy into a
 * buffer its caller owns; it never raises an ERROR and never allocates the
 * message.  The buffer is conn->error for a function on a RedisConn, and
 * otherwise a (char *err, size_t errlen) pair, REDIS_ERROR_LEN bytes by
 * custom.  RedisSetupError is the same with the errcode and hint of the
 * ERROR the caller raises for settings that cannot be used.
 */
#define REDIS_ERROR_LEN 256

/* How often a connection resolving a host name is polled (ms). */
#define RESOLVE_POLL_MS 10

typedef enum RedisConnState
{
	RCONN_CLOSED,
	RCONN_RESOLVING,  /* the host name is being resolved, on another thread */
	RCONN_CONNECTING, /* non-blocking connect() in progress */
	RCONN_TLS,		  /* TLS handshake in progress */
	RCONN_OPEN		  /* connected: bytes may flow */
} RedisConnState;

/* One connection: a socket and a hiredis reply reader. */
typedef struct RedisConn
{
	RedisConnState	 state;
	pgsocket		 sock;
	redisReader		*reader;
	void			*ssl;		/* SSL *, when TLS */
	void			*ssl_ctx;	/* SSL_CTX * */
	int				 want;		/* WL_SOCKET_* events the next step needs */
	void			*lookup;	/* the host name lookup running, or NULL */
	struct addrinfo *addrs;		/* the addresses the name resolved to */
	struct addrinfo *next_addr; /* the next one to try */
	struct addrinfo *addr;		/* the one being tried */
	char			 error[REDIS_ERROR_LEN]; /* why the last call failed */
	bool			 compact_replies; /* build compact replies (redis_io.c) */
} RedisConn;

extern bool	 redis_parse_url(const char *url, RedisTarget *target, char *err,
							 size_t errlen);
extern char *redis_mask_url(const char *url);
extern bool	 redis_apply_password_file(RedisTarget *target, const char *path,
									   RedisSetupError *err);
extern bool	 redis_apply_sentinel_password_file(RedisTarget		*target,
												const char		*user,
												const char		*path,
												RedisSetupError *err);
extern void	 redis_sentinel_target(const RedisTarget *target, int i,
								   RedisTarget *sentinel);
extern bool	 redis_sentinel_auth_absent(const char *err);
extern bool	 redis_check_tls_key(const RedisTarget *target,
								 RedisSetupError   *err);

extern void redis_conn_init(RedisConn *conn);
extern bool redis_connect_start(RedisConn *conn, const RedisTarget *target);
extern int	redis_connect_finish(RedisConn *conn, const RedisTarget *target);
extern long redis_conn_poll_ms(const RedisConn *conn);
extern bool redis_connect_next(RedisConn *conn, const char *why);
extern void redis_close(RedisConn *conn);
extern ssize_t redis_send(RedisConn *conn, const char *data, size_t len);
extern bool	   redis_receive(RedisConn *conn, bool *eof);
extern int	   redis_next_reply(RedisConn *conn, redisReply **reply);

extern void	 redis_append_command(StringInfo buf, int argc,
								  const char *const *argv,
								  const size_t		*argvlen);
extern void	 redis_append_cstrings(StringInfo buf, int argc, ...);
extern char *redis_reply_to_json(const redisReply *reply, int *not_utf8);
extern int	 redis_append_handshake(StringInfo buf, const RedisTarget *target);

#endif /* PG2REDIS_REDIS_IO_H */
