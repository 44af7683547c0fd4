-- History mode (issue #13): every version of every time entry syncd has seen, for audit and
-- "as of" questions (a type-2 slowly changing dimension).
--
-- The current version of an entry is its mirror row; kantata.time_entry_history holds the
-- versions it replaced, and the view kantata.time_entry_versions shows both. So the first
-- sight of an entry (the whole backfill) writes nothing more than the mirror row, and a change
-- writes one history row: the version it ends. That row is written by a trigger on
-- kantata.time_entries, in the same transaction as the mirror write (a crash can never leave
-- one without the other), set-based (a statement-level trigger over transition tables: one
-- INSERT per statement, whatever its size), and only when the mirror row changed in its
-- columns: a re-read of the same version (the overlap, reconciliation, the pull seeing a
-- push's own result) adds nothing.
--
-- syncd says in each write transaction how it learned what it writes (`SET LOCAL` of
-- `syncd.learned_via`: backfill, pull, push, reconcile; kept in the mirror's new column
-- learned_via) and whether history is on (`syncd.history`, from SYNCD_HISTORY); writes without
-- them (plain SQL) are `sql`, history on.
--
-- Kantata's API has no history: what happened before syncd first read an entry is unknowable.
-- The first version of each entry starts at its `updated_at` and is flagged `first_seen`.

CREATE FUNCTION syncd.history_enabled() RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('syncd.history', true), ''), 'on') <> 'off'
$$;

CREATE FUNCTION syncd.history_source() RETURNS text LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('syncd.learned_via', true), ''), 'sql')
$$;

ALTER TABLE kantata.time_entries ADD COLUMN learned_via text;
COMMENT ON COLUMN kantata.time_entries.learned_via IS
    'How syncd learned this version of the entry: backfill or pull (read from Kantata), push (the answer to syncd''s own outbox write), reconcile (reconciliation found it, or found it deleted), sql (written by hand); NULL for rows written before history mode existed.';

CREATE TABLE kantata.time_entry_history (
    version_id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                 bigint      NOT NULL,
    workspace_id       bigint,
    user_id            bigint,
    story_id           bigint,
    role_id            bigint,
    date_performed     date        NOT NULL,
    time_in_minutes    integer     NOT NULL,
    billable           boolean,
    notes              text,
    rate_in_cents      bigint,
    cost_rate_in_cents bigint,
    currency           text,
    currency_symbol    text,
    currency_base_unit integer,
    approved           boolean,
    is_invoiced        boolean,
    taxable            boolean,
    location           text,
    created_at         timestamptz,
    updated_at         timestamptz NOT NULL,
    valid_from         timestamptz NOT NULL,
    valid_to           timestamptz NOT NULL,
    deleted            boolean     NOT NULL,
    first_seen         boolean     NOT NULL,
    learned_via        text        NOT NULL,
    recorded_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT time_entry_history_range CHECK (valid_to >= valid_from)
);
CREATE INDEX time_entry_history_id_idx ON kantata.time_entry_history (id, valid_to);
CREATE INDEX time_entry_history_valid_to_idx ON kantata.time_entry_history (valid_to);

COMMENT ON TABLE kantata.time_entry_history IS
    'Versions of time entries that a later version replaced (history mode, SYNCD_HISTORY); the current version of each entry is its row in kantata.time_entries. Query kantata.time_entry_versions for both.';
COMMENT ON COLUMN kantata.time_entry_history.version_id IS 'Order in which syncd recorded the replaced versions.';
COMMENT ON COLUMN kantata.time_entry_history.valid_from IS 'Start of this version (see kantata.time_entry_versions).';
COMMENT ON COLUMN kantata.time_entry_history.valid_to IS 'When the next version started (its valid_from).';
COMMENT ON COLUMN kantata.time_entry_history.recorded_at IS 'When syncd recorded that this version was replaced.';

