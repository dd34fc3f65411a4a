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

-- the session's own settings are untouched
SHOW DateStyle;
SHOW TimeZone;

DROP TABLE t;
DROP TYPE mood, pair;
DROP DOMAIN posint;
DROP EXTENSION pg2redis;
