-- Every bad rule is refused when written, with an ERROR saying which rule
-- and why, and nothing is stored.
CREATE EXTENSION pg2redis;
\set VERBOSITY default
CREATE TABLE items (id int PRIMARY KEY, name text, qty int, note text);
CREATE TABLE nokey (a int, b text);
CREATE TABLE full_items (id int PRIMARY KEY, name text);
ALTER TABLE full_items REPLICA IDENTITY FULL;

-- op
SELECT pg2redis_add_rule('items', 'upsert', 'SET k v');
INSERT INTO pg2redis.rules (relation, op, command) VALUES ('items', 'INSERT', '{SET,k,v}');
-- ops are accepted in any case by pg2redis_add_rule
SELECT pg2redis_add_rule('items', ' Insert ', 'SET k v') > 0 AS ok;

-- command: empty, null element, 2-D, placeholders in the name
SELECT pg2redis_add_rule('items', 'insert', ARRAY[]::text[]);
SELECT pg2redis_add_rule('items', 'insert', '');
SELECT pg2redis_add_rule('items', 'insert', ARRAY['SET', NULL, 'v']);
SELECT pg2redis_add_rule('items', 'insert', '{{SET,k},{v,w}}'::text[]);
SELECT pg2redis_add_rule('items', 'insert', ARRAY['{name}', 'k', 'v']);
SELECT pg2redis_add_rule('items', 'insert', NULL::text[]);

-- unknown and server-level commands
SELECT pg2redis_add_rule('items', 'insert', 'GET k');
SELECT pg2redis_add_rule('items', 'insert', 'FLUSHALL');
SELECT pg2redis_add_rule('items', 'insert', 'flushdb');
SELECT pg2redis_add_rule('items', 'insert', 'CONFIG SET appendonly no');
SELECT pg2redis_add_rule('items', 'insert', 'SHUTDOWN');
SELECT pg2redis_add_rule('items', 'insert', 'MULTI');
SELECT pg2redis_add_rule('items', 'insert', 'EVAL "return 1" 0');
SELECT pg2redis_add_rule('items', 'insert', 'SELECT 2');

-- every supported command is accepted, in any case
SELECT count(pg2redis_add_rule('items', 'insert', ARRAY[name, 'k:{id}', 'a', 'b', 'c'])) AS accepted
  FROM unnest(ARRAY['SET', 'SETEX', 'MSET', 'INCR', 'DECR', 'INCRBY', 'DECRBY', 'APPEND',
                    'DEL', 'EXPIRE', 'HSET', 'HINCRBY', 'HDEL', 'SADD', 'SREM', 'ZADD',
                    'ZINCRBY', 'ZREM', 'XADD', 'XDEL', 'PUBLISH', 'UNLINK', 'PEXPIRE',
                    'EXPIREAT', 'HSETNX', 'SETNX', 'LPUSH', 'RPUSH', 'LREM', 'LTRIM',
                    'JSON.SET', 'JSON.DEL', 'json.set', 'hset', 'INCRBYFLOAT', 'HINCRBYFLOAT',
                    'HMSET', 'PERSIST', 'PEXPIREAT', 'PSETEX', 'XTRIM', 'ZREMRANGEBYSCORE']) AS name;
DELETE FROM pg2redis.rules;

-- too few arguments
SELECT pg2redis_add_rule('items', 'insert', 'HSET item:{id} name');
SELECT pg2redis_add_rule('items', 'insert', 'SET k');
-- {pairs:…} counts as two arguments per column
SELECT pg2redis_add_rule('items', 'insert', 'HSET item:{id} {pairs:name}') > 0 AS ok;

-- placeholders
SELECT pg2redis_add_rule('items', 'insert', 'SET item:{nope} 1');
SELECT pg2redis_add_rule('items', 'insert', 'SET item:{ID} 1');
SELECT pg2redis_add_rule('items', 'insert', 'SET item:{id 1');
SELECT pg2redis_add_rule('items', 'insert', 'SET item:id} 1');
SELECT pg2redis_add_rule('items', 'insert', 'SET {%nope%} 1');
SELECT pg2redis_add_rule('items', 'insert', 'SET {new:id} 1');
SELECT pg2redis_add_rule('items', 'insert', 'SET {id,name} 1');
SELECT pg2redis_add_rule('items', 'insert', 'SET {*} 1');
SELECT pg2redis_add_rule('items', 'update', 'SET {old:id,name} 1');
SELECT pg2redis_add_rule('items', 'insert', 'SET k {pairs:id,,name}');
SELECT pg2redis_add_rule('items', 'insert', 'SET k {pairs:id,nope}');
SELECT pg2redis_add_rule('items', 'insert', 'HSET k x{pairs:*}');
SELECT pg2redis_add_rule('items', 'insert', 'SET k {json:nope}');
SELECT pg2redis_add_rule('items', 'insert', 'SET k {xyz:id}');
SELECT pg2redis_add_rule('items', 'insert', 'SET {pairs:*} 1');
SELECT pg2redis_add_rule('items', 'delete', 'DEL k {pairs:id}');
SELECT pg2redis_add_rule('items', 'insert', 'MSET {pairs:id,name}');
-- a system column is not a placeholder column
SELECT pg2redis_add_rule('items', 'insert', 'SET k {ctid}');

