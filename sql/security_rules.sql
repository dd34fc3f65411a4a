-- What writing a rule grants, and what is checked: the writing role is
-- recorded on the rule; row-level security that applies to it is refused;
-- its privileges are checked again whenever the rules are loaded; preview
-- and snapshot requests need SELECT; keys under pg2redis: are refused;
-- {%pk_escaped%} and {esc:col} render collision-free keys; a restore keeps
-- rules that need indexes not yet restored, and pg2redis_validate_rules()
-- checks them afterwards.
CREATE EXTENSION pg2redis;
\set VERBOSITY default
-- (the checks when rules are loaded are tested here: pg2redis.ddl_check,
-- which disables such rules at the schema or privilege change already, is
-- tested in ddl_rules)
SET pg2redis.ddl_check = off;
CREATE TABLE sec_items (id int PRIMARY KEY, owner text, secret text);
CREATE TABLE sec_rls (id int PRIMARY KEY, owner text, salary int);
ALTER TABLE sec_rls ENABLE ROW LEVEL SECURITY;
CREATE POLICY own ON sec_rls USING (owner = current_user);
CREATE ROLE regress_writer;
CREATE ROLE regress_reader;
CREATE ROLE regress_gone;
GRANT USAGE ON SCHEMA pg2redis TO regress_writer, regress_gone;
GRANT SELECT, INSERT ON pg2redis.rules TO regress_writer, regress_gone;
GRANT USAGE ON SEQUENCE pg2redis.rules_id_seq TO regress_writer, regress_gone;
GRANT EXECUTE ON FUNCTION pg2redis_add_rule(regclass, text, text, jsonb)
    TO regress_writer, regress_gone;
GRANT EXECUTE ON FUNCTION pg2redis_preview(regclass, text, jsonb, jsonb)
    TO regress_reader;
GRANT EXECUTE ON FUNCTION pg2redis_snapshot(regclass) TO regress_reader;
GRANT USAGE ON SCHEMA pg2redis TO regress_reader;
GRANT SELECT, INSERT ON pg2redis.snapshots TO regress_reader;
GRANT USAGE ON SEQUENCE pg2redis.snapshots_id_seq TO regress_reader;
GRANT SELECT ON sec_items, sec_rls TO regress_writer, regress_gone;

-- rules of a superuser on both tables
SELECT pg2redis_add_rule('sec_items', 'insert', 'SADD items {id}') AS super_rule \gset
SELECT pg2redis_add_rule('sec_rls', 'insert', 'SET all:{id} {salary}') > 0 AS superuser_ok;

-- F11: preview and snapshot requests need SELECT on the table
SET ROLE regress_reader;
SELECT * FROM pg2redis_preview('sec_items', 'insert', '{"id": 1}');
SELECT pg2redis_snapshot('sec_items');
SELECT pg2redis_snapshot();
RESET ROLE;
GRANT SELECT ON sec_items TO regress_reader;
SET ROLE regress_reader;
SELECT count(*) AS previewed FROM pg2redis_preview('sec_items', 'insert', '{"id": 1}');
SELECT pg2redis_snapshot('sec_items') > 0 AS queued;
-- every mapped table, for a snapshot of all
SELECT pg2redis_snapshot();
RESET ROLE;
-- a request written directly (pg2redis_admin may INSERT) is checked the
-- same way, and starts from nothing whatever progress it claims
GRANT INSERT ON pg2redis.snapshots TO regress_reader;
GRANT USAGE ON SEQUENCE pg2redis.snapshots_id_seq TO regress_reader;
SET ROLE regress_reader;
INSERT INTO pg2redis.snapshots (relation) VALUES ('sec_rls');
INSERT INTO pg2redis.snapshots (relation, state, rows, current_relation, last_key)
     VALUES ('sec_items', 'running', 99, 'sec_items', '{42}')
  RETURNING state, rows, current_relation, last_key;
RESET ROLE;
REVOKE INSERT ON pg2redis.snapshots FROM regress_reader;
REVOKE USAGE ON SEQUENCE pg2redis.snapshots_id_seq FROM regress_reader;

