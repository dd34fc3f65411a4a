-- Redis Cluster hash slots: pg2redis_key_slot() and pg2redis_command_slot().
-- The expected values are those of Redis's CLUSTER KEYSLOT (t/100_cluster_slots.pl
-- compares many more keys against a live cluster-enabled Redis).
CREATE EXTENSION pg2redis;

SELECT k, pg2redis_key_slot(k)
FROM (VALUES ('foo'), ('bar'), ('hello'), (''), ('123456789'),
             ('{user1000}.following'), ('{user1000}.followers'),
             ('foo{}{bar}'), ('foo{{bar}}zap'), ('foo{bar}{zap}'),
             ('{}'), ('{'), ('}{'), ('a{b'), ('{a}'), ('a'),
             ('produkt:é')) AS v(k);

-- hash tags put related keys in one slot
SELECT pg2redis_key_slot('{order:1}:items') = pg2redis_key_slot('{order:1}:total') AS same_slot,
       pg2redis_key_slot('order:1:items') = pg2redis_key_slot('order:1:total') AS untagged_same_slot;

-- every slot is in range
SELECT min(s), max(s), count(DISTINCT s) > 16000 AS spread
FROM (SELECT pg2redis_key_slot('key:' || i) AS s FROM generate_series(1, 100000) i) x;

-- commands: the slot of their keys
SELECT pg2redis_command_slot('{SET,foo,1}');
SELECT pg2redis_command_slot(ARRAY['hset', '{user1000}.info', 'name', 'x']);
SELECT pg2redis_command_slot(ARRAY['DEL', '{order:1}:items', '{order:1}:total']);
SELECT pg2redis_command_slot(ARRAY['MSET', '{a}1', 'x', '{a}2', 'y']);
SELECT pg2redis_command_slot('{PUBLISH,channel,message}') IS NULL AS no_key;
SELECT c, pg2redis_command_slot(c)
FROM pg2redis_split_command('XADD {o:7}:events * status paid') AS c;

-- refused: keys in different slots, unknown commands, malformed input
SELECT pg2redis_command_slot('{DEL,foo,bar}');
SELECT pg2redis_command_slot('{MSET,foo,1,bar,2}');
SELECT pg2redis_command_slot('{GETDEL,foo}');
SELECT pg2redis_command_slot('{}');
SELECT pg2redis_command_slot('{SET,foo,NULL}');
SELECT pg2redis_command_slot('{{SET,foo},{x,y}}');
SELECT pg2redis_key_slot(NULL) IS NULL AS strict;
DROP EXTENSION pg2redis;
