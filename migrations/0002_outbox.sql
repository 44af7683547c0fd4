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
    sent_at           timestamptz,
    done_at           timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT outbox_op_valid CHECK (op IN ('create', 'update', 'delete')),
    CONSTRAINT outbox_status_valid
        CHECK (status IN ('pending', 'in_flight', 'done', 'failed', 'conflict')),
    CONSTRAINT outbox_entry_id_required_for_update_and_delete
        CHECK (op = 'create' OR entry_id IS NOT NULL),
    CONSTRAINT outbox_create_payload_is_an_object
        CHECK (op <> 'create' OR jsonb_typeof(payload) = 'object'),
    CONSTRAINT outbox_update_payload_is_a_non_empty_object
        CHECK (op <> 'update' OR (jsonb_typeof(payload) = 'object' AND payload <> '{}'::jsonb)),
    CONSTRAINT outbox_delete_has_no_payload
        CHECK (op <> 'delete' OR payload IS NULL OR payload = '{}'::jsonb),
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
COMMENT ON COLUMN syncd.outbox.sent_at IS
    'Last time a request carrying this row was sent; a set sent_at on a reclaimed row means the outcome must be looked up before re-sending.';

CREATE INDEX outbox_claimable_idx ON syncd.outbox (next_attempt_at, id)
    WHERE status IN ('pending', 'in_flight');
CREATE INDEX outbox_entry_idx ON syncd.outbox (entry_id);
CREATE INDEX outbox_status_idx ON syncd.outbox (status);

-- The version an edit is based on, recorded by the database itself at enqueue time, unless the
-- writer supplied it.
CREATE FUNCTION syncd.outbox_before_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.op IN ('update', 'delete') AND NEW.base_updated_at IS NULL THEN
        SELECT updated_at INTO NEW.base_updated_at
        FROM kantata.time_entries WHERE id = NEW.entry_id;
    END IF;
    NEW.status := 'pending';
    NEW.attempts := 0;
    RETURN NEW;
END $$;

CREATE TRIGGER outbox_before_insert BEFORE INSERT ON syncd.outbox
    FOR EACH ROW EXECUTE FUNCTION syncd.outbox_before_insert();

-- Wake syncd at commit so a change is pushed within about a second (polling is the fallback).
CREATE FUNCTION syncd.outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('syncd_outbox', '');
    RETURN NULL;
END $$;

CREATE TRIGGER outbox_notify AFTER INSERT ON syncd.outbox
    FOR EACH STATEMENT EXECUTE FUNCTION syncd.outbox_notify();
