-- The output plugin: a slot created with plugin pg2redis yields the
-- commands the rules produce, one JSON array per row, in commit order.
CREATE EXTENSION pg2redis;
-- Debian's PostgreSQL 15.19+ lists the plugins decoding may load.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_settings WHERE name = 'output_plugin_libraries') THEN
        PERFORM set_config('output_plugin_libraries',
                           current_setting('output_plugin_libraries') || ', pg2redis', false);
    END IF;
END
$$;

CREATE TABLE t (id int PRIMARY KEY, name text, qty int, big text);
SELECT pg2redis_add_rule('t', 'insert', 'HSET t:{id} {pairs:id,name,qty}');
SELECT pg2redis_add_rule('t', 'insert', 'INCRBY qty {diff:qty}');
SELECT pg2redis_add_rule('t', 'update', 'HSET t:{id} {pairs:id,name,qty}');
SELECT pg2redis_add_rule('t', 'delete', 'DEL t:{id}');
SELECT pg2redis_add_rule('t', 'insert', 'DEL t:{id}:gone');
SELECT pg2redis_add_rule('t', 'insert', 'DEL t:{id}:delete-rule');
SELECT pg2redis_add_rule('t', 'truncate', 'DEL qty');
-- rules of the delete side of a key change, and of the insert side
UPDATE pg2redis.rules SET op = 'delete' WHERE command[2] LIKE '%:delete-rule';

SELECT 'init' FROM pg_create_logical_replication_slot('p2r', 'pg2redis');
-- the plugin takes no options
SELECT data FROM pg_logical_slot_peek_changes('p2r', NULL, NULL, 'include-xids', '1');

-- insert, update, key change, delete, each its own transaction
INSERT INTO t VALUES (1, 'one', 5);
UPDATE t SET name = 'uno', qty = 7 WHERE id = 1;
UPDATE t SET id = 2 WHERE id = 1;
DELETE FROM t WHERE id = 2;
-- a rolled back transaction and a rolled back subtransaction send nothing
BEGIN;
INSERT INTO t VALUES (10, 'ten', 1);
ROLLBACK;
BEGIN;
INSERT INTO t VALUES (11, 'eleven', 1);
SAVEPOINT s;
INSERT INTO t VALUES (12, 'twelve', 1);
ROLLBACK TO SAVEPOINT s;
INSERT INTO t VALUES (13, 'thirteen', 1);
COMMIT;
-- NULL and unicode
INSERT INTO t VALUES (20, NULL, NULL), (21, 'ünï "q" ☃', -3);
TRUNCATE t;
SELECT data FROM pg_logical_slot_get_changes('p2r', NULL, NULL);

-- {%xid%} and {%lsn%} are the transaction's id and commit LSN
CREATE TABLE m (id int PRIMARY KEY);
SELECT pg2redis_add_rule('m', 'insert', 'XADD m * xid {%xid%} lsn {%lsn%} op {%op%} at {%commit_time%}');
BEGIN;
INSERT INTO m VALUES (1);
INSERT INTO m VALUES (2);
COMMIT;
SELECT count(*) AS commands,
       count(DISTINCT data::jsonb->>6) AS commit_lsns,
       bool_and((data::jsonb->>4)::xid = xid) AS xid_matches,
       bool_and((data::jsonb->>6)::pg_lsn >= lsn) AS lsn_is_commit,
       bool_and((data::jsonb->>10)::timestamptz BETWEEN now() - interval '1 hour' AND now() + interval '1 hour') AS commit_time_ok
  FROM pg_logical_slot_get_changes('p2r', NULL, NULL);

-- rule changes take effect in stream order, even when decoded later
INSERT INTO m VALUES (3);
SELECT pg2redis_add_rule('m', 'insert', 'SADD m:all {id}');
INSERT INTO m VALUES (4);
BEGIN;
SELECT pg2redis_add_rule('m', 'insert', 'SADD m:same-txn {id}');
INSERT INTO m VALUES (5);
COMMIT;
UPDATE pg2redis.rules SET enabled = false WHERE command[1] = 'XADD';
INSERT INTO m VALUES (6);
DELETE FROM pg2redis.rules WHERE relation = 'm'::regclass;
INSERT INTO m VALUES (7);
SELECT CASE WHEN data LIKE '["XADD%' THEN '["XADD","m",...]' ELSE data END AS data
  FROM pg_logical_slot_get_changes('p2r', NULL, NULL);