-- The trigger: for every row whose columns (not raw, synced_at or learned_via) or deleted
-- state changed, the version it had goes to the history, valid from where the previous one
-- ended (or its updated_at: first seen) until the new one starts: Kantata's updated_at, the
-- detection of a deletion, or now (a change that kept its updated_at, or undid a deletion).
-- The mirror's upsert writes only rows that changed, so on a re-read this finds nothing.
CREATE FUNCTION syncd.time_entries_history_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT syncd.history_enabled() THEN
        RETURN NULL;
    END IF;
    INSERT INTO kantata.time_entry_history (
        id, workspace_id, user_id, story_id, role_id, date_performed, time_in_minutes, billable,
        notes, rate_in_cents, cost_rate_in_cents, currency, currency_symbol, currency_base_unit,
        approved, is_invoiced, taxable, location, created_at, updated_at,
        valid_from, valid_to, deleted, first_seen, learned_via)
    SELECT o.id, o.workspace_id, o.user_id, o.story_id, o.role_id, o.date_performed,
           o.time_in_minutes, o.billable, o.notes, o.rate_in_cents, o.cost_rate_in_cents,
           o.currency, o.currency_symbol, o.currency_base_unit, o.approved, o.is_invoiced,
           o.taxable, o.location, o.created_at, o.updated_at,
           f.valid_from,
           CASE WHEN o.deleted_at IS NULL AND n.deleted_at IS NOT NULL
                    THEN greatest(f.valid_from, n.deleted_at)
                WHEN n.updated_at > f.valid_from THEN n.updated_at
                ELSE greatest(f.valid_from, now()) END,
           o.deleted_at IS NOT NULL, f.prev IS NULL, coalesce(o.learned_via, 'sql')
    FROM new_rows n
    JOIN old_rows o ON o.id = n.id
    CROSS JOIN LATERAL (
        SELECT p.prev, greatest(p.prev, coalesce(o.deleted_at, o.updated_at)) AS valid_from
        FROM (SELECT max(h.valid_to) AS prev FROM kantata.time_entry_history h
              WHERE h.id = o.id) p) f
    WHERE (n.workspace_id, n.user_id, n.story_id, n.role_id, n.date_performed,
           n.time_in_minutes, n.billable, n.notes, n.rate_in_cents, n.cost_rate_in_cents,
           n.currency, n.currency_symbol, n.currency_base_unit, n.approved, n.is_invoiced,
           n.taxable, n.location, n.created_at, n.updated_at)
          IS DISTINCT FROM
          (o.workspace_id, o.user_id, o.story_id, o.role_id, o.date_performed,
           o.time_in_minutes, o.billable, o.notes, o.rate_in_cents, o.cost_rate_in_cents,
           o.currency, o.currency_symbol, o.currency_base_unit, o.approved, o.is_invoiced,
           o.taxable, o.location, o.created_at, o.updated_at)
       OR (n.deleted_at IS NULL) <> (o.deleted_at IS NULL);
    RETURN NULL;
END $$;

CREATE TRIGGER time_entries_history AFTER UPDATE ON kantata.time_entries
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION syncd.time_entries_history_update();

-- Every version: the replaced ones and the current one (the mirror row). The current version
-- starts where the last replaced one ended, or at its updated_at (deleted_at for a deletion)
-- when it is the first syncd saw.
CREATE VIEW kantata.time_entry_versions AS
SELECT h.version_id, h.id, h.workspace_id, h.user_id, h.story_id, h.role_id, h.date_performed,
       h.time_in_minutes, h.billable, h.notes, h.rate_in_cents, h.cost_rate_in_cents,
       h.currency, h.currency_symbol, h.currency_base_unit, h.approved, h.is_invoiced,
       h.taxable, h.location, h.created_at, h.updated_at, h.valid_from,
       h.valid_to, h.deleted, h.first_seen, h.learned_via
FROM kantata.time_entry_history h
UNION ALL
SELECT NULL::bigint, t.id, t.workspace_id, t.user_id, t.story_id, t.role_id, t.date_performed,
       t.time_in_minutes, t.billable, t.notes, t.rate_in_cents, t.cost_rate_in_cents,
       t.currency, t.currency_symbol, t.currency_base_unit, t.approved, t.is_invoiced,
       t.taxable, t.location, t.created_at, t.updated_at,
       greatest(p.prev, coalesce(t.deleted_at, t.updated_at)),
       NULL::timestamptz, t.deleted_at IS NOT NULL, p.prev IS NULL, coalesce(t.learned_via, 'sql')
