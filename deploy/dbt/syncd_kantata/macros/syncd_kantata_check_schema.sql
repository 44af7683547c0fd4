{#
  on-run-start check (dbt build/run/test, dbt source freshness): refuse a database whose syncd
  schema is older than this package needs, with what to do, instead of failing later on a
  missing column.

  1. syncd records every applied migration in syncd.schema_migrations (syncd/migrate.py). When
     the dbt role can read it, its highest version must be at least
     var('syncd_kantata_required_schema_version').
  2. Always (also for a BI login such as syncd_bi, which may not read syncd's tables): every
     column that this package's sources.yml names, kantata.time_entries_as_of, and every column
     that function returns (sources.yml meta.syncd_functions) must exist.
     pg_catalog is readable by every role, so this does not depend on privileges.
#}
{% macro syncd_kantata_check_schema() %}
  {%- if execute -%}
    {%- set required = var('syncd_kantata_required_schema_version') | int -%}
    {%- set state = var('syncd_kantata_state_schema', 'syncd') -%}
    {%- set mirror = var('syncd_kantata_schema', 'kantata') -%}
    {%- set advice = "Upgrade syncd and run `syncd migrate`, or install the syncd_kantata revision that matches the syncd you run (compatibility rule: migrations/README.md, \"dbt package\")." -%}

    {%- set probe -%}
      select coalesce(has_table_privilege(to_regclass({{ dbt.string_literal(state ~ '.schema_migrations') }}), 'select'), false)
    {%- endset -%}
    {%- if run_query(probe).columns[0].values()[0] -%}
      {%- set q -%}
        select coalesce(max(version), 0) from {{ adapter.quote(state) }}.schema_migrations
      {%- endset -%}
      {%- set found = run_query(q).columns[0].values()[0] | int -%}
      {%- if found < required -%}
        {{ exceptions.raise_compiler_error(
             "syncd_kantata needs the syncd schema at version " ~ required
             ~ " or later (migrations up to " ~ "%04d" | format(required) ~ "_*.sql); database "
             ~ target.dbname ~ " is at version " ~ found ~ " (" ~ state ~ ".schema_migrations). "
             ~ advice) }}
      {%- endif -%}
    {%- endif -%}

    {%- set wanted = [] -%}
    {%- set returned = [] -%}
    {%- for src in graph.sources.values() if src.package_name == 'syncd_kantata' -%}
      {%- for col in src.columns -%}
        {%- do wanted.append((src.schema, src.identifier, col)) -%}
      {%- endfor -%}
      {%- for fn, spec in (src.source_meta.get('syncd_functions', {}) or {}).items()
            if fn.startswith('time_entries_as_of(') -%}
        {%- for c in spec.get('columns', []) -%}
          {%- do returned.append(c.split(' ')[0]) -%}
        {%- endfor -%}
      {%- endfor -%}
    {%- endfor -%}
    {%- if wanted -%}
      {%- set q -%}
        select w.s || '.' || w.t || coalesce('.' || w.c, '()')
        from (values
          {%- for s, t, c in wanted %}
          ({{ dbt.string_literal(s) }}, {{ dbt.string_literal(t) }}, {{ dbt.string_literal(c) }}),
          {%- endfor %}
          {%- for c in returned | unique %}
          ({{ dbt.string_literal(mirror) }}, 'time_entries_as_of()', {{ dbt.string_literal(c) }}),
          {%- endfor %}
          ({{ dbt.string_literal(mirror) }}, 'time_entries_as_of', null)
        ) as w(s, t, c)
        where case when w.c is null
                   then to_regprocedure(quote_ident(w.s) || '.time_entries_as_of(timestamptz)') is null
                   when w.t = 'time_entries_as_of()'  -- a column the function returns
                   then not exists (
                       select 1 from pg_catalog.pg_proc p
                       where p.oid = to_regprocedure(quote_ident(w.s) || '.time_entries_as_of(timestamptz)')
                         and w.c = any(p.proargnames))
                   else not exists (
                       select 1 from pg_catalog.pg_attribute a
                       where a.attrelid = to_regclass(quote_ident(w.s) || '.' || quote_ident(w.t))
                         and a.attname = w.c and a.attnum > 0 and not a.attisdropped)
              end
        order by 1
      {%- endset -%}
      {%- set missing = run_query(q).columns[0].values() -%}
      {%- if missing | length > 0 -%}
        {{ exceptions.raise_compiler_error(
             "syncd_kantata: database " ~ target.dbname ~ " lacks " ~ missing | length
             ~ " object(s) this package reads (its syncd schema is older than version "
             ~ required ~ ", or not a syncd mirror): " ~ missing[:10] | join(', ')
             ~ (' ...' if missing | length > 10 else '') ~ ". " ~ advice) }}
      {%- endif -%}
    {%- endif -%}
  {%- endif -%}
  select 1
{%- endmacro %}
