/*-------------------------------------------------------------------------
 *
 * redis_io.c
 *	  Redis connections: URLs, non-blocking sockets, RESP out, replies in.
 *
 * pg2redis drives its own sockets and uses hiredis only for the protocol
 * reader.  hiredis 0.14 has no timeouts and may block in its connect and
 * read helpers; a blocked call would not see SIGTERM and would hold up
 * shutdown and DROP DATABASE.  So every socket here is non-blocking, never
 * waits, and reports what it could not do; callers wait with
 * WaitLatchOrSocket under their own deadlines.  Nothing here raises an
 * ERROR: failures are returned with a message in conn->error (or, with no
 * connection, in the caller's err buffer: see REDIS_ERROR_LEN), so that the
 * callers decide between retrying and failing.
 *
 * Commands are written in RESP directly into a StringInfo (no allocation
 * per command); replies are parsed by a hiredis reader fed with what the
 * socket returned.
 *
 * Host names.  getaddrinfo() blocks for as long as the resolver waits for
 * its name servers (tens of seconds when one does not answer), and nothing
 * interrupts it.  A host that is not a numeric address is resolved by
 * glibc's getaddrinfo_a() on the resolver's own thread (which blocks every
 * signal, so the process's signals still reach PostgreSQL's handlers):
 * the connection is RCONN_RESOLVING meanwhile, and the caller polls it
 * with redis_connect_finish() every RESOLVE_POLL_MS from its usual latch
 * wait, so that SIGTERM, a reload or its own deadline end the wait.  A
 * lookup given up on cannot be cancelled once running: it is kept (in
 * malloc'd memory, which the resolver's thread writes) until it ends, and
 * freed then.  Every address a name resolves to is tried, in the order
 * getaddrinfo() gives (IPv6 first, usually): one that refuses the
 * connection, or that the caller gives up on (redis_connect_next), hands
 * over to the next.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "common/string.h"
#include "utils/builtins.h"
#include "utils/elog.h"
#include "utils/memutils.h"
#include "storage/latch.h"

#include "pg2redis/redis_io.h"

/* Decode %XX escapes of a URL component in place. */
static void
url_decode(char *s)
{
	char *out = s;

	for (char *p = s; *p; p++)
	{
		if (p[0] == '%' && isxdigit((unsigned char) p[1]) &&
			isxdigit((unsigned char) p[2]))
		{
			char hex[3] = {p[1], p[2], '\0'};

			*out++ = (char) strtol(hex, NULL, 16);
			p += 2;
		}
		else
			*out++ = *p;
	}
	*out = '\0';
}

/* parse_int parses a whole decimal string into *out within [min, max]. */
static bool
parse_int(const char *s, int min, int max, int *out)
{
	char *end;
	long  v;

	if (*s == '\0')
		return false;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < min || v > max)
		return false;
	*out = (int) v;
	return true;
}

/*
 * host_chars_ok tells whether a host name has only the characters a DNS
 * name or an IP address may have (so that a password whose '@' was
 * mistyped is not taken for a host, and shown, e.g. in "could not resolve").
 */
static bool
host_chars_ok(const char *host, bool bracketed)
{
	for (const char *p = host; *p; p++)
		if (!(isalnum((unsigned char) *p) || *p == '.' || *p == '-' ||
			  *p == '_' || (bracketed && (*p == ':' || *p == '%'))))
			return false;
	return true;
}

/*
 * url_fail writes a URL's problem, msg, into err (errlen bytes) and returns
 * false.  msg quotes nothing of the URL: a malformed part may be a password.
 */
static bool
url_fail(char *err, size_t errlen, const char *msg)
{
	strlcpy(err, msg, errlen);
	return false;
}

/*
 * parse_hostport parses "host[:port]" or "[ipv6][:port]" in place (port
 * keeps its value when not given).  Returns false with a message in err
 * that quotes nothing of the URL: a malformed part may be a password.
 */
static bool
parse_hostport(char *hostport, char **host, int *port, char *err,
			   size_t errlen)
{
	bool bracketed = hostport[0] == '[';

	if (bracketed)
	{
		char *close = strchr(hostport, ']');

		if (!close)
			return url_fail(err, errlen, "unterminated [ in Redis URL host");
		*close = '\0';
		*host = hostport + 1;
		hostport = close + 1;
		if (*hostport == ':' && !parse_int(hostport + 1, 1, 65535, port))
			return url_fail(err, errlen, "invalid port in Redis URL");
		if (*hostport != '\0' && *hostport != ':')
			return url_fail(err, errlen,
							"unexpected text after ] in Redis URL host");
	}
	else
	{
		char *colon = strchr(hostport, ':');

		if (colon)
		{
			*colon = '\0';
			if (!parse_int(colon + 1, 1, 65535, port))
				return url_fail(err, errlen, "invalid port in Redis URL");
		}
		*host = hostport;
	}
	if ((*host)[0] == '\0')
		return url_fail(err, errlen, "Redis URL has no host");
	if (!host_chars_ok(*host, bracketed))
		return url_fail(err, errlen,
						"invalid character in Redis URL host (a mistyped @ before the host?)");
	return true;
}

/*
 * parse_unix_url parses what follows "unix://", "/path[?db=N]", in place
 * into *target.  Returns false with a message in err.
 */
static bool
parse_unix_url(char *rest, RedisTarget *target, char *err, size_t errlen)
{
	char *query;

	target->unix_socket = true;
	query = strchr(rest, '?');
	if (query)
	{
		*query++ = '\0';
		if (strncmp(query, "db=", 3) != 0 ||
			!parse_int(query + 3, 0, 1000000, &target->db))
			return url_fail(err, errlen,
							"invalid query in Redis URL; only db=N is supported");
	}
	if (rest[0] != '/')
		return url_fail(err, errlen,
						"a unix:// Redis URL needs an absolute socket path, as in unix:///run/redis.sock");
	url_decode(rest);
	if (strlen(rest) >= sizeof(((struct sockaddr_un *) NULL)->sun_path))
		return url_fail(err, errlen, "Redis socket path is too long");
	target->path = rest;
	return true;
}

/*
 * parse_scheme reads the scheme of a TCP URL into *target (TLS, cluster,
 * sentinel) and returns what follows it, or NULL with a message in err for
 * an unknown scheme.
 */
