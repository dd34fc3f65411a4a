-- How values of common types render: text form for {col} and {pairs},
-- typed JSON for {json}.  Output settings are fixed (ISO dates in UTC)
-- whatever the session's own settings are.
CREATE EXTENSION pg2redis;
SET DateStyle = 'SQL, DMY';
SET TimeZone = 'America/New_York';
SET IntervalStyle = 'sql_standard';
SET extra_float_digits = 0;
SET bytea_output = 'escape';

CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE TYPE pair AS (a int, b text);
CREATE TABLE t (
    id int PRIMARY KEY,
    i2 smallint, i8 bigint, n numeric, f4 real, f8 double precision,
    b boolean, tx text, vc varchar(10), ch char(3),
    j json, jb jsonb,
    ia int[], ta text[], m2 int[][], ba boolean[], na numeric[], ja jsonb[],
    ts timestamp, tz timestamptz, d date, tm time, ttz timetz, iv interval,
    by bytea, u uuid, ip inet, e mood, dm posint, cp pair, o oid
);
SELECT pg2redis_add_rule('t', 'insert', ARRAY['HSET', 't:{id}', '{pairs:*}']);
SELECT pg2redis_add_rule('t', 'insert', ARRAY['SET', 'tj:{id}', '{json:*}']);

-- every column set
CREATE TEMP TABLE full_row AS SELECT $${
    "id": 1, "i2": -32768, "i8": 9223372036854775807,
    "n": 12345678901234567890.123456789, "f4": 1.5, "f8": 0.1,
    "b": true, "tx": "ünïcødé ☃ \"quoted\" \\ back\nline", "vc": "short", "ch": "ab",
    "j": {"k": [1, "two", null]}, "jb": {"z": 1, "a": {"b": false}},
    "ia": [1, 2, 3], "ta": ["a b", null, "c,d", "\"q\""], "m2": [[1, 2], [3, 4]],
    "ba": [true, false], "na": [1.10, 2], "ja": [{"a": 1}, [2]],
    "ts": "2024-02-29 13:14:15.123456", "tz": "2024-02-29 13:14:15+05:30",
    "d": "2024-02-29", "tm": "23:59:59.5", "ttz": "01:02:03+04", "iv": "1 year 2 mons 3 days 04:05:06",
    "by": "\\xdeadbeef", "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "ip": "192.168.0.1/24",
    "e": "happy", "dm": 42, "cp": {"a": 1, "b": "x y"}, "o": 1259
}$$::jsonb AS r;
SELECT unnest(c) FROM full_row, pg2redis_preview('t', 'insert', r) c WHERE c[1] = 'HSET';
SELECT c[3]::jsonb AS json FROM full_row, pg2redis_preview('t', 'insert', r) c WHERE c[1] = 'SET';
-- the JSON text itself, to see exact numbers and embedded json verbatim
SELECT c[3] AS json_text FROM pg2redis_preview('t', 'insert',
    '{"id": 2, "n": 12345678901234567890.123456789, "f8": 1e300, "j": {"k" : [1,  2]}}') c
 WHERE c[1] = 'SET';

-- {json:*} agrees with PostgreSQL's own to_jsonb(), key by key: dates and
-- times in ISO 8601 with T and a +00:00 offset (in UTC), composites as
-- objects, ranges as strings; numbers compare as numbers
CREATE TABLE tr (id int PRIMARY KEY, ts timestamp, tz timestamptz, d date,
    tm time, ttz timetz, cp pair, cpa pair[], r int4range, dr tstzrange,
    inf timestamptz, iv interval, nested jsonb);
CREATE TYPE outer_pair AS (p pair, t timestamptz, arr int[]);
ALTER TABLE tr ADD COLUMN op outer_pair;
SELECT pg2redis_add_rule('tr', 'insert', ARRAY['SET', 'tr:{id}', '{json:*}']);
INSERT INTO tr VALUES (1, '2024-02-29 13:14:15.123456', '2024-02-29 13:14:15+05:30',
    '2024-02-29', '23:59:59.5', '01:02:03+04', ROW(1, 'x "y"'),
    ARRAY[ROW(2, NULL)::pair, NULL], '[1,5)', '[2024-01-01 00:00+00,)',
    'infinity', '1 day', '{"a": [1]}',
    ROW(ROW(3, 'z'), '2000-01-01 00:00:00.5+00', ARRAY[1, NULL]));
