-- The live time entries as they were at one instant, from syncd's history
-- (kantata.time_entries_as_of, migrations/0009_history.sql and 0010_as_of_known.sql): var
-- syncd_kantata_as_of, an
-- ISO 8601 instant with its offset ('2026-11-01T00:00:00+00:00'); unset, the moment the view
-- is queried. Same columns as stg_kantata__time_entries, plus the version's validity.
-- depends_on: {{ source('kantata', 'time_entry_versions') }}
{%- set as_of = var('syncd_kantata_as_of', none) %}
{#- an instant without its offset would be read in the session's time zone (a trial) -#}
{%- if as_of is not none and not modules.re.match(
        '^\\d{4}-\\d{2}-\\d{2}[T ]\\d{2}:\\d{2}(:\\d{2}(\\.\\d+)?)?(Z|z|[+-]\\d{2}(:?\\d{2})?)$',
        as_of | string) %}
    {{ exceptions.raise_compiler_error(
        "var syncd_kantata_as_of must be an ISO 8601 instant with its offset, like "
        ~ "'2026-11-01T00:00:00+00:00' (a date or a time without an offset would be read "
        ~ "in the database session's time zone), not '" ~ (as_of | string)[:100] ~ "'") }}
{%- endif %}
{%- set at = 'current_timestamp' if as_of is none else dbt.string_literal(as_of) ~ '::timestamptz' %}
{%- set mirror = source('kantata', 'time_entry_versions') %}
select
    {{ syncd_kantata_entry_columns('v') }},
    v.valid_from,
    v.valid_to,
    v.first_seen,
    v.learned_via,
    v.exact_version,
    {{ at }} as as_of
from {{ adapter.quote(mirror.schema) }}.time_entries_as_of({{ at }}) as v
