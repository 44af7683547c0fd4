-- The mirror of Kantata time entries (schema `kantata`, read by BI tools) and syncd's own state
-- (schema `syncd`). Rows are never physically deleted: an entry that disappears remotely gets
-- `deleted_at`.

CREATE SCHEMA IF NOT EXISTS kantata;
CREATE SCHEMA IF NOT EXISTS syncd;

COMMENT ON SCHEMA kantata IS 'Mirror of Kantata OX data, maintained by syncd. Read-only for BI.';
COMMENT ON SCHEMA syncd IS 'syncd''s own state: watermarks, windows, run history, outbox.';

CREATE TABLE kantata.time_entries (
    id                 bigint PRIMARY KEY,
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
    raw                jsonb       NOT NULL,
    deleted_at         timestamptz,
    synced_at          timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE kantata.time_entries IS
    'One row per Kantata time entry ever seen. Filter deleted_at IS NULL for live entries.';
COMMENT ON COLUMN kantata.time_entries.id IS 'Kantata time entry id.';
COMMENT ON COLUMN kantata.time_entries.workspace_id IS 'Project (workspace) id; join kantata.workspaces.';
COMMENT ON COLUMN kantata.time_entries.user_id IS 'Person who performed the work; join kantata.users.';
COMMENT ON COLUMN kantata.time_entries.story_id IS 'Task id, NULL when the time is not tracked to a task; join kantata.stories.';
COMMENT ON COLUMN kantata.time_entries.role_id IS 'Project role of the user, if any; join kantata.roles.';
COMMENT ON COLUMN kantata.time_entries.date_performed IS 'Calendar day the work was done (a plain date, no time zone).';
COMMENT ON COLUMN kantata.time_entries.time_in_minutes IS 'Duration of the work in minutes.';
COMMENT ON COLUMN kantata.time_entries.billable IS 'Whether the time is billable to the client.';
COMMENT ON COLUMN kantata.time_entries.notes IS 'Free-text notes as entered (may contain line breaks).';
COMMENT ON COLUMN kantata.time_entries.rate_in_cents IS 'Billable rate in cents of `currency` per hour.';
COMMENT ON COLUMN kantata.time_entries.cost_rate_in_cents IS 'Cost rate in cents of `currency` per hour.';
COMMENT ON COLUMN kantata.time_entries.currency IS 'ISO currency code of the project when the entry was made, e.g. USD.';
COMMENT ON COLUMN kantata.time_entries.currency_symbol IS 'Currency symbol, e.g. $.';
COMMENT ON COLUMN kantata.time_entries.currency_base_unit IS 'Minor units per currency unit (100 for USD).';
COMMENT ON COLUMN kantata.time_entries.approved IS 'On an approved timesheet (or in a project without approvals).';
COMMENT ON COLUMN kantata.time_entries.is_invoiced IS 'Whether the entry has been invoiced (invoiced entries cannot change).';
COMMENT ON COLUMN kantata.time_entries.taxable IS 'Whether the entry is taxable.';
COMMENT ON COLUMN kantata.time_entries.location IS 'Account location name, if the account uses locations.';
COMMENT ON COLUMN kantata.time_entries.created_at IS 'When the entry was created in Kantata (instant).';
COMMENT ON COLUMN kantata.time_entries.updated_at IS 'When the entry last changed in Kantata (instant, second precision).';
COMMENT ON COLUMN kantata.time_entries.raw IS 'The entry exactly as Kantata sent it (JSON), including fields without a column.';
COMMENT ON COLUMN kantata.time_entries.deleted_at IS 'When syncd learned the entry is gone from Kantata; NULL while it exists.';
COMMENT ON COLUMN kantata.time_entries.synced_at IS 'When syncd last wrote this row.';

CREATE INDEX time_entries_date_performed_idx ON kantata.time_entries (date_performed);
CREATE INDEX time_entries_updated_at_idx ON kantata.time_entries (updated_at);
CREATE INDEX time_entries_workspace_idx ON kantata.time_entries (workspace_id);
CREATE INDEX time_entries_user_idx ON kantata.time_entries (user_id);

-- Side-loaded objects (include=workspace,user,story,role) so BI can show names without another tool.
CREATE TABLE kantata.workspaces (
    id         bigint PRIMARY KEY,
    title      text,
    updated_at timestamptz,
    raw        jsonb NOT NULL,
    synced_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE kantata.workspaces IS 'Kantata projects seen alongside time entries. raw holds every field (archived, account...).';
COMMENT ON COLUMN kantata.workspaces.title IS 'Project title.';

CREATE TABLE kantata.users (
    id         bigint PRIMARY KEY,
    full_name  text,
    updated_at timestamptz,
    raw        jsonb NOT NULL,
    synced_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE kantata.users IS 'Kantata users seen alongside time entries.';
COMMENT ON COLUMN kantata.users.full_name IS 'The user''s full name.';

CREATE TABLE kantata.stories (
    id           bigint PRIMARY KEY,
    title        text,
    workspace_id bigint,
    updated_at   timestamptz,
    raw          jsonb NOT NULL,
    synced_at    timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE kantata.stories IS 'Kantata tasks (stories) seen alongside time entries.';
COMMENT ON COLUMN kantata.stories.title IS 'Task title.';

CREATE TABLE kantata.roles (
    id         bigint PRIMARY KEY,
    name       text,
    updated_at timestamptz,
    raw        jsonb NOT NULL,
    synced_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE kantata.roles IS 'Kantata project roles seen alongside time entries.';
COMMENT ON COLUMN kantata.roles.name IS 'Role name.';

-- syncd state ---------------------------------------------------------------------------------

CREATE TABLE syncd.watermarks (
    stream       text PRIMARY KEY,
    watermark    timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE syncd.watermarks IS
    'Incremental cursor: every entry with updated_at <= watermark is stored. Only moves forward.';

CREATE TABLE syncd.windows (
    purpose        text NOT NULL CHECK (purpose IN ('backfill', 'reconcile')),
    window_start   date NOT NULL,
    window_end     date NOT NULL,
    status         text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'done', 'failed')),
    pages_done     integer NOT NULL DEFAULT 0,
    rows_seen      integer NOT NULL DEFAULT 0,
    remote_count   integer,
    last_error     text,
    started_at     timestamptz,
    finished_at    timestamptz,
    PRIMARY KEY (purpose, window_start, window_end),
    CHECK (window_end >= window_start)
);
COMMENT ON TABLE syncd.windows IS
    'Checkpoints of date_performed_between windows: backfill progress and last reconciliation.';

CREATE TABLE syncd.sync_runs (
    id            bigserial PRIMARY KEY,
    run_id        uuid NOT NULL UNIQUE,
    job           text NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    status        text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'ok', 'partial', 'failed', 'interrupted')),
    pages         integer NOT NULL DEFAULT 0,
    requests      integer NOT NULL DEFAULT 0,
    rows_upserted integer NOT NULL DEFAULT 0,
    rows_rejected integer NOT NULL DEFAULT 0,
    error         text,
    details       jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX sync_runs_job_started_idx ON syncd.sync_runs (job, started_at DESC);
COMMENT ON TABLE syncd.sync_runs IS 'History of job runs for support and BI; pruned after SYNCD_RUN_HISTORY_DAYS.';

CREATE TABLE syncd.rejected_records (
    id          bigserial PRIMARY KEY,
    entry_id    text,
    reason      text NOT NULL,
    raw         text NOT NULL,
    run_id      uuid,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now(),
    occurrences integer NOT NULL DEFAULT 1
);
CREATE UNIQUE INDEX rejected_records_key ON syncd.rejected_records (coalesce(entry_id, ''), md5(reason));
COMMENT ON TABLE syncd.rejected_records IS
    'Dead letters of the pull: records Kantata sent that could not be stored, with the reason.';
