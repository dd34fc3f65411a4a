/* pg2redis--1.0--1.1.sql — from pg2redis 1.0 to 1.1 */

\echo Use "ALTER EXTENSION pg2redis UPDATE TO '1.1'" to load this file. \quit

/*
 * 1.1 adds: the writer of each rule (rules.created_by), checked again when
 * rules are loaded; the progress of a snapshot's rows to read again
 * (snapshots.retry_keys, key_index); the key of a dead letter's row, and
 * pg2redis_redrive() (dead_letters.key_index, key, redriven_at,
 * redrive_request; snapshots.keys_only); pg2redis_validate_rules(),
 * pg2redis_verify(), pg2redis_relation_stats (function and view);
 * pg2redis_status().lag_time; the roles pg2redis_admin and
 * pg2redis_monitor; triggers and event triggers that check snapshot
 * requests, refuse TRUNCATE of the rules, check rules after schema changes
 * and refuse DROP EXTENSION while Redis lags; new bodies of the import,
 * export and drop functions; and privileges revoked from PUBLIC.
 *
 * Rules written under 1.0 have no recorded writer: they are recorded as
 * written by the extension's owner (the worker applied them with superuser
 * rights before, and still does).  Run SELECT * FROM
 * pg2redis_validate_rules() afterwards: checks added in 1.1 (keys under
 * pg2redis:, row-level security, ...) are not applied to existing rules
 * by this script.
 */
DO $$
BEGIN
    EXECUTE pg_catalog.format(
        'ALTER TABLE pg2redis.rules ADD COLUMN created_by regrole NOT NULL DEFAULT %s',
        (SELECT e.extowner FROM pg_catalog.pg_extension e WHERE e.extname = 'pg2redis'));
END
$$;
ALTER TABLE pg2redis.rules ALTER COLUMN created_by DROP DEFAULT;

ALTER TABLE pg2redis.snapshots ADD COLUMN retry_keys text[];
ALTER TABLE pg2redis.snapshots ADD COLUMN key_index oid;
ALTER TABLE pg2redis.snapshots ADD COLUMN resume_lsn pg_lsn;
ALTER TABLE pg2redis.snapshots ADD COLUMN resume_keys text[];
ALTER TABLE pg2redis.snapshots ADD COLUMN keys_only boolean NOT NULL DEFAULT false;
ALTER TABLE pg2redis.dead_letters ADD COLUMN key_index oid;
ALTER TABLE pg2redis.dead_letters ADD COLUMN key text[];
ALTER TABLE pg2redis.dead_letters ADD COLUMN redriven_at timestamptz;
ALTER TABLE pg2redis.dead_letters ADD COLUMN redrive_request bigint;
REVOKE ALL ON SCHEMA pg2redis FROM PUBLIC;
COMMENT ON TABLE pg2redis.rules IS 'pg2redis mapping rules: one Redis command template per row';
COMMENT ON TABLE pg2redis.dead_letters IS 'pg2redis commands that could not be rendered or that Redis rejected';
COMMENT ON TABLE pg2redis.snapshots IS 'pg2redis snapshot requests and their progress';


/*
 * A request written directly (pg2redis_admin may INSERT) gets the same
 * check as pg2redis_snapshot(): SELECT on the table, or on every mapped
 * table for a request of all; and starts from nothing, whatever progress it
 * claims.  A keys_only request keeps its keys (retry_keys, key_index),
 * checked for shape here; the worker turns them into values of the key's
 * types as the table's owner, and reads them as the owner.  The worker's
 * own writes are UPDATEs.
 */
CREATE OR REPLACE FUNCTION pg2redis.check_snapshot_request()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    missing regclass;
BEGIN
    IF NEW.relation IS NOT NULL THEN
        -- a partition's rows are read through its parents with theirs
        IF NOT has_table_privilege(NEW.relation, 'SELECT')
           AND NOT EXISTS (SELECT FROM pg_partition_ancestors(NEW.relation) a
                            WHERE has_table_privilege(a.relid, 'SELECT')) THEN
            missing := NEW.relation;
        END IF;
    ELSE
        SELECT r.relation INTO missing FROM pg2redis.rules r
         WHERE NOT has_table_privilege(r.relation, 'SELECT') LIMIT 1;
    END IF;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'permission denied to snapshot table %', missing
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'A snapshot request needs SELECT on the table (on every mapped table for a request of all).';
    END IF;
    NEW.state := 'pending';
    NEW.rows := 0;
    NEW.requested_at := now();
    NEW.started_at := NULL;
    NEW.finished_at := NULL;
    NEW.error := NULL;
    NEW.current_relation := NULL;
    NEW.last_key := NULL;
    NEW.resume_lsn := NULL;
    NEW.resume_keys := NULL;
    IF NEW.keys_only THEN
        DECLARE
            width integer;
        BEGIN
            -- the keys of one table, in the key columns of one of its indexes
            SELECT i.indnkeyatts INTO width
              FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indrelid
             WHERE i.indexrelid = NEW.key_index AND i.indrelid = NEW.relation
               AND c.relkind = 'r';
            IF width IS NULL OR array_ndims(NEW.retry_keys) IS DISTINCT FROM 2
               OR array_length(NEW.retry_keys, 2) <> width THEN
                RAISE EXCEPTION 'invalid keys-only snapshot request'
                    USING ERRCODE = 'invalid_parameter_value',
                          DETAIL = 'A keys-only request names a table (not a partitioned one), one of its indexes in key_index, and keys in retry_keys: a two-dimensional array, one row of the index''s key columns per key.';
            END IF;
            -- the worker holds a request's keys in memory at once
            IF array_length(NEW.retry_keys, 1) > coalesce(
                   pg_catalog.current_setting('pg2redis.snapshot_batch_size', true)::integer, 10000)
               OR pg_catalog.pg_column_size(NEW.retry_keys) > 64 * 1024 * 1024 THEN
                RAISE EXCEPTION 'too many keys in one keys-only snapshot request'
                    USING ERRCODE = 'program_limit_exceeded',
                          DETAIL = 'A keys-only request holds at most pg2redis.snapshot_batch_size keys and 64 MB.',
                          HINT = 'Use pg2redis_redrive(), which splits the keys into several requests.';
            END IF;
        END;
    ELSE
        NEW.retry_keys := NULL;
        NEW.key_index := NULL;
    END IF;
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS check_request ON pg2redis.snapshots;
CREATE TRIGGER check_request BEFORE INSERT ON pg2redis.snapshots
    FOR EACH ROW EXECUTE FUNCTION pg2redis.check_snapshot_request();