-- what each op can read
SELECT pg2redis_add_rule('items', 'insert', 'SET k {old:name}');
SELECT pg2redis_add_rule('items', 'snapshot', 'SET k {old:id}');
SELECT pg2redis_add_rule('items', 'truncate', 'DEL item:{id}');
SELECT pg2redis_add_rule('items', 'truncate', 'DEL {%pk%}');
SELECT pg2redis_add_rule('items', 'truncate', 'DEL k', '{"column":"id","op":"=","value":1}');
SELECT pg2redis_add_rule('items', 'truncate', 'PUBLISH truncated {%schema%}.{%table%}') > 0 AS ok;

-- replica identity DEFAULT: old values of the key only
SELECT pg2redis_add_rule('items', 'update', 'SET k {old:name}');
SELECT pg2redis_add_rule('items', 'update', 'INCRBY k {diff:qty}');
SELECT pg2redis_add_rule('items', 'update', 'SET k 1', '{"column":"name","op":"changed"}');
SELECT pg2redis_add_rule('items', 'update', 'SET k 1', '{"column":"name","op":"=","value":"x","old":true}');
SELECT pg2redis_add_rule('items', 'update', 'SET k {name}', '{"column":"qty","op":"=","value":"{old:qty}"}');
SELECT pg2redis_add_rule('items', 'delete', 'SREM names {name}');
SELECT pg2redis_add_rule('items', 'delete', 'HSET k {pairs:*}');
SELECT pg2redis_add_rule('items', 'update', 'SET k {old:id}') > 0 AS ok;
SELECT pg2redis_add_rule('items', 'delete', 'DEL item:{id} item:{%pk%}') > 0 AS ok;
-- no key at all
SELECT pg2redis_add_rule('nokey', 'delete', 'DEL k:{a}');
SELECT pg2redis_add_rule('nokey', 'insert', 'SET k:{%pk%} 1');
SELECT pg2redis_add_rule('nokey', 'delete', 'DEL k') > 0 AS ok;
-- REPLICA IDENTITY FULL: every old value
SELECT pg2redis_add_rule('full_items', 'update', 'SREM names {old:name}') > 0 AS ok;
SELECT pg2redis_add_rule('full_items', 'delete', 'HSET k {pairs:*}') > 0 AS ok;
-- REPLICA IDENTITY NOTHING: no old values at all
ALTER TABLE full_items REPLICA IDENTITY NOTHING;
SELECT pg2redis_add_rule('full_items', 'delete', 'DEL item:{id}');
ALTER TABLE full_items REPLICA IDENTITY FULL;

-- conditions
SELECT pg2redis_add_rule('items', 'insert', 'SET k 1', '[]');
SELECT pg2redis_add_rule('items', 'insert', 'SET k 1', '{}');
SELECT pg2redis_add_rule('items', 'insert', 'SET k 1', '{"column":"nope","op":"=","value":1}');
SELECT pg2redis_add_rule('items', 'insert', 'SET k 1', '{"column":"name","op":"~","value":1}');
SELECT pg2redis_add_rule('items', 'insert', 'SET k 1', '{"column":"name","op":"="}');
SELECT pg2redis_add_rule('items', 'insert', 'SET k 1', '{"column":"name","op":"in","value":1}');
SELECT pg2redis_add_rule('items', 'insert', 'SET k 1', '{"column":"name","op":"in","values":[{"a":1}]}');
SELECT pg2redis_add_rule('items', 'insert', 'SET k 1', '{"column":"name","op":"is_null","value":1}');
SELECT pg2redis_add_rule('items', 'insert', 'SET k 1', '{"column":"name","op":"=","value":null}');
SELECT pg2redis_add_rule('items', 'insert', 'SET k 1', '{"column":"name","op":"=","value":"x","colour":"red"}');
SELECT pg2redis_add_rule('items', 'insert', 'SET k 1', '{"all":[]}');
SELECT pg2redis_add_rule('items', 'insert', 'SET k 1', '{"all":{"column":"id","op":"is_null"}}');
SELECT pg2redis_add_rule('items', 'insert', 'SET k 1', '{"all":[1]}');
SELECT pg2redis_add_rule('items', 'insert', 'SET k 1', '{"not":[]}');
SELECT pg2redis_add_rule('items', 'insert', 'SET k 1', '{"not":{"column":"id","op":"is_null"},"column":"id"}');
SELECT pg2redis_add_rule('items', 'insert', 'SET k 1', '{"column":"name","op":"=","value":"{nope}"}');
SELECT pg2redis_add_rule('items', 'insert', 'SET k 1', '{"column":"name","op":"=","value":"x","old":"yes"}');
SELECT pg2redis_add_rule('items', 'insert', 'SET k 1', '{"column":"name","op":"changed"}');
SELECT pg2redis_add_rule('full_items', 'update', 'SET k 1', '{"column":"name","op":"changed","old":true}');
SELECT pg2redis_add_rule('items', 'insert', 'SET k 1', '{"column":"name","op":"=","value":"{pairs:*}"}');

