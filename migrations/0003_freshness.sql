-- Freshness for BI dashboards ("data as of") and a read-only role for BI tools.
--
-- syncd.freshness is one row that a dashboard can show next to its figures; syncd.window_freshness
-- has one row per reconciliation window. Both are plain views over syncd's own state, owned by
-- the migrating role, so a BI role needs SELECT on the views only, not on syncd's tables.

-- A failed attempt overwrites finished_at; the time of the last success must survive it.
ALTER TABLE syncd.windows ADD COLUMN last_done_at timestamptz;
COMMENT ON COLUMN syncd.windows.last_done_at IS
    'When this window last completed successfully; kept when a later attempt fails.';
UPDATE syncd.windows SET last_done_at = finished_at WHERE status = 'done';

-- Kept by the database so that every writer of syncd.windows (backfill, reconcile) gets it.
CREATE FUNCTION syncd.windows_track_done() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'done' THEN
        NEW.last_done_at := coalesce(NEW.finished_at, now());
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER windows_track_done BEFORE INSERT OR UPDATE OF status, finished_at ON syncd.windows
    FOR EACH ROW EXECUTE FUNCTION syncd.windows_track_done();

CREATE VIEW syncd.window_freshness AS
SELECT w.window_start,
       w.window_end,
       w.status,
       w.last_done_at                 AS last_reconciled_at,
       now() - w.last_done_at         AS reconciled_age,
       w.finished_at                  AS last_attempt_at,
       w.remote_count                 AS kantata_count_at_reconcile,
       (SELECT count(*) FROM kantata.time_entries t
        WHERE t.deleted_at IS NULL
          AND t.date_performed BETWEEN w.window_start AND w.window_end) AS mirror_live_count,
       w.last_error
FROM syncd.windows w
WHERE w.purpose = 'reconcile';

COMMENT ON VIEW syncd.window_freshness IS
    'One row per reconciliation window (date_performed range): when the mirror was last checked against Kantata for those dates.';
COMMENT ON COLUMN syncd.window_freshness.window_start IS 'First date_performed of the window (inclusive).';
COMMENT ON COLUMN syncd.window_freshness.window_end IS 'Last date_performed of the window (inclusive).';
COMMENT ON COLUMN syncd.window_freshness.status IS 'done | failed | running (| pending): outcome of the latest attempt.';
COMMENT ON COLUMN syncd.window_freshness.last_reconciled_at IS
    'Last successful reconciliation: deletions and edits in Kantata up to this instant are reflected for these dates. NULL = never.';
COMMENT ON COLUMN syncd.window_freshness.reconciled_age IS 'now() - last_reconciled_at.';
COMMENT ON COLUMN syncd.window_freshness.last_attempt_at IS 'When the latest attempt (successful or not) ended.';
COMMENT ON COLUMN syncd.window_freshness.kantata_count_at_reconcile IS 'Number of entries Kantata listed for the window at the latest attempt.';
COMMENT ON COLUMN syncd.window_freshness.mirror_live_count IS 'Live (not deleted) mirror rows in the window now.';
COMMENT ON COLUMN syncd.window_freshness.last_error IS 'Why the latest attempt failed, if it did.';

