{#
  The columns every time-entry staging model shows, from a relation aliased `alias` with
  kantata.time_entries' columns: Kantata's own values, and hours and amounts in currency units.

  Rates are minor units of `currency` per hour (rate_in_cents is cents only where
  currency_base_unit = 100; it is 1 for JPY), so every amount divides by currency_base_unit.
  An amount is only meaningful beside its `currency`: never sum amounts across currencies.
#}
{% macro syncd_kantata_entry_columns(alias) -%}
    {{ alias }}.id                                                 as time_entry_id,
    {{ alias }}.workspace_id,
    {{ alias }}.user_id,
    {{ alias }}.story_id,
    {{ alias }}.role_id,
    {{ alias }}.date_performed,
    {{ alias }}.time_in_minutes,
    {{ alias }}.time_in_minutes / 60.0                             as hours,
    {{ alias }}.billable,
    {{ alias }}.approved,
    {{ alias }}.is_invoiced,
    {{ alias }}.taxable,
    {{ alias }}.notes,
    {{ alias }}.location,
    {{ alias }}.currency,
    {{ alias }}.currency_symbol,
    {{ alias }}.currency_base_unit,
    {{ alias }}.rate_in_cents::numeric
        / nullif({{ alias }}.currency_base_unit, 0)                as billable_rate,
    {{ alias }}.cost_rate_in_cents::numeric
        / nullif({{ alias }}.currency_base_unit, 0)                as cost_rate,
    case when {{ alias }}.billable
         then {{ alias }}.time_in_minutes * {{ alias }}.rate_in_cents::numeric
              / (60 * nullif({{ alias }}.currency_base_unit, 0))
         else 0 end                                                as billable_amount,
    {{ alias }}.time_in_minutes * {{ alias }}.cost_rate_in_cents::numeric
        / (60 * nullif({{ alias }}.currency_base_unit, 0))         as cost_amount,
    {{ alias }}.created_at,
    {{ alias }}.updated_at
{%- endmacro %}
