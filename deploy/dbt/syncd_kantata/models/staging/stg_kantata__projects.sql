-- Kantata projects (workspaces) the mirrored entries reference, with the fields BI filters on
-- (from raw: archived, account, currency).
select
    w.id                                        as workspace_id,
    w.title,
    (w.raw ->> 'archived')::boolean             as archived,
    w.raw ->> 'account_id'                      as account_id,
    w.raw ->> 'currency'                        as currency,
    w.updated_at,
    w.synced_at
from {{ source('kantata', 'workspaces') }} as w
