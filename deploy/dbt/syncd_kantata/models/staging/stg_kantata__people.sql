-- Kantata users the mirrored entries reference.
select
    u.id                                        as user_id,
    u.full_name,
    u.updated_at,
    u.synced_at
from {{ source('kantata', 'users') }} as u
