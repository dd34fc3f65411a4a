-- A fuzz pass over everything a rule writer or a config controls: templates,
-- conditions, pgwalk import configs, redis-cli command lines, keys, and the
-- rows they are rendered with (through pg2redis_preview() and through the
-- output plugin).  Inputs are random and mutated from a corpus of valid
-- ones, with a fixed seed and a bounded count.  Each input must be either
-- accepted or refused with a clear error: an SQLSTATE of its own (class XX,
-- "internal error", is what elog() gives a can't-happen: a defect) and a
-- message.  A crash ends the suite with "server closed the connection".
-- PG2REDIS_FUZZ_CASES (psql variable fuzz_cases) sets the count per phase.
CREATE EXTENSION pg2redis;
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_settings WHERE name = 'output_plugin_libraries') THEN
        PERFORM set_config('output_plugin_libraries',
                           current_setting('output_plugin_libraries') || ', pg2redis', false);
    END IF;
END
$$;
SET client_min_messages = warning;
\getenv fuzz_cases PG2REDIS_FUZZ_CASES
\if :{?fuzz_cases}
\else
\set fuzz_cases 1500
\endif
SELECT set_config('fz.cases', :'fuzz_cases', false) IS NOT NULL AS cases_set;
SELECT setseed(0.4242);

CREATE SCHEMA fz;
CREATE TABLE fz.t (id int PRIMARY KEY, a text, b numeric, c jsonb, d int[],
                   e timestamptz, f boolean, "we:ird}" text);
ALTER TABLE fz.t REPLICA IDENTITY FULL;
CREATE TABLE fz.k (x text, y text, v int, PRIMARY KEY (x, y));

-- What each case ended with: 'ok', or the SQLSTATE and message of its error.
CREATE TABLE fz.outcome (phase text, input text, sqlstate text, message text);

-- pick(arr) is a random element of arr.
CREATE FUNCTION fz.pick(arr text[]) RETURNS text LANGUAGE sql AS
$$ SELECT arr[1 + floor(random() * cardinality(arr))::int] $$;

