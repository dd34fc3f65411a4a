-- Every placeholder of the template language, through pg2redis_preview().
CREATE EXTENSION pg2redis;
CREATE SCHEMA shop;
CREATE TABLE shop.orders (
    id bigint PRIMARY KEY,
    customer_id bigint,
    status text,
    total numeric(12,2),
    qty int,
    "Mixed Case" text
);
ALTER TABLE shop.orders REPLICA IDENTITY FULL;

-- {col}, literal text around it, several placeholders in one argument
SELECT pg2redis_add_rule('shop.orders', 'insert',
       ARRAY['SET', 'order:{id}:customer:{customer_id}', '{status}']);
-- {{ and }} are literal braces
SELECT pg2redis_add_rule('shop.orders', 'insert', ARRAY['SET', '{{literal}}:{id}', '{{{status}}}']);
-- {pairs:*} and a column list; names with spaces and capitals
SELECT pg2redis_add_rule('shop.orders', 'insert', ARRAY['HSET', 'order:{id}', '{pairs:*}']);
SELECT pg2redis_add_rule('shop.orders', 'insert', ARRAY['HSET', 'o:{id}', '{pairs: status , Mixed Case}']);
-- {json:*} and a column list
SELECT pg2redis_add_rule('shop.orders', 'insert', ARRAY['SET', 'oj:{id}', '{json:*}']);
SELECT pg2redis_add_rule('shop.orders', 'insert', ARRAY['PUBLISH', 'orders', '{json:id,status}']);
-- meta placeholders
SELECT pg2redis_add_rule('shop.orders', 'insert',
       ARRAY['XADD', 'events', '*', 'schema', '{%schema%}', 'table', '{%table%}', 'op', '{%op%}',
             'pk', '{%pk%}', 'xid', '{%xid%}', 'lsn', '{%lsn%}']);
-- {diff:col} on insert: new minus 0
SELECT pg2redis_add_rule('shop.orders', 'insert', 'INCRBY orders:qty {diff:qty}');
SELECT pg2redis_add_rule('shop.orders', 'insert', 'INCRBYFLOAT orders:total {diff:total}');

SELECT * FROM pg2redis_preview('shop.orders', 'insert',
    '{"id": 1, "customer_id": 7, "status": "new", "total": 12.50, "qty": 3, "Mixed Case": "Yes"}');

-- NULL renders as '' in plain and pairs placeholders, null in JSON; 0 in diff
SELECT * FROM pg2redis_preview('shop.orders', 'insert', '{"id": 2}');

-- update: {old:col}, {diff:col}, and {col} is the new value
SELECT pg2redis_add_rule('shop.orders', 'update', ARRAY['SMOVE_IS_NOT_SUPPORTED']);
SELECT pg2redis_add_rule('shop.orders', 'update', 'SREM status:{old:status} {id}');
SELECT pg2redis_add_rule('shop.orders', 'update', 'SADD status:{status} {id}');
SELECT pg2redis_add_rule('shop.orders', 'update', 'INCRBY orders:qty {diff:qty}');
SELECT pg2redis_add_rule('shop.orders', 'update', 'INCRBYFLOAT orders:total {diff:total}');
SELECT pg2redis_add_rule('shop.orders', 'update', 'PUBLISH changes {%op%}:{%pk%}');
SELECT * FROM pg2redis_preview('shop.orders', 'update',
    '{"id": 1, "status": "paid", "qty": 5, "total": 10.25}',
    '{"id": 1, "status": "new", "qty": 3, "total": 12.50}');
-- old NULL counts as 0 in {diff}, and is '' in {old:col}
SELECT * FROM pg2redis_preview('shop.orders', 'update',
    '{"id": 1, "status": "paid", "qty": 5, "total": 1}', '{"id": 1}');
-- {diff} of big integers stays exact
SELECT * FROM pg2redis_preview('shop.orders', 'update',
    '{"id": 1, "qty": 2147483647}', '{"id": 1, "qty": -2147483648}') c
 WHERE c[2] = 'orders:qty';

-- delete: {col} and {old:col} are the old row's; {diff} is 0 minus old
SELECT pg2redis_add_rule('shop.orders', 'delete', 'DEL order:{id}');
SELECT pg2redis_add_rule('shop.orders', 'delete', 'SREM status:{old:status} {id}');
SELECT pg2redis_add_rule('shop.orders', 'delete', 'INCRBY orders:qty {diff:qty}');
SELECT pg2redis_add_rule('shop.orders', 'delete', 'PUBLISH changes {%op%}:{%pk%}');
SELECT * FROM pg2redis_preview('shop.orders', 'delete', NULL,
    '{"id": 1, "status": "paid", "qty": 5}');

