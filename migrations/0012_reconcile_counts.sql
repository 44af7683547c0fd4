-- Reconciliation counts first (issue #24): a window whose live mirror rows (plus the records
-- syncd rejected) number Kantata's `count` for the same filters lost no entry, so it costs one
-- request instead of a read of every page. A full read of every window on a long cycle
-- (SYNCD_RECONCILE_FULL_INTERVAL) stays as the safety net; these columns remember, per
-- reconciliation window, when that was and what it taught about Kantata's count.

ALTER TABLE syncd.windows
    ADD COLUMN last_full_read_at timestamptz,
    ADD COLUMN count_offset integer NOT NULL DEFAULT 0,
    ADD COLUMN count_trusted boolean NOT NULL DEFAULT true;

COMMENT ON COLUMN syncd.windows.last_full_read_at IS
    'Reconciliation only: when the window was last read page by page in full (a count check that matched does not set it). NULL: never; the backfill''s completion stands in for it.';
COMMENT ON COLUMN syncd.windows.count_offset IS
    'Reconciliation only: Kantata''s count minus (live mirror rows + dated rejected records) of the window right after its last full read; normally 0, not 0 when Kantata lists records syncd can neither store nor date.';
COMMENT ON COLUMN syncd.windows.count_trusted IS
    'Reconciliation only: false when, at the last full read, Kantata''s count disagreed with what it listed (or was negative); every check of the window is then a full read.';

-- Every reconciliation before this migration read its windows in full.
UPDATE syncd.windows SET last_full_read_at = last_done_at
WHERE purpose = 'reconcile' AND last_done_at IS NOT NULL;
