-- The shape in which syncd sends time entries to PostgreSQL: a page is upserted as one array of
-- this composite type (syncd/store.py, UPSERT_ENTRIES), in the column order of
-- kantata.time_entries. One array of records costs asyncpg one type check per entry instead of
-- one per value (21 typed arrays), and PostgreSQL reads it faster: 1.2 instead of 1.8-2.4 ms of
-- client CPU and 4.1 instead of 4.9-6.0 ms of statement time per 200-entry page (issue #7).
-- Internal to syncd; nothing else should depend on it.

CREATE TYPE syncd.time_entry_in AS (
    id                 bigint,
    workspace_id       bigint,
    user_id            bigint,
    story_id           bigint,
    role_id            bigint,
    date_performed     date,
    time_in_minutes    integer,
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
    updated_at         timestamptz,
    raw                jsonb
);
