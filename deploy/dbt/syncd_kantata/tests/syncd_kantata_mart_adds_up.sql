-- Per currency, the mart adds up to the live entries it was built from: the same number of
-- entries and minutes, and the same billable amount (to a millionth of a currency unit, the
-- only rounding being numeric division). Returns the currencies that do not.
with mart as (
    select coalesce(currency, '') as currency, sum(entries) as entries,
           sum(minutes) as minutes, sum(billable_amount) as billable_amount
    from {{ ref('kantata_hours_by_project_person_month') }}
    group by 1
),
live as (
    select coalesce(currency, '') as currency, count(*) as entries,
           sum(time_in_minutes) as minutes, sum(billable_amount) as billable_amount
    from {{ ref('stg_kantata__time_entries') }}
    group by 1
)
select coalesce(m.currency, l.currency) as currency,
       m.entries as mart_entries, l.entries as live_entries,
       m.minutes as mart_minutes, l.minutes as live_minutes,
       m.billable_amount as mart_amount, l.billable_amount as live_amount
from mart as m
full join live as l on l.currency = m.currency
where m.entries is distinct from l.entries
   or m.minutes is distinct from l.minutes
   or abs(coalesce(m.billable_amount, 0) - coalesce(l.billable_amount, 0)) > 0.000001
   or (m.billable_amount is null) <> (l.billable_amount is null)
