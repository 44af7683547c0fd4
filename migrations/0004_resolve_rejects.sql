-- A record rejected by the pull (syncd.rejected_records) is resolved as soon as a valid version
-- of the same entry is stored: the dead letter disappears instead of reporting a problem that
-- no longer exists. Statement-level triggers, so a page upsert costs one cheap check.

CREATE FUNCTION syncd.resolve_rejected_records() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM syncd.rejected_records WHERE entry_id IS NOT NULL) THEN
        DELETE FROM syncd.rejected_records r
        USING stored_rows s
        WHERE r.entry_id = s.id::text;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER time_entries_resolve_rejects_ins AFTER INSERT ON kantata.time_entries
    REFERENCING NEW TABLE AS stored_rows
    FOR EACH STATEMENT EXECUTE FUNCTION syncd.resolve_rejected_records();

CREATE TRIGGER time_entries_resolve_rejects_upd AFTER UPDATE ON kantata.time_entries
    REFERENCING NEW TABLE AS stored_rows
    FOR EACH STATEMENT EXECUTE FUNCTION syncd.resolve_rejected_records();