FROM kantata.time_entries t
LEFT JOIN (SELECT id, max(valid_to) AS prev FROM kantata.time_entry_history GROUP BY id) p
       ON p.id = t.id;

COMMENT ON VIEW kantata.time_entry_versions IS
    'Every version of every time entry syncd has seen (history mode, SYNCD_HISTORY): one row per version, valid from valid_from until valid_to (NULL = current, the mirror row). A deletion is a version with deleted = true. Before syncd first read an entry, its history is unknown (first_seen).';
COMMENT ON COLUMN kantata.time_entry_versions.version_id IS 'Order in which syncd recorded the replaced versions; NULL for the current version.';
COMMENT ON COLUMN kantata.time_entry_versions.id IS 'Kantata time entry id (kantata.time_entries.id).';
COMMENT ON COLUMN kantata.time_entry_versions.time_in_minutes IS 'Duration of the work in minutes, in this version.';
COMMENT ON COLUMN kantata.time_entry_versions.updated_at IS 'Kantata''s updated_at of this version.';
COMMENT ON COLUMN kantata.time_entry_versions.valid_from IS
    'Start of this version: Kantata''s updated_at; for a deletion, when syncd detected it; when a change kept its updated_at (or undid a deletion), when syncd learned it.';
COMMENT ON COLUMN kantata.time_entry_versions.valid_to IS 'End of this version (the next one''s valid_from); NULL for the current version.';
COMMENT ON COLUMN kantata.time_entry_versions.deleted IS 'This version is the entry''s deletion (the columns are those of the last version before it).';
COMMENT ON COLUMN kantata.time_entry_versions.first_seen IS 'The first version syncd saw of this entry: what came before is not known.';
COMMENT ON COLUMN kantata.time_entry_versions.learned_via IS
    'How syncd learned this version: backfill or pull (read from Kantata), push (the answer to syncd''s own outbox write), reconcile (reconciliation found it, or found the entry deleted), sql (written by hand, or before history mode).';

-- ------------------------------------------------------------------------------ for BI
CREATE FUNCTION kantata.time_entries_as_of(ts timestamptz)
    RETURNS SETOF kantata.time_entry_versions LANGUAGE sql STABLE AS $$
    SELECT * FROM kantata.time_entry_versions
    WHERE valid_from <= ts AND (valid_to IS NULL OR valid_to > ts) AND NOT deleted
$$;

COMMENT ON FUNCTION kantata.time_entries_as_of(timestamptz) IS
    'The live time entries as they were at instant ts (one row each, the version valid then): the mirror as it would have read at ts, once syncd had pulled what Kantata held then. Entries first seen later appear from their first updated_at.';

CREATE VIEW kantata.time_entry_changes AS
WITH ordered AS (
    SELECT v.*, row_number() OVER (PARTITION BY v.id ORDER BY v.version_id NULLS LAST) AS n
    FROM kantata.time_entry_versions v
)
SELECT v.id                               AS entry_id,
       v.valid_from                       AS changed_at,
       CASE WHEN p.id IS NULL THEN 'first_seen'
            WHEN v.deleted THEN 'deleted'
            WHEN p.deleted THEN 'restored'
            ELSE 'edited' END             AS change,
       v.learned_via,
       d.fields,
       d.diff,
       d.changes,
       v.workspace_id,
       v.user_id,
       v.date_performed,
       v.time_in_minutes,
       p.approved                         AS was_approved,
       p.is_invoiced                      AS was_invoiced,
       v.version_id,
       p.version_id                       AS previous_version_id