static char *
parse_scheme(char *url, RedisTarget *target, char *err, size_t errlen)
{
	static const struct
	{
		const char *scheme;
		bool		tls;
		bool		cluster;
		bool		sentinel;
	} schemes[] = {{"redis://", false, false, false},
				   {"rediss://", true, false, false},
				   {"redis-cluster://", false, true, false},
				   {"rediss-cluster://", true, true, false},
				   {"redis-sentinel://", false, false, true},
				   {"rediss-sentinel://", true, false, true}};

	for (size_t i = 0; i < lengthof(schemes); i++)
		if (strncmp(url, schemes[i].scheme, strlen(schemes[i].scheme)) == 0)
		{
			target->tls = schemes[i].tls;
			target->cluster = schemes[i].cluster;
			target->sentinel = schemes[i].sentinel;
			return url + strlen(schemes[i].scheme);
		}
	(void)
		url_fail(err, errlen,
				 "a Redis URL starts with redis://, rediss:// (TLS), redis-cluster://, rediss-cluster://, redis-sentinel://, rediss-sentinel:// or unix://");
	return NULL;
}

/*
 * parse_userinfo reads "[[user]:password@]" at the start of rest, in place,
 * into *target, and returns what follows it: the hosts.
 */
static char *
parse_userinfo(char *rest, RedisTarget *target)
{
	char *at = strrchr(rest, '@');
	char *colon;

	if (at == NULL)
		return rest;
	*at = '\0';
	colon = strchr(rest, ':');
	if (colon)
	{
		*colon = '\0';
		target->password = colon + 1;
		target->password_from_colon = true;
		url_decode(target->password);
	}
	else
		target->password = rest; /* redis://secret@host */
	if (colon && rest[0] != '\0')
	{
		target->user = rest;
		url_decode(target->user);
	}
	if (!colon)
		url_decode(target->password);
	return at + 1;
}

/*
 * parse_path reads what follows the hosts, in place, into *target: the
 * primary's name of a sentinel URL, then the database number.  Returns
 * false with a message in err.
 */
static bool
parse_path(char *hostport, RedisTarget *target, char *err, size_t errlen)
{
	/* the database number follows the host, after the userinfo */
	char *slash = strchr(hostport, '/');

	if (target->sentinel)
	{
		/* redis-sentinel://sentinels/<master-name>[/db] */
		char *name = slash ? slash + 1 : NULL;
		char *dbpart;

		if (name == NULL || name[0] == '\0' || name[0] == '/')
			return url_fail(err, errlen,
							"a redis-sentinel:// URL names the primary after the sentinels, as in redis-sentinel://host:26379/mymaster");
		*slash = '\0';
		dbpart = strchr(name, '/');
		if (dbpart)
			*dbpart = '\0';
		url_decode(name);
		target->master_name = name;
		slash = dbpart; /* the database number, if any, as below */
	}
	if (slash)
	{
		*slash = '\0';
		if (slash[1] != '\0' && !parse_int(slash + 1, 0, 1000000, &target->db))
			return url_fail(err, errlen,
							"invalid database number in Redis URL");
	}
	if (target->cluster && target->db != 0)
		return url_fail(err, errlen,
						"a Redis Cluster has only database 0; remove the database number from the URL");
	return true;
}

/*
 * parse_seeds parses the comma-separated hosts of a URL, in place, into
 * target's seeds; the first is target->host.  Several are allowed only in
 * a cluster or sentinel URL.  Returns false with a message in err.
 */
static bool
parse_seeds(char *hostport, RedisTarget *target, char *err, size_t errlen)
{
	char *seed;
	int	  nseeds = 1;

	for (char *p = hostport; *p; p++)
		if (*p == ',')
			nseeds++;
	if (nseeds > 1 && !target->cluster && !target->sentinel)
		return url_fail(err, errlen,
						"a Redis URL with several hosts must start with redis-cluster://, redis-sentinel:// or their TLS forms");
	target->nseeds = nseeds;
	target->seed_hosts = palloc(sizeof(char *) * nseeds);
	target->seed_ports = palloc(sizeof(int) * nseeds);
	seed = hostport;
	for (int i = 0; i < nseeds; i++)
	{
		char *comma = strchr(seed, ',');

		if (comma)
			*comma = '\0';
		target->seed_ports[i] = target->sentinel ? 26379 : 6379;
		if (!parse_hostport(seed, &target->seed_hosts[i],
							&target->seed_ports[i], err, errlen))
			return false;
		seed = comma ? comma + 1 : NULL;
	}
	target->host = target->seed_hosts[0];
	target->port = target->seed_ports[0];
	return true;
}

/*
 * parse_url is redis_parse_url without target->display.  Its messages quote
 * no part of the URL, since any malformed part may hold the password.
 */
static bool
parse_url(const char *url, RedisTarget *target, char *err, size_t errlen)
{
	char *copy = pstrdup(url);
	char *rest;
	char *hostport;

	memset(target, 0, sizeof(*target));
	target->port = 6379;

	if (strncmp(copy, "unix://", 7) == 0)
		return parse_unix_url(copy + 7, target, err, errlen);
	rest = parse_scheme(copy, target, err, errlen);
	if (rest == NULL)
		return false;
	hostport = parse_userinfo(rest, target);
	if (!parse_path(hostport, target, err, errlen))
		return false;
	return parse_seeds(hostport, target, err, errlen);
}

/*
 * redis_parse_url parses redis://[[user]:password@]host[:port][/db],
 * rediss:// (TLS), redis-cluster://[[user]:password@]host[:port][,host...]
 * (the hosts are seeds of a Redis Cluster), rediss-cluster://,
 * redis-sentinel://[[user]:password@]host[:port][,host...]/name[/db] (the
 * hosts are sentinels, 26379 by default, that name the primary called
 * name), rediss-sentinel:// or unix:///path[?db=N] into *target (palloc'd in the current context).
 * Returns false with a message in err (errlen bytes) for a malformed URL;
 * the message never contains any part of the URL.
 */
bool
redis_parse_url(const char *url, RedisTarget *target, char *err, size_t errlen)
{
	bool ok = parse_url(url, target, err, errlen);

	target->display = redis_mask_url(url);
	return ok;
}

/* setup_error records why the Redis settings cannot be used. */
static bool
setup_error(RedisSetupError *err, int sqlerrcode, const char *hint,
			const char *fmt, ...)
{
	va_list ap;

	err->sqlerrcode = sqlerrcode;
	va_start(ap, fmt);
	vsnprintf(err->message, sizeof(err->message), fmt, ap);
	va_end(ap);
	strlcpy(err->hint, hint ? hint : "", sizeof(err->hint));
	return false;
}

/*
 * check_secret_file refuses a file holding a secret (what names it) that
 * others could read, as PostgreSQL refuses such an ssl_key_file: it must be
 * a regular file owned by the server's user with mode 0600 or less, or
 * owned by root with mode 0640 or less.
 */
