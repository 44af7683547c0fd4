"""dlt, the competitor: its `rest_api` source paginating `GET /time_entries` into PostgreSQL with
an `updated_at` incremental and `write_disposition="merge"` on `id`.

Configuration (dlt's documented building blocks only): bearer auth; `page_number` paginator
(`page`, base 1, total from `meta.page_count`); `per_page=200`, `order=updated_at:asc`, the
visibility filters syncd also sends; `updated_after` bound to a `dlt.sources.incremental` on
`updated_at`. Kantata keys entries by id under `time_entries` and gives their order in `results`
(api-notes §2); a JSONPath data selector cannot join the two, so the page is selected whole
(`$`) and a yield-map step, placed before the incremental step, yields
`time_entries[r.id] for r in results`. No side-loads (dlt users would not ask for them).

    python -m tests.benchmarks.dlt_run --base-url URL --token T --dsn DSN --work DIR

prints one JSON line: {"rows", "seconds", "extract", "normalize", "load"}.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson


def _results_order(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    keyed = doc.get("time_entries") or {}
    for ref in doc.get("results") or ():
        if ref.get("key", "time_entries") == "time_entries" and ref["id"] in keyed:
            yield keyed[ref["id"]]


def build_source(base_url: str, token: str) -> Any:
    """The rest_api source for Kantata time entries (see module docstring)."""
    from dlt.sources.rest_api import rest_api_source

    source = rest_api_source({
        "client": {
            "base_url": base_url.rstrip("/") + "/",
            "auth": {"type": "bearer", "token": token},
            "paginator": {"type": "page_number", "page_param": "page", "base_page": 1,
                          "total_path": "meta.page_count"},
        },
        "resources": [{
            "name": "time_entries",
            "primary_key": "id",
            "write_disposition": "merge",
            "endpoint": {
                "path": "time_entries",
                "data_selector": "$",
                "params": {
                    "per_page": 200, "order": "updated_at:asc",
                    "from_archived_workspaces": "true", "on_my_account": "false",
                    "updated_after": {"type": "incremental", "cursor_path": "updated_at",
                                      "initial_value": "2000-01-01T00:00:00+00:00"},
                },
            },
        }],
    })
    resource = source.resources["time_entries"]
    resource.add_yield_map(_results_order, insert_at=1)  # before the incremental step
    return source


def run(base_url: str, token: str, dsn: str, work: Path) -> dict[str, Any]:
    """One pipeline run into a fresh pipeline directory; returns the figures."""
    import dlt

    started = time.perf_counter()
    pipeline = dlt.pipeline(pipeline_name="bench_kantata", pipelines_dir=str(work),
                            destination=dlt.destinations.postgres(credentials=dsn),
                            dataset_name="dlt_kantata", progress="log" if False else None)
    source = build_source(base_url, token)
    t0 = time.perf_counter()
    pipeline.extract(source)
    t1 = time.perf_counter()
    pipeline.normalize()
    t2 = time.perf_counter()
    pipeline.load()
    t3 = time.perf_counter()
    with pipeline.sql_client() as c:
        rows = c.execute_sql("SELECT count(*) FROM time_entries")[0][0]
    return {"rows": rows, "seconds": t3 - started, "extract": t1 - t0, "normalize": t2 - t1,
            "load": t3 - t2}


def main(argv: list[str] | None = None) -> int:
    """Command line wrapper; prints the figures as one JSON line."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--base-url", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--dsn", required=True)
    p.add_argument("--work", type=Path, required=True)
    a = p.parse_args(argv)
    figures = run(a.base_url, a.token, a.dsn, a.work)
    sys.stdout.write(orjson.dumps(figures).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