FROM ordered v
LEFT JOIN ordered p ON p.id = v.id AND p.n = v.n - 1
LEFT JOIN LATERAL (
    SELECT array_agg(f.name ORDER BY f.ord)                                         AS fields,
           string_agg(f.name || ' ' || coalesce(f.old, 'NULL') || ' → '
                      || coalesce(f.new, 'NULL'), '; ' ORDER BY f.ord)              AS diff,
           jsonb_object_agg(f.name, jsonb_build_object('old', f.old, 'new', f.new))  AS changes
    FROM (VALUES
        (1, 'workspace_id', p.workspace_id::text, v.workspace_id::text),
        (2, 'user_id', p.user_id::text, v.user_id::text),
        (3, 'story_id', p.story_id::text, v.story_id::text),
        (4, 'role_id', p.role_id::text, v.role_id::text),
        (5, 'date_performed', p.date_performed::text, v.date_performed::text),
        (6, 'time_in_minutes', p.time_in_minutes::text, v.time_in_minutes::text),
        (7, 'billable', p.billable::text, v.billable::text),
        (8, 'notes', p.notes, v.notes),
        (9, 'rate_in_cents', p.rate_in_cents::text, v.rate_in_cents::text),
        (10, 'cost_rate_in_cents', p.cost_rate_in_cents::text, v.cost_rate_in_cents::text),
        (11, 'currency', p.currency, v.currency),
        (12, 'currency_symbol', p.currency_symbol, v.currency_symbol),
        (13, 'currency_base_unit', p.currency_base_unit::text, v.currency_base_unit::text),
        (14, 'approved', p.approved::text, v.approved::text),
        (15, 'is_invoiced', p.is_invoiced::text, v.is_invoiced::text),
        (16, 'taxable', p.taxable::text, v.taxable::text),
        (17, 'location', p.location, v.location),
        (18, 'created_at', p.created_at::text, v.created_at::text)
    ) AS f(ord, name, old, new)
    WHERE p.id IS NOT NULL AND f.old IS DISTINCT FROM f.new
) d ON true;

COMMENT ON VIEW kantata.time_entry_changes IS
    'One row per change syncd recorded for a time entry: first_seen, edited, deleted or restored, with the fields that changed (old → new). Kantata does not say who made a change; learned_via = push marks changes made through syncd''s outbox.';
COMMENT ON COLUMN kantata.time_entry_changes.entry_id IS 'Kantata time entry id.';
COMMENT ON COLUMN kantata.time_entry_changes.changed_at IS 'valid_from of the new version: Kantata''s updated_at (a deletion: when syncd detected it).';
COMMENT ON COLUMN kantata.time_entry_changes.change IS 'first_seen | edited | deleted | restored.';
COMMENT ON COLUMN kantata.time_entry_changes.learned_via IS 'backfill | pull | push | reconcile | sql (see kantata.time_entry_versions).';
COMMENT ON COLUMN kantata.time_entry_changes.fields IS 'Names of the columns that changed (updated_at left out), in table order; NULL for first_seen and deletions.';
COMMENT ON COLUMN kantata.time_entry_changes.diff IS 'The change as text: time_in_minutes 60 → 90; approved false → true.';
COMMENT ON COLUMN kantata.time_entry_changes.changes IS 'The change as jsonb: {"time_in_minutes": {"old": "60", "new": "90"}} (values as text).';
COMMENT ON COLUMN kantata.time_entry_changes.workspace_id IS 'Project of the entry in the new version (for a deletion: the last one).';
COMMENT ON COLUMN kantata.time_entry_changes.user_id IS 'Person whose time the entry is, in the new version (Kantata does not say who made the change).';
COMMENT ON COLUMN kantata.time_entry_changes.date_performed IS 'Day of the work, in the new version.';
COMMENT ON COLUMN kantata.time_entry_changes.time_in_minutes IS 'Minutes, in the new version.';
COMMENT ON COLUMN kantata.time_entry_changes.was_approved IS 'The version before the change was approved (NULL for first_seen).';
COMMENT ON COLUMN kantata.time_entry_changes.was_invoiced IS 'The version before the change was invoiced (NULL for first_seen).';
COMMENT ON COLUMN kantata.time_entry_changes.version_id IS 'The new version (kantata.time_entry_history.version_id); NULL when it is the current one.';
COMMENT ON COLUMN kantata.time_entry_changes.previous_version_id IS 'The version it replaced (kantata.time_entry_history.version_id); NULL for first_seen.';

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'syncd_bi') THEN
        GRANT SELECT ON kantata.time_entry_history, kantata.time_entry_versions,
            kantata.time_entry_changes TO syncd_bi;
        GRANT EXECUTE ON FUNCTION kantata.time_entries_as_of(timestamptz) TO syncd_bi;
    END IF;
END $$;
