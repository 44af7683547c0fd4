-- The outbox: other programs queue local creates, edits and deletes of time entries here with
-- plain SQL (in the same transaction as their own work); syncd pushes them to Kantata and
-- records what happened to each row. The columns are a public contract (README, "The outbox").

CREATE TABLE syncd.outbox (
    id                bigserial PRIMARY KEY,
    op                text        NOT NULL,
    entry_id          bigint,
    payload           jsonb,
    status            text        NOT NULL DEFAULT 'pending',
    attempts          integer     NOT NULL DEFAULT 0,
    last_error        text,
    correlation_key   uuid        NOT NULL DEFAULT gen_random_uuid(),
    base_updated_at   timestamptz,
    remote_updated_at timestamptz,
    remote_entry      jsonb,
    lease_owner       text,
    lease_expires_at  timestamptz,
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    batch_id          uuid,
    claimed_at        timestamptz,
    sent_at           timestamptz,
    done_at           timestamptz,
    result            text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT outbox_op_valid CHECK (op IN ('create', 'update', 'delete')),
    CONSTRAINT outbox_status_valid
        CHECK (status IN ('pending', 'in_flight', 'done', 'failed', 'conflict')),
    -- written so that an unknown op is reported by outbox_op_valid, not by this constraint
    CONSTRAINT outbox_entry_id_required_for_update_and_delete
        CHECK (op NOT IN ('update', 'delete') OR entry_id IS NOT NULL),
    -- coalesce: a NULL payload makes the comparison NULL, which a CHECK would let through
    CONSTRAINT outbox_create_payload_is_an_object
        CHECK (op <> 'create' OR coalesce(jsonb_typeof(payload) = 'object', false)),
    CONSTRAINT outbox_update_payload_is_a_non_empty_object
        CHECK (op <> 'update'
               OR coalesce(jsonb_typeof(payload) = 'object' AND payload <> '{}'::jsonb, false)),
    CONSTRAINT outbox_delete_has_no_payload
        CHECK (op <> 'delete' OR payload IS NULL OR payload = '{}'::jsonb),
    -- The fields Kantata lets a client write (api-notes §5-§7). syncd itself owns
    -- external_reference (its idempotency key), so a payload may not carry one; read-only
    -- fields (currency, approved, ...) would be silently ignored by Kantata.
    CONSTRAINT outbox_create_payload_has_required_fields
        CHECK (op <> 'create' OR jsonb_typeof(payload) <> 'object'
               OR payload ?& ARRAY['workspace_id', 'date_performed', 'time_in_minutes']),
    CONSTRAINT outbox_payload_has_only_writable_fields
        CHECK (op = 'delete' OR jsonb_typeof(payload) <> 'object'
               OR (payload - ARRAY['workspace_id', 'date_performed', 'time_in_minutes',
                                   'billable', 'rate_in_cents', 'notes', 'role_id', 'story_id',
                                   'user_id', 'location']) = '{}'::jsonb),
    CONSTRAINT outbox_in_flight_has_a_lease
        CHECK (status <> 'in_flight'
               OR (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL AND batch_id IS NOT NULL)),
    CONSTRAINT outbox_attempts_non_negative CHECK (attempts >= 0),
    CONSTRAINT outbox_correlation_key_unique UNIQUE (correlation_key)
);

COMMENT ON TABLE syncd.outbox IS
    'Local changes to push to Kantata. Insert op/entry_id/payload; syncd sets the rest.';
COMMENT ON COLUMN syncd.outbox.op IS 'create | update | delete.';
COMMENT ON COLUMN syncd.outbox.entry_id IS
    'Kantata time entry id; required for update/delete; set by syncd when a create succeeds.';
COMMENT ON COLUMN syncd.outbox.payload IS
    'create: the new entry''s fields (workspace_id, date_performed, time_in_minutes required); update: only the changed fields; delete: NULL.';
COMMENT ON COLUMN syncd.outbox.status IS
    'pending -> in_flight -> done | failed | conflict. failed and conflict carry last_error.';
COMMENT ON COLUMN syncd.outbox.attempts IS 'Push attempts so far; rows over SYNCD_OUTBOX_MAX_ATTEMPTS end failed (dead letter).';
COMMENT ON COLUMN syncd.outbox.last_error IS 'Why the row failed or conflicted, with Kantata''s own message where it gave one.';
COMMENT ON COLUMN syncd.outbox.correlation_key IS
    'Idempotency key sent to Kantata as external_reference.service_model_ref on creates.';
COMMENT ON COLUMN syncd.outbox.base_updated_at IS
    'The entry version an update/delete was based on; defaults to the mirror''s updated_at at insert time.';