-- F4: the writing role is recorded on the rule
SET ROLE regress_writer;
SELECT pg2redis_add_rule('sec_items', 'insert', 'SET item:{id} {secret}') AS writer_rule \gset
RESET ROLE;
SELECT id, id = :writer_rule AS writer_rule, created_by = 'regress_writer'::regrole AS by_writer,
       created_by = current_user::regrole AS by_superuser
  FROM pg2redis.rules ORDER BY id;
-- a value given for created_by is replaced by the role writing the rule
SET ROLE regress_writer;
INSERT INTO pg2redis.rules (relation, op, command, created_by)
     VALUES ('sec_items', 'insert', ARRAY['SET', 'a:{id}', '1'], 10)
  RETURNING created_by;
RESET ROLE;
DELETE FROM pg2redis.rules WHERE command[2] = 'a:{id}';

-- F4: a table whose row-level security applies to the writer is refused
SET ROLE regress_writer;
SELECT pg2redis_add_rule('sec_rls', 'insert', 'HSET leak:{id} {pairs:*}');
RESET ROLE;
-- row_security = off does not change that
SET row_security = off;
SET ROLE regress_writer;
SELECT pg2redis_add_rule('sec_rls', 'insert', 'HSET leak:{id} {pairs:*}');
RESET ROLE;
RESET row_security;
-- a role that bypasses row-level security, the table's owner (unless the
-- table forces it) and superusers may map it
ALTER ROLE regress_writer BYPASSRLS;
SET ROLE regress_writer;
SELECT pg2redis_add_rule('sec_rls', 'insert', 'HSET leak:{id} {pairs:*}') > 0 AS bypassrls_ok;
RESET ROLE;
ALTER ROLE regress_writer NOBYPASSRLS;
ALTER TABLE sec_rls OWNER TO regress_gone;
SET ROLE regress_gone;
SELECT pg2redis_add_rule('sec_rls', 'insert', 'SET owner:{id} 1') > 0 AS owner_ok;
ALTER TABLE sec_rls FORCE ROW LEVEL SECURITY;
SELECT pg2redis_add_rule('sec_rls', 'insert', 'SET forced:{id} 1');
ALTER TABLE sec_rls NO FORCE ROW LEVEL SECURITY;
RESET ROLE;
ALTER TABLE sec_rls OWNER TO CURRENT_USER;

-- F4: privileges are checked again when the rules are loaded.  The rule
-- written with BYPASSRLS, which the writer has lost, and the owner's rule
-- (no longer the owner, and row-level security applies) stop applying:
-- a WARNING when the rules are loaded, and an error for each change (in the
-- stream: a dead letter per change).
SELECT * FROM pg2redis_preview('sec_rls', 'insert', '{"id": 1, "owner": "x", "salary": 5}');
DELETE FROM pg2redis.rules WHERE relation = 'sec_rls'::regclass AND created_by <> current_user::regrole;
SELECT * FROM pg2redis_preview('sec_rls', 'insert', '{"id": 1, "owner": "x", "salary": 5}');
-- a writer that loses SELECT
SELECT * FROM pg2redis_preview('sec_items', 'insert', '{"id": 1, "secret": "s"}');
REVOKE SELECT ON sec_items FROM regress_writer;
SELECT * FROM pg2redis_preview('sec_items', 'insert', '{"id": 1, "secret": "s"}');
-- in the output plugin: an error row for that rule, the superuser's rule
-- still applies
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_settings WHERE name = 'output_plugin_libraries') THEN
        PERFORM set_config('output_plugin_libraries',
                           current_setting('output_plugin_libraries') || ', pg2redis', false);
    END IF;
END
$$;
SELECT 'init' FROM pg_create_logical_replication_slot('sec', 'pg2redis');
INSERT INTO sec_items VALUES (7, 'x', 'hunter2');
SELECT regexp_replace(data, '"rule":\d+', '"rule":N') AS data
  FROM pg_logical_slot_get_changes('sec', NULL, NULL);
