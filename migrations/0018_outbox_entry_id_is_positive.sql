-- An update or delete of `entry_id` -5 (or 0) passed every check at insert (a new user's
-- trial), and went to Kantata as a request for an entry no Kantata account can hold: syncd
-- takes only positive ids from Kantata (a mirrored entry's id is at least 1), so such a row can
-- only be a writer's mistake, found late and by Kantata's 404 instead of at once. It is now
-- refused at insert with its rule named, like the other malformed rows (migrations/README.md,
-- "The outbox"); a row queued before this migration, or changed by an UPDATE since, is
-- dead-lettered by syncd when claimed, with the same reason. Checked by the BEFORE INSERT
-- trigger of 0017, not by a CHECK constraint: syncd must still be able to update an older such
-- row to `failed`.

CREATE OR REPLACE FUNCTION syncd.outbox_values_syncd_can_send() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.entry_id IS NOT NULL AND NEW.entry_id < 1 THEN
        RAISE EXCEPTION 'syncd.outbox: entry_id must be a Kantata time entry id (a positive integer), not % (outbox_entry_id_is_positive)', NEW.entry_id
            USING ERRCODE = 'check_violation', COLUMN = 'entry_id',
                  CONSTRAINT = 'outbox_entry_id_is_positive';
    END IF;
    IF NEW.payload IS NOT NULL AND NOT syncd.jsonb_numbers_fit_a_double(NEW.payload) THEN
        RAISE EXCEPTION 'syncd.outbox: payload holds a number a double cannot hold (beyond about 1.8e308, or nearer zero than 2.2e-308), which JSON clients read as another number or not at all (outbox_payload_numbers_fit_a_double)'
            USING ERRCODE = 'check_violation', COLUMN = 'payload',
                  CONSTRAINT = 'outbox_payload_numbers_fit_a_double';
    END IF;
    IF NEW.base_updated_at IS NOT NULL AND NOT isfinite(NEW.base_updated_at) THEN
        RAISE EXCEPTION 'syncd.outbox: base_updated_at must be an instant, not % (outbox_base_updated_at_is_an_instant)', NEW.base_updated_at
            USING ERRCODE = 'check_violation', COLUMN = 'base_updated_at',
                  CONSTRAINT = 'outbox_base_updated_at_is_an_instant';
    END IF;
    RETURN NEW;
END $$;
