-- Secrets and least privilege, checked without a Redis: the Redis password
-- is masked in SHOW, current_setting() and pg_settings (also to members of
-- pg_read_all_settings, and also in malformed URLs); the roles
-- pg2redis_admin and pg2redis_monitor and what they may do; which
-- pg2redis_redis() commands each kind of caller may run (refusals are
-- decided before any connection).
CREATE EXTENSION pg2redis;

-- The predefined roles: NOLOGIN, not superuser, admin includes monitor.
SELECT rolname, rolcanlogin, rolsuper, rolcreaterole, rolinherit
  FROM pg_roles WHERE rolname IN ('pg2redis_admin', 'pg2redis_monitor')
 ORDER BY rolname;
SELECT pg_has_role('pg2redis_admin', 'pg2redis_monitor', 'MEMBER') AS admin_has_monitor,
       pg_has_role('pg2redis_monitor', 'pg2redis_admin', 'MEMBER') AS monitor_has_admin;

-- What each may execute.
SELECT p.oid::regprocedure AS function,
       has_function_privilege('pg2redis_admin', p.oid, 'EXECUTE') AS admin,
       has_function_privilege('pg2redis_monitor', p.oid, 'EXECUTE') AS monitor
  FROM pg_proc p
  JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg2redis'
 ORDER BY p.oid::regprocedure::text;

-- What each may read and write.
SELECT c.oid::regclass AS relation, r.rolname,
       has_table_privilege(r.rolname, c.oid, 'SELECT') AS sel,
       has_table_privilege(r.rolname, c.oid, 'INSERT') AS ins,
       has_table_privilege(r.rolname, c.oid, 'UPDATE') AS upd,
       has_table_privilege(r.rolname, c.oid, 'DELETE') AS del
  FROM pg_class c
  JOIN pg_depend d ON d.objid = c.oid AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg2redis'
 CROSS JOIN pg_roles r
 WHERE c.relkind IN ('r', 'v') AND r.rolname IN ('pg2redis_admin', 'pg2redis_monitor')
 ORDER BY c.oid::regclass::text, r.rolname;
SELECT has_schema_privilege('pg2redis_admin', 'pg2redis', 'USAGE') AS admin_schema,
       has_schema_privilege('pg2redis_monitor', 'pg2redis', 'USAGE') AS monitor_schema;

-- The README recipe: a monitoring login gets pg2redis_monitor.
CREATE ROLE regress_grafana LOGIN;
GRANT pg2redis_monitor TO regress_grafana;
SET ROLE regress_grafana;
SELECT state IS NOT NULL AS status_readable FROM pg2redis_status();
SELECT pg2redis_wait('0s') IS NOT NULL AS wait_callable;
SELECT count(*) AS snapshots FROM pg2redis_snapshots;
SELECT count(*) FROM pg2redis.dead_letters;
SELECT pg2redis_redis('GET', 'k');
SELECT pg2redis_add_rule('pg_class', 'insert', 'SET x 1');
RESET ROLE;

-- pg2redis_redis() refuses an empty command and a null argument first.
SELECT pg2redis_redis(VARIADIC ARRAY[]::text[]);
SELECT pg2redis_redis('GET', NULL);
SELECT pg2redis_redis(VARIADIC ARRAY['SET', 'k', NULL, 'x']);

-- An admin manages rules and dead letters (of tables it may read).
CREATE ROLE regress_admin;
GRANT pg2redis_admin TO regress_admin;
CREATE TABLE regress_items (id int PRIMARY KEY, v text);
GRANT SELECT ON regress_items TO regress_admin;
SET ROLE regress_admin;
SELECT pg2redis_add_rule('regress_items', 'insert', 'SET item:{id} {v}') > 0 AS added;
SELECT * FROM pg2redis_preview('regress_items', 'insert', '{"id": 1, "v": "x"}');
SELECT pg2redis_snapshot('regress_items') > 0 AS requested;
SELECT relation, state FROM pg2redis_snapshots;
DELETE FROM pg2redis.snapshots;
UPDATE pg2redis.rules SET enabled = false WHERE relation = 'regress_items'::regclass;
SELECT count(*) AS dead_letters FROM pg2redis.dead_letters;
DELETE FROM pg2redis.dead_letters;
-- not snapshot filters: the worker runs them as SQL with superuser rights
INSERT INTO pg2redis.snapshot_filters VALUES ('regress_items', 'true');
SELECT jsonb_typeof(pg2redis_export()) AS exported;
DELETE FROM pg2redis.rules WHERE relation = 'regress_items'::regclass;
RESET ROLE;