COMMENT ON TABLE pg2redis.snapshot_filters IS 'pg2redis snapshot WHERE clauses per table';
CREATE OR REPLACE FUNCTION pg2redis.validate_snapshot_filter()
RETURNS trigger
LANGUAGE C
AS 'MODULE_PATHNAME', 'pg2redis_validate_snapshot_filter';
DROP TRIGGER IF EXISTS validate ON pg2redis.snapshot_filters;
CREATE TRIGGER validate
    BEFORE INSERT OR UPDATE ON pg2redis.snapshot_filters
    FOR EACH ROW EXECUTE FUNCTION pg2redis.validate_snapshot_filter();
DROP VIEW IF EXISTS pg2redis_snapshots;
CREATE VIEW pg2redis_snapshots AS
    SELECT s.id, s.relation, s.state, s.rows, s.requested_at, s.started_at,
           s.finished_at, s.error,
           p.tables_total, p.tables_done, p.rows_estimate,
           round(r.rate::numeric, 1) AS rows_per_second,
           CASE WHEN s.state = 'running' AND r.rate > 0 AND p.rows_estimate > s.rows
                THEN pg_catalog.make_interval(
                         secs => round((p.rows_estimate - s.rows) / r.rate))
           END AS eta
      FROM pg2redis.snapshots s
     CROSS JOIN LATERAL (
        SELECT count(*)::integer AS tables_total,
               count(*) FILTER (WHERE s.state = 'done'
                                   OR l.relid < s.current_relation::oid)::integer AS tables_done,
               coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint AS rows_estimate
          FROM (SELECT m.rel AS relid
                  FROM (SELECT s.relation AS rel WHERE s.relation IS NOT NULL
                        UNION
                        SELECT ru.relation FROM pg2redis.rules ru
                         WHERE s.relation IS NULL AND ru.enabled) m
                -- a plain table is its own leaf; pg_partition_tree() gives
                -- a partitioned table's
                UNION
                SELECT t.relid
                  FROM (SELECT s.relation AS rel WHERE s.relation IS NOT NULL
                        UNION
                        SELECT ru.relation FROM pg2redis.rules ru
                         WHERE s.relation IS NULL AND ru.enabled) m,
                       LATERAL pg_catalog.pg_partition_tree(m.rel) t
                 WHERE t.isleaf) l
          JOIN pg_catalog.pg_class c ON c.oid = l.relid AND c.relkind = 'r') p
     CROSS JOIN LATERAL (
        SELECT CASE WHEN s.started_at IS NOT NULL
                         AND coalesce(s.finished_at, now()) > s.started_at
                    THEN s.rows / extract(epoch FROM coalesce(s.finished_at, now()) - s.started_at)
               END AS rate) r;
COMMENT ON VIEW pg2redis_snapshots IS 'pg2redis snapshot requests: state, rows, timings, error, progress (tables, rows of an estimate, rate, ETA)';


/* Rule validation (C): refuses a bad rule with an error naming it. */
CREATE OR REPLACE FUNCTION pg2redis.validate_rule()
RETURNS trigger
LANGUAGE C
AS 'MODULE_PATHNAME', 'pg2redis_validate_rule';
DROP TRIGGER IF EXISTS validate ON pg2redis.rules;
CREATE TRIGGER validate
    BEFORE INSERT OR UPDATE ON pg2redis.rules
    FOR EACH ROW EXECUTE FUNCTION pg2redis.validate_rule();


/* Rule cache invalidation (C): every backend and the decoder reload rules. */
CREATE OR REPLACE FUNCTION pg2redis.rules_changed()
RETURNS trigger
LANGUAGE C
AS 'MODULE_PATHNAME', 'pg2redis_rules_changed';
DROP TRIGGER IF EXISTS invalidate ON pg2redis.rules;
CREATE TRIGGER invalidate
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON pg2redis.rules
    FOR EACH STATEMENT EXECUTE FUNCTION pg2redis.rules_changed();


