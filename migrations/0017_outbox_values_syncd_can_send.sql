-- Two values a writer could queue passed every check at insert and then stopped the whole
-- push, every cycle, with a message that named no row (a new user's trial): a payload number
-- beyond the range of a double (`1e400`: jsonb holds it, no JSON decoder that Kantata or
-- syncd uses can; `1e-400`, nearer zero than a double's normal range, was worse: it was sent
-- as 0) and a `base_updated_at` of 'infinity' or '-infinity' (not an instant, so no version
-- of an entry can be compared with it). Such a row is now refused at insert, with
-- its rule named, like the other malformed rows (migrations/README.md, "The outbox"); a row
-- queued before this migration, or changed by an UPDATE since, is dead-lettered by syncd when
-- claimed, with the same reason, and the rows behind it are pushed. Checked by a BEFORE INSERT trigger of its own, not by a
-- CHECK constraint: syncd must still be able to update an older such row to `failed`.

-- Whether every number in `doc` is 0 or within a double's normal range (magnitude from
-- 2.2250738585072014e-308 to 1.7976931348623157e308): what a JSON client reads as written.
CREATE FUNCTION syncd.jsonb_numbers_fit_a_double(doc jsonb) RETURNS boolean
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT NOT jsonb_path_exists(doc, 'strict $.** ? (@.type() == "number" && @ != 0
        && (@ > 1.7976931348623157e308 || @ < -1.7976931348623157e308
            || (@ < 2.2250738585072014e-308 && @ > -2.2250738585072014e-308)))')
$$;

CREATE FUNCTION syncd.outbox_values_syncd_can_send() RETURNS trigger LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp AS $$
BEGIN
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

-- Named to fire after outbox_before_insert (triggers fire in name order), which leaves a
-- writer's base_updated_at as given and fills a missing one from the mirror.
CREATE TRIGGER outbox_values_syncd_can_send BEFORE INSERT ON syncd.outbox
    FOR EACH ROW EXECUTE FUNCTION syncd.outbox_values_syncd_can_send();