-- mutate(s) applies 0-3 random edits to s: insert a token, delete or
-- duplicate a range, replace a character.
CREATE FUNCTION fz.mutate(s text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    tokens text[] := ARRAY['{', '}', '{{', '}}', ':', '*', ',', '%', '"', '\', ' ',
        '{pairs:', '{json:', '{old:', '{diff:', '{%pk%}', '{%', '%}', '{%xid%}',
        '{%lsn%}', '{%commit_time%}', '{%schema%}', '{%table%}', '{%op%}', 'id', 'a',
        'b', 'c', 'd', 'we:ird}', 'nope', E'\t', E'\n', E'\r\n', chr(1), chr(127),
        chr(233), chr(28450), chr(128640), 'pg2redis:', repeat('x', 300), '0', '-1',
        '9223372036854775808', 'NaN', '1e400'];
    n int := floor(random() * 4)::int;
    p int;
    l int;
BEGIN
    FOR i IN 1..n LOOP
        p := 1 + floor(random() * (length(s) + 1))::int;
        CASE floor(random() * 4)::int
        WHEN 0 THEN s := substr(s, 1, p - 1) || fz.pick(tokens) || substr(s, p);
        WHEN 1 THEN l := 1 + floor(random() * 4)::int;
                    s := substr(s, 1, p - 1) || substr(s, p + l);
        WHEN 2 THEN l := 1 + floor(random() * 6)::int;
                    s := substr(s, 1, p - 1) || substr(s, p, l) || substr(s, p);
        ELSE s := substr(s, 1, p - 1) || chr(32 + floor(random() * 95)::int) || substr(s, p + 1);
        END CASE;
    END LOOP;
    RETURN s;
END $$;

-- scalar() is a random JSON scalar or placeholder-bearing string.
CREATE FUNCTION fz.scalar() RETURNS jsonb LANGUAGE sql AS $$
    SELECT (ARRAY['1', '-7', '3.25', '1e308', '"x"', '""', 'true', 'false', 'null',
                  '"{old:a}"', '"{id}"', '"{nope}"', '"1e400"', '"NaN"', '[]', '{}',
                  '[1, "a"]', '{"k": 1}', '"a\u0001b"'])[1 + floor(random() * 19)::int]::jsonb
$$;

-- cond(depth) is a random condition: a leaf, a combination, or garbage.
CREATE FUNCTION fz.cond(depth int) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    ops text[] := ARRAY['=', '<>', '!=', '<', '<=', '>', '>=', 'in', 'not_in',
        'is_null', 'is_not_null', 'is_distinct_from', 'changed', 'like', '', '=='];
    cols text[] := ARRAY['id', 'a', 'b', 'c', 'd', 'e', 'f', 'we:ird}', 'nope', '', '*',
        'pairs:*', 'id}{a'];
    r int := floor(random() * 10)::int;
    j jsonb;
BEGIN
    IF depth > 3 THEN r := r % 4; END IF;
    IF r <= 3 THEN
        j := jsonb_build_object('column', fz.pick(cols), 'op', fz.pick(ops));
        IF random() < 0.7 THEN j := j || jsonb_build_object('value', fz.scalar()); END IF;
        IF random() < 0.3 THEN
            j := j || jsonb_build_object('values', jsonb_build_array(fz.scalar(), fz.scalar()));
        END IF;
        IF random() < 0.2 THEN j := j || jsonb_build_object('old', fz.scalar()); END IF;
        IF random() < 0.1 THEN j := j || jsonb_build_object(fz.mutate('column'), 1); END IF;
        RETURN j;
    ELSIF r = 4 THEN RETURN jsonb_build_object('all', jsonb_build_array(fz.cond(depth + 1), fz.cond(depth + 1)));
    ELSIF r = 5 THEN RETURN jsonb_build_object('any', jsonb_build_array(fz.cond(depth + 1)));
    ELSIF r = 6 THEN RETURN jsonb_build_object('not', fz.cond(depth + 1));
    ELSIF r = 7 THEN RETURN jsonb_build_object('all', '[]'::jsonb);
    ELSIF r = 8 THEN RETURN fz.scalar();
    ELSE RETURN jsonb_build_object(fz.pick(ARRAY['all', 'any', 'not', 'x']), fz.scalar());
    END IF;
END $$;

-- command() is a random template: a command name (sometimes mutated) and
-- 1-5 arguments, some mutated, from a corpus of valid ones.
CREATE FUNCTION fz.command() RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
    names text[] := ARRAY['SET', 'HSET', 'SADD', 'ZADD', 'DEL', 'INCRBY', 'HINCRBY',
        'XADD', 'PUBLISH', 'MSET', 'EXPIRE', 'JSON.SET', 'LPUSH', 'UNLINK', 'SREM',
        'ZINCRBY', 'SETEX', 'HDEL', 'FLUSHALL', 'CONFIG', 'EVAL', 'hset', 'NOPE'];
    args text[] := ARRAY['item:{id}', '{pairs:*}', '{pairs:a,b}', '{json:*}',
        '{json:a,c,d}', '{diff:b}', '{old:a}', '{%pk%}', 'k:{%schema%}.{%table%}:{%op%}',
        '{id}', '{a}', '{b}', '{c}', '{d}', '{e}', '{f}', '{we:ird}}', '{{lit}}', '*',
        '$', '.', '60', '{%xid%}', '{%lsn%}', '{%commit_time%}', 'pg2redis:x:lsn'];
    cmd text[];
BEGIN
    cmd := ARRAY[CASE WHEN random() < 0.15 THEN fz.mutate(fz.pick(names)) ELSE fz.pick(names) END];
    FOR i IN 0..floor(random() * 5)::int LOOP
        cmd := cmd || CASE WHEN random() < 0.35 THEN fz.mutate(fz.pick(args)) ELSE fz.pick(args) END;
    END LOOP;
    RETURN cmd;
END $$;

-- arow() is a random row of fz.t as jsonb: right types, wrong types, NULLs,
-- missing and unknown keys.
CREATE FUNCTION fz.arow() RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    k text;
    j jsonb := '{}';
    vals jsonb[] := ARRAY['1', '2147483648', '"x:y"', '"{a}"', '3.5', 'null', 'true',
        '"2026-01-01 00:00+00"', '[1,2]', '[[1],[2]]', '{"k": [1]}', '"\u00e9\ud83d\ude80"',
        '"NaN"', '"-Infinity"', '""']::jsonb[];
    cols text[] := ARRAY['id', 'a', 'b', 'c', 'd', 'e', 'f', 'we:ird}', 'nope'];
BEGIN
    FOREACH k IN ARRAY cols LOOP
        IF random() < (CASE WHEN k = 'nope' THEN 0.1 ELSE 0.8 END) THEN
            j := j || jsonb_build_object(k, vals[1 + floor(random() * cardinality(vals))::int]);
        END IF;
    END LOOP;
    RETURN j;
END $$;

-- note(phase, input, state, msg) records one case's outcome.
CREATE FUNCTION fz.note(phase text, input text, state text, msg text) RETURNS void
LANGUAGE sql AS $$ INSERT INTO fz.outcome VALUES (phase, left(input, 500), state, msg) $$;

-- Rules: written through pg2redis_add_rule(); an accepted rule is previewed
-- with random rows (insert, update with an old row, delete) and rolled back.
DO $$
DECLARE
    rel regclass; op text; cmd text[]; cond jsonb; st text; msg text; input text;
    accepted bool;
    pst text[]; pmsg text[];    -- preview outcomes, kept across the rollback
BEGIN
    FOR i IN 1..current_setting('fz.cases')::int LOOP
        rel := CASE WHEN random() < 0.9 THEN 'fz.t' ELSE 'fz.k' END;
        op := fz.pick(ARRAY['insert', 'insert', 'update', 'update', 'delete', 'truncate',
                            'snapshot', 'upsert']);
        cmd := fz.command();
        cond := CASE WHEN random() < 0.4 THEN NULL ELSE fz.cond(0) END;
        input := format('%s %s %s %s', rel, op, cmd, cond);
        accepted := false; pst := '{}'; pmsg := '{}';
        BEGIN
            PERFORM pg2redis_add_rule(rel, op, cmd, cond);
            accepted := true;
            FOR j IN 1..3 LOOP
                BEGIN
                    PERFORM count(*) FROM pg2redis_preview(rel, op, fz.arow(),
                        CASE WHEN op IN ('update', 'delete') THEN fz.arow() END);
                    st := NULL; msg := NULL;
                EXCEPTION WHEN OTHERS THEN
                    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
                END;
                pst := pst || st; pmsg := pmsg || msg;
            END LOOP;
            RAISE EXCEPTION USING ERRCODE = 'P0099';
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
        END;
        IF accepted THEN
            PERFORM fz.note('rules', input, NULL, NULL);
            FOR j IN 1..cardinality(pst) LOOP
                PERFORM fz.note('preview', input, pst[j], pmsg[j]);
            END LOOP;
        ELSE
            PERFORM fz.note('rules', input, st, msg);
        END IF;
    END LOOP;
END $$;

-- redis-cli command lines, split by pg2redis_split_command().
DO $$
DECLARE
    corpus text[] := ARRAY['HSET item:{id} {pairs:*}', 'SET "a b" "c \" d"', 'DEL k',
        'XADD s * "{json:*}"', '"unterminated', 'SET a\ b c', '   ', 'ZADD z {b} {id}'];
    line text; st text; msg text;
BEGIN
    FOR i IN 1..current_setting('fz.cases')::int LOOP
        line := fz.mutate(fz.mutate(fz.pick(corpus)));
        BEGIN
            PERFORM pg2redis_split_command(line);
            st := NULL; msg := NULL;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
        END;
        PERFORM fz.note('split', line, st, msg);
    END LOOP;
END $$;

-- Keys and commands for the cluster hash slot functions.
DO $$
DECLARE
    cmd text[]; st text; msg text;
BEGIN
    FOR i IN 1..current_setting('fz.cases')::int LOOP
        cmd := fz.command();
        BEGIN
            PERFORM pg2redis_key_slot(cmd[1 + floor(random() * cardinality(cmd))::int]);
            PERFORM pg2redis_command_slot(cmd);
            st := NULL; msg := NULL;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
        END;
        PERFORM fz.note('slots', cmd::text, st, msg);
    END LOOP;
END $$;

-- pgwalk configs for pg2redis_import(): random structures over the keys of
-- the format, with mutated commands, conditions and snapshot queries;
-- rolled back when accepted.
CREATE FUNCTION fz.cmds() RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    j jsonb := '[]';
BEGIN
    FOR i IN 1..floor(random() * 3)::int LOOP
        j := j || CASE floor(random() * 4)::int
            WHEN 0 THEN jsonb_build_array(to_jsonb(fz.command()))
            WHEN 1 THEN jsonb_build_array(jsonb_build_object('command', to_jsonb(fz.command()),
                                                             'condition', fz.cond(0)))
            WHEN 2 THEN jsonb_build_array(fz.scalar())
            ELSE jsonb_build_array(jsonb_build_object(fz.mutate('command'), fz.scalar())) END;
    END LOOP;
    RETURN j;
END $$;
CREATE FUNCTION fz.config() RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    op text;
    t jsonb := '{}';
    snap jsonb;
BEGIN
    IF random() < 0.5 THEN t := t || jsonb_build_object('commands', fz.cmds()); END IF;
    FOREACH op IN ARRAY ARRAY['insert', 'update', 'delete', 'snapshot', 'upsert'] LOOP
        IF random() < 0.3 THEN
            t := t || jsonb_build_object(op, CASE WHEN random() < 0.8
                THEN jsonb_build_object('commands', fz.cmds()) ELSE fz.scalar() END);
        END IF;
    END LOOP;
    snap := jsonb_build_object('config', jsonb_build_array(jsonb_build_object(
        'table', fz.pick(ARRAY['fz.t', 'fz.k', 'nope', 'fz.t; DROP TABLE fz.t']),
        'type', fz.pick(ARRAY['query', 'full', 'x']),
        'query', fz.mutate(fz.pick(ARRAY['SELECT * FROM fz.t WHERE a = ''x''',
            'SELECT * FROM fz.t WHERE b > 1) UNION ALL SELECT NULL WHERE (true',
            'SELECT * FROM fz.t WHERE f) --', 'SELECT * FROM fz.t',
            'SELECT * FROM fz.t WHERE (SELECT true)'])))));
    RETURN jsonb_build_object('tables', jsonb_build_array(jsonb_build_object(
               fz.pick(ARRAY['fz.t', 'fz.k', 'fz.nope', 'fz.t.x', '', 'public.fz']), t)))
        || CASE WHEN random() < 0.3 THEN jsonb_build_object('snapshot', snap) ELSE '{}' END
        || CASE WHEN random() < 0.2 THEN jsonb_build_object(fz.mutate('tables'), fz.scalar()) ELSE '{}' END;
END $$;
DO $$
DECLARE
    cfg jsonb; st text; msg text;
BEGIN
    FOR i IN 1..current_setting('fz.cases')::int LOOP
        cfg := CASE WHEN random() < 0.1 THEN fz.scalar() ELSE fz.config() END;
        BEGIN
            PERFORM pg2redis_import(cfg);
            RAISE EXCEPTION USING ERRCODE = 'P0099';
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
            PERFORM fz.note('import', cfg::text, CASE WHEN st = 'P0099' THEN NULL ELSE st END, msg);
        END;
    END LOOP;
END $$;

-- The output plugin: up to 200 accepted random rules stay, random changes
-- are decoded through a pg2redis slot.  Render errors are rows of their own
-- ({"error": ...}); anything else must not fail the decoding.
DO $$
DECLARE
    kept int := 0;
BEGIN
    FOR i IN 1..current_setting('fz.cases')::int LOOP
        EXIT WHEN kept >= 200;
        BEGIN
            PERFORM pg2redis_add_rule('fz.t', fz.pick(ARRAY['insert', 'update', 'delete', 'truncate']),
                                      fz.command(), CASE WHEN random() < 0.5 THEN NULL ELSE fz.cond(0) END);
            kept := kept + 1;
        EXCEPTION WHEN OTHERS THEN NULL;
        END;
    END LOOP;
END $$;
SELECT 'init' FROM pg_create_logical_replication_slot('fz', 'pg2redis');
INSERT INTO fz.t SELECT g, CASE WHEN g % 7 = 0 THEN NULL ELSE 'a:' || g || chr(233) END, g / 3.0,
    jsonb_build_object('g', g), ARRAY[g, -g], '2026-01-01'::timestamptz + g * interval '1 hour',
    g % 2 = 0, repeat('w', g % 5) FROM generate_series(1, 300) g;
UPDATE fz.t SET b = b * -2, a = NULL WHERE id % 3 = 0;
UPDATE fz.t SET id = id + 1000 WHERE id % 11 = 0;
UPDATE fz.t SET a = repeat('big', 5000) WHERE id % 50 = 1;
UPDATE fz.t SET f = NOT f WHERE id % 50 = 1;
DELETE FROM fz.t WHERE id % 5 = 0;
TRUNCATE fz.t;
SELECT count(*) > 0 AS decoded FROM pg_logical_slot_get_changes('fz', NULL, NULL);
SELECT pg_drop_replication_slot('fz');

-- Every case was accepted or refused with an SQLSTATE that is not an
-- internal error, and a message; each phase had both outcomes.
SELECT phase,
       count(*) = CASE phase WHEN 'preview'    -- three rows per accepted rule
           THEN 3 * (SELECT count(*) FROM fz.outcome WHERE phase = 'rules' AND sqlstate IS NULL)
           ELSE :fuzz_cases END AS all_cases_ran,
       count(*) FILTER (WHERE sqlstate IS NULL) > 0 AS some_accepted,
       count(*) FILTER (WHERE sqlstate IS NOT NULL) > 0 AS some_refused,
       count(*) FILTER (WHERE sqlstate LIKE 'XX%' OR sqlstate = '' OR
                        (sqlstate IS NOT NULL AND coalesce(message, '') = '')) AS unclear_errors
  FROM fz.outcome GROUP BY phase ORDER BY phase;
-- the unclear ones, if any, to debug
SELECT phase, input, sqlstate, message FROM fz.outcome
 WHERE sqlstate LIKE 'XX%' OR (sqlstate IS NOT NULL AND coalesce(message, '') = '')
 ORDER BY phase, input LIMIT 20;

DROP SCHEMA fz CASCADE;
DROP EXTENSION pg2redis;
RESET client_min_messages;