/*
 * No TRUNCATE of the rules: the decoder reads them as of each decoded
 * transaction, and TRUNCATE gives the table new, empty storage, so changes
 * committed before it but decoded after it (the worker paused, behind, or
 * waiting for Redis) would find no rule and never be sent.  DELETE keeps
 * the row versions those transactions still read.
 */
CREATE OR REPLACE FUNCTION pg2redis.refuse_truncate()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'cannot truncate table pg2redis.rules'
        USING ERRCODE = 'feature_not_supported',
              DETAIL = 'The worker reads the rules as of each transaction it decodes; TRUNCATE would remove them for changes committed before it that are not in Redis yet.',
              HINT = 'Use DELETE FROM pg2redis.rules.';
END
$$;
DROP TRIGGER IF EXISTS refuse_truncate ON pg2redis.rules;
CREATE TRIGGER refuse_truncate
    BEFORE TRUNCATE ON pg2redis.rules
    FOR EACH STATEMENT EXECUTE FUNCTION pg2redis.refuse_truncate();


/*
 * DROP EXTENSION pg2redis waits (up to pg2redis.redis_timeout) for the
 * stream to apply every change committed before it, and is refused if it
 * did not: transactions decoded after the rules table is gone could not be
 * mapped.  ALTER EVENT TRIGGER pg2redis_check_drop DISABLE lets a DROP
 * through anyway; the worker then skips those changes with a WARNING.
 */
CREATE OR REPLACE FUNCTION pg2redis.check_drop()
RETURNS event_trigger
LANGUAGE C
AS 'MODULE_PATHNAME', 'pg2redis_check_drop';
CREATE EVENT TRIGGER pg2redis_check_drop ON ddl_command_start
    WHEN TAG IN ('DROP EXTENSION')
    EXECUTE FUNCTION pg2redis.check_drop();


/*
 * Rules of a dropped table go with it, so that no rule names an OID that
 * may later be reused by another table.
 */
CREATE OR REPLACE FUNCTION pg2redis.drop_rules_of_dropped_tables()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM pg2redis.rules r
     USING pg_catalog.pg_event_trigger_dropped_objects() d
     WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
       AND d.objsubid = 0
       AND d.objid = r.relation::pg_catalog.oid;
    DELETE FROM pg2redis.snapshot_filters f
     USING pg_catalog.pg_event_trigger_dropped_objects() d
     WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
       AND d.objsubid = 0
       AND d.objid = f.relation::pg_catalog.oid;
END
$$;


/*
 * Schema changes are checked when they happen: after ALTER TABLE, DROP INDEX
 * or REVOKE, the enabled rules of the tables concerned (every rule, for a
 * DROP INDEX or a REVOKE) are checked again as their writers, and a rule
 * that fails is disabled with a WARNING naming it, or the change refused,
 * by pg2redis.ddl_check.  A restore (check_function_bodies off) is not
 * checked: it creates the indexes rules need after the rules.
 */
CREATE OR REPLACE FUNCTION pg2redis.check_ddl()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    mode text := coalesce(current_setting('pg2redis.ddl_check', true), 'disable');
    everything boolean := tg_tag <> 'ALTER TABLE';
    bad record;
BEGIN
    IF mode = 'off' OR NOT current_setting('check_function_bodies')::boolean THEN
        RETURN;
    END IF;
    FOR bad IN
        SELECT v.id, v.relation, v.op, v.problem,
               pg_catalog.array_to_string(r.command, ' ') AS command
          FROM @extschema@.pg2redis_validate_rules() v
          JOIN pg2redis.rules r ON r.id = v.id
         WHERE r.enabled
           AND (everything OR v.relation::oid IN (
                -- the tables changed, and the partitioned tables above them
                SELECT c.objid
                  FROM pg_catalog.pg_event_trigger_ddl_commands() c
                 WHERE c.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                UNION
                SELECT a.relid
                  FROM pg_catalog.pg_event_trigger_ddl_commands() c,
                       LATERAL pg_catalog.pg_partition_ancestors(c.objid) a
                 WHERE c.classid = 'pg_catalog.pg_class'::pg_catalog.regclass))
         ORDER BY v.id
    LOOP
        IF mode = 'error' THEN
            RAISE EXCEPTION 'this change breaks pg2redis rule % (% on %)',
                  bad.id, bad.op, bad.relation
                  USING ERRCODE = 'dependent_objects_still_exist',
                        DETAIL = pg_catalog.format('The rule %s: %s.', bad.command, bad.problem),
                        HINT = 'Change or delete the rule first, or disable it: UPDATE pg2redis.rules SET enabled = false WHERE id = ' || bad.id || '.';
        END IF;
        UPDATE pg2redis.rules SET enabled = false WHERE id = bad.id;
        RAISE WARNING 'pg2redis rule % (% on %) disabled: %',
              bad.id, bad.op, bad.relation, bad.problem
              USING ERRCODE = 'dependent_objects_still_exist',
                    DETAIL = pg_catalog.format('The rule was: %s. Its changes are no longer sent to Redis.', bad.command),
                    HINT = 'Fix the rule and enable it again, then run pg2redis_snapshot() on the table to bring Redis up to date.';
    END LOOP;
END
$$;
CREATE EVENT TRIGGER pg2redis_check_ddl ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'DROP INDEX', 'REVOKE')
    EXECUTE FUNCTION pg2redis.check_ddl();
CREATE OR REPLACE FUNCTION pg2redis_add_rule(relation regclass, op text, command text[],
                                  condition jsonb DEFAULT NULL)
