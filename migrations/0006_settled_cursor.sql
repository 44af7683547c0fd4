-- The incremental pull re-reads `overlap` seconds behind the watermark, because an entry can
-- become visible in Kantata's API some time after its updated_at (a transaction committing
-- late, clocks apart). Once a complete pass has run at least `overlap` seconds after those
-- entries' updated_at, re-reading them can find nothing new. `settled` records that point:
-- every entry with updated_at <= settled was already visible to a complete pass and is stored.
-- The next pass starts after max(watermark - overlap, settled), so an idle cycle reads nothing
-- and writes nothing (1 request, no upsert), where before it re-upserted the last two minutes
-- of changes on every cycle until something newer arrived (issue #7).

ALTER TABLE syncd.watermarks ADD COLUMN settled timestamptz;
ALTER TABLE syncd.watermarks ADD CONSTRAINT watermarks_settled_behind_watermark
    CHECK (settled IS NULL OR settled <= watermark);
COMMENT ON COLUMN syncd.watermarks.settled IS
    'Every entry with updated_at <= settled was visible to a complete incremental pass that ran '
    'at least `overlap` seconds later, and is stored; the next pass need not re-read it. '
    'NULL until the first such pass. Never after watermark.';
