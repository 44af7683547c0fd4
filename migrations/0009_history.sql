-- History mode (issue #13): every version of every time entry syncd has seen, for audit and
-- "as of" questions (a type-2 slowly changing dimension).
--
-- A version row is written by triggers on kantata.time_entries, so it is in the same
-- transaction as the mirror write (a crash can never leave one without the other), set-based
-- (statement-level triggers over transition tables: one INSERT and one UPDATE per statement,
-- whatever its size), and it exists if and only if the mirror row changed: a re-read of the same
-- version (the overlap, reconciliation, the pull seeing a push's own result) changes nothing
-- in the mirror's columns, so it adds nothing here.
--
-- syncd says in each transaction how it learned what it writes (`SET LOCAL` of
-- `syncd.learned_via`: backfill, pull, push, reconcile) and whether history is on
-- (`syncd.history`, from SYNCD_HISTORY); writes without them (plain SQL) are recorded as
-- `sql`, history on.
--
-- Kantata's API has no history: what happened before syncd first read an entry is unknowable.
-- The first version of each entry starts at its `updated_at` and is flagged `first_seen`.

CREATE TABLE kantata.time_entry_versions (
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
    valid_to           timestamptz,
    deleted            boolean     NOT NULL DEFAULT false,
    first_seen         boolean     NOT NULL DEFAULT false,
    learned_via        text        NOT NULL,
    recorded_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT time_entry_versions_range CHECK (valid_to IS NULL OR valid_to >= valid_from),
    CONSTRAINT time_entry_versions_learned_via
        CHECK (learned_via IN ('backfill', 'pull', 'push', 'reconcile', 'sql'))
);

-- One open (current) version per entry; also the lookup the triggers make.
CREATE UNIQUE INDEX time_entry_versions_open_idx ON kantata.time_entry_versions (id)
    WHERE valid_to IS NULL;
CREATE INDEX time_entry_versions_id_idx ON kantata.time_entry_versions (id, version_id);
CREATE INDEX time_entry_versions_valid_to_idx ON kantata.time_entry_versions (valid_to)
    WHERE valid_to IS NOT NULL;  -- retention pruning

COMMENT ON TABLE kantata.time_entry_versions IS
    'Every version of every time entry syncd has seen (history mode, SYNCD_HISTORY): one row per version, valid from valid_from until valid_to (NULL = current). A deletion is a row with deleted = true. Before syncd first read an entry, its history is unknown (first_seen).';
COMMENT ON COLUMN kantata.time_entry_versions.version_id IS 'Order in which syncd recorded the versions.';
COMMENT ON COLUMN kantata.time_entry_versions.id IS 'Kantata time entry id (kantata.time_entries.id).';
COMMENT ON COLUMN kantata.time_entry_versions.date_performed IS 'Calendar day the work was done (a plain date, no time zone).';
COMMENT ON COLUMN kantata.time_entry_versions.time_in_minutes IS 'Duration of the work in minutes, in this version.';
COMMENT ON COLUMN kantata.time_entry_versions.rate_in_cents IS 'Billing rate per hour in minor units of currency (see currency_base_unit).';
COMMENT ON COLUMN kantata.time_entry_versions.updated_at IS 'Kantata''s updated_at of this version.';
COMMENT ON COLUMN kantata.time_entry_versions.valid_from IS
    'Start of this version: Kantata''s updated_at; for a deletion, when syncd detected it; when a change kept its updated_at (or undid a deletion), when syncd learned it.';
COMMENT ON COLUMN kantata.time_entry_versions.valid_to IS 'End of this version (the next one''s valid_from); NULL for the current version.';
COMMENT ON COLUMN kantata.time_entry_versions.deleted IS 'This version is the entry''s deletion (the columns are those of the last version before it).';
COMMENT ON COLUMN kantata.time_entry_versions.first_seen IS
    'The first version syncd saw of this entry (its first sync, or history being switched on): what came before is not known.';
COMMENT ON COLUMN kantata.time_entry_versions.learned_via IS
    'How syncd learned this version: backfill or pull (read from Kantata), push (the answer to syncd''s own outbox write), reconcile (reconciliation found it, or found the entry deleted), sql (written to the mirror by hand).';
COMMENT ON COLUMN kantata.time_entry_versions.recorded_at IS 'When syncd recorded this version.';

-- The columns that make a version (raw, deleted_at and synced_at do not: a new raw with the
-- same values, a re-read, is the same version).
CREATE FUNCTION syncd.history_enabled() RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('syncd.history', true), ''), 'on') <> 'off'
$$;

CREATE FUNCTION syncd.history_source() RETURNS text LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('syncd.learned_via', true), ''), 'sql')
$$;

CREATE FUNCTION syncd.time_entries_history_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT syncd.history_enabled() THEN
        RETURN NULL;
    END IF;
    INSERT INTO kantata.time_entry_versions (
        id, workspace_id, user_id, story_id, role_id, date_performed, time_in_minutes, billable,
        notes, rate_in_cents, cost_rate_in_cents, currency, currency_symbol, currency_base_unit,
        approved, is_invoiced, taxable, location, created_at, updated_at,
        valid_from, deleted, first_seen, learned_via)
    SELECT n.id, n.workspace_id, n.user_id, n.story_id, n.role_id, n.date_performed,
           n.time_in_minutes, n.billable, n.notes, n.rate_in_cents, n.cost_rate_in_cents,
           n.currency, n.currency_symbol, n.currency_base_unit, n.approved, n.is_invoiced,
           n.taxable, n.location, n.created_at, n.updated_at,
           coalesce(n.deleted_at, n.updated_at), n.deleted_at IS NOT NULL, true,
           syncd.history_source()
    FROM new_rows n
    ON CONFLICT (id) WHERE valid_to IS NULL DO NOTHING;  -- history of a row deleted by hand
    RETURN NULL;