-- The Redis password never shows in the setting, whatever its form.
CREATE ROLE regress_settings_reader;
GRANT pg_read_all_settings TO regress_settings_reader;
ALTER SYSTEM SET pg2redis.redis_url = 'redis://app:S3cretPW@127.0.0.1:1/0';
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);
SHOW pg2redis.redis_url;
SET ROLE regress_settings_reader;
SHOW pg2redis.redis_url;
SELECT current_setting('pg2redis.redis_url');
-- pg_settings would show the unmasked reset_val: the row is not listed
SELECT count(*) AS leaks FROM pg_settings
 WHERE concat(setting, reset_val, boot_val) LIKE '%S3cretPW%';
SELECT count(*) AS listed FROM pg_settings WHERE name = 'pg2redis.redis_url';
RESET ROLE;
SELECT count(*) AS listed_for_superuser FROM pg_settings WHERE name = 'pg2redis.redis_url';

-- Malformed URLs: a mistyped '@', the password alone, a lost scheme.
ALTER SYSTEM SET pg2redis.redis_url = 'redis://default:S3cretPW#127.0.0.1:6379/0';
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);
SHOW pg2redis.redis_url;
SELECT redis_url FROM pg2redis_status();
SELECT pg2redis_redis('PING');
ALTER SYSTEM SET pg2redis.redis_url = 'redis://S3cretPW#127.0.0.1:6379/0';
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);
SHOW pg2redis.redis_url;
SELECT pg2redis_redis('PING');
ALTER SYSTEM SET pg2redis.redis_url = 'redis//default:S3cretPW@127.0.0.1:6379/0';
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);
SHOW pg2redis.redis_url;
SELECT pg2redis_redis('PING');
ALTER SYSTEM SET pg2redis.redis_url = 'redis://:S3cret/PW@127.0.0.1:bad/0';
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);
SHOW pg2redis.redis_url;
SELECT pg2redis_redis('PING');
-- Sentinel URLs: the password masked the same way, before the sentinels;
-- the backend asks the sentinels (nothing listens: an error without it).
ALTER SYSTEM SET pg2redis.redis_url = 'redis-sentinel://app:S3cretPW@127.0.0.1:1,127.0.0.1:2/mymaster/2';
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);
SHOW pg2redis.redis_url;
SELECT redis_url FROM pg2redis_status();
SELECT pg2redis_redis('PING');
ALTER SYSTEM SET pg2redis.redis_url = 'rediss-sentinel://:S3cretPW#127.0.0.1:1/mymaster';
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);
SHOW pg2redis.redis_url;
SELECT pg2redis_redis('PING');
ALTER SYSTEM SET pg2redis.redis_url = 'redis-sentinel://:S3cretPW@127.0.0.1:1';
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);
SHOW pg2redis.redis_url;
SELECT pg2redis_redis('PING');
-- a URL without a password is shown as it is
ALTER SYSTEM SET pg2redis.redis_url = 'redis://127.0.0.1:1/0';
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);
SHOW pg2redis.redis_url;