static bool
check_secret_file(const char *path, const char *what, RedisSetupError *err)
{
	struct stat st;
	char		hint[256];

	if (stat(path, &st) != 0)
		return setup_error(err,
						   errno == ENOENT ? ERRCODE_UNDEFINED_FILE
										   : ERRCODE_CONFIG_FILE_ERROR,
						   "Check the path, and that the server's operating-system user may read it.",
						   "could not access %s \"%s\": %s", what, path,
						   strerror(errno));
	if (!S_ISREG(st.st_mode))
		return setup_error(err, ERRCODE_CONFIG_FILE_ERROR, NULL,
						   "%s \"%s\" is not a regular file", what, path);
	if (st.st_uid != geteuid() && st.st_uid != 0)
		return setup_error(err, ERRCODE_CONFIG_FILE_ERROR,
						   "Make the server's operating-system user (or root) own the file, with mode 0600.",
						   "%s \"%s\" must be owned by the database user or root",
						   what, path);
	if ((st.st_uid == geteuid() && (st.st_mode & (S_IRWXG | S_IRWXO))) ||
		(st.st_uid == 0 && (st.st_mode & (S_IWGRP | S_IXGRP | S_IRWXO))))
	{
		snprintf(hint, sizeof(hint),
				 "Run chmod 0600 \"%s\"; a file owned by root may have mode 0640.",
				 path);
		return setup_error(err, ERRCODE_CONFIG_FILE_ERROR, hint,
						   "%s \"%s\" has group or world access", what, path);
	}
	return true;
}

/*
 * open_regular_file opens path for reading without blocking, and returns
 * it only if it is a regular file (else NULL, errno set): a plain open() of
 * a FIFO, which a path can be or be replaced by, blocks until someone
 * writes to it, and would hold the process (the worker, or the postmaster
 * checking a setting) there.
 */
static FILE *
open_regular_file(const char *path)
{
	int			fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	struct stat st;
	FILE	   *f;

	if (fd < 0)
		return NULL;
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
	{
		close(fd);
		errno = EINVAL;
		return NULL;
	}
	f = fdopen(fd, "r");
	if (f == NULL)
	{
		int save = errno;

		close(fd);
		errno = save;
	}
	return f;
}

/*
 * no_passphrase is OpenSSL's passphrase callback: it never prompts (OpenSSL's
 * default would ask on the terminal and could hang the process), it notes in
 * *userdata that a passphrase was wanted, and returns 0 so that loading an
 * encrypted key fails.
 */
static int
no_passphrase(char *buf, int size, int rwflag, void *userdata)
{
	if (userdata != NULL)
		*(bool *) userdata = true;
	return 0;
}

/*
 * redis_check_tls_key checks the client key that target's TLS connections
 * will present (pg2redis.redis_tls_key_file, else the certificate file):
 * it must not be readable by others and must load without a passphrase.
 * Returns false with err set.
 */
bool
redis_check_tls_key(const RedisTarget *target, RedisSetupError *err)
{
	const char *path;
	FILE	   *f;
	EVP_PKEY   *key;
	bool		wanted_passphrase = false;

	if (!target->tls || target->tls_cert_file == NULL ||
		target->tls_cert_file[0] == '\0')
		return true;
	path = target->tls_key_file && target->tls_key_file[0]
			   ? target->tls_key_file
			   : target->tls_cert_file;
	if (!check_secret_file(path, "Redis TLS client key file", err))
		return false;
	f = open_regular_file(path);
	if (f == NULL)
		return setup_error(err, ERRCODE_CONFIG_FILE_ERROR, NULL,
						   "could not open Redis TLS client key file \"%s\": %s",
						   path, strerror(errno));
	ERR_clear_error();
	key = PEM_read_PrivateKey(f, NULL, no_passphrase, &wanted_passphrase);
	fclose(f);
	if (key != NULL)
	{
		EVP_PKEY_free(key);
		return true;
	}
	{
		unsigned long e = ERR_get_error();

		ERR_clear_error();
		if (wanted_passphrase)
			return setup_error(err, ERRCODE_CONFIG_FILE_ERROR,
							   "pg2redis never asks for a passphrase: store the key unencrypted (openssl pkey -in encrypted.key -out plain.key), with mode 0600.",
							   "Redis TLS client key file \"%s\" is encrypted with a passphrase",
							   path);
		return setup_error(err, ERRCODE_CONFIG_FILE_ERROR,
						   "Give pg2redis.redis_tls_key_file a private key in PEM form.",
						   "could not load Redis TLS client key file \"%s\": %s",
						   path,
						   e ? ERR_reason_error_string(e) : "no key found");
	}
}

/*
 * read_secret_line reads the first line of secret file path (what names it
 * in messages) into line, without its end of line.  The file must not be
 * readable by others (check_secret_file), nor empty.  Returns false with
 * err set (never containing the secret).
 */
static bool
read_secret_line(const char *path, const char *what, char *line, size_t size,
				 RedisSetupError *err)
{
	FILE	   *f;
	size_t		len;
	int			fd;
	struct stat st;

	if (!check_secret_file(path, what, err))
		return false;
	/*
	 * Not blocking, and checked again on the open file: a path replaced by
	 * a FIFO since check_secret_file would hold the process in open().
	 */
	fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return setup_error(err, ERRCODE_CONFIG_FILE_ERROR, NULL,
						   "could not open %s \"%s\": %s", what, path,
						   strerror(errno));
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
	{
		close(fd);
		return setup_error(err, ERRCODE_CONFIG_FILE_ERROR, NULL,
						   "%s \"%s\" is not a regular file", what, path);
	}
	f = fdopen(fd, "r");
	if (f == NULL)
	{
		int save = errno;

		close(fd);
		return setup_error(err, ERRCODE_CONFIG_FILE_ERROR, NULL,
						   "could not open %s \"%s\": %s", what, path,
						   strerror(save));
	}
	if (fgets(line, size, f) == NULL)
		line[0] = '\0';
	fclose(f);
	len = strcspn(line, "\r\n");
	line[len] = '\0';
	if (len == 0)
		return setup_error(err, ERRCODE_CONFIG_FILE_ERROR,
						   "Write the password on the first line of the file.",
						   "%s \"%s\" is empty", what, path);
	return true;
}

/*
 * redis_apply_password_file sets target's password from the first line of
 * path (when path is set), so that the secret need not sit in the URL and
 * in postgresql.conf; "redis://name@host" then names the ACL user.  The file
 * must not be readable by others (check_secret_file).  Returns false with
 * err set (never containing the secret).
 */
bool
redis_apply_password_file(RedisTarget *target, const char *path,
						  RedisSetupError *err)
{
	char line[1024];

	if (path == NULL || path[0] == '\0')
		return true;
	if (!read_secret_line(path, "Redis password file", line, sizeof(line),
						  err))
		return false;
	if (target->password && target->user == NULL &&
		!target->password_from_colon)
		target->user = target->password;
	target->password = pstrdup(line);
	explicit_bzero(line, sizeof(line));
	return true;
}