RETURNS bigint
LANGUAGE C
AS 'MODULE_PATHNAME', 'pg2redis_add_rule_array';
COMMENT ON FUNCTION pg2redis_add_rule(regclass, text, text[], jsonb)
    IS 'add a validated pg2redis rule; returns its id';
CREATE OR REPLACE FUNCTION pg2redis_add_rule(relation regclass, op text, command text,
                                  condition jsonb DEFAULT NULL)
RETURNS bigint
LANGUAGE C
AS 'MODULE_PATHNAME', 'pg2redis_add_rule_text';
COMMENT ON FUNCTION pg2redis_add_rule(regclass, text, text, jsonb)
    IS 'add a validated pg2redis rule written as in redis-cli; returns its id';


/*
 * pg2redis_validate_rules: every rule checked again, as its writer, with
 * nothing skipped; one row per rule that fails.  Run it after a restore,
 * which skips the checks that need primary keys and replica identities.
 */
CREATE OR REPLACE FUNCTION pg2redis_validate_rules(
    OUT id bigint,
    OUT relation regclass,
    OUT op text,
    OUT created_by regrole,
    OUT problem text)
RETURNS SETOF record
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'pg2redis_validate_rules';
COMMENT ON FUNCTION pg2redis_validate_rules()
    IS 'check every pg2redis rule again, as its writer; one row per rule that fails';
CREATE OR REPLACE FUNCTION pg2redis_split_command(command text)
RETURNS text[]
LANGUAGE C STRICT IMMUTABLE
AS 'MODULE_PATHNAME', 'pg2redis_split_command';
COMMENT ON FUNCTION pg2redis_split_command(text)
    IS 'split a command written as in redis-cli into its arguments';
CREATE OR REPLACE FUNCTION pg2redis_key_slot(key text)
RETURNS integer
LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'pg2redis_key_slot';
COMMENT ON FUNCTION pg2redis_key_slot(text)
    IS 'the Redis Cluster hash slot (0..16383) of a key, hash tags honoured';
CREATE OR REPLACE FUNCTION pg2redis_command_slot(command text[])
RETURNS integer
LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'pg2redis_command_slot';
COMMENT ON FUNCTION pg2redis_command_slot(text[])
    IS 'the Redis Cluster hash slot of a command''s keys; NULL without keys';
CREATE OR REPLACE FUNCTION pg2redis_preview(relation regclass, op text, new_row jsonb,
                                 old_row jsonb DEFAULT NULL)
RETURNS SETOF text[]
LANGUAGE C
AS 'MODULE_PATHNAME', 'pg2redis_preview';
COMMENT ON FUNCTION pg2redis_preview(regclass, text, jsonb, jsonb)
    IS 'the Redis commands the current rules would send for a change; touches no Redis';


/*
 * pg2redis_import: the pgwalk pg2redis YAML config, converted to JSON, as
 * rules.  All or nothing: any error rolls the whole import back, and says
 * which table, op and command it is about.  Keys pg2redis cannot honour
 * are named in a NOTICE.  The config is the whole mapping of the tables it
 * names: their rules are replaced, so importing the same config again
 * leaves the same rules.  A table given no command at all gets the tool's
 * default mapping; redis.commitTimeColumn adds the commit time to every
 * {pairs:…} (as a field of that name).
 */
CREATE OR REPLACE FUNCTION pg2redis_import(config jsonb)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    created   integer := 0;
    item      jsonb;
    tname     text;
    tbody     jsonb;
    rel       regclass;
    k         text;
    op        text;
    cmds      jsonb;
    cmd       jsonb;
    idx       integer;
    argv      text[];
    cond      jsonb;
    msg       text;
    state     text;
    hint      text;
    entry     jsonb;
    filter    text;
    group_    jsonb;
    enabled   boolean;
    replaced  integer;
    seen      oid[] := '{}';
    ctcol     text;
    newargv   text[];
    a         text;
    rule_id   bigint;