-- (to_jsonb follows the session's settings, the rules the fixed ones)
SET DateStyle = 'ISO, YMD';
SET IntervalStyle = 'postgres';
SET TimeZone = 'UTC';
SELECT k, c[3]::jsonb -> k AS rendered, to_jsonb(tr) -> k AS to_jsonb
  FROM tr, pg2redis_preview('tr', 'insert', to_jsonb(tr)) c,
       jsonb_object_keys(to_jsonb(tr)) k
 WHERE c[3]::jsonb -> k IS DISTINCT FROM to_jsonb(tr) -> k
 ORDER BY k;
SELECT c[3] AS json_text FROM tr, pg2redis_preview('tr', 'insert', to_jsonb(tr)) c;
SET DateStyle = 'SQL, DMY';
SET IntervalStyle = 'sql_standard';
SET TimeZone = 'America/New_York';
DROP TABLE tr;
DROP TYPE outer_pair;

-- every column NULL: '' in pairs, null in JSON
SELECT c FROM pg2redis_preview('t', 'insert', '{"id": 3}') c;

-- special floats and numerics are JSON strings (JSON has no such numbers)
SELECT c[3] FROM pg2redis_preview('t', 'insert',
    '{"id": 4, "n": "NaN", "f4": "-Infinity", "f8": "Infinity"}') c WHERE c[1] = 'SET';
-- empty arrays
SELECT c[3] FROM pg2redis_preview('t', 'insert',
    '{"id": 5, "ia": [], "ta": []}') c WHERE c[1] = 'SET';

-- pg2redis.numeric_mode = string keeps numeric and float as JSON strings
ALTER SYSTEM SET pg2redis.numeric_mode = 'string';
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
SHOW pg2redis.numeric_mode;
SELECT c[3] FROM pg2redis_preview('t', 'insert',
    '{"id": 6, "n": 1.10, "f8": 2.5, "i8": 7, "na": [1.5]}') c WHERE c[1] = 'SET';
ALTER SYSTEM RESET pg2redis.numeric_mode;
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
SHOW pg2redis.numeric_mode;

-- The text form of integers, oid, text, varchar, char(n), float8, date,
-- timestamp, timestamptz and jsonb, and of one-dimensional arrays of them,
-- is written by render_text itself (no
-- call through fmgr): it must be what the type's output function writes
-- under the fixed settings, byte for byte, edge values included.  Rows are
-- decoded through a pg2redis slot (the session's own settings differ) and
-- compared with each value's output function (format's %s) under the
-- fixed settings.
CREATE TABLE fp (id int PRIMARY KEY, i2 int2, i4 int4, i8 int8, o oid,
    f8 float8, tx text, vc varchar(5), ch char(4), d date, ts timestamp,
    tz timestamptz, jb jsonb, dm posint, ta text[], ia int[], i8a bigint[],
    tza timestamptz[], da date[], jba jsonb[], vca varchar[], cha char(2)[],
    f8a float8[], dma posint[]);
SELECT pg2redis_add_rule('fp', 'insert', ARRAY['HSET', 'fp:{id}', '{pairs:*}']);
-- Debian's PostgreSQL 15.19+ lists the plugins decoding may load.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_settings WHERE name = 'output_plugin_libraries') THEN
        PERFORM set_config('output_plugin_libraries',
                           current_setting('output_plugin_libraries') || ', pg2redis', false);
    END IF;
END
$$;
SELECT 'init' FROM pg_create_logical_replication_slot('fp_slot', 'pg2redis');
INSERT INTO fp VALUES
  (1, -32768, -2147483648, -9223372036854775808, 0, '-0', '', '', '', '4714-11-24 BC',
   '4714-11-24 00:00:00 BC', '4714-11-24 00:00:00+00 BC', '{}', 1),
  (2, 32767, 2147483647, 9223372036854775807, 4294967295, 'NaN', 'NULL', 'abcde', 'abcd',
   '5874897-12-31', '294276-12-31 23:59:59.999999', '294276-12-31 23:59:59.999999+00', '[]', 2147483647),
  (3, 0, 0, 0, 1, 'Infinity', ' lead and trail ', 'ü☃', 'ü', 'infinity', 'infinity', 'infinity',
   'null', 3),
  (4, -1, -1, -1, 2147483648, '-Infinity', E'tab\there\nnewline "q" \\ {b,c}', 'x y', 'a b',
   '-infinity', '-infinity', '-infinity', '"str \" \\ ☃"', 4),
  (5, 9, 10, 1000000000000000000, 12345, 1e300, 'ünïcødé', '0', '12', '0044-03-15 BC',
   '0044-03-15 12:34:56.5 BC', '0044-03-15 12:34:56.000001+05:30 BC',
   '{"b": [1.50, 1e-7, 100000000000000000000000000000001], "a": {"c": null, "d": true}}', 5),
  (6, 100, 65536, -4611686018427387904, 7, 5e-324, repeat('long ', 20000), NULL, NULL, '2024-02-29',
   '2024-02-29 13:14:15.123456', '2024-02-29 13:14:15.5-08', '1.0', NULL),
  (7, NULL, NULL, NULL, NULL, 0.1, NULL, NULL, NULL, '2000-01-01', '2000-01-01 00:00:00',
   '1999-12-31 23:59:59.999999+00', '[1, "a", {"k": [false]}]', NULL),
  (8, NULL, NULL, NULL, NULL, 1.7976931348623157e308, NULL, NULL, NULL, NULL, NULL,
   '1970-01-01 00:00:00+00', '-0.0', NULL),
  (9, NULL, NULL, NULL, NULL, -2.2250738585072014e-308, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
  (10, NULL, NULL, NULL, NULL, 123456789012345678, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
-- arrays: quoting of every kind of element, NULLs, empty, other lower
-- bounds and more dimensions (array_out's own text)
INSERT INTO fp (id, ta, ia, i8a, tza, da, jba, vca, cha, f8a, dma) VALUES
  (11, ARRAY['plain', '', 'NULL', 'null', 'NuLl', NULL, 'a b', E'tab\t', E'nl\n', E'cr\r',
             'vt' || chr(11), E'ff\f', 'q"uote', E'back\\slash', '{brace', 'brace}', 'com,ma',
             'semi;colon', 'ü☃', 'NULLx', ' '],
   ARRAY[1, NULL, -2147483648, 2147483647], ARRAY[-9223372036854775808, 0],
   ARRAY['2024-02-29 13:14:15.5+02', 'infinity', NULL, '0044-03-15 12:00:00+00 BC']::timestamptz[],
   ARRAY['2024-02-29', '-infinity', '4714-11-24 BC']::date[],
   ARRAY['{"a": "b c"}', 'null', '"x,y"', '[]', NULL]::jsonb[],
   ARRAY['v', 'w x'], ARRAY['a', '', NULL], ARRAY['NaN', '-0', '1e-300', 'Infinity']::float8[],
   ARRAY[1, 2]),
  (12, '{}', '{}', '[0:1]={1,2}', '{}', '[5:5]={2024-01-01}', '{}', '{}', '{}', '{{1,2},{3,4}}',
   '{}'),
  (13, '{{"a b",c},{NULL,""}}', '[2:3]={7,8}', ARRAY[NULL]::bigint[], ARRAY[NULL]::timestamptz[],
   ARRAY[NULL]::date[], '[0:0]={"{}"}', ARRAY[NULL]::varchar[], ARRAY['  ']::char(2)[], NULL, NULL);
BEGIN;
SET LOCAL DateStyle = 'ISO, YMD';
SET LOCAL TimeZone = 'UTC';
SET LOCAL extra_float_digits = 1;
CREATE TEMP TABLE fp_out ON COMMIT DROP AS
  SELECT a->>1 AS key, a->>(2 * k) AS col, a->>(2 * k + 1) AS val
    FROM (SELECT data::jsonb AS a FROM pg_logical_slot_get_changes('fp_slot', NULL, NULL)) c,
         generate_series(1, (jsonb_array_length(a) - 2) / 2) k;
CREATE TEMP TABLE fp_ref ON COMMIT DROP AS
  SELECT 'fp:' || id AS key, col, val FROM fp,
    LATERAL (VALUES ('id', format('%s', id)), ('i2', format('%s', i2)), ('i4', format('%s', i4)),
                    ('i8', format('%s', i8)), ('o', format('%s', o)), ('f8', format('%s', f8)),
                    ('tx', format('%s', tx)), ('vc', format('%s', vc)), ('ch', format('%s', ch)),
                    ('d', format('%s', d)), ('ts', format('%s', ts)), ('tz', format('%s', tz)),
                    ('jb', format('%s', jb)), ('dm', format('%s', dm)), ('ta', format('%s', ta)),
                    ('ia', format('%s', ia)), ('i8a', format('%s', i8a)), ('tza', format('%s', tza)),
                    ('da', format('%s', da)), ('jba', format('%s', jba)), ('vca', format('%s', vca)),
                    ('cha', format('%s', cha)), ('f8a', format('%s', f8a)),
                    ('dma', format('%s', dma))) v(col, val);
-- what was rendered (long values cut short, '' left out)
SELECT key, col, CASE WHEN length(val) > 200 THEN left(val, 20) || '… (' || length(val) || ')' ELSE val END
  FROM fp_out WHERE val <> '' ORDER BY split_part(key, ':', 2)::int, col;
-- and what differs from the output functions: nothing (NULL renders as '')
SELECT r.key, r.col, r.val AS output_function, o.val AS rendered
  FROM fp_ref r FULL JOIN fp_out o USING (key, col)
 WHERE o.val IS DISTINCT FROM coalesce(r.val, '');
COMMIT;
SELECT pg_drop_replication_slot('fp_slot');
DROP TABLE fp;

-- the session's own settings are untouched
SHOW DateStyle;
SHOW TimeZone;

DROP TABLE t;
DROP TYPE mood, pair;
DROP DOMAIN posint;
DROP EXTENSION pg2redis;
