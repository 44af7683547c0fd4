-- The first backfill into an empty mirror paid for the secondary indexes of
-- kantata.time_entries row by row: every upsert inserted into five btrees (date_performed,
-- updated_at, workspace_id, user_id, and the partial index of 0008) in random order while the
-- table grew, +7.9 PostgreSQL CPU-seconds for 1,000,000 entries over a table with only its
-- primary key (issue #26). Like pg_restore and pgloader, syncd now drops the non-unique,
-- non-partial ones (the four of 0001, and any such index a user added; the partial index of
-- 0008 is normally empty and costs the load nothing) when a backfill starts into an EMPTY
-- mirror and builds each once when the backfill ends (a sorted CREATE INDEX). This table
-- records each dropped index with its definition first, in the same transaction as the DROP,
-- so no crash can lose one: a row stays until its index is built again, by the backfill that
-- dropped it or, when that run is gone, by the start of the next job or `syncd migrate`.

CREATE TABLE syncd.deferred_indexes (
    index_name  text PRIMARY KEY,
    definition  text NOT NULL,
    deferred_at timestamptz NOT NULL DEFAULT now(),
    run_id      uuid
);
COMMENT ON TABLE syncd.deferred_indexes IS
    'Indexes of kantata.time_entries that syncd dropped while the first backfill loads an empty '
    'mirror and builds after it (one sorted build instead of a btree insert per row). A row '
    'means: this index does not exist now; queries on its columns are slower until it is '
    'built. syncd rebuilds it when that backfill ends (also after failed windows or a stop), '
    'or, when the run that dropped it is gone (killed), at the start of the next syncd job or '
    'syncd migrate; the row is deleted in the transaction that builds the index. Do not '
    'delete rows by hand: to build one now, run its definition, then delete the row.';
COMMENT ON COLUMN syncd.deferred_indexes.index_name IS
    'Name of the dropped index (schema kantata, table time_entries).';
COMMENT ON COLUMN syncd.deferred_indexes.definition IS
    'The index as pg_get_indexdef gave it before the drop (CREATE INDEX ... ON '
    'kantata.time_entries ...), names schema-qualified: what syncd runs to build it again.';
COMMENT ON COLUMN syncd.deferred_indexes.deferred_at IS 'When the index was dropped.';
COMMENT ON COLUMN syncd.deferred_indexes.run_id IS
    'The run (syncd.sync_runs.run_id) whose backfill dropped it and builds it when it ends; '
    'once that run is no longer live (syncd.run_is_live), any syncd job start builds it.';
