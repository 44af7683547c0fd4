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