COMMENT ON COLUMN syncd.outbox.remote_updated_at IS 'conflict: the remote updated_at that differed from base_updated_at.';
COMMENT ON COLUMN syncd.outbox.remote_entry IS 'conflict: the remote entry at the time of the conflict; done: Kantata''s answer.';
COMMENT ON COLUMN syncd.outbox.lease_owner IS 'syncd process holding the row while in_flight.';
COMMENT ON COLUMN syncd.outbox.lease_expires_at IS 'An in_flight row whose lease expired is reclaimed by any syncd.';
COMMENT ON COLUMN syncd.outbox.next_attempt_at IS 'Back-off: the row is not claimed before this instant.';
COMMENT ON COLUMN syncd.outbox.batch_id IS 'The claim (lease token) the row was last pushed under.';
COMMENT ON COLUMN syncd.outbox.claimed_at IS 'When the current or last lease was taken.';
COMMENT ON COLUMN syncd.outbox.done_at IS 'When the row reached done, failed or conflict.';
COMMENT ON COLUMN syncd.outbox.result IS
    'done: how (created | found_existing | updated | already_applied | local_wins | deleted | already_absent).';
COMMENT ON COLUMN syncd.outbox.sent_at IS
    'Last time a request carrying this row was sent; a set sent_at on a reclaimed row means the outcome must be looked up before re-sending.';

-- Claims scan pending rows in id order; reclaims look for expired leases; the per-entry order
-- rule (an update/delete waits for earlier open rows of the same entry) probes open rows by entry.
CREATE INDEX outbox_pending_idx ON syncd.outbox (id) WHERE status = 'pending';
CREATE INDEX outbox_lease_idx ON syncd.outbox (lease_expires_at) WHERE status = 'in_flight';
CREATE INDEX outbox_open_entry_idx ON syncd.outbox (entry_id, id)
    WHERE status IN ('pending', 'in_flight');
CREATE INDEX outbox_entry_idx ON syncd.outbox (entry_id);
CREATE INDEX outbox_status_idx ON syncd.outbox (status);

-- The version an edit is based on, recorded by the database itself at enqueue time, unless the
-- writer supplied it. A writer owns only op, entry_id, payload, base_updated_at and
-- correlation_key; every other column is reset here, whatever the INSERT put in it (a
-- next_attempt_at in 2099 would otherwise park the row forever).
CREATE FUNCTION syncd.outbox_before_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.op = 'create' AND NEW.entry_id IS NOT NULL THEN
        RAISE EXCEPTION 'syncd.outbox: a create must not set entry_id (syncd fills it in when Kantata has created the entry)'
            USING ERRCODE = 'check_violation', COLUMN = 'entry_id';
    END IF;
    IF NEW.op IN ('update', 'delete') AND NEW.base_updated_at IS NULL THEN
        SELECT updated_at INTO NEW.base_updated_at
        FROM kantata.time_entries WHERE id = NEW.entry_id;
    END IF;
    -- Everything below is syncd's bookkeeping: a writer's values would only confuse it.
    NEW.status := 'pending';
    NEW.attempts := 0;
    NEW.last_error := NULL;
    NEW.remote_updated_at := NULL;
    NEW.remote_entry := NULL;
    NEW.lease_owner := NULL;
    NEW.lease_expires_at := NULL;
    NEW.batch_id := NULL;
    NEW.claimed_at := NULL;
    NEW.sent_at := NULL;
    NEW.done_at := NULL;
    NEW.result := NULL;
    NEW.next_attempt_at := now();
    NEW.created_at := now();
    NEW.updated_at := now();
    RETURN NEW;
END $$;

CREATE TRIGGER outbox_before_insert BEFORE INSERT ON syncd.outbox
    FOR EACH ROW EXECUTE FUNCTION syncd.outbox_before_insert();

CREATE FUNCTION syncd.outbox_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END $$;

CREATE TRIGGER outbox_touch BEFORE UPDATE ON syncd.outbox
    FOR EACH ROW EXECUTE FUNCTION syncd.outbox_touch();

-- Wake syncd at commit so a change is pushed within about a second (polling is the fallback).
CREATE FUNCTION syncd.outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('syncd_outbox', '');
    RETURN NULL;
END $$;

CREATE TRIGGER outbox_notify AFTER INSERT ON syncd.outbox
    FOR EACH STATEMENT EXECUTE FUNCTION syncd.outbox_notify();

-- An operator putting failed or conflict rows back to pending (`syncd outbox retry`, or an
-- UPDATE of their own) wakes syncd at commit as well. syncd's own moves to pending (back-off,
-- expired or released leases) do not: syncd itself knows when those rows are due.
CREATE TRIGGER outbox_notify_retry AFTER UPDATE OF status ON syncd.outbox
    FOR EACH ROW WHEN (OLD.status IN ('failed', 'conflict') AND NEW.status = 'pending')
    EXECUTE FUNCTION syncd.outbox_notify();
