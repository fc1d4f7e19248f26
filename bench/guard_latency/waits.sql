-- bench/guard_latency_all.sh WAITS=1: every ~20 ms, what each busy session waits for (not idle, not
-- waiting for its client or sleeping) and every lock request not granted; one '|'-separated line each.
SELECT to_char(clock_timestamp(), 'HH24:MI:SS.MS') AS t, 'act' AS k, pid::text, application_name, coalesce(wait_event_type,'-') || ':' || coalesce(wait_event,'-') AS w, left(regexp_replace(coalesce(query,''), '\s+', ' ', 'g'), 50) AS q
  FROM pg_stat_activity WHERE state <> 'idle' AND pid <> pg_backend_pid() AND backend_type IN ('client backend','autovacuum worker','checkpointer','walwriter')
       AND wait_event_type IS NOT NULL AND wait_event_type NOT IN ('Client', 'Activity') AND wait_event IS DISTINCT FROM 'PgSleep'
UNION ALL
SELECT to_char(clock_timestamp(), 'HH24:MI:SS.MS'), 'lock', l.pid::text, a.application_name, l.mode, coalesce(l.relation::regclass::text, l.locktype) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE NOT l.granted
\watch 0.02
