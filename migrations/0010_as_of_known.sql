-- kantata.time_entries_as_of(ts) returns every entry known to exist at ts (issue #23).
--
-- 0009's function returned the version valid at ts, so an entry created before ts but first
-- read by syncd after an edit (its first known version starts at that later updated_at) was
-- missing: 9 of 20,005 entries in the demo for "as of yesterday", a BI total as of a date
-- short without saying so. An entry existed at ts when Kantata created it at or before ts
-- (created_at) and no deletion known to syncd happened at or before ts. For such an entry with
-- no version valid at ts, the earliest version known is shown, and the new column
-- exact_version says which of the two a row is. The return type changes, so the function is
-- replaced (DROP + CREATE, in this one transaction); nothing else depends on it.

DROP FUNCTION kantata.time_entries_as_of(timestamptz);

CREATE FUNCTION kantata.time_entries_as_of(ts timestamptz)
    RETURNS TABLE (
        version_id bigint, id bigint, workspace_id bigint, user_id bigint, story_id bigint,
        role_id bigint, date_performed date, time_in_minutes integer, billable boolean,
        notes text, rate_in_cents bigint, cost_rate_in_cents bigint, currency text,
        currency_symbol text, currency_base_unit integer, approved boolean,
        is_invoiced boolean, taxable boolean, location text, created_at timestamptz,
        updated_at timestamptz, valid_from timestamptz, valid_to timestamptz, deleted boolean,
        first_seen boolean, learned_via text, exact_version boolean)
    LANGUAGE sql STABLE AS $$
    -- the version valid at ts: exactly the entry as it was then
    SELECT v.*, true
    FROM kantata.time_entry_versions v
    WHERE v.valid_from <= ts AND (v.valid_to IS NULL OR v.valid_to > ts) AND NOT v.deleted
    UNION ALL
    -- created by ts, but every version syncd knows starts after ts (first read after an edit,
    -- or older versions pruned by SYNCD_HISTORY_RETENTION_DAYS): the earliest one known. Its
    -- valid_from is after ts, so no deletion known to syncd happened by ts; a version that is
    -- itself the deletion carries the columns the entry had before it.
    SELECT e.*, false
    FROM (SELECT DISTINCT ON (v.id) v.*
          FROM kantata.time_entry_versions v
          ORDER BY v.id, v.valid_from, v.version_id NULLS LAST) e
    WHERE e.valid_from > ts AND e.created_at <= ts
$$;

COMMENT ON FUNCTION kantata.time_entries_as_of(timestamptz) IS
    'Every time entry known to exist at instant ts (created_at <= ts, no deletion known by ts), one row each: the version valid at ts (exact_version true), or, for an entry syncd first read after it had been edited, the earliest version known (exact_version false: the values may be later than ts). Entries without created_at count from their first version.';

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'syncd_bi') THEN
        GRANT EXECUTE ON FUNCTION kantata.time_entries_as_of(timestamptz) TO syncd_bi;
    END IF;
END $$;