-- relations rules may not map
CREATE VIEW items_view AS SELECT * FROM items;
CREATE UNLOGGED TABLE scratch (id int PRIMARY KEY);
CREATE TEMP TABLE tmp_items (id int PRIMARY KEY);
CREATE SEQUENCE some_seq;
SELECT pg2redis_add_rule('pg_authid', 'insert', 'SET k {rolname}');
SELECT pg2redis_add_rule('pg_class', 'insert', 'SET k 1');
SELECT pg2redis_add_rule('information_schema.sql_features', 'insert', 'SET k 1');
SELECT pg2redis_add_rule('pg2redis.dead_letters', 'insert', 'SET k 1');
SELECT pg2redis_add_rule('items_view', 'insert', 'SET k 1');
SELECT pg2redis_add_rule('some_seq', 'insert', 'SET k 1');
SELECT pg2redis_add_rule('scratch', 'insert', 'SET k 1');
SELECT pg2redis_add_rule('tmp_items', 'insert', 'SET k 1');
SELECT pg2redis_add_rule('no_such_table', 'insert', 'SET k 1');
INSERT INTO pg2redis.rules (relation, op, command) VALUES (12345678, 'insert', '{SET,k,v}');

-- a role without SELECT on the table cannot map it
CREATE ROLE rule_writer;
GRANT USAGE ON SCHEMA pg2redis TO rule_writer;
GRANT SELECT, INSERT ON pg2redis.rules TO rule_writer;
GRANT USAGE ON SEQUENCE pg2redis.rules_id_seq TO rule_writer;
GRANT EXECUTE ON FUNCTION pg2redis_add_rule(regclass, text, text, jsonb) TO rule_writer;
SET ROLE rule_writer;
SELECT pg2redis_add_rule('items', 'insert', 'SET k 1');
RESET ROLE;
GRANT SELECT ON items TO rule_writer;
SET ROLE rule_writer;
SELECT pg2redis_add_rule('items', 'insert', 'SET k 1') > 0 AS ok;
RESET ROLE;

-- updates of a rule are validated too
UPDATE pg2redis.rules SET command = '{FLUSHALL}' WHERE command = '{SET,k,v}';
UPDATE pg2redis.rules SET op = 'nope';

-- nothing refused was stored
SELECT op, command, condition FROM pg2redis.rules ORDER BY id;

DROP OWNED BY rule_writer;
-- rules are stored inline: one too large for a page is refused, one just
-- below the limit is kept
SELECT pg2redis_add_rule('items', 'insert', 'SET k 1',
    jsonb_build_object('column', 'name', 'op', 'in',
                       'values', (SELECT jsonb_agg(lpad(i::text, 10, '0')) FROM generate_series(1, 600) i)));
SELECT pg2redis_add_rule('items', 'insert', 'SET k 1',
    jsonb_build_object('column', 'name', 'op', 'in',
                       'values', (SELECT jsonb_agg(lpad(i::text, 10, '0')) FROM generate_series(1, 300) i))) > 0 AS kept;
SELECT pg_column_size(condition) > 3000 AS inline_and_whole FROM pg2redis.rules WHERE condition IS NOT NULL ORDER BY id DESC LIMIT 1;
DROP ROLE rule_writer;
DROP VIEW items_view;
DROP TABLE items, nokey, full_items, scratch, tmp_items;
DROP SEQUENCE some_seq;
DROP EXTENSION pg2redis;