-- a primary-key change is the delete rules on the old row, then the insert
-- rules on the new row
SELECT * FROM pg2redis_preview('shop.orders', 'update',
    '{"id": 10, "customer_id": 7, "status": "paid", "qty": 5}',
    '{"id": 1, "customer_id": 7, "status": "paid", "qty": 5}');

-- snapshot rows use insert rules when the table has no snapshot rules ...
SELECT count(*) FROM pg2redis_preview('shop.orders', 'snapshot', '{"id": 3}');
-- ... and only the snapshot rules when it has some
SELECT pg2redis_add_rule('shop.orders', 'snapshot', 'HSET order:{id} {pairs:id,status} snap {%op%}');
SELECT * FROM pg2redis_preview('shop.orders', 'snapshot', '{"id": 3, "status": "new"}');

-- truncate rules
SELECT pg2redis_add_rule('shop.orders', 'truncate', 'DEL orders:qty orders:total');
SELECT pg2redis_add_rule('shop.orders', 'truncate', 'PUBLISH truncated {%schema%}.{%table%}');
SELECT * FROM pg2redis_preview('shop.orders', 'truncate', NULL);

-- {%commit_time%} is ISO 8601 in UTC (preview: the transaction start)
CREATE TABLE ticks (id int PRIMARY KEY);
SELECT pg2redis_add_rule('ticks', 'insert', 'SET tick:{id} {%commit_time%}');
SELECT c[3] ~ '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00$' AS iso_utc,
       c[3]::timestamptz = now() AS is_commit_time
  FROM pg2redis_preview('ticks', 'insert', '{"id": 1}') c;

-- rule order: position, then id; disabled rules are skipped
CREATE TABLE ordered (id int PRIMARY KEY);
SELECT pg2redis_add_rule('ordered', 'insert', 'SET third {id}');
SELECT pg2redis_add_rule('ordered', 'insert', 'SET fourth {id}');
SELECT pg2redis_add_rule('ordered', 'insert', 'SET skipped {id}');
INSERT INTO pg2redis.rules (relation, op, command, position) VALUES
    ('ordered', 'insert', '{SET,second,"{id}"}', -1),
    ('ordered', 'insert', '{SET,first,"{id}"}', -5),
    ('ordered', 'insert', '{SET,last,"{id}"}', 10);
UPDATE pg2redis.rules SET enabled = false WHERE command[2] = 'skipped';
SELECT * FROM pg2redis_preview('ordered', 'insert', '{"id": 1}');
-- rule changes are seen at once by the same session
UPDATE pg2redis.rules SET enabled = true WHERE command[2] = 'skipped';
DELETE FROM pg2redis.rules WHERE command[2] IN ('first', 'second', 'last');
SELECT * FROM pg2redis_preview('ordered', 'insert', '{"id": 1}');

-- a column dropped after the rule was written: the rule cannot render
CREATE TABLE dropping (id int PRIMARY KEY, gone text);
SELECT pg2redis_add_rule('dropping', 'insert', 'SET d:{id} {gone}');
-- (what the rule does when the schema change is not caught: sql/ddl_rules
-- tests pg2redis.ddl_check, which would disable the rule first)
SET pg2redis.ddl_check = off;
ALTER TABLE dropping DROP COLUMN gone;
RESET pg2redis.ddl_check;
SELECT * FROM pg2redis_preview('dropping', 'insert', '{"id": 1}');

-- preview input errors
SELECT * FROM pg2redis_preview('shop.orders', 'insert', '{"nope": 1}');
SELECT * FROM pg2redis_preview('shop.orders', 'insert', '[1]');
SELECT * FROM pg2redis_preview('shop.orders', 'insert', NULL);
SELECT * FROM pg2redis_preview('shop.orders', 'merge', '{}');
SELECT * FROM pg2redis_preview('shop.orders', 'insert', '{"qty": "many"}');
-- a table without rules previews nothing
CREATE TABLE unmapped (id int);
SELECT count(*) FROM pg2redis_preview('unmapped', 'insert', '{"id": 1}');

-- the redis-cli form of commands
SELECT pg2redis_split_command('SET  a   b');
SELECT pg2redis_split_command('SET "a b" "say \"hi\"" "back\\slash" ""');
SELECT pg2redis_split_command('HSET k {pairs:a, b} {json: a , b}');
SELECT pg2redis_split_command('SET {{literal');
SELECT pg2redis_split_command('SET "open');
SELECT pg2redis_split_command('SET "a"b');
SELECT pg2redis_split_command('   ');

DROP TABLE ticks, ordered, dropping, unmapped;
DROP SCHEMA shop CASCADE;
DROP EXTENSION pg2redis;