BEGIN
    IF config IS NULL OR jsonb_typeof(config) <> 'object' THEN
        RAISE EXCEPTION 'pg2redis_import needs a JSON object'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Convert the YAML config to JSON, e.g. with yq -o json config.yaml.';
    END IF;
    FOR k IN SELECT jsonb_object_keys(config) LOOP
        IF k NOT IN ('tables', 'snapshot', 'redis') THEN
            RAISE NOTICE 'pg2redis_import ignores top-level key "%"', k
                USING HINT = 'Connection settings go to pg2redis.redis_url and pg2redis.database.';
        END IF;
    END LOOP;
    IF jsonb_typeof(config->'redis') = 'object' THEN
        FOR k IN SELECT jsonb_object_keys(config->'redis') LOOP
            IF k = 'commitTimeColumn' THEN
                ctcol := config->'redis'->>k;
            ELSE
                RAISE NOTICE 'pg2redis_import ignores key "%" of "redis"', k
                    USING HINT = 'Connection settings go to pg2redis.redis_url and pg2redis.database.';
            END IF;
        END LOOP;
    END IF;
    IF config ? 'tables' AND jsonb_typeof(config->'tables') <> 'array' THEN
        RAISE EXCEPTION '"tables" must be a list'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    FOR item IN SELECT value FROM jsonb_array_elements(coalesce(config->'tables', '[]')) LOOP
        IF jsonb_typeof(item) <> 'object' OR (SELECT count(*) FROM jsonb_object_keys(item)) <> 1 THEN
            RAISE EXCEPTION 'each item of "tables" must be an object with one key, the table name: %', item
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        SELECT key, value INTO tname, tbody FROM jsonb_each(item);
        rel := to_regclass(tname);
        IF rel IS NULL THEN
            RAISE EXCEPTION 'table "%" of the config does not exist', tname
                USING ERRCODE = 'undefined_table',
                      HINT = 'Create the table before importing its mapping.';
        END IF;
        IF jsonb_typeof(tbody) = 'null' THEN
            tbody := '{}';
        END IF;
        IF jsonb_typeof(tbody) <> 'object' THEN
            RAISE EXCEPTION 'the mapping of table "%" must be an object', tname
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        -- the config replaces the table's mapping (once per import)
        IF NOT rel::oid = ANY (seen) THEN
            seen := seen || rel::oid;
            DELETE FROM pg2redis.rules r WHERE r.relation = rel;
            GET DIAGNOSTICS replaced = ROW_COUNT;
            IF replaced > 0 THEN
                RAISE NOTICE 'pg2redis_import replaces the % rules of table "%"', replaced, tname;
            END IF;
        END IF;
        -- no command at all: the tool's default mapping, a hash per row
        IF NOT (tbody ?| ARRAY['commands', 'insert', 'update', 'delete', 'truncate', 'snapshot']) THEN
            tbody := tbody || jsonb_build_object(
                'insert', jsonb_build_object('commands', jsonb_build_array(
                    jsonb_build_array('HSET', '{%schema%}.{%table%}:{%pk%}', '{pairs:*}'))),
                'update', jsonb_build_object('commands', jsonb_build_array(
                    jsonb_build_array('HSET', '{%schema%}.{%table%}:{%pk%}', '{pairs:*}'))),
                'delete', jsonb_build_object('commands', jsonb_build_array(
                    jsonb_build_array('DEL', '{%schema%}.{%table%}:{%pk%}'))));
        END IF;
        FOR k IN SELECT jsonb_object_keys(tbody) LOOP
            IF k NOT IN ('commands', 'insert', 'update', 'delete', 'truncate', 'snapshot') THEN
                RAISE NOTICE 'pg2redis_import ignores key "%" of table "%"', k, tname;
            END IF;
        END LOOP;

        FOREACH op IN ARRAY ARRAY['insert', 'update', 'delete', 'truncate', 'snapshot'] LOOP
            -- shared commands apply to insert, update and delete, before the op's own
            cmds := '[]';
            IF op IN ('insert', 'update', 'delete') AND tbody ? 'commands' THEN
                IF jsonb_typeof(tbody->'commands') <> 'array' THEN
                    RAISE EXCEPTION '"commands" of table "%" must be a list', tname
                        USING ERRCODE = 'invalid_parameter_value';
                END IF;
                cmds := tbody->'commands';
            END IF;
            IF tbody ? op THEN
                IF jsonb_typeof(tbody->op) <> 'object' THEN
                    RAISE EXCEPTION '"%" of table "%" must be an object with "commands"', op, tname
                        USING ERRCODE = 'invalid_parameter_value';
                END IF;
                FOR k IN SELECT jsonb_object_keys(tbody->op) LOOP
                    IF k <> 'commands' THEN
                        RAISE NOTICE 'pg2redis_import ignores key "%" of %.%', k, tname, op;
                    END IF;
                END LOOP;
                IF jsonb_typeof(coalesce(tbody->op->'commands', '[]')) <> 'array' THEN
                    RAISE EXCEPTION '"commands" of %.% must be a list', tname, op
                        USING ERRCODE = 'invalid_parameter_value';
                END IF;
                cmds := cmds || coalesce(tbody->op->'commands', '[]');
            END IF;

            idx := 0;
            FOR group_ IN SELECT value FROM jsonb_array_elements(cmds) LOOP
                idx := idx + 1;
                cond := NULL;
                enabled := true;
                cmd := group_;
                IF jsonb_typeof(group_) = 'object' THEN
                    FOR k IN SELECT jsonb_object_keys(group_) LOOP
                        IF k NOT IN ('command', 'condition', 'enabled') THEN
                            RAISE NOTICE 'pg2redis_import ignores key "%" of %.% command %', k, tname, op, idx;
                        END IF;
                    END LOOP;
                    cond := group_->'condition';
                    cmd := group_->'command';
                    IF jsonb_typeof(group_->'enabled') = 'boolean' THEN
                        enabled := (group_->>'enabled')::boolean;
                    END IF;
                END IF;
                -- several commands under one condition: [[...], [...]]
                IF jsonb_typeof(cmd) = 'array' AND jsonb_array_length(cmd) > 0
                   AND jsonb_typeof(cmd->0) = 'array' THEN
                    cmds := cmd;
                ELSE
                    cmds := jsonb_build_array(cmd);
                END IF;
                FOR cmd IN SELECT value FROM jsonb_array_elements(cmds) LOOP
                    IF cmd IS NULL OR jsonb_typeof(cmd) <> 'array'
                       OR EXISTS (SELECT FROM jsonb_array_elements(cmd) e
                                   WHERE jsonb_typeof(e) IN ('object', 'array', 'null')) THEN
                        RAISE EXCEPTION 'table "%", % command %: a command is a list of arguments, or {"command": [...] or [[...], ...], "condition": {...}}', tname, op, idx
                            USING ERRCODE = 'invalid_parameter_value';
                    END IF;
                    argv := ARRAY(SELECT jsonb_array_elements_text(cmd));
                    IF ctcol IS NOT NULL THEN
                        -- commitTimeColumn: the commit time after each {pairs:…}
                        newargv := '{}';
                        FOREACH a IN ARRAY argv LOOP
                            newargv := newargv || a;
                            IF a ~ '^\{pairs:[^}]*\}$' THEN
                                newargv := newargv || ARRAY[ctcol, '{%commit_time%}'];
                            ELSIF a ~ '\{json:' THEN
                                RAISE NOTICE 'table "%", % command %: commitTimeColumn is not added inside {json:…}', tname, op, idx
                                    USING HINT = 'Put {%commit_time%} in an argument or field of its own.';
                            END IF;
                        END LOOP;
                        argv := newargv;
                    END IF;
                    BEGIN
                        rule_id := @extschema@.pg2redis_add_rule(rel, op, argv, cond);
                        IF NOT enabled THEN
                            UPDATE pg2redis.rules SET enabled = false WHERE id = rule_id;
                        END IF;
                    EXCEPTION WHEN OTHERS THEN
                        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, state = RETURNED_SQLSTATE,
                                                hint = PG_EXCEPTION_HINT;
                        RAISE EXCEPTION 'table "%", % command % (%): %', tname, op, idx, cmd, msg
                            USING ERRCODE = state, HINT = coalesce(hint, '');
                    END;
                    created := created + 1;
                END LOOP;
            END LOOP;
        END LOOP;
    END LOOP;

    IF config ? 'snapshot' THEN
        FOR k IN SELECT jsonb_object_keys(config->'snapshot') LOOP
            IF k <> 'config' THEN
                RAISE NOTICE 'pg2redis_import ignores snapshot key "%"', k
                    USING HINT = 'Snapshots run in the worker; see pg2redis.snapshot_batch_size.';
            END IF;
        END LOOP;
        FOR entry IN SELECT value FROM jsonb_array_elements(coalesce(config->'snapshot'->'config', '[]')) LOOP
            rel := to_regclass(entry->>'name');
            IF rel IS NULL THEN
                RAISE EXCEPTION 'snapshot config names table "%", which does not exist', entry->>'name'
                    USING ERRCODE = 'undefined_table';
            END IF;
            FOR k IN SELECT jsonb_object_keys(entry) LOOP
                IF k NOT IN ('name', 'type', 'where', 'query') THEN
                    RAISE NOTICE 'pg2redis_import ignores key "%" of the snapshot config of "%"', k, entry->>'name';
                END IF;
            END LOOP;
            IF coalesce(entry->>'type', 'full') = 'full' THEN
                CONTINUE;
            ELSIF entry->>'type' <> 'query' THEN
                RAISE EXCEPTION 'snapshot type "%" of table "%" is unknown', entry->>'type', entry->>'name'
                    USING ERRCODE = 'invalid_parameter_value', HINT = 'Use full or query.';
            END IF;
            filter := entry->>'where';
            IF filter IS NULL AND entry ? 'query' THEN
                IF entry->>'query' ~* '^\s*(select|with)\M' THEN
                    -- a whole query: keep its WHERE clause
                    filter := substring(entry->>'query' FROM '(?i)\mwhere\M(.*)$');
                ELSE
                    -- the tool's documented form: the WHERE clause alone
                    filter := entry->>'query';
                END IF;
                filter := rtrim(btrim(filter), ';');
            END IF;
            IF filter IS NULL OR filter = '' THEN
                RAISE EXCEPTION 'snapshot config of table "%" has type query but no WHERE clause', entry->>'name'
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = 'Give "where": "<condition>", or a "query" with a WHERE clause.';
            END IF;
            INSERT INTO pg2redis.snapshot_filters (relation, filter) VALUES (rel, filter)
                ON CONFLICT (relation) DO UPDATE SET filter = EXCLUDED.filter;
        END LOOP;
    END IF;
    RETURN created;
