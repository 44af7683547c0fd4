-- Text is never a reason to drop a record (issue #12). A string Kantata sends that PostgreSQL
-- `text`/`jsonb` cannot hold (U+0000, an unpaired UTF-16 surrogate, a string over 4,000,000
-- characters) is stored with the offending characters replaced by U+FFFD (or cut), and the
-- record's `raw` lists what was changed under the key `_syncd_altered`: one item per altered
-- string, `{"path": "notes", "reasons": ["nul"], "original_b64": "..."}` (syncd.pagination,
-- `sanitise`). This migration makes those records easy to find and count:
--
-- * partial indexes on the rows that carry the key (normally none, so they cost nothing);
-- * `kantata.text_alterations`, one row per altered string, with the original bytes;
-- * `syncd.freshness` gains `records_altered` and `records_rejected`, so a dashboard shows when
--   a total may be short (a rejected record) or holds replaced characters (an altered one).
--
-- Entries rejected for their text before this version sit in syncd.rejected_records; the next
-- reconciliation of their dates stores them (as `missing` rows) and the rejects resolve
-- themselves (0004). `syncd reconcile --since <date>` does it at once.

CREATE INDEX time_entries_altered_idx ON kantata.time_entries (id) WHERE raw ? '_syncd_altered';
CREATE INDEX workspaces_altered_idx ON kantata.workspaces (id) WHERE raw ? '_syncd_altered';
CREATE INDEX users_altered_idx ON kantata.users (id) WHERE raw ? '_syncd_altered';
CREATE INDEX stories_altered_idx ON kantata.stories (id) WHERE raw ? '_syncd_altered';
CREATE INDEX roles_altered_idx ON kantata.roles (id) WHERE raw ? '_syncd_altered';

CREATE VIEW kantata.text_alterations AS
WITH altered(record_kind, record_id, deleted, synced_at, items) AS (
    SELECT 'time_entry', id, deleted_at IS NOT NULL, synced_at, raw -> '_syncd_altered'
    FROM kantata.time_entries WHERE raw ? '_syncd_altered'
    UNION ALL
    SELECT 'workspace', id, false, synced_at, raw -> '_syncd_altered'
    FROM kantata.workspaces WHERE raw ? '_syncd_altered'
    UNION ALL
    SELECT 'user', id, false, synced_at, raw -> '_syncd_altered'
    FROM kantata.users WHERE raw ? '_syncd_altered'
    UNION ALL
    SELECT 'story', id, false, synced_at, raw -> '_syncd_altered'
    FROM kantata.stories WHERE raw ? '_syncd_altered'
    UNION ALL
    SELECT 'role', id, false, synced_at, raw -> '_syncd_altered'
    FROM kantata.roles WHERE raw ? '_syncd_altered'
)
SELECT a.record_kind,
       a.record_id,
       i.item ->> 'path'                                              AS field,
       ARRAY(SELECT jsonb_array_elements_text(i.item -> 'reasons'))   AS reasons,
       decode(i.item ->> 'original_b64', 'base64')                    AS original_utf8,
       (i.item ->> 'original_length')::bigint                         AS original_length,
       i.item ->> 'original_sha256'                                   AS original_sha256,
       a.deleted,
       a.synced_at
FROM altered a
CROSS JOIN LATERAL jsonb_array_elements(
    CASE WHEN jsonb_typeof(a.items) = 'array' THEN a.items ELSE '[]'::jsonb END) AS i(item);

COMMENT ON VIEW kantata.text_alterations IS
    'One row per string of a mirrored record that syncd had to change to store it (PostgreSQL cannot hold U+0000 or unpaired surrogates): the row itself is live and its numbers and dates are exact; only this text differs from Kantata.';
COMMENT ON COLUMN kantata.text_alterations.record_kind IS 'time_entry | workspace | user | story | role: the mirror table of the record.';
COMMENT ON COLUMN kantata.text_alterations.record_id IS 'Kantata id of the record (the id column of that table).';
COMMENT ON COLUMN kantata.text_alterations.field IS
    'Path of the altered string in raw: notes, location, a.b[2]; `x.<key>` when an object key itself was altered.';
COMMENT ON COLUMN kantata.text_alterations.reasons IS
    'nul (U+0000 replaced by U+FFFD) | unpaired_surrogate (each replaced by U+FFFD) | too_long (cut to 4,000,000 characters).';
COMMENT ON COLUMN kantata.text_alterations.original_utf8 IS
    'The original string as UTF-8 bytes (surrogates encoded as in CESU/WTF-8); NULL for too_long, see original_length and original_sha256.';
COMMENT ON COLUMN kantata.text_alterations.original_length IS 'too_long only: length of the original in characters.';
COMMENT ON COLUMN kantata.text_alterations.original_sha256 IS 'too_long only: SHA-256 (hex) of the original''s UTF-8 bytes.';
COMMENT ON COLUMN kantata.text_alterations.deleted IS 'The entry has since been deleted in Kantata (deleted_at is set).';
COMMENT ON COLUMN kantata.text_alterations.synced_at IS 'When syncd last wrote the record.';

CREATE OR REPLACE VIEW syncd.freshness AS
SELECT
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
    now()                                                                AS checked_at,
    (SELECT count(*) FROM kantata.time_entries WHERE raw ? '_syncd_altered')
    + (SELECT count(*) FROM kantata.workspaces WHERE raw ? '_syncd_altered')
    + (SELECT count(*) FROM kantata.users WHERE raw ? '_syncd_altered')
    + (SELECT count(*) FROM kantata.stories WHERE raw ? '_syncd_altered')
    + (SELECT count(*) FROM kantata.roles WHERE raw ? '_syncd_altered')  AS records_altered,
    (SELECT count(*) FROM syncd.rejected_records)                        AS records_rejected;

COMMENT ON COLUMN syncd.freshness.records_altered IS
    'Mirrored records stored with some text replaced because PostgreSQL cannot hold it (U+0000, unpaired surrogates): live and exact in numbers and dates; details in kantata.text_alterations.';
COMMENT ON COLUMN syncd.freshness.records_rejected IS
    'Records Kantata sent that could not be a row at all (no id, an id or number that is not an integer, a date that is not a date), in syncd.rejected_records. Above 0, totals may be short.';

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'syncd_bi') THEN
        GRANT SELECT ON kantata.text_alterations TO syncd_bi;
        GRANT SELECT ON syncd.freshness TO syncd_bi;
    END IF;