END $$;

CREATE FUNCTION syncd.time_entries_history_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT syncd.history_enabled() THEN
        RETURN NULL;
    END IF;
    -- The open version of each changed row is closed where the new one starts; the INSERT reads
    -- the UPDATE's RETURNING rows, so an entry's old version is closed before its new one is
    -- added (the unique index on open versions never sees two).
    WITH changed AS (
        SELECT n.*, (o.deleted_at IS NULL AND n.deleted_at IS NOT NULL) AS now_deleted
        FROM new_rows n JOIN old_rows o ON o.id = n.id
        WHERE (n.workspace_id, n.user_id, n.story_id, n.role_id, n.date_performed,
               n.time_in_minutes, n.billable, n.notes, n.rate_in_cents, n.cost_rate_in_cents,
               n.currency, n.currency_symbol, n.currency_base_unit, n.approved, n.is_invoiced,
               n.taxable, n.location, n.created_at, n.updated_at)
              IS DISTINCT FROM
              (o.workspace_id, o.user_id, o.story_id, o.role_id, o.date_performed,
               o.time_in_minutes, o.billable, o.notes, o.rate_in_cents, o.cost_rate_in_cents,
               o.currency, o.currency_symbol, o.currency_base_unit, o.approved, o.is_invoiced,
               o.taxable, o.location, o.created_at, o.updated_at)
           OR (n.deleted_at IS NULL) <> (o.deleted_at IS NULL)
    ), closed AS (
        UPDATE kantata.time_entry_versions v
        SET valid_to = CASE
                WHEN c.now_deleted THEN greatest(v.valid_from, coalesce(c.deleted_at, now()))
                WHEN c.updated_at > v.valid_from THEN c.updated_at
                ELSE greatest(v.valid_from, now()) END
        FROM changed c
        WHERE v.id = c.id AND v.valid_to IS NULL
        RETURNING v.id, v.valid_to AS new_from
    )
    INSERT INTO kantata.time_entry_versions (
        id, workspace_id, user_id, story_id, role_id, date_performed, time_in_minutes, billable,
        notes, rate_in_cents, cost_rate_in_cents, currency, currency_symbol, currency_base_unit,
        approved, is_invoiced, taxable, location, created_at, updated_at,
        valid_from, deleted, first_seen, learned_via)
    SELECT c.id, c.workspace_id, c.user_id, c.story_id, c.role_id, c.date_performed,
           c.time_in_minutes, c.billable, c.notes, c.rate_in_cents, c.cost_rate_in_cents,
           c.currency, c.currency_symbol, c.currency_base_unit, c.approved, c.is_invoiced,
           c.taxable, c.location, c.created_at, c.updated_at,
           coalesce(x.new_from, CASE WHEN c.now_deleted THEN c.deleted_at ELSE c.updated_at END),
           c.deleted_at IS NOT NULL, x.id IS NULL, syncd.history_source()
    FROM changed c LEFT JOIN closed x ON x.id = c.id;
    RETURN NULL;
END $$;

CREATE TRIGGER time_entries_history_ins AFTER INSERT ON kantata.time_entries
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION syncd.time_entries_history_insert();

CREATE TRIGGER time_entries_history_upd AFTER UPDATE ON kantata.time_entries
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION syncd.time_entries_history_update();

-- History starts now for the entries already mirrored: their current state, first seen.
INSERT INTO kantata.time_entry_versions (
    id, workspace_id, user_id, story_id, role_id, date_performed, time_in_minutes, billable,
    notes, rate_in_cents, cost_rate_in_cents, currency, currency_symbol, currency_base_unit,
    approved, is_invoiced, taxable, location, created_at, updated_at,
    valid_from, deleted, first_seen, learned_via)
SELECT id, workspace_id, user_id, story_id, role_id, date_performed, time_in_minutes, billable,
       notes, rate_in_cents, cost_rate_in_cents, currency, currency_symbol, currency_base_unit,
       approved, is_invoiced, taxable, location, created_at, updated_at,
       coalesce(deleted_at, updated_at), deleted_at IS NOT NULL, true, 'sql'
FROM kantata.time_entries;

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
    SELECT v.*, lag(v.version_id) OVER (PARTITION BY v.id ORDER BY v.version_id) AS prev_id
    FROM kantata.time_entry_versions v
)
SELECT v.id                               AS entry_id,
       v.valid_from                       AS changed_at,
       CASE WHEN p.version_id IS NULL THEN 'first_seen'
            WHEN v.deleted THEN 'deleted'
            WHEN p.deleted THEN 'restored'
            ELSE 'edited' END             AS change,
       v.learned_via,
       d.fields,
       d.diff,
       d.changes,
       v.version_id,
       p.version_id                       AS previous_version_id
FROM ordered v
LEFT JOIN kantata.time_entry_versions p ON p.version_id = v.prev_id
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
    WHERE p.version_id IS NOT NULL AND f.old IS DISTINCT FROM f.new
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
COMMENT ON COLUMN kantata.time_entry_changes.version_id IS 'The new version (kantata.time_entry_versions.version_id).';
COMMENT ON COLUMN kantata.time_entry_changes.previous_version_id IS 'The version it replaced; NULL for first_seen.';

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'syncd_bi') THEN
        GRANT SELECT ON kantata.time_entry_versions, kantata.time_entry_changes TO syncd_bi;
        GRANT EXECUTE ON FUNCTION kantata.time_entries_as_of(timestamptz) TO syncd_bi;
    END IF;
END $$;