END
$$;
COMMENT ON FUNCTION pg2redis_import(jsonb)
    IS 'import a pgwalk pg2redis config (its YAML as JSON) as rules; all or nothing';


/*
 * pg2redis_export: the rules (disabled ones marked "enabled": false) and
 * snapshot filters, in the shape pg2redis_import takes.
 */
CREATE OR REPLACE FUNCTION pg2redis_export()
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH r AS (
        SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS tname,
               min(r.id) OVER (PARTITION BY r.relation) AS first_id,
               r.op, r.position, r.id,
               CASE WHEN r.condition IS NULL AND r.enabled THEN to_jsonb(r.command)
                    ELSE jsonb_build_object('command', r.command)
                         || CASE WHEN r.condition IS NOT NULL
                                 THEN jsonb_build_object('condition', r.condition)
                                 ELSE '{}' END
                         || CASE WHEN NOT r.enabled THEN '{"enabled": false}'::jsonb
                                 ELSE '{}' END
               END AS cmd
          FROM pg2redis.rules r
          JOIN pg_class c ON c.oid = r.relation
          JOIN pg_namespace n ON n.oid = c.relnamespace
    ), ops AS (
        SELECT tname, first_id, op,
               jsonb_build_object('commands', jsonb_agg(cmd ORDER BY position, id)) AS body
          FROM r GROUP BY tname, first_id, op
    ), tables AS (
        SELECT first_id, jsonb_build_object(tname, jsonb_object_agg(op, body)) AS item
          FROM ops GROUP BY tname, first_id
    )
    SELECT jsonb_strip_nulls(jsonb_build_object(
        'tables', coalesce((SELECT jsonb_agg(item ORDER BY first_id) FROM tables), '[]'),
        'snapshot', (SELECT jsonb_build_object('config', jsonb_agg(
                         jsonb_build_object('name', quote_ident(n.nspname) || '.' || quote_ident(c.relname),
                                            'type', 'query', 'where', f.filter)
                         ORDER BY f.relation))
                       FROM pg2redis.snapshot_filters f
                       JOIN pg_class c ON c.oid = f.relation
                       JOIN pg_namespace n ON n.oid = c.relnamespace
                     HAVING count(*) > 0)))
