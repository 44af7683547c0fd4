{#- Generic test: no two rows share the values of `columns` (NULLs compare equal, as in GROUP BY). -#}
{% test syncd_kantata_unique_grain(model, columns) %}
select {{ columns | join(', ') }}, count(*) as rows_with_this_grain
from {{ model }}
group by {{ columns | join(', ') }}
having count(*) > 1
{% endtest %}
