-- A run belongs to the process that opened it. That process holds a session-level advisory
-- lock, key (1398361682 = 'SYNR', id mod 2^31) in the two-integer form, on a session of its own from
-- the INSERT of the run row (same transaction) until the row is closed. PostgreSQL releases a
-- session's locks when the session ends, so a run whose process is gone (kill -9, OOM, a host
-- lost once TCP keepalive gives up) is known at once: `syncd status` shows it `interrupted`,
-- and the next run start closes it and gives the windows it was reading back (`pending`,
-- stored pages kept). Before, a killed run showed `running` for 6 hours and its windows for
-- ever.

CREATE FUNCTION syncd.run_is_live(run_row_id bigint) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT 1 FROM pg_catalog.pg_locks l
        WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
          AND l.database = (SELECT oid FROM pg_catalog.pg_database
                            WHERE datname = current_database())
          AND l.classid = 1398361682::oid
          AND l.objid = (run_row_id % 2147483648)::oid)
$$;
COMMENT ON FUNCTION syncd.run_is_live(bigint) IS
    'True while the process that opened the syncd.sync_runs row with this id holds its '
    'advisory lock (1398361682, id mod 2^31): its session is alive.';

ALTER TABLE syncd.windows ADD COLUMN run_id uuid;
COMMENT ON COLUMN syncd.windows.run_id IS
    'The run (syncd.sync_runs.run_id) that last started reading the window. A running window '
    'whose run is gone is given back at the next start: pending, pages_done kept.';

CREATE INDEX sync_runs_running_idx ON syncd.sync_runs (id) WHERE status = 'running';