-- unchanged TOASTed values: never rendered as garbage; left out of {pairs}
-- (HSET keeps the field), a render error in {json} (written whole, the
-- value would be lost) and in {col}; taken from the old row under FULL
CREATE TABLE doc (id int PRIMARY KEY, title text, body text);
CREATE TABLE docf (id int PRIMARY KEY, title text, body text);
ALTER TABLE docf REPLICA IDENTITY FULL;
SELECT pg2redis_add_rule('doc', 'update', 'HSET doc:{id} {pairs:*}');
SELECT pg2redis_add_rule('doc', 'update', 'SET doc:{id}:json {json:*}');
SELECT pg2redis_add_rule('doc', 'update', 'SET doc:{id}:body {body}');
SELECT pg2redis_add_rule('docf', 'update', 'HSET docf:{id} {pairs:*}');
SELECT pg2redis_add_rule('docf', 'update', 'SET docf:{id}:body {body}');
INSERT INTO doc SELECT 1, 't', string_agg(md5(i::text), '') FROM generate_series(1, 300) i;
INSERT INTO docf SELECT * FROM doc;
UPDATE doc SET title = 'changed';
UPDATE docf SET title = 'changed';
UPDATE doc SET body = 'short now';
-- a key change runs the insert rules on the new row: its unchanged TOASTed
-- value comes from the old row (REPLICA IDENTITY FULL)
SELECT pg2redis_add_rule('docf', 'insert', 'SET docf:{id}:moved {body}') > 0 AS ok;
UPDATE docf SET id = 2;
SELECT CASE WHEN length(data) > 120
            THEN left(data, 40) || '...(' || length(data) || ' chars)...' || right(data, 20)
            ELSE data END AS data
  FROM pg_logical_slot_get_changes('p2r', NULL, NULL);
SELECT length(string_agg(md5(i::text), '')) AS body_length FROM generate_series(1, 300) i;

-- partitions map to the rules of their partitioned table, whatever their
-- column order; a row moving between partitions is a delete and an insert
CREATE TABLE ev (id int, region text, amount int, PRIMARY KEY (id, region))
    PARTITION BY LIST (region);
CREATE TABLE ev_eu PARTITION OF ev FOR VALUES IN ('eu');
CREATE TABLE ev_us (amount int, region text NOT NULL, id int NOT NULL);
ALTER TABLE ev ATTACH PARTITION ev_us FOR VALUES IN ('us');
SELECT pg2redis_add_rule('ev', 'insert', 'HSET ev:{%pk%} {pairs:*}');
SELECT pg2redis_add_rule('ev', 'delete', 'DEL ev:{%pk%}');
SELECT pg2redis_add_rule('ev', 'update', 'PUBLISH ev {%schema%}.{%table%}:{json:*}');
SELECT pg2redis_add_rule('ev', 'truncate', 'DEL ev:index');
-- a rule on one partition wins over the parent's for that partition
SELECT pg2redis_add_rule('ev_eu', 'insert', 'SADD eu {id}');
INSERT INTO ev VALUES (1, 'us', 10), (2, 'eu', 20);
UPDATE ev SET amount = 11 WHERE id = 1;
UPDATE ev SET region = 'eu' WHERE id = 1;
TRUNCATE ev;
SELECT data FROM pg_logical_slot_get_changes('p2r', NULL, NULL);
-- a partition truncated alone does not run the parent's truncate rules;
-- all partitions truncated together do, once
TRUNCATE ev_us;
TRUNCATE ev_eu;
TRUNCATE ev_eu, ev_us;
SELECT data FROM pg_logical_slot_get_changes('p2r', NULL, NULL);

-- a rule that no longer renders yields an error row, and the stream goes on
CREATE TABLE d (id int PRIMARY KEY, gone text);
SELECT pg2redis_add_rule('d', 'insert', 'SET d:{id} {gone}');
SELECT pg2redis_add_rule('d', 'insert', 'SADD d {id}');
-- (what the rule does when the schema change is not caught: sql/ddl_rules
-- tests pg2redis.ddl_check, which would disable the rule first)
SET pg2redis.ddl_check = off;
ALTER TABLE d DROP COLUMN gone;
RESET pg2redis.ddl_check;
INSERT INTO d VALUES (1);
SELECT regexp_replace(data, '"rule":[0-9]+', '"rule":N') AS data
  FROM pg_logical_slot_get_changes('p2r', NULL, NULL);

SELECT pg_drop_replication_slot('p2r');
DROP TABLE t, m, doc, docf, ev, d;
DROP EXTENSION pg2redis;
