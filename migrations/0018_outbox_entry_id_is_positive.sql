-- An update or delete of `entry_id` -5 (or 0) passed every check at insert (a new user's
-- trial), and went to Kantata as a request for an entry no Kantata account can hold: syncd
-- takes only positive ids from Kantata (a mirrored entry's id is at least 1), so such a row can
-- only be a writer's mistake, found late and by Kantata's 404 instead of at once. It is now
-- refused at insert with its rule named, like the other malformed rows (migrations/README.md,
-- "The outbox"); a row queued before this migration, or changed by an UPDATE since, is
-- dead-lettered by syncd when claimed, with the same reason. A BEFORE INSERT trigger, not a
-- CHECK constraint: syncd must still be able to update an older such row to `failed`.

CREATE FUNCTION syncd.outbox_entry_id_is_positive() RETURNS trigger LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.entry_id IS NOT NULL AND NEW.entry_id < 1 THEN
        RAISE EXCEPTION 'syncd.outbox: entry_id must be a Kantata time entry id (a positive integer), not % (outbox_entry_id_is_positive)', NEW.entry_id
            USING ERRCODE = 'check_violation', COLUMN = 'entry_id',
                  CONSTRAINT = 'outbox_entry_id_is_positive';
    END IF;
    RETURN NEW;
END $$;

-- Fires after outbox_before_insert (triggers fire in name order), which names a create's
-- entry_id as the mistake first.
CREATE TRIGGER outbox_entry_id_is_positive BEFORE INSERT ON syncd.outbox
    FOR EACH ROW EXECUTE FUNCTION syncd.outbox_entry_id_is_positive();
