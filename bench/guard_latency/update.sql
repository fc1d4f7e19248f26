-- The concurrent writer: one single-row UPDATE per transaction, a random row.
-- pgbench substitutes :rows (-D rows=N) and :id.
\set id random(1, :rows)
UPDATE big SET n = n + 1 WHERE id = :id;