CREATE VIEW syncd.freshness AS
SELECT
    -- The watermark only means "everything up to here" once the backfill has no unfinished
    -- window: during the first backfill (or after one was interrupted) it is NULL.
    CASE WHEN EXISTS (SELECT 1 FROM syncd.windows
                      WHERE purpose = 'backfill' AND status <> 'done')
         THEN NULL
         ELSE (SELECT watermark FROM syncd.watermarks WHERE stream = 'time_entries')
    END                                                                  AS data_as_of,
    (SELECT count(*) FROM syncd.windows
     WHERE purpose = 'backfill' AND status <> 'done')                    AS backfill_windows_unfinished,
    (SELECT max(finished_at) FROM syncd.sync_runs
     WHERE job IN ('pull', 'backfill') AND status = 'ok')                 AS last_pull_at,
    (SELECT status FROM syncd.sync_runs WHERE job IN ('pull', 'backfill')
     ORDER BY started_at DESC LIMIT 1)                                   AS last_pull_status,
    (SELECT max(finished_at) FROM syncd.sync_runs
     WHERE job = 'reconcile' AND status = 'ok')                          AS last_reconcile_at,
    -- Every backfill window is a window whose deletions must be checked: one that has no
    -- successful reconciliation yet makes the answer NULL ("not everywhere yet").
    (SELECT CASE WHEN bool_or(r.last_done_at IS NULL) THEN NULL ELSE min(r.last_done_at) END
     FROM syncd.windows b
     LEFT JOIN syncd.windows r ON r.purpose = 'reconcile'
          AND r.window_start = b.window_start AND r.window_end = b.window_end
     WHERE b.purpose = 'backfill')                                       AS oldest_window_reconciled_at,
    (SELECT count(*) FROM syncd.windows b
     LEFT JOIN syncd.windows r ON r.purpose = 'reconcile'
          AND r.window_start = b.window_start AND r.window_end = b.window_end
     WHERE b.purpose = 'backfill'
       AND (r.last_done_at IS NULL OR r.status = 'failed'))              AS windows_not_reconciled,
    (SELECT count(*) FROM syncd.outbox
     WHERE status IN ('pending', 'in_flight'))                           AS outbox_pending,
    (SELECT now() - min(created_at) FROM syncd.outbox
     WHERE status IN ('pending', 'in_flight'))                           AS outbox_oldest_pending_age,
    (SELECT count(*) FROM syncd.outbox
     WHERE status IN ('failed', 'conflict'))                             AS outbox_needs_attention,
    now()                                                                AS checked_at;

COMMENT ON VIEW syncd.freshness IS
    'One row for dashboards: how current the mirror is ("data as of") and what is still waiting to reach Kantata.';
COMMENT ON COLUMN syncd.freshness.data_as_of IS
    'Incremental watermark: every Kantata create and edit up to this instant is in the mirror. NULL while the backfill has unfinished windows. Deletions follow with reconciliation (see oldest_window_reconciled_at).';
COMMENT ON COLUMN syncd.freshness.backfill_windows_unfinished IS 'Backfill windows not yet completely read (0 once the first backfill is done).';
COMMENT ON COLUMN syncd.freshness.last_pull_at IS 'End of the last pull (or backfill) run that finished ok.';
COMMENT ON COLUMN syncd.freshness.last_pull_status IS 'Status of the most recent pull run: running | ok | partial | failed | interrupted.';
COMMENT ON COLUMN syncd.freshness.last_reconcile_at IS 'End of the last reconciliation run that finished ok.';
COMMENT ON COLUMN syncd.freshness.oldest_window_reconciled_at IS
    'The least recent successful reconciliation among the scheduled windows: deletions in Kantata before this instant are reflected for every date.';
COMMENT ON COLUMN syncd.freshness.windows_not_reconciled IS 'Windows whose latest reconciliation failed or that never completed one.';
COMMENT ON COLUMN syncd.freshness.outbox_pending IS 'Local changes queued in syncd.outbox and not yet confirmed by Kantata.';
COMMENT ON COLUMN syncd.freshness.outbox_oldest_pending_age IS 'Age of the oldest of those (NULL when none).';
COMMENT ON COLUMN syncd.freshness.outbox_needs_attention IS 'Outbox rows that failed or conflicted and need a person.';
COMMENT ON COLUMN syncd.freshness.checked_at IS 'When this row was computed (now()).';

-- A read-only role for BI tools: SELECT on the mirror (also on tables added later) and on the
-- freshness views, nothing else. Roles are cluster-wide, so creating one needs CREATEROLE or
-- superuser; without either the role is left to an administrator (see README, BI access).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'syncd_bi') THEN
        IF EXISTS (SELECT 1 FROM pg_roles
                   WHERE rolname = current_user AND (rolsuper OR rolcreaterole)) THEN
            BEGIN
                CREATE ROLE syncd_bi NOLOGIN;
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- created meanwhile by a migration of another database
            END;
        ELSE
            RAISE NOTICE 'syncd: role syncd_bi not created (% has neither CREATEROLE nor superuser); an administrator can create it and re-run the grants in migrations/0003_freshness.sql',
                current_user;
        END IF;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'syncd_bi') THEN
        GRANT USAGE ON SCHEMA kantata TO syncd_bi;
        GRANT SELECT ON ALL TABLES IN SCHEMA kantata TO syncd_bi;
        ALTER DEFAULT PRIVILEGES IN SCHEMA kantata GRANT SELECT ON TABLES TO syncd_bi;
        GRANT USAGE ON SCHEMA syncd TO syncd_bi;
        GRANT SELECT ON syncd.freshness, syncd.window_freshness TO syncd_bi;
    END IF;
END $$;