$$;
COMMENT ON FUNCTION pg2redis_export()
    IS 'the rules and snapshot filters, in the JSON shape pg2redis_import takes';
DROP FUNCTION pg2redis_status();
CREATE OR REPLACE FUNCTION pg2redis_status(
    OUT worker_pid integer,
    OUT state text,
    OUT slot_name text,
    OUT redis_url text,
    OUT redis_connected boolean,
    OUT confirmed_lsn pg_lsn,
    OUT server_lsn pg_lsn,
    OUT lag_bytes bigint,
    OUT last_commit_time timestamptz,
    OUT transactions bigint,
    OUT changes bigint,
    OUT commands bigint,
    OUT dead_letters bigint,
    OUT retries bigint,
    OUT last_error text,
    OUT last_error_time timestamptz,
    OUT applied_lsn pg_lsn,
    OUT lag_time interval,
    OUT load_tables_total integer,
    OUT load_tables_done integer,
    OUT load_rows bigint,
    OUT load_rows_estimate bigint,
    OUT load_rows_per_second double precision,
    OUT load_eta interval)
RETURNS record
LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'pg2redis_status';
CREATE OR REPLACE FUNCTION pg2redis_relation_stats(
    OUT relation regclass,
    OUT changes bigint,
    OUT commands bigint,
    OUT dead_letters bigint,
    OUT last_applied timestamptz)
RETURNS SETOF record
LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'pg2redis_relation_stats';
COMMENT ON FUNCTION pg2redis_relation_stats()
    IS 'per table since the server started: changes decoded, commands applied, dead letters, last applied';
DROP VIEW IF EXISTS pg2redis_relation_stats;
CREATE VIEW pg2redis_relation_stats AS
    SELECT * FROM pg2redis_relation_stats();
COMMENT ON VIEW pg2redis_relation_stats
    IS 'per table since the server started: changes decoded, commands applied, dead letters, last applied';
COMMENT ON FUNCTION pg2redis_status()
    IS 'state of the pg2redis worker, its slot and its Redis connection';
CREATE OR REPLACE FUNCTION pg2redis_wait(timeout interval DEFAULT '30s')
RETURNS boolean
LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'pg2redis_wait';
COMMENT ON FUNCTION pg2redis_wait(interval)
    IS 'wait until every transaction committed before the call is applied in Redis';
CREATE OR REPLACE FUNCTION pg2redis_redis(VARIADIC args text[])
RETURNS jsonb
LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'pg2redis_redis';
COMMENT ON FUNCTION pg2redis_redis(text[])
    IS 'run one Redis command on the configured server and return its reply as JSON';
CREATE OR REPLACE FUNCTION pg2redis_snapshot(relation regclass DEFAULT NULL)
RETURNS bigint
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'pg2redis_snapshot';
COMMENT ON FUNCTION pg2redis_snapshot(regclass)
    IS 'request a consistent snapshot of one mapped table (or all) while streaming goes on; returns the request id';
CREATE OR REPLACE FUNCTION pg2redis_resync()
RETURNS void
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'pg2redis_resync';
COMMENT ON FUNCTION pg2redis_resync()
    IS 'drop the Redis position and the slot, recreate it and load every mapped table again';
CREATE FUNCTION pg2redis_redrive(ids bigint[])
RETURNS TABLE (request bigint, relation regclass, keys integer)
LANGUAGE C VOLATILE STRICT
AS 'MODULE_PATHNAME', 'pg2redis_redrive';

COMMENT ON FUNCTION pg2redis_redrive(bigint[])
    IS 'read the rows of these dead letters again by key and apply the current rules, in stream order; returns the keys-only snapshot requests queued';

CREATE FUNCTION pg2redis_redrive(relation regclass, since timestamptz DEFAULT NULL)
RETURNS TABLE (request bigint, relation regclass, keys integer)
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'pg2redis_redrive_relation';

COMMENT ON FUNCTION pg2redis_redrive(regclass, timestamptz)
    IS 'redrive the dead letters of a table (and its partitions) not redriven yet, recorded since a time (or all); dead letters without a key are left, with a WARNING';

CREATE OR REPLACE FUNCTION pg2redis_verify(relation regclass DEFAULT NULL, sample int DEFAULT NULL)
RETURNS TABLE (relation regclass, key text, problem text, expected text, found text)
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'pg2redis_verify';
COMMENT ON FUNCTION pg2redis_verify(regclass, int)
    IS 'compare Redis with what the rules make of the rows: missing keys, differing values, orphan keys; a summary row per table';