/*
 * redis_apply_sentinel_password_file gives a redis-sentinel:// target's
 * sentinels credentials of their own: the first line of path (when set) is
 * their password, user (when set) their ACL user.  Without it the
 * sentinels get the data nodes' credentials.  Returns false with err set
 * (never containing the secret).
 */
bool
redis_apply_sentinel_password_file(RedisTarget *target, const char *user,
								   const char *path, RedisSetupError *err)
{
	char line[1024];

	if (!target->sentinel || path == NULL || path[0] == '\0')
		return true;
	if (!read_secret_line(path, "Redis Sentinel password file", line,
						  sizeof(line), err))
		return false;
	target->sentinel_user = user && user[0] ? pstrdup(user) : NULL;
	target->sentinel_password = pstrdup(line);
	explicit_bzero(line, sizeof(line));
	return true;
}

/*
 * redis_sentinel_target fills *sentinel with the i-th sentinel of a
 * redis-sentinel:// target: its host and port, the sentinels' credentials,
 * database 0 (a sentinel has no SELECT).
 */
void
redis_sentinel_target(const RedisTarget *target, int i, RedisTarget *sentinel)
{
	*sentinel = *target;
	sentinel->host = target->seed_hosts[i % target->nseeds];
	sentinel->port = target->seed_ports[i % target->nseeds];
	sentinel->db = 0;
	if (target->sentinel_password)
	{
		sentinel->user = target->sentinel_user;
		sentinel->password = target->sentinel_password;
	}
}

/*
 * redis_sentinel_auth_absent tells whether err, a sentinel's reply to AUTH
 * with the data nodes' credentials, only says that the sentinel has no
 * password: the connection is then usable as it is.
 */
bool
redis_sentinel_auth_absent(const char *err)
{
	return strstr(err, "without any password configured") != NULL ||
		   strstr(err, "no password is set") != NULL;
}

/*
 * redis_mask_url returns url with its secret replaced by "***", for logs,
 * status, settings and messages.  Everything between "://" and the last
 * '@' is masked (user and password).  A URL without '@' is shown as it is
 * when it parses (it then has no password); a malformed one is masked after
 * the first ':' of the authority, or whole when what precedes that ':' is
 * not a plain name (a password whose '@' was mistyped, say).
 */
char *
redis_mask_url(const char *url)
{
	const char *scheme;
	const char *start;
	const char *at;
	const char *colon;
	RedisTarget target;
	char		err[REDIS_ERROR_LEN];

	if (url == NULL)
		return pstrdup("");
	/* a unix:// URL has no secret when it parses; otherwise hide it all */
	if (strncmp(url, "unix://", 7) == 0)
		return parse_url(url, &target, err, sizeof(err))
				   ? pstrdup(url)
				   : pstrdup("unix://***");
	scheme = strstr(url, "://");
	start = scheme ? scheme + 3 : url;

	/* as parse_url: the userinfo ends at the last '@' */
	at = strrchr(start, '@');
	if (at != NULL)
		return psprintf("%.*s***%s", (int) (start - url), url, at);
	if (parse_url(url, &target, err, sizeof(err)))
		return pstrdup(url);

	colon = strchr(start, ':');
	if (colon != NULL)
	{
		const char *p;

		for (p = start; p < colon; p++)
			if (!(isalnum((unsigned char) *p) || *p == '.' || *p == '-' ||
				  *p == '_'))
				break;
		if (p == colon)
			return psprintf("%.*s***", (int) (colon + 1 - url), url);
	}
	return psprintf("%.*s***", (int) (start - url), url);
}

/*
 * A host name lookup running on the resolver's thread (getaddrinfo_a).
 * Malloc'd: that thread writes into cb until the lookup ends, also after
 * the connection gave up on it.
 */
typedef struct RedisLookup
{
	struct gaicb	cb;
	struct addrinfo hints;
	char			port[16];
	char			host[FLEXIBLE_ARRAY_MEMBER];
} RedisLookup;

/*
 * Lookups given up on while running, freed once they end.  More than this
 * many at once means the resolver does not answer at all: no new lookup
 * is started then (each holds a thread of the resolver's).
 */
#define MAX_ABANDONED_LOOKUPS 16
static RedisLookup *abandoned[MAX_ABANDONED_LOOKUPS];
static int			nabandoned = 0;

/* lookup_free frees an ended lookup and the addresses it found. */
static void
lookup_free(RedisLookup *lk)
{
	if (lk->cb.ar_result)
		freeaddrinfo(lk->cb.ar_result);
	free(lk);
}

/* reap_lookups frees the abandoned lookups that have ended. */
static void
reap_lookups(void)
{
	int kept = 0;

	for (int i = 0; i < nabandoned; i++)
	{
		if (gai_error(&abandoned[i]->cb) == EAI_INPROGRESS)
			abandoned[kept++] = abandoned[i];
		else
			lookup_free(abandoned[i]);
	}
	nabandoned = kept;
}

/*
 * abandon_lookup gives up on a lookup: cancelled or ended, it is freed;
 * still running, it is kept until it ends (reap_lookups).
 */
static void
abandon_lookup(RedisLookup *lk)
{
	int rc = gai_cancel(&lk->cb);

	if (rc == EAI_CANCELED || rc == EAI_ALLDONE ||
		gai_error(&lk->cb) != EAI_INPROGRESS)
		lookup_free(lk);
	else if (nabandoned < MAX_ABANDONED_LOOKUPS)
		abandoned[nabandoned++] = lk;
	/* else: never more than that, as lookup_start checks; keep it anyway */
}

/* redis_conn_init makes *conn a closed connection. */
void
redis_conn_init(RedisConn *conn)
{
	memset(conn, 0, sizeof(*conn));
	conn->state = RCONN_CLOSED;
	conn->sock = PGINVALID_SOCKET;
}

/* set_error records why a connection call failed. */
static bool
set_error(RedisConn *conn, const char *what, int err)
{
	snprintf(conn->error, sizeof(conn->error), "%s: %s", what, strerror(err));
	return false;
}

/*
 * close_socket closes conn's socket, TLS state and reader, keeping the
 * addresses still to try.
 */
static void
close_socket(RedisConn *conn)
{
	if (conn->ssl)
		SSL_free(conn->ssl);
	conn->ssl = NULL;
	if (conn->ssl_ctx)
		SSL_CTX_free(conn->ssl_ctx);
	conn->ssl_ctx = NULL;
	if (conn->sock != PGINVALID_SOCKET)
		close(conn->sock);
	conn->sock = PGINVALID_SOCKET;
	if (conn->reader)
		redisReaderFree(conn->reader);
	conn->reader = NULL;
	conn->state = RCONN_CLOSED;
}

