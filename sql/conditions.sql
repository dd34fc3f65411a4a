-- Every op of the condition language, through pg2redis_preview().
CREATE EXTENSION pg2redis;
CREATE TABLE c (id int PRIMARY KEY, status text, qty int, price numeric, flag boolean, note text);
ALTER TABLE c REPLICA IDENTITY FULL;

-- One rule per condition; each rule's command names the condition, so the
-- preview lists the conditions that hold.
CREATE FUNCTION cond(op text, cond jsonb) RETURNS void LANGUAGE sql AS $$
    SELECT pg2redis_add_rule('c', op,
        ARRAY['SET', 'k', replace(replace(cond::text, '{', '{{'), '}', '}}')], cond)
$$;
CREATE FUNCTION holds(op text, new jsonb, old jsonb DEFAULT NULL) RETURNS SETOF text LANGUAGE sql AS $$
    SELECT p[3] FROM pg2redis_preview('c', op, new, old) p
$$;

SELECT cond('insert', '{"column": "status", "op": "=", "value": "new"}');
SELECT cond('insert', '{"column": "status", "op": "<>", "value": "new"}');
SELECT cond('insert', '{"column": "status", "op": "!=", "value": "new"}');
SELECT cond('insert', '{"column": "qty", "op": "<", "value": 10}');
SELECT cond('insert', '{"column": "qty", "op": "<=", "value": "9"}');
SELECT cond('insert', '{"column": "qty", "op": ">", "value": 9}');
SELECT cond('insert', '{"column": "qty", "op": ">=", "value": 10}');
SELECT cond('insert', '{"column": "price", "op": "=", "value": 1.5}');
SELECT cond('insert', '{"column": "price", "op": ">", "value": "1e0"}');
SELECT cond('insert', '{"column": "flag", "op": "=", "value": true}');
SELECT cond('insert', '{"column": "status", "op": "in", "values": ["new", "paid"]}');
SELECT cond('insert', '{"column": "status", "op": "not_in", "values": ["new", "paid"]}');
SELECT cond('insert', '{"column": "qty", "op": "in", "values": [1, 2, 10]}');
SELECT cond('insert', '{"column": "note", "op": "is_null"}');
SELECT cond('insert', '{"column": "note", "op": "is_not_null"}');
SELECT cond('insert', '{"column": "note", "op": "is_distinct_from", "value": "x"}');
SELECT cond('insert', '{"column": "status", "op": "=", "value": "{note}"}');
SELECT cond('insert', '{"all": [{"column": "qty", "op": ">", "value": 1}, {"column": "status", "op": "=", "value": "new"}]}');
SELECT cond('insert', '{"any": [{"column": "qty", "op": ">", "value": 100}, {"column": "status", "op": "=", "value": "new"}]}');
SELECT cond('insert', '{"not": {"column": "status", "op": "=", "value": "new"}}');

-- status new, qty 10 (numeric compare: 10 > 9 though "10" < "9" as text)
SELECT holds('insert', '{"id": 1, "status": "new", "qty": 10, "price": 1.50, "flag": true}');
-- status paid, qty 2, note x: a different set holds
SELECT holds('insert', '{"id": 1, "status": "paid", "qty": 2, "price": 0.5, "flag": false, "note": "x"}');
-- NULL status: comparisons with NULL are false, not_in included
SELECT holds('insert', '{"id": 1, "qty": 0}');
-- text compares when either side is not a number
SELECT holds('insert', '{"id": 1, "status": "paid", "note": "paid", "qty": 1}');

-- "old" and "changed" in update rules
DELETE FROM pg2redis.rules;
SELECT cond('update', '{"column": "status", "op": "changed"}');
SELECT cond('update', '{"column": "qty", "op": "changed"}');
SELECT cond('update', '{"column": "status", "op": "=", "value": "new", "old": true}');
SELECT cond('update', '{"column": "status", "op": "is_distinct_from", "value": "{old:status}"}');
SELECT cond('update', '{"column": "note", "op": "is_null", "old": true}');
SELECT cond('update', '{"column": "note", "op": "changed"}');
SELECT holds('update', '{"id": 1, "status": "paid", "qty": 3}', '{"id": 1, "status": "new", "qty": 3}');
SELECT holds('update', '{"id": 1, "status": "new", "qty": 4, "note": "n"}', '{"id": 1, "status": "new", "qty": 3}');
-- changed is null-safe: NULL to NULL is no change, NULL to a value is one
SELECT holds('update', '{"id": 1, "status": "x"}', '{"id": 1, "status": "x"}');

-- conditions on delete rules read the old row
DELETE FROM pg2redis.rules;
SELECT cond('delete', '{"column": "status", "op": "=", "value": "paid"}');
SELECT holds('delete', NULL, '{"id": 1, "status": "paid"}');
SELECT holds('delete', NULL, '{"id": 1, "status": "new"}');

-- text that looks numeric but that numeric_in refuses (a second sign, an
-- exponent beyond 1000) compares as text: never an error, which in the
-- decoder would stop the stream
DELETE FROM pg2redis.rules;
SELECT cond('insert', '{"column": "note", "op": ">", "value": "5"}');
SELECT n, (SELECT count(*) FROM holds('insert', jsonb_build_object('id', 1, 'note', n))) AS holds
FROM unnest(ARRAY['+-5', '++5', '1e5000', '1e-2000', '1e01001', '+6', '1e1000', '1E-1000', '1e0999', '4']) n;
-- and {diff:…} of such text is a render error, not a crash
SELECT pg2redis_add_rule('c', 'update', 'INCRBYFLOAT d {diff:note}');
SELECT pg2redis_preview('c', 'update', '{"id": 1, "note": "+-5"}', '{"id": 1, "note": "1"}');
SELECT pg2redis_preview('c', 'update', '{"id": 1, "note": "1e5000"}', '{"id": 1, "note": "1"}');
SELECT pg2redis_preview('c', 'update', '{"id": 1, "note": "+7"}', '{"id": 1, "note": "1e0"}');

DROP FUNCTION cond(text, jsonb);
DROP FUNCTION holds(text, jsonb, jsonb);
DROP TABLE c;
DROP EXTENSION pg2redis;