-- pg2redis_redis(): what each caller may run.  Refusals come before any
-- connection; allowed commands then fail to connect (nothing listens on
-- port 1), which shows they were let through.
CREATE ROLE regress_reader;
GRANT EXECUTE ON FUNCTION pg2redis_redis(text[]) TO regress_reader;
CREATE FUNCTION regress_try(VARIADIC args text[]) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg2redis_redis(VARIADIC args);
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN CASE WHEN SQLSTATE = '08006' THEN 'allowed' ELSE SQLSTATE || ' ' || SQLERRM END;
END
$$;
CREATE TABLE regress_cmds (args text[]);
INSERT INTO regress_cmds VALUES
    ('{GET,k}'), ('{get,k}'), ('{MGET,a,b}'), ('{HGETALL,h}'), ('{ZRANGE,z,0,-1}'),
    ('{SCAN,0,MATCH,*}'), ('{SCAN,0,COUNT,10000}'), ('{HSCAN,h,0,count,100000000}'),
    ('{JSON.GET,j}'), ('{DBSIZE}'), ('{PING}'),
    ('{GET,pg2redis:pg2redis:lsn}'),
    ('{SET,k,v}'), ('{DEL,a,b}'), ('{HSET,h,f,v}'), ('{MSET,a,1,b,2}'),
    ('{SET,pg2redis:pg2redis:lsn,FFFFFFFF/FFFFFFFF}'),
    ('{MSET,a,1,pg2redis:x:lsn,2}'), (ARRAY['DEL', 'a', 'pg2redis:x:sync:{1}']),
    ('{RENAME,a,pg2redis:x:lsn}'),
    ('{CONFIG,GET,requirepass}'), ('{EVAL,"return 1",0}'), ('{FCALL,f,0}'),
    ('{SCRIPT,FLUSH}'), ('{MODULE,LOAD,/tmp/x.so}'), ('{FLUSHALL}'),
    ('{SHUTDOWN}'), ('{REPLICAOF,evil,6379}'), ('{ACL,LIST}'), ('{CLIENT,KILL,ID,1}'),
    ('{SAVE}'), ('{DEBUG,SLEEP,1}'), ('{NOSUCHCMD}'), ('{SORT,l,STORE,d}'),
    ('{ZRANGESTORE,d,z,0,-1}');
GRANT SELECT ON regress_cmds TO regress_reader, regress_admin;
SET ROLE regress_reader;
SELECT array_to_string(args, ' ') AS command, regress_try(VARIADIC args) AS reader
  FROM regress_cmds;
SET ROLE regress_admin;
SELECT array_to_string(args, ' ') AS command, regress_try(VARIADIC args) AS admin
  FROM regress_cmds;
RESET ROLE;
SELECT array_to_string(args, ' ') AS command, regress_try(VARIADIC args) AS superuser
  FROM regress_cmds;
-- the refusal in full
SET ROLE regress_reader;
SELECT pg2redis_redis('CONFIG', 'GET', 'requirepass');
SET ROLE regress_admin;
SELECT pg2redis_redis('CONFIG', 'GET', 'requirepass');
SELECT pg2redis_redis('SET', 'pg2redis:pg2redis:lsn', '0/0');
RESET ROLE;
-- the streaming commands stay refused to everyone
SELECT pg2redis_redis('SUBSCRIBE', 'c');

ALTER SYSTEM RESET pg2redis.redis_url;
SELECT pg_reload_conf();

-- The roles survive DROP EXTENSION, and CREATE EXTENSION works again, also
-- in a second database.
DROP EXTENSION pg2redis;
SELECT count(*) AS roles_left FROM pg_roles
 WHERE rolname IN ('pg2redis_admin', 'pg2redis_monitor');
CREATE EXTENSION pg2redis;
SELECT has_function_privilege('pg2redis_monitor', 'pg2redis_status()', 'EXECUTE') AS granted_again;
\set regress_db :DBNAME
CREATE DATABASE regress_pg2redis_second;
\c regress_pg2redis_second
CREATE EXTENSION pg2redis;
SELECT has_function_privilege('pg2redis_monitor', 'pg2redis_status()', 'EXECUTE') AS granted_there;
DROP EXTENSION pg2redis;
\c :regress_db
DROP DATABASE regress_pg2redis_second;
DROP EXTENSION pg2redis;

DROP FUNCTION regress_try(text[]);
DROP TABLE regress_cmds, regress_items;
DROP ROLE regress_grafana, regress_admin, regress_reader, regress_settings_reader;