-- SELECT given back: the rule applies again
GRANT SELECT ON sec_items TO regress_writer;
SELECT * FROM pg2redis_preview('sec_items', 'insert', '{"id": 1, "secret": "s"}');
-- a writer that is dropped
SET ROLE regress_gone;
SELECT pg2redis_add_rule('sec_items', 'insert', 'SET gone:{id} 1') > 0 AS added;
RESET ROLE;
DROP OWNED BY regress_gone;
DROP ROLE regress_gone;
-- (its WARNING gives the role's OID, which varies: shown in the TAP test)
SET client_min_messages = error;
SELECT * FROM pg2redis_preview('sec_items', 'insert', '{"id": 1, "secret": "s"}');
RESET client_min_messages;
DELETE FROM pg2redis.rules WHERE command[2] = 'gone:{id}';

-- F10: keys under pg2redis: belong to pg2redis (its stream positions)
SELECT pg2redis_add_rule('sec_items', 'insert', 'SET pg2redis:other:lsn FFFFFFFF/FFFFFFFF');
SELECT pg2redis_add_rule('sec_items', 'insert', 'HSET pg2redis:{id} f 1');
SELECT pg2redis_add_rule('sec_items', 'insert', ARRAY['DEL', 'k', 'pg2redis:x:{id}']);
SELECT pg2redis_add_rule('sec_items', 'insert', ARRAY['MSET', 'a', '1', 'pg2redis:x', '2']);
CREATE TABLE sec_cols (id int PRIMARY KEY, "pg2redis:x:lsn" text);
SELECT pg2redis_add_rule('sec_cols', 'insert', 'MSET k v {pairs:*}');
SELECT pg2redis_add_rule('sec_cols', 'insert', 'HSET k {pairs:*}') > 0 AS field_names_ok;
-- values, channels and other prefixes are fine
SELECT pg2redis_add_rule('sec_items', 'insert', ARRAY['MSET', 'a', 'pg2redis:x']) > 0 AS value_ok;
SELECT pg2redis_add_rule('sec_items', 'insert', 'PUBLISH pg2redis:events {id}') > 0 AS channel_ok;
SELECT pg2redis_add_rule('sec_items', 'insert', 'SET app:pg2redis:{id} 1') > 0 AS other_prefix_ok;
SELECT pg2redis_add_rule('sec_items', 'insert', 'SET PG2REDIS:{id} 1') > 0 AS case_matters;
-- a key that row values put under pg2redis: is a render error (in the
-- stream: a dead letter), never sent
CREATE TABLE sec_keys (k text PRIMARY KEY);
SELECT pg2redis_add_rule('sec_keys', 'insert', 'SET {k} 1') > 0 AS ok;
SELECT * FROM pg2redis_preview('sec_keys', 'insert', '{"k": "app:1"}');
SELECT * FROM pg2redis_preview('sec_keys', 'insert', '{"k": "pg2redis:other:lsn"}');

-- F10: {%pk%} joins with an unescaped ':', as the pgwalk tool does, so
-- two rows can render the same key; {%pk_escaped%} and {esc:col}
-- percent-encode '%', ':', '{' and '}' in each value
CREATE TABLE sec_users (tenant text, name text, note text, PRIMARY KEY (tenant, name));
SELECT pg2redis_add_rule('sec_users', 'insert', 'SET user:{%pk%} 1') > 0 AS ok;
SELECT pg2redis_add_rule('sec_users', 'insert', 'SET user:{%pk_escaped%} 1') > 0 AS ok;
SELECT pg2redis_add_rule('sec_users', 'insert', 'SET u:{esc:tenant}:{esc:name} {esc:note}') > 0 AS ok;
SELECT pg2redis_add_rule('sec_users', 'insert', 'SADD escaped-match {name}',
    '{"column": "name", "op": "=", "value": "{esc:tenant}"}') > 0 AS ok;
SELECT pg2redis_add_rule('sec_users', 'delete', 'DEL user:{%pk_escaped%} u:{esc:tenant}:{esc:name}') > 0 AS ok;
SELECT * FROM pg2redis_preview('sec_users', 'insert', '{"tenant": "a:b", "name": "c"}');
SELECT * FROM pg2redis_preview('sec_users', 'insert', '{"tenant": "a", "name": "b:c"}');
SELECT * FROM pg2redis_preview('sec_users', 'insert', '{"tenant": "100%", "name": "{x}", "note": "a%3Ab"}');
SELECT * FROM pg2redis_preview('sec_users', 'insert', '{"tenant": "x:y", "name": "x%3Ay"}');
SELECT * FROM pg2redis_preview('sec_users', 'delete', NULL, '{"tenant": "é:", "name": ""}');
SELECT * FROM pg2redis_preview('sec_users', 'insert', '{"tenant": "t", "name": null}');
-- validated like the other placeholders
SELECT pg2redis_add_rule('sec_users', 'insert', 'SET k:{esc:nope} 1');
SELECT pg2redis_add_rule('sec_users', 'insert', 'SET k:{esc:tenant,name} 1');
SELECT pg2redis_add_rule('sec_users', 'insert', 'SET k:{esc:*} 1');
SELECT pg2redis_add_rule('sec_users', 'truncate', 'DEL k:{%pk_escaped%}');
SELECT pg2redis_add_rule('sec_users', 'delete', 'DEL k:{esc:note}');
CREATE TABLE sec_nokey (a int, b text);
SELECT pg2redis_add_rule('sec_nokey', 'insert', 'SET k:{%pk_escaped%} 1');

-- F12: while restoring (check_function_bodies = off, as pg_dump scripts
-- and pg_restore set it), rules that need a primary key or replica
-- identity, which are restored later, are kept
CREATE TABLE sec_later (id int NOT NULL, v text);
INSERT INTO pg2redis.rules (relation, op, command) VALUES ('sec_later', 'insert', ARRAY['SET', 'l:{%pk%}', '{v}']);
SET check_function_bodies = off;
INSERT INTO pg2redis.rules (relation, op, command) VALUES
    ('sec_later', 'insert', ARRAY['SET', 'l:{%pk%}', '{v}']),
    ('sec_later', 'delete', ARRAY['DEL', 'l:{id}', '{v}']);
-- every other check still applies
INSERT INTO pg2redis.rules (relation, op, command) VALUES ('sec_later', 'insert', '{FLUSHALL}');
INSERT INTO pg2redis.rules (relation, op, command) VALUES ('sec_later', 'insert', ARRAY['SET', '{nope}', '1']);
-- a restore keeps the recorded writer when the restoring role has its
-- privileges (a superuser has every role's); otherwise the writer is the
-- restoring role
INSERT INTO pg2redis.rules (relation, op, command, created_by)
     VALUES ('sec_items', 'insert', ARRAY['SET', 'restored:{id}', '1'], 'regress_writer')
  RETURNING created_by;
SET ROLE regress_writer;
INSERT INTO pg2redis.rules (relation, op, command, created_by)
     VALUES ('sec_items', 'insert', ARRAY['SET', 'forged:{id}', '1'], 10)
  RETURNING created_by;
RESET ROLE;
-- nor a group role the writer belongs to: the rule would outlive losing it
CREATE ROLE regress_group NOLOGIN;
GRANT regress_group TO regress_writer;
SET ROLE regress_writer;
INSERT INTO pg2redis.rules (relation, op, command, created_by)
     VALUES ('sec_items', 'insert', ARRAY['SET', 'grouped:{id}', '1'], 'regress_group')
  RETURNING created_by;
RESET ROLE;
DELETE FROM pg2redis.rules WHERE command[2] = 'grouped:{id}';
DROP ROLE regress_group;
RESET check_function_bodies;
-- pg2redis_validate_rules() checks every rule as its writer, with nothing
-- skipped, and returns the problems; none once the table has its key
REVOKE SELECT ON sec_items FROM regress_writer;
SELECT r.op, r.command,
       CASE WHEN v.created_by = current_user::regrole THEN '(superuser)'
            ELSE v.created_by::text END AS created_by,
       v.problem
  FROM pg2redis_validate_rules() v JOIN pg2redis.rules r USING (id)
 ORDER BY v.id;
GRANT SELECT ON sec_items TO regress_writer;
ALTER TABLE sec_later ADD PRIMARY KEY (id);
ALTER TABLE sec_later REPLICA IDENTITY FULL;
SELECT * FROM pg2redis_validate_rules();
-- it is revoked from PUBLIC, and reads the rules with the caller's rights
SELECT has_function_privilege('public', 'pg2redis_validate_rules()', 'EXECUTE') AS public_can_execute;

SELECT pg_drop_replication_slot('sec');
DROP TABLE sec_items, sec_rls, sec_cols, sec_keys, sec_users, sec_nokey, sec_later;
DROP OWNED BY regress_writer;
DROP OWNED BY regress_reader;
DROP ROLE regress_writer, regress_reader;
DROP EXTENSION pg2redis;