/* format_addr writes addr as "host:port" (or the socket path) into buf. */
static const char *
format_addr(const struct sockaddr *addr, socklen_t len, char *buf,
			size_t buflen)
{
	char host[NI_MAXHOST];
	char serv[NI_MAXSERV];

	if (addr->sa_family == AF_UNIX)
		snprintf(buf, buflen, "%s",
				 ((const struct sockaddr_un *) addr)->sun_path);
	else if (getnameinfo(addr, len, host, sizeof(host), serv, sizeof(serv),
						 NI_NUMERICHOST | NI_NUMERICSERV) != 0)
		snprintf(buf, buflen, "?");
	else if (addr->sa_family == AF_INET6)
		snprintf(buf, buflen, "[%s]:%s", host, serv);
	else
		snprintf(buf, buflen, "%s:%s", host, serv);
	return buf;
}

/*
 * connect_addr opens a non-blocking socket and starts connecting it to
 * addr.  Returns false with conn->error set (naming the address) if that
 * failed at once; otherwise conn is RCONN_CONNECTING.
 */
static bool
connect_addr(RedisConn *conn, const struct sockaddr *addr, socklen_t addrlen)
{
	char where[NI_MAXHOST + NI_MAXSERV + 8];
	int	 rc;

	conn->sock = socket(addr->sa_family, SOCK_STREAM, 0);
	if (conn->sock == PGINVALID_SOCKET)
		return set_error(conn, "could not create socket", errno);
	if (fcntl(conn->sock, F_SETFL, O_NONBLOCK) < 0 ||
		fcntl(conn->sock, F_SETFD, FD_CLOEXEC) < 0)
	{
		int err = errno;

		close_socket(conn);
		return set_error(conn, "could not set socket options", err);
	}
	if (addr->sa_family != AF_UNIX)
	{
		int on = 1;

		(void) setsockopt(conn->sock, IPPROTO_TCP, TCP_NODELAY, &on,
						  sizeof(on));
		(void) setsockopt(conn->sock, SOL_SOCKET, SO_KEEPALIVE, &on,
						  sizeof(on));
	}

	conn->reader = redisReaderCreate();
	if (conn->reader == NULL)
	{
		close_socket(conn);
		snprintf(conn->error, sizeof(conn->error), "out of memory");
		return false;
	}

	rc = connect(conn->sock, addr, addrlen);
	if (rc == 0 || errno == EINPROGRESS || errno == EAGAIN)
	{
		/* redis_connect_finish completes it (and does TLS) when writable */
		conn->state = RCONN_CONNECTING;
		conn->want = WL_SOCKET_WRITEABLE;
		return true;
	}
	{
		int err = errno;

		close_socket(conn);
		snprintf(conn->error, sizeof(conn->error),
				 "could not connect to Redis at %s: %s",
				 format_addr(addr, addrlen, where, sizeof(where)),
				 strerror(err));
		return false;
	}
}

/*
 * connect_next starts connecting to the next address of conn->addrs that
 * accepts a connection attempt; false (conn->error set by the last one)
 * when none is left.
 */
static bool
connect_next(RedisConn *conn)
{
	while (conn->next_addr != NULL)
	{
		struct addrinfo *ai = conn->next_addr;

		conn->next_addr = ai->ai_next;
		if (connect_addr(conn, ai->ai_addr, ai->ai_addrlen))
		{
			conn->addr = ai;
			return true;
		}
	}
	return false;
}

/*
 * lookup_start starts resolving target's host on the resolver's thread;
 * false with conn->error set if it could not.
 */
static bool
lookup_start(RedisConn *conn, const RedisTarget *target)
{
	size_t		  hostlen = strlen(target->host);
	RedisLookup	 *lk;
	struct gaicb *list[1];
	int			  rc;

	reap_lookups();
	if (nabandoned >= MAX_ABANDONED_LOOKUPS)
	{
		snprintf(conn->error, sizeof(conn->error),
				 "could not resolve Redis host \"%s\": %d earlier lookups are still waiting for the name servers",
				 target->host, nabandoned);
		return false;
	}
	lk = calloc(1, offsetof(RedisLookup, host) + hostlen + 1);
	if (lk == NULL)
	{
		snprintf(conn->error, sizeof(conn->error), "out of memory");
		return false;
	}
	memcpy(lk->host, target->host, hostlen + 1);
	snprintf(lk->port, sizeof(lk->port), "%d", target->port);
	lk->hints.ai_socktype = SOCK_STREAM;
	lk->hints.ai_family = AF_UNSPEC;
	lk->hints.ai_flags = AI_NUMERICSERV;
	lk->cb.ar_name = lk->host;
	lk->cb.ar_service = lk->port;
	lk->cb.ar_request = &lk->hints;
	list[0] = &lk->cb;
	rc = getaddrinfo_a(GAI_NOWAIT, list, 1, NULL);
	if (rc != 0)
	{
		free(lk);
		snprintf(conn->error, sizeof(conn->error),
				 "could not resolve Redis host \"%s\": %s", target->host,
				 gai_strerror(rc));
		return false;
	}
	conn->lookup = lk;
	conn->state = RCONN_RESOLVING;
	conn->want = 0;
	return true;
}

/*
 * lookup_done takes the result of conn's lookup once it has ended: 0 while
 * it runs, 1 with conn->addrs set, -1 with conn->error set.
 */
static int
lookup_done(RedisConn *conn)
{
	RedisLookup *lk = conn->lookup;
	int			 rc = gai_error(&lk->cb);

	if (rc == EAI_INPROGRESS)
		return 0;
	conn->lookup = NULL;
	conn->state = RCONN_CLOSED;
	if (rc != 0 || lk->cb.ar_result == NULL)
	{
		snprintf(conn->error, sizeof(conn->error),
				 "could not resolve Redis host \"%s\": %s", lk->host,
				 rc != 0 ? gai_strerror(rc) : "no address");
		lookup_free(lk);
		return -1;
	}
	conn->addrs = conn->next_addr = lk->cb.ar_result;
	lk->cb.ar_result = NULL;
	lookup_free(lk);
	return 1;
}

/*
 * redis_connect_start starts connecting to target.  Returns false with
 * conn->error set if that failed at once; otherwise the connection is
 * RCONN_RESOLVING (call redis_connect_finish within
 * redis_conn_poll_ms()), RCONN_CONNECTING (wait until the socket is
 * writable, then call redis_connect_finish) or already RCONN_OPEN.
 *
 * Numeric addresses are used as they are; a host name is resolved on the
 * resolver's thread (see the top of the file).
 */