REVOKE ALL ON FUNCTION pg2redis_status() FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis_relation_stats() FROM PUBLIC;
REVOKE ALL ON pg2redis_relation_stats FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis_verify(regclass, int) FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis_wait(interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis_redis(text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis_resync() FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis_snapshot(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis_redrive(bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis_redrive(regclass, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis_import(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis_export() FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis.validate_snapshot_filter() FROM PUBLIC;
REVOKE ALL ON pg2redis_snapshots FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis_add_rule(regclass, text, text[], jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis_add_rule(regclass, text, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis_validate_rules() FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis_split_command(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis_key_slot(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis_command_slot(text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis_preview(regclass, text, jsonb, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis.validate_rule() FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis.rules_changed() FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis.check_snapshot_request() FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis.check_ddl() FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis.drop_rules_of_dropped_tables() FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis.refuse_truncate() FROM PUBLIC;
REVOKE ALL ON FUNCTION pg2redis.check_drop() FROM PUBLIC;


/*
 * Predefined roles.  Roles belong to the cluster, not to this database: they
 * are created only when missing (CREATE EXTENSION in a second database, or
 * again after DROP EXTENSION, finds them), they are not members of the
 * extension, and DROP EXTENSION leaves them.  What they may do here is
 * granted below, per database.
 *
 * pg2redis_monitor: watch the stream (status, wait, snapshot requests,
 * pg2redis_verify(), which shows keys and values only of tables the caller
 * may SELECT); no other row values (dead letters, pg2redis_redis()).
 * pg2redis_admin: manage the mapping (rules, snapshots, resync,
 * import/export, preview, dead letters) and run data commands with
 * pg2redis_redis(); includes pg2redis_monitor.  Not snapshot filters: the
 * worker runs a filter as the table's owner, so a filter on someone else's
 * table would run its functions with that owner's rights.
 */
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'pg2redis_monitor') THEN
        CREATE ROLE pg2redis_monitor NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'pg2redis_admin') THEN
        CREATE ROLE pg2redis_admin NOLOGIN;
        GRANT pg2redis_monitor TO pg2redis_admin;
    END IF;
END
$$;
GRANT EXECUTE ON FUNCTION pg2redis_status() TO pg2redis_monitor;
GRANT EXECUTE ON FUNCTION pg2redis_relation_stats() TO pg2redis_monitor;
GRANT SELECT ON pg2redis_relation_stats TO pg2redis_monitor;
GRANT EXECUTE ON FUNCTION pg2redis_wait(interval) TO pg2redis_monitor;
GRANT EXECUTE ON FUNCTION pg2redis_verify(regclass, int) TO pg2redis_monitor;
GRANT SELECT ON pg2redis_snapshots TO pg2redis_monitor;
GRANT USAGE ON SCHEMA pg2redis TO pg2redis_admin;
GRANT SELECT, INSERT, UPDATE, DELETE ON pg2redis.rules TO pg2redis_admin;
GRANT USAGE, SELECT ON SEQUENCE pg2redis.rules_id_seq TO pg2redis_admin;
GRANT SELECT, DELETE ON pg2redis.dead_letters TO pg2redis_admin;
GRANT UPDATE (redriven_at, redrive_request) ON pg2redis.dead_letters TO pg2redis_admin;
GRANT SELECT, INSERT, DELETE ON pg2redis.snapshots TO pg2redis_admin;
GRANT USAGE, SELECT ON SEQUENCE pg2redis.snapshots_id_seq TO pg2redis_admin;
GRANT SELECT ON pg2redis.snapshot_filters TO pg2redis_admin;
GRANT EXECUTE ON FUNCTION pg2redis_add_rule(regclass, text, text[], jsonb) TO pg2redis_admin;
GRANT EXECUTE ON FUNCTION pg2redis_add_rule(regclass, text, text, jsonb) TO pg2redis_admin;
GRANT EXECUTE ON FUNCTION pg2redis_split_command(text) TO pg2redis_admin;
GRANT EXECUTE ON FUNCTION pg2redis_key_slot(text) TO pg2redis_admin;
GRANT EXECUTE ON FUNCTION pg2redis_command_slot(text[]) TO pg2redis_admin;
GRANT EXECUTE ON FUNCTION pg2redis_preview(regclass, text, jsonb, jsonb) TO pg2redis_admin;
GRANT EXECUTE ON FUNCTION pg2redis_import(jsonb) TO pg2redis_admin;
GRANT EXECUTE ON FUNCTION pg2redis_export() TO pg2redis_admin;
GRANT EXECUTE ON FUNCTION pg2redis_snapshot(regclass) TO pg2redis_admin;
GRANT EXECUTE ON FUNCTION pg2redis_redrive(bigint[]) TO pg2redis_admin;
GRANT EXECUTE ON FUNCTION pg2redis_redrive(regclass, timestamptz) TO pg2redis_admin;
GRANT EXECUTE ON FUNCTION pg2redis_resync() TO pg2redis_admin;
GRANT EXECUTE ON FUNCTION pg2redis_redis(text[]) TO pg2redis_admin;
GRANT EXECUTE ON FUNCTION pg2redis_validate_rules() TO pg2redis_admin;
