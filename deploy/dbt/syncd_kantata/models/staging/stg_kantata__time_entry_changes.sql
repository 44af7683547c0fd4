-- The change log: one row per change syncd recorded for a time entry (first_seen, edited,
-- deleted, restored) with what changed, from kantata.time_entry_changes.
select
    c.entry_id                                          as time_entry_id,
    c.changed_at,
    c.change,
    c.learned_via,
    c.fields,
    c.diff,
    c.changes,
    c.workspace_id,
    c.user_id,
    c.date_performed,
    c.time_in_minutes,
    c.time_in_minutes / 60.0                            as hours,
    c.was_approved,
    c.was_invoiced,
    c.change in ('edited', 'deleted')
        and coalesce(c.was_approved or c.was_invoiced, false) as changed_after_approval,
    c.version_id,
    c.previous_version_id
from {{ source('kantata', 'time_entry_changes') }} as c