bool
redis_connect_start(RedisConn *conn, const RedisTarget *target)
{
	redis_close(conn);
	conn->error[0] = '\0';

	if (target->unix_socket)
	{
		struct sockaddr_un un;

		memset(&un, 0, sizeof(un));
		un.sun_family = AF_UNIX;
		strlcpy(un.sun_path, target->path, sizeof(un.sun_path));
		return connect_addr(conn, (struct sockaddr *) &un, sizeof(un));
	}
	else
	{
		struct addrinfo	 hints = {0};
		struct addrinfo *res;
		char			 port[16];
		int				 rc;

		hints.ai_socktype = SOCK_STREAM;
		hints.ai_family = AF_UNSPEC;
		hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
		snprintf(port, sizeof(port), "%d", target->port);
		/* a numeric address: no name server is asked, nothing blocks */
		rc = getaddrinfo(target->host, port, &hints, &res);
		if (rc == EAI_NONAME)
			return lookup_start(conn, target);
		if (rc != 0)
		{
			snprintf(conn->error, sizeof(conn->error),
					 "could not resolve Redis host \"%s\": %s", target->host,
					 gai_strerror(rc));
			return false;
		}
		conn->addrs = conn->next_addr = res;
		return connect_next(conn);
	}
}

/*
 * redis_conn_poll_ms returns how long the caller may wait, without a
 * socket to wait on, before it calls redis_connect_finish again: while a
 * host name is being resolved; -1 otherwise (wait for conn->want).
 */
long
redis_conn_poll_ms(const RedisConn *conn)
{
	return conn->state == RCONN_RESOLVING ? RESOLVE_POLL_MS : -1;
}

/*
 * redis_connect_next gives up on the address conn is connecting to (it did
 * not answer within the caller's deadline) and starts connecting to the
 * next one the host name resolved to.  Returns false, with conn->error
 * set, when there is none: the caller fails the connection.
 */
bool
redis_connect_next(RedisConn *conn, const char *why)
{
	char where[NI_MAXHOST + NI_MAXSERV + 8] = "?";

	if (conn->state != RCONN_CONNECTING || conn->next_addr == NULL)
		return false;
	if (conn->addr)
		format_addr(conn->addr->ai_addr, conn->addr->ai_addrlen, where,
					sizeof(where));
	close_socket(conn);
	snprintf(conn->error, sizeof(conn->error), "%s (%s)", why, where);
	return connect_next(conn);
}

/*
 * tls_error records why a TLS step failed: the certificate check's verdict
 * when there is one, else OpenSSL's reason.  Closes the connection.
 */
static int
tls_error(RedisConn *conn, const char *what)
{
	unsigned long e = ERR_get_error();
	long verify = conn->ssl ? SSL_get_verify_result(conn->ssl) : X509_V_OK;

	if (verify != X509_V_OK)
		snprintf(conn->error, sizeof(conn->error),
				 "%s: the Redis server's certificate does not verify: %s",
				 what, X509_verify_cert_error_string(verify));
	else
		snprintf(conn->error, sizeof(conn->error), "%s: %s", what,
				 e ? ERR_reason_error_string(e) : "the connection was closed");
	ERR_clear_error();
	redis_close(conn);
	return -1;
}

/* tls_step advances the handshake: 1 done, 0 waiting (conn->want), -1 failed. */
static int
tls_step(RedisConn *conn)
{
	int r = SSL_connect(conn->ssl);

	if (r == 1)
	{
		conn->state = RCONN_OPEN;
		conn->want = 0;
		return 1;
	}
	switch (SSL_get_error(conn->ssl, r))
	{
		case SSL_ERROR_WANT_READ:
			conn->want = WL_SOCKET_READABLE;
			return 0;
		case SSL_ERROR_WANT_WRITE:
			conn->want = WL_SOCKET_WRITEABLE;
			return 0;
		default:
			return tls_error(conn, "TLS handshake with Redis failed");
	}
}

/* What a TLS file given by a setting holds (tls_use_file). */
typedef enum TlsFile
{
	TLS_FILE_CA,	/* CA certificates (and CRLs) to verify Redis with */
	TLS_FILE_CHAIN, /* the client certificate, then its chain */
	TLS_FILE_KEY	/* the client key */
} TlsFile;

#define TLS_FILE_MAX (4 * 1024 * 1024)

/*
 * tls_load_bio loads into ctx what a TLS file of the given kind holds, read
 * into bio; false (with OpenSSL's error queue set) when it holds nothing
 * usable.  *wanted_passphrase is set when the key is encrypted.
 */
static bool
tls_load_bio(SSL_CTX *ctx, BIO *bio, TlsFile kind, bool *wanted_passphrase)
{
	if (kind == TLS_FILE_CA)
	{
		STACK_OF(X509_INFO) *infos =
			PEM_X509_INFO_read_bio(bio, NULL, NULL, NULL);
		X509_STORE *store = SSL_CTX_get_cert_store(ctx);
		int			n = 0;

		if (infos == NULL)
			return false;
		for (int i = 0; i < sk_X509_INFO_num(infos); i++)
		{
			X509_INFO *info = sk_X509_INFO_value(infos, i);

			if (info->x509 && X509_STORE_add_cert(store, info->x509) == 1)
				n++;
			if (info->crl)
				(void) X509_STORE_add_crl(store, info->crl);
		}
		sk_X509_INFO_pop_free(infos, X509_INFO_free);
		return n > 0;
	}
	if (kind == TLS_FILE_CHAIN)
	{
		X509 *cert = PEM_read_bio_X509_AUX(bio, NULL, NULL, NULL);
		X509 *ca;
		bool  ok;

		if (cert == NULL)
			return false;
		ok = SSL_CTX_use_certificate(ctx, cert) == 1;
		X509_free(cert);
		if (!ok)
			return false;
		SSL_CTX_clear_chain_certs(ctx);
		while ((ca = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL)
			if (SSL_CTX_add0_chain_cert(ctx, ca) != 1)
			{
				X509_free(ca);
				return false;
			}
		ERR_clear_error(); /* the end of the file */
		return true;
	}
	{
		EVP_PKEY *key = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase,
												wanted_passphrase);
		bool	  ok;

		if (key == NULL)
			return false;
		ok = SSL_CTX_use_PrivateKey(ctx, key) == 1;
		EVP_PKEY_free(key);
		return ok;
	}
}

/*
 * tls_use_file loads into ctx the TLS file path, which the setting named
 * what gives, holding kind; false with the connection closed and its error
 * set.  The file is read here, opened without blocking, and only if it is a
 * regular file (open_regular_file): OpenSSL's own file functions open it
 * with a blocking open(), which a FIFO would hold for ever.
 */
