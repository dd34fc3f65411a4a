-- Schema changes are caught when they happen: after ALTER TABLE (and DROP
-- INDEX, REVOKE), the rules of the tables it touched are checked again, and
-- a rule the change broke is disabled with a WARNING naming it
-- (pg2redis.ddl_check = disable, the default), the change is refused
-- (error), or nothing is checked (off).  A broken rule can be disabled by
-- hand too.
CREATE EXTENSION pg2redis;
SET client_min_messages = warning;
CREATE TABLE items (id int PRIMARY KEY, sku text NOT NULL UNIQUE, name text,
                    qty int, note text);
ALTER TABLE items REPLICA IDENTITY FULL;
CREATE TABLE other (id int PRIMARY KEY, name text);
SELECT pg2redis_add_rule('items', 'insert', 'HSET item:{id} name {name}') AS r_name \gset
SELECT pg2redis_add_rule('items', 'insert', 'SET item:{id}:qty {qty}') AS r_qty \gset
SELECT pg2redis_add_rule('items', 'update', 'INCRBY qty:total {diff:qty}') AS r_diff \gset
SELECT pg2redis_add_rule('items', 'delete', 'SREM skus {old:sku}') AS r_sku \gset
SELECT pg2redis_add_rule('other', 'insert', 'SET other:{id} {name}') AS r_other \gset

CREATE VIEW rules_state AS
  SELECT id, op, array_to_string(command, ' ') AS command, enabled
    FROM pg2redis.rules ORDER BY id;

-- a change that breaks nothing: no warning, every rule enabled
ALTER TABLE items ADD COLUMN extra int;
ALTER TABLE items ALTER COLUMN note TYPE varchar(20);
SELECT * FROM rules_state;

-- a dropped column: its rule is disabled, with a WARNING naming it
ALTER TABLE items DROP COLUMN name;
SELECT * FROM rules_state;

-- a renamed column
ALTER TABLE items RENAME COLUMN qty TO quantity;
SELECT * FROM rules_state;
ALTER TABLE items RENAME COLUMN quantity TO qty;
UPDATE pg2redis.rules SET enabled = true WHERE id IN (:r_qty, :r_diff);

-- a retyped column keeps its rules (values render by the new type's output)
ALTER TABLE items ALTER COLUMN qty TYPE bigint;
SELECT enabled FROM pg2redis.rules WHERE id IN (:r_qty, :r_diff);

-- the replica identity no longer gives the old values a rule reads
ALTER TABLE items REPLICA IDENTITY DEFAULT;
SELECT * FROM rules_state;

-- REPLICA IDENTITY USING INDEX, then that index dropped: nothing identifies
-- rows any more
ALTER TABLE items REPLICA IDENTITY FULL;
UPDATE pg2redis.rules SET enabled = true WHERE id IN (:r_diff, :r_sku);
SELECT pg2redis_add_rule('items', 'delete', 'DEL item:{id}') AS r_del \gset
ALTER TABLE items DROP CONSTRAINT items_pkey;
CREATE UNIQUE INDEX items_sku_idx ON items (sku);
ALTER TABLE items REPLICA IDENTITY USING INDEX items_sku_idx;
SELECT * FROM rules_state;
DROP INDEX items_sku_idx;
SELECT * FROM rules_state;
ALTER TABLE items ADD PRIMARY KEY (id);
ALTER TABLE items REPLICA IDENTITY FULL;

-- a partition's replica identity changed: the parent's rules are checked
CREATE TABLE parted (id int, v int, PRIMARY KEY (id)) PARTITION BY RANGE (id);
CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (100);
ALTER TABLE parted_1 REPLICA IDENTITY FULL;
ALTER TABLE parted REPLICA IDENTITY FULL;
SELECT pg2redis_add_rule('parted', 'update', 'INCRBY v:total {diff:v}') AS r_part \gset
ALTER TABLE parted_1 REPLICA IDENTITY DEFAULT;
SELECT enabled FROM pg2redis.rules WHERE id = :r_part;

-- ddl_check = error: the change is refused, the rule stays enabled
SET pg2redis.ddl_check = error;
\set VERBOSITY default
ALTER TABLE other DROP COLUMN name;
\set VERBOSITY terse
SELECT enabled FROM pg2redis.rules WHERE id = :r_other;
SELECT attname FROM pg_attribute WHERE attrelid = 'other'::regclass AND attname = 'name';

-- ddl_check = off: nothing is checked (the stream turns the rule's changes
-- into dead letters)
SET pg2redis.ddl_check = off;
ALTER TABLE other RENAME COLUMN name TO title;
SELECT enabled FROM pg2redis.rules WHERE id = :r_other;
RESET pg2redis.ddl_check;

-- a broken rule can be disabled by hand (re-enabling it checks it again)
UPDATE pg2redis.rules SET enabled = false WHERE id = :r_other;
SELECT enabled FROM pg2redis.rules WHERE id = :r_other;
UPDATE pg2redis.rules SET enabled = true WHERE id = :r_other;
-- but nothing else changes with it unchecked
UPDATE pg2redis.rules SET enabled = false, command = '{SET,k,"{nope}"}' WHERE id = :r_other;

-- a restore (check_function_bodies = off) is not checked: rules come before
-- the indexes they need
UPDATE pg2redis.rules SET enabled = true, command = '{SET,"other:{id}","{title}"}'
 WHERE id = :r_other;
SET check_function_bodies = off;
ALTER TABLE other RENAME COLUMN title TO name2;
RESET check_function_bodies;
SELECT enabled FROM pg2redis.rules WHERE id = :r_other;

-- only superusers change the setting
CREATE ROLE ddl_user;
SET ROLE ddl_user;
SET pg2redis.ddl_check = off;
RESET ROLE;
DROP ROLE ddl_user;

DROP VIEW rules_state;
DROP TABLE items, other, parted;
DROP EXTENSION pg2redis;
