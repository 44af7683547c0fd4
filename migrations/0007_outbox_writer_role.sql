-- Writing to the outbox with a least-privilege role (README, "The outbox", writer role).
--
-- 1. `id` becomes GENERATED ALWAYS AS IDENTITY: an INSERT that names its own id is refused
--    instead of colliding later with the ids every other writer draws, and a writer needs no
--    privilege on a sequence. COPY and pg_restore still carry ids over.
-- 2. The insert trigger looks up the entry's current updated_at in kantata.time_entries (the
--    version an edit is based on). It now runs as its owner, so a writer needs INSERT on
--    syncd.outbox only, not SELECT on the mirror. search_path is pinned, as SECURITY DEFINER
--    functions must.

-- The identity continues after the last id the old sequence handed out (not after the largest
-- id left in the table: a deleted row's id is never given to a new one).
DO $$
DECLARE
    next_id bigint;
BEGIN
    SELECT greatest(coalesce((SELECT max(id) FROM syncd.outbox), 0),
                    (SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END
                     FROM syncd.outbox_id_seq)) + 1
      INTO next_id;
    ALTER TABLE syncd.outbox ALTER COLUMN id DROP DEFAULT;
    DROP SEQUENCE syncd.outbox_id_seq;
    EXECUTE format('ALTER TABLE syncd.outbox ALTER COLUMN id '
                   'ADD GENERATED ALWAYS AS IDENTITY (START WITH %s)', next_id);
END $$;

ALTER FUNCTION syncd.outbox_before_insert() SECURITY DEFINER;
ALTER FUNCTION syncd.outbox_before_insert() SET search_path = pg_catalog, pg_temp;

-- `OVERRIDING SYSTEM VALUE` (and COPY) can still name an id. A row whose id is not the one the
-- identity just drew for it in this session is refused by a trigger that runs before the
-- bookkeeping one (triggers fire in name order). A full pg_restore creates triggers after
-- loading the data, so restores are unaffected.
CREATE FUNCTION syncd.outbox_id_from_identity() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    drawn bigint;
BEGIN
    BEGIN
        drawn := currval(pg_get_serial_sequence('syncd.outbox', 'id'));
    EXCEPTION WHEN object_not_in_prerequisite_state THEN  -- no id drawn in this session
        drawn := NULL;
    END;
    IF NEW.id IS DISTINCT FROM drawn THEN
        RAISE EXCEPTION 'syncd.outbox: id is assigned by the database; leave it out of the INSERT (got %)', NEW.id
            USING ERRCODE = 'generated_always', COLUMN = 'id';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER outbox_a_id_from_identity BEFORE INSERT ON syncd.outbox
    FOR EACH ROW EXECUTE FUNCTION syncd.outbox_id_from_identity();