static bool
tls_use_file(RedisConn *conn, SSL_CTX *ctx, const char *path, const char *what,
			 TlsFile kind)
{
	FILE	   *f = open_regular_file(path);
	struct stat st;
	char	   *data;
	size_t		len;
	BIO		   *bio;
	bool		wanted_passphrase = false;
	bool		ok;
	const char *thing = kind == TLS_FILE_CA		 ? "CA file"
						: kind == TLS_FILE_CHAIN ? "client certificate"
												 : "client key";

	if (f == NULL)
	{
		snprintf(conn->error, sizeof(conn->error),
				 errno == EINVAL
					 ? "could not load the %s of %s: \"%s\" is not a regular file"
					 : "could not load the %s of %s: could not open \"%s\": %m",
				 thing, what, path);
		redis_close(conn);
		return false;
	}
	if (fstat(fileno(f), &st) != 0 || st.st_size > TLS_FILE_MAX)
	{
		fclose(f);
		snprintf(conn->error, sizeof(conn->error),
				 "could not load the %s of %s: \"%s\" is larger than 4 MB",
				 thing, what, path);
		redis_close(conn);
		return false;
	}
	data = palloc(st.st_size + 1);
	len = fread(data, 1, st.st_size, f);
	fclose(f);
	ERR_clear_error();
	bio = BIO_new_mem_buf(data, (int) len);
	ok = bio != NULL && tls_load_bio(ctx, bio, kind, &wanted_passphrase);
	BIO_free(bio);
	pfree(data);
	if (ok)
		return true;
	if (wanted_passphrase)
	{
		ERR_clear_error();
		snprintf(conn->error, sizeof(conn->error),
				 "the client key of %s is encrypted with a passphrase, which pg2redis never asks for",
				 what);
		redis_close(conn);
		return false;
	}
	{
		char msg[256];

		snprintf(msg, sizeof(msg), "could not load the %s of %s", thing, what);
		(void) tls_error(conn, msg);
	}
	return false;
}

/*
 * tls_start sets up TLS on the connected socket as target asks (CA file,
 * client certificate, verification) and starts the handshake.
 */
static int
tls_start(RedisConn *conn, const RedisTarget *target)
{
	SSL_CTX		 *ctx;
	SSL			 *ssl;
	unsigned char addr[16];
	bool		  numeric = inet_pton(AF_INET, target->host, addr) == 1 ||
				   inet_pton(AF_INET6, target->host, addr) == 1;

	ERR_clear_error();
	ctx = SSL_CTX_new(TLS_client_method());
	if (ctx == NULL)
		return tls_error(conn, "could not set up TLS");
	conn->ssl_ctx = ctx;
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
							  SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	if (target->tls_verify != REDIS_TLS_VERIFY_NONE)
	{
		if (target->tls_ca_file && target->tls_ca_file[0])
		{
			if (!tls_use_file(conn, ctx, target->tls_ca_file,
							  "pg2redis.redis_tls_ca_file", TLS_FILE_CA))
				return -1;
		}
		else if (SSL_CTX_set_default_verify_paths(ctx) != 1)
			return tls_error(conn,
							 "could not load the system's CA certificates");
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	}
	else
		SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	/* an encrypted key fails to load: OpenSSL must never prompt for it */
	SSL_CTX_set_default_passwd_cb(ctx, no_passphrase);
	if (target->tls_cert_file && target->tls_cert_file[0])
	{
		const char *key = target->tls_key_file && target->tls_key_file[0]
							  ? target->tls_key_file
							  : target->tls_cert_file;
		if (!tls_use_file(conn, ctx, target->tls_cert_file,
						  "pg2redis.redis_tls_cert_file", TLS_FILE_CHAIN) ||
			!tls_use_file(conn, ctx, key,
						  key == target->tls_cert_file
							  ? "pg2redis.redis_tls_cert_file"
							  : "pg2redis.redis_tls_key_file",
						  TLS_FILE_KEY))
			return -1;
	}

	ssl = SSL_new(ctx);
	if (ssl == NULL)
		return tls_error(conn, "could not set up TLS");
	conn->ssl = ssl;
	if (SSL_set_fd(ssl, conn->sock) != 1)
		return tls_error(conn, "could not set up TLS");
	if (!numeric)
		SSL_set_tlsext_host_name(ssl, target->host);
	if (target->tls_verify == REDIS_TLS_VERIFY_FULL)
	{
		int ok = numeric ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl),
														 target->host)
						 : SSL_set1_host(ssl, target->host);

		if (ok != 1)
			return tls_error(conn, "could not set the host name to verify");
	}
	conn->state = RCONN_TLS;
	return tls_step(conn);
}

/*
 * redis_connect_finish goes on connecting once the socket is ready for
 * conn->want: returns 1 when connected (TLS handshake included), 0 when it
 * must wait again for conn->want, -1 with conn->error when it failed.
 */
