-- The live time entries (Kantata still has them: deleted_at IS NULL), one row each, with
-- hours and amounts in currency units (macros/syncd_kantata_entry_columns.sql).
select
    {{ syncd_kantata_entry_columns('t') }},
    t.learned_via,
    t.synced_at
from {{ source('kantata', 'time_entries') }} as t
where t.deleted_at is null
