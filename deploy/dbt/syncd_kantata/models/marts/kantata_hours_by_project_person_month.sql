-- Hours and billable amount per project, person and month of the work, per currency: the
-- first question BI asks of time entries. Live entries only. An amount is in `currency`
-- units; rows of different currencies are never added together (currency is part of the
-- grain), so a project billed in two currencies has two rows for a person and month.
with entries as (
    select * from {{ ref('stg_kantata__time_entries') }}
)
select
    e.workspace_id,
    p.title                                                as project_title,
    e.user_id,
    u.full_name                                            as person_name,
    date_trunc('month', e.date_performed)::date            as month,
    e.currency,
    count(*)                                               as entries,
    sum(e.time_in_minutes)                                 as minutes,
    sum(e.time_in_minutes) / 60.0                          as hours,
    coalesce(sum(e.time_in_minutes) filter (where e.billable), 0) / 60.0
                                                           as billable_hours,
    sum(e.billable_amount)                                 as billable_amount,
    sum(e.cost_amount)                                     as cost_amount
from entries as e
left join {{ ref('stg_kantata__projects') }} as p on p.workspace_id = e.workspace_id
left join {{ ref('stg_kantata__people') }} as u on u.user_id = e.user_id
group by e.workspace_id, p.title, e.user_id, u.full_name,
         date_trunc('month', e.date_performed)::date, e.currency