int
redis_connect_finish(RedisConn *conn, const RedisTarget *target)
{
	int		  err = 0;
	socklen_t len = sizeof(err);

	if (conn->state == RCONN_OPEN)
		return 1;
	if (conn->state == RCONN_TLS)
		return tls_step(conn);
	if (conn->state == RCONN_RESOLVING)
	{
		int done = lookup_done(conn);

		if (done <= 0)
			return done;
		return connect_next(conn) ? 0 : -1;
	}
	if (getsockopt(conn->sock, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		err = errno;
	if (err != 0)
	{
		char where[NI_MAXHOST + NI_MAXSERV + 8] = "?";

		if (conn->addr)
			format_addr(conn->addr->ai_addr, conn->addr->ai_addrlen, where,
						sizeof(where));
		close_socket(conn);
		snprintf(conn->error, sizeof(conn->error),
				 "could not connect to Redis at %s: %s", where, strerror(err));
		/* the name's next address, if any */
		return connect_next(conn) ? 0 : -1;
	}
	if (target->tls)
		return tls_start(conn, target);
	conn->state = RCONN_OPEN;
	conn->want = 0;
	return 1;
}

/*
 * redis_close closes the socket and frees the reader, the addresses and any
 * lookup still running (which is left to end on its own); error is kept.
 */
void
redis_close(RedisConn *conn)
{
	close_socket(conn);
	if (conn->lookup)
		abandon_lookup(conn->lookup);
	conn->lookup = NULL;
	if (conn->addrs)
		freeaddrinfo(conn->addrs);
	conn->addrs = conn->next_addr = conn->addr = NULL;
}

/*
 * redis_send writes what it can of data without blocking: returns the
 * number of bytes written (0 if the socket is full), or -1 with
 * conn->error set if the connection failed.
 */
ssize_t
redis_send(RedisConn *conn, const char *data, size_t len)
{
	ssize_t n;

	if (len == 0)
		return 0;
	if (conn->ssl)
	{
		int r;

		ERR_clear_error();
		r = SSL_write(conn->ssl, data, (int) Min(len, (size_t) INT_MAX));
		if (r > 0)
			return r;
		switch (SSL_get_error(conn->ssl, r))
		{
			case SSL_ERROR_WANT_READ:
			case SSL_ERROR_WANT_WRITE:
				return 0;
			default:
				tls_error(conn, "could not send to Redis over TLS");
				return -1;
		}
	}
	n = send(conn->sock, data, len, MSG_NOSIGNAL);
	if (n >= 0)
		return n;
	if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
		return 0;
	set_error(conn, "could not send to Redis", errno);
	return -1;
}

/*
 * redis_receive reads what the socket has into the reply reader without
 * blocking.  Returns false with conn->error set if the connection failed
 * or was closed by Redis.
 */
bool
redis_receive(RedisConn *conn, bool *eof)
{
	char buf[65536];

	*eof = false;
	for (;;)
	{
		ssize_t n;

		if (conn->ssl)
		{
			int r;

			ERR_clear_error();
			r = SSL_read(conn->ssl, buf, sizeof(buf));
			if (r > 0)
				n = r;
			else
			{
				int e = SSL_get_error(conn->ssl, r);

				if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
					return true;
				if (e == SSL_ERROR_ZERO_RETURN)
				{
					*eof = true;
					snprintf(conn->error, sizeof(conn->error),
							 "Redis closed the connection");
					return false;
				}
				tls_error(conn, "could not receive from Redis over TLS");
				return false;
			}
		}
		else
			n = recv(conn->sock, buf, sizeof(buf), 0);

		if (n > 0)
		{
			if (redisReaderFeed(conn->reader, buf, n) != REDIS_OK)
			{
				snprintf(conn->error, sizeof(conn->error),
						 "could not read Redis reply: %s",
						 conn->reader->errstr);
				return false;
			}
			/* a short read drained the socket; TLS keeps reading until WANT_READ */
			if (!conn->ssl && (size_t) n < sizeof(buf))
				return true;
			continue;
		}
		if (n == 0)
		{
			*eof = true;
			snprintf(conn->error, sizeof(conn->error),
					 "Redis closed the connection");
			return false;
		}
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			return true;
		if (errno == EINTR)
			continue;
		return set_error(conn, "could not receive from Redis", errno);
	}
}

/*
 * redis_next_reply returns 1 and the next complete reply (free it with
 * redis_free_reply if the connection ever had compact_replies set, else
 * with either that or freeReplyObject), 0 if none is complete yet, or -1
 * with conn->error set for a protocol error.  With compact_replies set, the
 * reply is built compact (src/redis/reply_compact.c).
 */
int
redis_next_reply(RedisConn *conn, redisReply **reply)
{
	void *r = NULL;

	if (pg2r_reader_get_reply(conn->reader, conn->compact_replies, &r) !=
		REDIS_OK)
	{
		snprintf(conn->error, sizeof(conn->error),
				 "could not parse Redis reply: %s", conn->reader->errstr);
		return -1;
	}
	*reply = r;
	return r != NULL;
}

/*
 * append_header appends a RESP header: the type character, n in decimal, and
 * CRLF.  It formats by hand: snprintf was a tenth of the cost of a pipelined
 * read-back.
 */
static inline void
append_header(StringInfo buf, char type, uint64 n)
{
	char *p;
	int	  digits;

	enlargeStringInfo(buf, 24);
	p = buf->data + buf->len;
	*p++ = type;
	digits = pg_ulltoa_n(n, p);
	p += digits;
	*p++ = '\r';
	*p++ = '\n';
	*p = '\0';
	buf->len = p - buf->data;
}

/* append_bulk appends one RESP bulk string. */
static inline void
append_bulk(StringInfo buf, const char *s, size_t len)
{
	append_header(buf, '$', len);
	enlargeStringInfo(buf, len + 2);
	memcpy(buf->data + buf->len, s, len);
	buf->len += len;
	buf->data[buf->len++] = '\r';
	buf->data[buf->len++] = '\n';
	buf->data[buf->len] = '\0';
}

/*
 * put_header writes a RESP header (type, n in decimal, CRLF) at p, which
 * has room for it, and returns the position after it.
 */
static inline char *
put_header(char *p, char type, uint64 n)
{
	*p++ = type;
	p += pg_ulltoa_n(n, p);
	*p++ = '\r';
	*p++ = '\n';
	return p;
}

/*
 * redis_append_command appends one command in RESP to buf, enlarging it
 * once for the whole command.
 */
void
redis_append_command(StringInfo buf, int argc, const char *const *argv,
					 const size_t *argvlen)
{
	/* a header is at most '$', 20 digits and CRLF */
	Size  need = 24;
	char *p;

	for (int i = 0; i < argc; i++)
		need += argvlen[i] + 26;
	if (need >= MaxAllocSize)
	{
		/* enlargeStringInfo reports what does not fit */
		append_header(buf, '*', argc);
		for (int i = 0; i < argc; i++)
			append_bulk(buf, argv[i], argvlen[i]);
		return;
	}
	enlargeStringInfo(buf, (int) need);
	p = put_header(buf->data + buf->len, '*', argc);
	for (int i = 0; i < argc; i++)
	{
		p = put_header(p, '$', argvlen[i]);
		memcpy(p, argv[i], argvlen[i]);
		p += argvlen[i];
		*p++ = '\r';
		*p++ = '\n';
	}
	*p = '\0';
	buf->len = p - buf->data;
}

/* redis_append_cstrings appends a command given as argc C strings. */
void
redis_append_cstrings(StringInfo buf, int argc, ...)
{
	va_list ap;

	append_header(buf, '*', argc);
	va_start(ap, argc);
	for (int i = 0; i < argc; i++)
	{
		const char *s = va_arg(ap, const char *);

		append_bulk(buf, s, strlen(s));
	}
	va_end(ap);
}

/*
 * redis_append_handshake appends AUTH and SELECT as target needs them and
 * returns how many replies they produce.
 */
int
redis_append_handshake(StringInfo buf, const RedisTarget *target)
{
	int n = 0;

	if (target->password)
	{
		if (target->user)
			redis_append_cstrings(buf, 3, "AUTH", target->user,
								  target->password);
		else
			redis_append_cstrings(buf, 2, "AUTH", target->password);
		n++;
	}
	if (target->db != 0)
	{
		char db[16];

		snprintf(db, sizeof(db), "%d", target->db);
		redis_append_cstrings(buf, 2, "SELECT", db);
		n++;
	}
	return n;
}