END $$;

-- The write path is symmetric: an outbox payload holding U+0000 or an unpaired surrogate can
-- never be stored in jsonb, and PostgreSQL's own error ("unsupported Unicode escape sequence")
-- does not say which field. Writers pass their JSON text through this function instead of
-- `$1::jsonb`; a good payload converts exactly as the cast does, a bad one is refused with the
-- same SQLSTATE (22P05 for NUL, 22P02 for a surrogate) and a message naming every field that
-- holds such text (migrations/README.md, "Examples").
CREATE FUNCTION syncd.outbox_payload(doc text) RETURNS jsonb
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    mark constant text := 'syncd-unstorable-3f9c1e';
    marked jsonb;
    fields text;
    what text;
BEGIN
    RETURN doc::jsonb;
EXCEPTION WHEN untranslatable_character OR invalid_text_representation THEN
    -- Only to locate the field: valid surrogate pairs (emoji) are blanked out, then every NUL
    -- or remaining surrogate escape becomes a marker, and the parsed document is walked.
    BEGIN
        marked := regexp_replace(
            regexp_replace(doc, '\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}',
                           'x', 'g'),
            '\\u(0000|[dD][89a-fA-F][0-9a-fA-F]{2})', mark, 'g')::jsonb;
    EXCEPTION WHEN others THEN
        marked := NULL;  -- not a text problem (a syntax error): the original error below
    END;
    IF marked IS NOT NULL THEN
        WITH RECURSIVE walk(path, v) AS (
            SELECT ''::text, marked
            UNION ALL
            SELECT CASE WHEN w.path = '' THEN c.step ELSE w.path || c.sep || c.step END, c.v
            FROM walk w
            CROSS JOIN LATERAL (
                SELECT '.' AS sep, e.key AS step, e.value AS v
                FROM jsonb_each(CASE WHEN jsonb_typeof(w.v) = 'object' THEN w.v
                                     ELSE '{}'::jsonb END) e
                UNION ALL
                SELECT '', '[' || (a.n - 1) || ']', a.value
                FROM jsonb_array_elements(CASE WHEN jsonb_typeof(w.v) = 'array' THEN w.v
                                               ELSE '[]'::jsonb END) WITH ORDINALITY a(value, n)
            ) c
        )
        SELECT string_agg(DISTINCT coalesce(nullif(replace(path, mark, '?'), ''),
                                            'the payload itself'), ', ') INTO fields
        FROM walk
        WHERE path LIKE '%' || mark || '%'
           OR (jsonb_typeof(v) = 'string' AND v #>> '{}' LIKE '%' || mark || '%');
    END IF;
    IF fields IS NULL THEN
        RAISE;
    END IF;
    what := CASE WHEN SQLSTATE = '22P05' THEN 'U+0000 (NUL)'
                 ELSE 'an unpaired UTF-16 surrogate' END;
    RAISE EXCEPTION 'syncd.outbox payload: % in %, which PostgreSQL cannot store', what, fields
        USING ERRCODE = SQLSTATE, COLUMN = 'payload',
              HINT = 'Remove the character or replace it (e.g. with U+FFFD) before queueing the row.';
END $$;

COMMENT ON FUNCTION syncd.outbox_payload(text) IS
    'JSON text to jsonb for syncd.outbox.payload: same result as ::jsonb, but text PostgreSQL cannot store (U+0000, unpaired surrogates) is refused with a message naming the field.';
