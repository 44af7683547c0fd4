"""The asyncpg boundary for the mirror (`kantata.*`) and syncd's pull state (`syncd.*`).

Every write is batch-shaped: one statement per page via `unnest` of arrays (entries as one
array of `syncd.time_entry_in` records). The upsert never lets an older version overwrite a
newer one (`updated_at` compared as instants) and revives a row marked deleted when Kantata
shows it again. `date_performed` travels as a `date`, so no time zone (the process's, the
session's or Kantata's) can shift it.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from syncd.models import Rejected, SideObject, TimeEntry
from syncd.reconcile import RowVersion
from syncd.windows import Window

__all__ = [
    "daily_summary", "finish_run", "note_run_progress", "live_counts_by_day", "record_full_read",
    "unmirrored_rejects", "finish_window", "get_cursor", "newest_per_id",
    "prune_windows", "record_rejects", "set_settled", "set_watermark", "start_run",
    "start_window", "store_page_body", "upsert_entries", "upsert_side", "window_rows", "window_states",
]

#: The mirror's entry columns, in the order of `TimeEntry`'s fields and of the
#: `syncd.time_entry_in` record type (migrations/0005).
ENTRY_COLUMNS: tuple[str, ...] = TimeEntry._fields

#: Columns whose key Kantata may leave out of an entry (every one but the id, the timestamps
#: and `raw`): an absent key is not a null, so the upsert keeps the stored value of a column
#: whose key the new version does not carry (the contract gives `workspace_id`, `user_id`,
#: `story_id`, `role_id` only with their `include=`, TE TimeEntry schema).
KEEP_WHEN_ABSENT: tuple[str, ...] = tuple(
    c for c in ENTRY_COLUMNS if c not in ("id", "date_performed", "time_in_minutes",
                                          "updated_at", "raw"))


def _set_column(c: str) -> str:
    if c in KEEP_WHEN_ABSENT:
        return f"{c} = CASE WHEN excluded.raw ? '{c}' THEN excluded.{c} ELSE t.{c} END"
    return f"{c} = excluded.{c}"


# One statement per page: the entries travel as one array of `syncd.time_entry_in` records (a
# `TimeEntry` is a tuple in that column order). The WHERE keeps a newer stored version (a
# re-sent older page never wins) and lets a row marked deleted come back when Kantata lists it
# again, but only a listing asked for after the deletion was recorded (LISTED_SINCE): a page
# read before a push's DELETE and written after it must not undo the deletion (a trial saw
# `deleted … push` then `restored … pull` in the same second; the next read asked after it
# brings back an entry that does exist). Kantata's updated_at has whole seconds, so two edits
# in one second share it: at equal updated_at the content read later wins when it differs
# (the overlap re-read is what delivers it). `raw` keeps the stored keys the new version
# lacks (`||` of jsonb objects: the new version's keys win), so a page read without
# `include=` changes nothing it did not carry and writes no history version; the alterations
# note is the new version's alone.
MERGED_RAW = "(t.raw - '_syncd_altered') || excluded.raw"
#: The instant (database clock) before which the listing being written was asked for: the
#: transaction's `syncd.listed_since` (`set_write_context`, the start of the run that read it),
#: or 'infinity' when unset (a version Kantata answered to syncd's own write: push). A row
#: marked deleted at or after it stays deleted, whatever version the listing carries.
LISTED_SINCE = ("coalesce(nullif(current_setting('syncd.listed_since', true), '')"
                "::timestamptz, 'infinity')")
#: The SET list of the upsert, from the ENTRY_COLUMNS constant (no outside value).
ENTRY_SET_LIST = ", ".join(_set_column(c) for c in ENTRY_COLUMNS[1:-1])
#: What an upsert of entries does with a stored row (UPSERT_ENTRIES, STORE_PAGE_BODY).
ENTRY_ON_CONFLICT = f"""ON CONFLICT (id) DO UPDATE SET
    {ENTRY_SET_LIST},
    raw = {MERGED_RAW},
    deleted_at = CASE WHEN t.deleted_at >= {LISTED_SINCE} THEN t.deleted_at END,
    synced_at = excluded.synced_at,
    learned_via = excluded.learned_via
WHERE t.updated_at < excluded.updated_at
   OR (t.updated_at = excluded.updated_at
       AND (t.deleted_at < {LISTED_SINCE} OR t.raw IS DISTINCT FROM {MERGED_RAW}))
"""
UPSERT_ENTRIES = f"""
INSERT INTO kantata.time_entries AS t ({", ".join(ENTRY_COLUMNS)}, deleted_at, synced_at,
                                      learned_via)
SELECT u.*, NULL::timestamptz, now(), syncd.history_source()
FROM unnest($1::syncd.time_entry_in[]) AS u
{ENTRY_ON_CONFLICT}"""

# ---------------------------------------------------------------- pages typed by PostgreSQL
# Issue #26: a list page's body goes to PostgreSQL as it came and one statement types and
# upserts its entries set-based, with the rules of UPSERT_ENTRIES. Python has checked that
# every entry is within the fast path's rules (`pagination.decode_page_fast`: the
# `time_entries` map holds exactly the listed entries, ids and foreign keys are digit strings,
# every typed field has the JSON type and spelling the careful path would take unchanged), so
# the statement only casts. A value of the right spelling that PostgreSQL still refuses (a 30th
# of February) raises asyncpg.DataError and the page is stored carefully in a new transaction.
#: The PostgreSQL type of each typed column (`syncd.time_entry_in`, migrations/0005).
_PAGE_TYPES = {
    "workspace_id": "bigint", "user_id": "bigint", "story_id": "bigint", "role_id": "bigint",
    "date_performed": "date", "time_in_minutes": "integer", "billable": "boolean",
    "notes": "text", "rate_in_cents": "bigint", "cost_rate_in_cents": "bigint",
    "currency": "text", "currency_symbol": "text", "currency_base_unit": "integer",
    "approved": "boolean", "is_invoiced": "boolean", "taxable": "boolean", "location": "text",
    "created_at": "timestamptz", "updated_at": "timestamptz"}
assert tuple(_PAGE_TYPES) == ENTRY_COLUMNS[1:-1]
#: The typed values of the page statement's select list, from the _PAGE_TYPES constant.
PAGE_BODY_VALUES = ", ".join(f"(e.value ->> '{c}')::{ty}" for c, ty in _PAGE_TYPES.items())
# The whole write of a listed page in one statement (one round trip instead of BEGIN, write
# context, upsert, checkpoint and COMMIT: five): `store_page_body`. The write context is set
# (transaction-local) by a materialized CTE that the insert joins, so it is in force before the
# first row is written and for the statement-level triggers, which fire after the statement.
_PAGE_WRITE_CONTEXT = """ctx AS MATERIALIZED (
    SELECT set_config('syncd.learned_via', $2, true) AS via,
           set_config('syncd.history', $3, true) AS history,
           set_config('syncd.listed_since', $LISTED, true) AS listed_since)"""
# `jsonb_each` yields the map's keys in jsonb's order; ORDER BY locks rows in id order, as
# `upsert_entries` does, so concurrent windows never deadlock.
_PAGE_STORED = f"""stored AS (
    INSERT INTO kantata.time_entries AS t ({", ".join(ENTRY_COLUMNS)}, deleted_at, synced_at,
                                          learned_via)
    SELECT e.key::bigint, {PAGE_BODY_VALUES},
           e.value, NULL::timestamptz, now(), ctx.via
    FROM ctx CROSS JOIN jsonb_each(convert_from($1::bytea, 'UTF8')::jsonb -> 'time_entries') AS e
    ORDER BY 1
    {ENTRY_ON_CONFLICT}
    RETURNING 1)"""
#: `checkpoint_window`'s statement; in the page statement its parameters follow the page's
#: three ($4..$9).
CHECKPOINT_WINDOW = """UPDATE syncd.windows SET pages_done = $4,
           rows_seen = CASE WHEN $4 = 1 THEN 0 ELSE rows_seen END + $5,
           page_size = coalesce($6, page_size)
    WHERE purpose = $1 AND window_start = $2 AND window_end = $3"""
_PAGE_CHECKPOINT = "checkpoint AS (\n    " + re.sub(
    r"\$(\d)", lambda m: f"${int(m[1]) + 3}", CHECKPOINT_WINDOW) + ")"
#: The write context with `syncd.listed_since` as the statement's last parameter.
_PAGE_CONTEXT_4 = _PAGE_WRITE_CONTEXT.replace("$LISTED", "$4")
_PAGE_CONTEXT_10 = _PAGE_WRITE_CONTEXT.replace("$LISTED", "$10")
STORE_PAGE_BODY = f"WITH {_PAGE_CONTEXT_4},\n{_PAGE_STORED}\nSELECT count(*) FROM stored"
STORE_PAGE_BODY_CHECKPOINTED = (f"WITH {_PAGE_CONTEXT_10},\n{_PAGE_STORED},\n"
                                f"{_PAGE_CHECKPOINT}\nSELECT count(*) FROM stored")


async def store_page_body(conn: asyncpg.Connection, body: bytes, *, learned_via: str,
                          history: bool, checkpoint: tuple[str, Window, int, int, int | None]
                          | None = None, listed_since: datetime | None = None) -> int:
    """Upsert the entries of one list page from its body (JSON bytes as Kantata sent them,
    accepted by `pagination.decode_page_typed` or `decode_page_fast`) in one statement that
    PostgreSQL types and writes set-based, with the rules of `upsert_entries` (older versions
    never win, an absent key keeps its stored column, history trigger and `learned_via`
    alike), with its write context (`set_write_context`, for this statement) and, given
    `checkpoint` = (purpose, window, pages_done, rows, page_size), the window's checkpoint
    (`checkpoint_window`): one round trip, atomic on its own (call it outside a transaction
    block, or inside one). `listed_since` as for `set_write_context`. The body goes as bytea:
    no Python str of the page. Returns rows
    changed. Raises ValueError for an unknown `learned_via`, and asyncpg.DataError when a
    value of the right spelling is not one (a 30th of February): nothing of it is then
    written, and the caller stores the page carefully."""
    if learned_via not in LEARNED_VIA:
        raise ValueError(f"learned_via must be one of {LEARNED_VIA}, not {learned_via!r}")
    mode = "on" if history else "off"
    since = _listed_since_text(listed_since)
    if checkpoint is None:
        return await conn.fetchval(STORE_PAGE_BODY, body, learned_via, mode, since)
    purpose, w, pages_done, rows, page_size = checkpoint
    return await conn.fetchval(STORE_PAGE_BODY_CHECKPOINTED, body, learned_via, mode,
                               purpose, w.start, w.end, pages_done, rows, page_size, since)


def _listed_since_text(at: datetime | None) -> str:
    """`syncd.listed_since` as set_config takes it: ISO 8601 with its offset, '' for none."""
    if at is None:
        return ""
    if at.tzinfo is None:
        raise ValueError("listed_since must be timezone-aware")
    return at.isoformat()


SIDE_SQL = {
    "workspaces": ("kantata.workspaces", "title"),
    "users": ("kantata.users", "full_name"),
    "stories": ("kantata.stories", "title"),
    "roles": ("kantata.roles", "name"),
}


LEARNED_VIA = ("backfill", "pull", "push", "reconcile")


async def set_write_context(conn: asyncpg.Connection, learned_via: str, *,
                            history: bool, listed_since: datetime | None = None) -> None:
    """Tell the mirror writes and the history trigger of migration 0009, for the rest of this
    transaction, how syncd learned what it writes next (`LEARNED_VIA`, stored in
    kantata.time_entries.learned_via), whether history mode is on (SYNCD_HISTORY), and, for
    entries read from a listing, an aware instant on the database clock before which every
    request of that listing was sent (`listed_since`: the start of the run, `RunStats.
    listed_since`): a row marked deleted at or after it is not brought back by it (LISTED_SINCE;
    None: any listed version brings a deleted row back, as a version Kantata returned to
    syncd's own write does). Call inside the transaction that writes kantata.time_entries.
    Raises ValueError for an unknown `learned_via` or a naive `listed_since`."""
    if learned_via not in LEARNED_VIA:
        raise ValueError(f"learned_via must be one of {LEARNED_VIA}, not {learned_via!r}")
    await conn.execute("SELECT set_config('syncd.learned_via', $1, true), "
                       "set_config('syncd.history', $2, true), "
                       "set_config('syncd.listed_since', $3, true)",
                       learned_via, "on" if history else "off",
                       _listed_since_text(listed_since))


async def prune_versions(conn: asyncpg.Connection, older_than_days: int) -> int:
    """Delete entry versions replaced more than `older_than_days` days ago (0: none); the
    current version of every entry always stays. Returns rows deleted."""
    if older_than_days <= 0:
        return 0
    status = await conn.execute(
        """DELETE FROM kantata.time_entry_history
           WHERE valid_to < now() - make_interval(days => $1)""",
        older_than_days)
    return int(status.rsplit(" ", 1)[-1])


def newest_per_id(entries: Iterable[TimeEntry]) -> list[TimeEntry]:
    """Keep one version per id, the newest by `updated_at` (a batch may list an id twice and
    Postgres refuses to upsert the same key twice in one statement). Order: first appearance."""
    best: dict[int, TimeEntry] = {}
    for e in entries:
        cur = best.get(e.id)
        if cur is None or e.updated_at > cur.updated_at:
            best[e.id] = e
    return list(best.values())


async def upsert_entries(conn: asyncpg.Connection, entries: Sequence[TimeEntry]) -> int:
    """Upsert a batch of entries in one statement; return how many rows changed."""
    # Sorted so concurrent writers lock rows in the same order (no deadlocks).
    rows = sorted(newest_per_id(entries), key=lambda e: e.id)
    if not rows:
        return 0
    status = await conn.execute(UPSERT_ENTRIES, rows)
    return int(status.rsplit(" ", 1)[-1])


async def upsert_side(conn: asyncpg.Connection, objs: Sequence[SideObject]) -> None:
    """Upsert side-loaded workspaces/users/stories/roles, one statement per kind present.
    Rows are locked in one order, kind by kind in name order and ids ascending, whatever
    order `objs` come in: concurrent pages that store the same objects (windows read in
    parallel, each page carrying the objects it references) wait for each other instead of
    deadlocking (a deadlock costs PostgreSQL's 1 s `deadlock_timeout` and a retry)."""
    by_kind: dict[str, dict[int, SideObject]] = {}
    for o in objs:
        by_kind.setdefault(o.kind, {})[o.id] = o
    for kind, items in sorted(by_kind.items()):
        table, label = SIDE_SQL[kind]
        extra_col = ", workspace_id" if kind == "stories" else ""
        extra_val = ", u.p" if kind == "stories" else ""
        extra_set = ", workspace_id = excluded.workspace_id" if kind == "stories" else ""
        vals = [items[k] for k in sorted(items)]  # one lock order for concurrent pages
        await conn.execute(
            f"""INSERT INTO {table} AS t (id, {label}, updated_at, raw{extra_col})
                SELECT u.i, u.l, u.ts, u.r{extra_val}
                FROM unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::jsonb[],
                            $5::bigint[]) AS u(i, l, ts, r, p)
                ON CONFLICT (id) DO UPDATE SET {label} = excluded.{label},
                    updated_at = excluded.updated_at, raw = excluded.raw,
                    synced_at = now(){extra_set}
                WHERE t.raw IS DISTINCT FROM excluded.raw""",
            [o.id for o in vals], [o.label for o in vals], [o.updated_at for o in vals],
            [o.raw for o in vals], [o.parent_id for o in vals])


def pg_text(value: str | None, limit: int | None = None) -> str | None:
    """`value` made storable in a PostgreSQL text column: NUL and unpaired surrogates escaped
    (`\\u0000`, `\\ud800`), cut to `limit` characters. Dead letters quote bad input verbatim."""
    if value is None:
        return None
    value = value.replace("\x00", "\\u0000")
    value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value if limit is None or len(value) <= limit else value[:limit] + "…"


async def record_rejects(conn: asyncpg.Connection, rejects: Sequence[Rejected],
                         run_id: uuid.UUID | None) -> None:
    """Store records that could not be mirrored (the pull's dead letters), counting repeats.
    Ids and reasons quoting bad input are escaped and cut (the id to 200 characters, so the
    unique index never sees an oversized key). Repeats within one batch are stored once."""
    rows = {(pg_text(r.entry_id, 200) or None, pg_text(r.reason, 2000)): pg_text(r.raw)
            for r in rejects}  # one row per key: ON CONFLICT may touch a row only once
    if not rows:
        return
    await conn.execute(
        """INSERT INTO syncd.rejected_records (entry_id, reason, raw, run_id)
           SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::uuid[])
           ON CONFLICT (coalesce(entry_id, ''), md5(reason)) DO UPDATE
           SET last_seen = now(), raw = excluded.raw, run_id = excluded.run_id,
               occurrences = syncd.rejected_records.occurrences + 1""",
        [k[0] for k in rows], [k[1] for k in rows], list(rows.values()), [run_id] * len(rows))


# ---------------------------------------------------------------- watermark
async def get_cursor(conn: asyncpg.Connection, stream: str = "time_entries"
                     ) -> tuple[datetime | None, datetime | None]:
    """The incremental watermark and its `settled` point (migrations/0006); (None, None) before
    the first backfill started."""
    row = await conn.fetchrow(
        "SELECT watermark, settled FROM syncd.watermarks WHERE stream = $1", stream)
    return (None, None) if row is None else (row["watermark"], row["settled"])


async def set_settled(conn: asyncpg.Connection, value: datetime,
                      stream: str = "time_entries") -> None:
    """Move `settled` forward to `value` (never backwards, never past the watermark)."""
    await conn.execute(
        """UPDATE syncd.watermarks
           SET settled = LEAST(watermark, GREATEST(settled, $2::timestamptz))
           WHERE stream = $1""", stream, value)


async def set_watermark(conn: asyncpg.Connection, value: datetime,
                        stream: str = "time_entries") -> None:
    """Move the watermark forward to `value` (never backwards). Call inside the transaction
    that stored the rows it covers."""
    await conn.execute(
        """INSERT INTO syncd.watermarks (stream, watermark) VALUES ($1, $2)
           ON CONFLICT (stream) DO UPDATE
           SET watermark = GREATEST(syncd.watermarks.watermark, excluded.watermark),
               updated_at = now()""", stream, value)


# ---------------------------------------------------------------- windows
async def window_states(conn: asyncpg.Connection, purpose: str) -> dict[Window, asyncpg.Record]:
    """Checkpoint rows for `purpose` ('backfill' | 'reconcile'), keyed by window."""
    rows = await conn.fetch("SELECT * FROM syncd.windows WHERE purpose = $1", purpose)
    return {Window(r["window_start"], r["window_end"]): r for r in rows}


#: Whether the run that last started reading a `syncd.windows` row is running in a process
#: that is alive (`syncd.run_is_live`, migration 0014).
WINDOW_RUN_IS_LIVE = """EXISTS (SELECT 1 FROM syncd.sync_runs r
               WHERE r.run_id = syncd.windows.run_id AND r.status = 'running'
                 AND syncd.run_is_live(r.id))"""
#: Claims a window for run $5 unless another run is reading it whose process is alive, or
#: another run finished it after run $5 started (two `syncd sync` at once, or one beside the
#: daemon, read every window twice before: each read costs the customer's Kantata budget).
#: No row back: the window is left to, or was done by, that other run.
START_WINDOW = f"""
INSERT INTO syncd.windows (purpose, window_start, window_end, status, started_at, run_id)
VALUES ($1, $2, $3, 'running', now(), $5)
ON CONFLICT (purpose, window_start, window_end) DO UPDATE
SET status = 'running', started_at = now(), last_error = NULL, run_id = $5,
    pages_done = CASE WHEN $4 THEN 0 ELSE syncd.windows.pages_done END,
    rows_seen = CASE WHEN $4 THEN 0 ELSE syncd.windows.rows_seen END,
    page_size = CASE WHEN $4 THEN NULL ELSE syncd.windows.page_size END
WHERE $5::uuid IS NULL OR syncd.windows.run_id IS NULL OR syncd.windows.run_id = $5
   OR syncd.windows.status NOT IN ('running', 'done')
   OR syncd.windows.status = 'running' AND NOT {WINDOW_RUN_IS_LIVE}
   OR syncd.windows.status = 'done'
      AND coalesce(syncd.windows.finished_at, '-infinity')
          < coalesce((SELECT r.started_at FROM syncd.sync_runs r WHERE r.run_id = $5),
                     'infinity')
RETURNING pages_done, page_size"""


async def start_window(conn: asyncpg.Connection, purpose: str, w: Window,
                       *, restart: bool, run_id: uuid.UUID | None = None
                       ) -> tuple[int, int | None] | None:
    """Mark a window running, read by run `run_id`; return (pages already done, the page size
    they were read with), (0, None) when `restart`. None when another run is reading it whose
    process is alive (`syncd.run_is_live`), or another run finished it after `run_id`
    started (`sync_runs.started_at`): the caller leaves it to that run. Without `run_id`
    (or one with no `sync_runs` row: then only the first rule) the window is always
    taken."""
    row = await conn.fetchrow(START_WINDOW, purpose, w.start, w.end, restart, run_id)
    return None if row is None else (row["pages_done"], row["page_size"])


async def give_back_window(conn: asyncpg.Connection, purpose: str, w: Window,
                           reason: str) -> None:
    """A window whose read stopped before its end (shutdown, cancellation, a run stopped by
    `errors.STOPS_THE_RUN`): back to `pending` with its stored pages (`pages_done`) kept, so
    the next run resumes it; `reason` goes to last_error. Never left `running`."""
    await conn.execute(
        """UPDATE syncd.windows SET status = 'pending', last_error = $4
           WHERE purpose = $1 AND window_start = $2 AND window_end = $3
             AND status = 'running'""", purpose, w.start, w.end, pg_text(reason))


async def checkpoint_window(conn: asyncpg.Connection, purpose: str, w: Window, pages_done: int,
                            rows: int, page_size: int | None = None) -> None:
    """Record that `pages_done` pages of `page_size` entries of `w` are stored (in the same
    transaction as the rows); a page 1 resets the count of rows seen."""
    await conn.execute(CHECKPOINT_WINDOW, purpose, w.start, w.end, pages_done, rows, page_size)


async def finish_window(conn: asyncpg.Connection, purpose: str, w: Window, *, status: str,
                        remote_count: int | None, error: str | None = None) -> None:
    """Mark a window done or failed, with Kantata's count for it."""
    await conn.execute(
        """UPDATE syncd.windows SET status = $4, remote_count = $5, last_error = $6,
               finished_at = now()
           WHERE purpose = $1 AND window_start = $2 AND window_end = $3""",
        purpose, w.start, w.end, status, remote_count, pg_text(error))


# ---------------------------------------------------------------- run history
async def start_run(conn: asyncpg.Connection, run_id: uuid.UUID, job: str) -> None:
    """Open a row in `syncd.sync_runs`."""
    await conn.execute("INSERT INTO syncd.sync_runs (run_id, job) VALUES ($1, $2)", run_id, job)


async def finish_run(conn: asyncpg.Connection, run_id: uuid.UUID, *, status: str, pages: int,
                     requests: int, rows_upserted: int, rows_rejected: int,
                     error: str | None, details: dict[str, Any] | None = None) -> None:
    """Close a run row with its figures and error (if any)."""
    await conn.execute(
        """UPDATE syncd.sync_runs SET finished_at = now(), status = $2, pages = $3,
               requests = $4, rows_upserted = $5, rows_rejected = $6, error = $7,
               details = $8::jsonb
           WHERE run_id = $1""",
        run_id, status, pages, requests, rows_upserted, rows_rejected, pg_text(error),
        orjson.dumps(details or {}).decode())


async def note_run_progress(conn: asyncpg.Connection, run_id: uuid.UUID, *, pages: int,
                            requests: int, rows_upserted: int, rows_rejected: int) -> None:
    """Write a running run's figures so far (`finish_run` writes the final ones); a run no
    longer `running` is left as it is."""
    await conn.execute(
        """UPDATE syncd.sync_runs SET pages = $2, requests = $3, rows_upserted = $4,
               rows_rejected = $5
           WHERE run_id = $1 AND status = 'running'""",
        run_id, pages, requests, rows_upserted, rows_rejected)


async def prune_runs(conn: asyncpg.Connection, older_than_days: int) -> int:
    """Delete run history older than `older_than_days`; return rows removed."""
    status = await conn.execute(
        "DELETE FROM syncd.sync_runs WHERE started_at < now() - make_interval(days => $1)",
        older_than_days)
    return int(status.rsplit(" ", 1)[-1])


#: the error of a run closed because its process is gone
DEAD_RUN_ERROR = ("abandoned: the process running it is gone (killed, or lost its database "
                  "session) without closing the run")

#: Runs whose owning process is gone: `running` rows without their advisory lock
#: (`runs.RunOwner`, `syncd.run_is_live`, migration 0014).
CLOSE_DEAD_RUNS = """
UPDATE syncd.sync_runs SET status = 'interrupted', finished_at = now(),
       error = coalesce(error, $1)
WHERE status = 'running' AND NOT syncd.run_is_live(id)
"""

#: Windows left `running` by a run that is no longer running (closed above, or closed without
#: giving them back): pending again, pages kept, so the next read resumes them.
GIVE_BACK_ORPHANED_WINDOWS = f"""
UPDATE syncd.windows SET status = 'pending',
       last_error = coalesce(last_error, 'interrupted: the run reading it ended first; '
                                         'resumed by the next run')
WHERE syncd.windows.status = 'running' AND NOT {WINDOW_RUN_IS_LIVE}
"""


@dataclass(frozen=True, slots=True)
class Closed:
    """What `close_dead_runs` closed: run rows and windows."""

    runs: int
    windows: int


async def close_dead_runs(conn: asyncpg.Connection) -> Closed:
    """Close the runs whose process is gone (`interrupted`, with `DEAD_RUN_ERROR`) and give
    the windows left `running` by them back (`pending`, pages kept); called at every run
    start. A run of a live process, however long, is never touched."""
    runs = await conn.execute(CLOSE_DEAD_RUNS, DEAD_RUN_ERROR)
    windows = await conn.execute(GIVE_BACK_ORPHANED_WINDOWS)
    return Closed(int(runs.rsplit(" ", 1)[-1]), int(windows.rsplit(" ", 1)[-1]))


# Mirrored records stored with text made storable (issue #12); served by the partial indexes
# of migration 0008, so it costs nothing while there are none.
ALTERED_COUNT = """
SELECT (SELECT count(*) FROM kantata.time_entries WHERE raw ? '_syncd_altered')
     + (SELECT count(*) FROM kantata.workspaces WHERE raw ? '_syncd_altered')
     + (SELECT count(*) FROM kantata.users WHERE raw ? '_syncd_altered')
     + (SELECT count(*) FROM kantata.stories WHERE raw ? '_syncd_altered')
     + (SELECT count(*) FROM kantata.roles WHERE raw ? '_syncd_altered')
"""


async def status_snapshot(conn: asyncpg.Connection, *, runs: int = 10) -> dict[str, Any]:
    """Figures for `syncd status`, /status and /readyz: watermark and its settled point, row
    counts, window progress, recent runs, last success per job, dead letters (count and the 10
    most recent), records stored with altered text, and outbox counts when the outbox exists."""
    snap: dict[str, Any] = {}
    snap["watermark"], snap["settled"] = await get_cursor(conn)
    row = await conn.fetchrow(
        """SELECT count(*) FILTER (WHERE deleted_at IS NULL) AS live,
                  count(*) FILTER (WHERE deleted_at IS NOT NULL) AS deleted,
                  max(synced_at) AS last_write
           FROM kantata.time_entries""")
    snap["entries"] = dict(row) if row else {}
    # what the next run start makes of rows a dead process left `running` (close_dead_runs)
    snap["windows"] = {f"{r['purpose']}:{r['status']}": r["n"] for r in await conn.fetch(
        """SELECT purpose, CASE WHEN status = 'running' AND NOT EXISTS (
                       SELECT 1 FROM syncd.sync_runs r WHERE r.run_id = w.run_id
                       AND r.status = 'running' AND syncd.run_is_live(r.id))
                   THEN 'pending' ELSE status END AS status, count(*) AS n
            FROM syncd.windows w GROUP BY 1, 2 ORDER BY 1, 2""")}
    snap["last_success"] = {r["job"]: r["at"] for r in await conn.fetch(
        """SELECT job, max(finished_at) AS at FROM syncd.sync_runs
           WHERE status IN ('ok', 'partial') GROUP BY job""")}
    snap["runs"] = [dict(r) for r in await conn.fetch(
        """SELECT run_id::text, job, started_at, finished_at,
                  CASE WHEN dead THEN 'interrupted' ELSE status END AS status, pages, requests,
                  rows_upserted, rows_rejected,
                  CASE WHEN dead THEN coalesce(error, $2) ELSE error END AS error
           FROM (SELECT *, status = 'running' AND NOT syncd.run_is_live(id) AS dead
                 FROM syncd.sync_runs ORDER BY started_at DESC LIMIT $1) r
           ORDER BY started_at DESC""", runs, DEAD_RUN_ERROR)]
    snap["rejected_records"] = await conn.fetchval("SELECT count(*) FROM syncd.rejected_records")
    snap["rejected"] = [dict(r) for r in await conn.fetch(
        """SELECT entry_id, reason, occurrences, last_seen FROM syncd.rejected_records
           ORDER BY last_seen DESC, id DESC LIMIT 10""")]
    snap["altered_records"] = await conn.fetchval(ALTERED_COUNT)
    if await conn.fetchval("SELECT to_regclass('syncd.outbox') IS NOT NULL"):
        snap["outbox"] = {r["status"]: r["n"] for r in await conn.fetch(
            "SELECT status, count(*) AS n FROM syncd.outbox GROUP BY status")}
        snap["outbox_oldest_pending"] = await conn.fetchval(
            "SELECT min(created_at) FROM syncd.outbox WHERE status = 'pending'")
    return snap


async def mark_deleted(conn: asyncpg.Connection, ids: Sequence[int],
                       at: datetime | None = None) -> int:
    """Set `deleted_at` on live mirror rows with these ids (never a physical delete); return
    how many rows changed."""
    if not ids:
        return 0
    status = await conn.execute(
        """UPDATE kantata.time_entries SET deleted_at = coalesce($2, now()), synced_at = now(),
               learned_via = syncd.history_source()
           WHERE id = ANY($1::bigint[]) AND deleted_at IS NULL""", list(ids), at)
    return int(status.rsplit(" ", 1)[-1])


# ---------------------------------------------------------------- reconciliation and verify
# Every mirror row whose date falls in the window, live or marked deleted (a deleted row that
# Kantata lists again is revived). Served by time_entries_date_performed_idx.
WINDOW_ROWS = """
SELECT id, updated_at, time_in_minutes, deleted_at
FROM kantata.time_entries
WHERE date_performed BETWEEN $1 AND $2 AND ($3 OR deleted_at IS NULL)
"""

# Verify compares every typed column of the live rows of a window (reconcile.COMPARED_COLUMNS).
WINDOW_COLUMNS = f"""
SELECT {", ".join(ENTRY_COLUMNS)}
FROM kantata.time_entries
WHERE date_performed BETWEEN $1 AND $2 AND deleted_at IS NULL
"""


async def window_columns(conn: asyncpg.Connection, w: Window) -> dict[int, RowVersion]:
    """Live mirror rows of `w` with every typed column (`RowVersion.columns`, in
    `reconcile.COMPARED_COLUMNS` order), for verify."""
    rows = await conn.fetch(WINDOW_COLUMNS, w.start, w.end)
    return {r["id"]: RowVersion(updated_at=r["updated_at"], time_in_minutes=r["time_in_minutes"],
                                columns=tuple(r.values())[:-1]) for r in rows}


# Live rows aggregated per day; verify folds the days into its windows.
DAILY_SUMMARY = """
SELECT date_performed, count(*) AS n, coalesce(sum(time_in_minutes), 0) AS minutes,
       max(updated_at) AS newest
FROM kantata.time_entries
WHERE deleted_at IS NULL AND date_performed BETWEEN $1 AND $2
GROUP BY date_performed
"""

# Checkpoints of windows that are no longer scheduled (the range moved on, or an operator
# reconciled an odd range) would otherwise look stale forever to the freshness views.
PRUNE_WINDOWS = """
DELETE FROM syncd.windows
WHERE purpose = $1 AND status <> 'running'
  AND (window_start, window_end) NOT IN (SELECT * FROM unnest($2::date[], $3::date[]))
"""


async def window_rows(conn: asyncpg.Connection, w: Window, *, include_deleted: bool = True
                      ) -> dict[int, RowVersion]:
    """Mirror rows with `date_performed` in `w` (inclusive): id → version."""
    rows = await conn.fetch(WINDOW_ROWS, w.start, w.end, include_deleted)
    return {r["id"]: RowVersion(updated_at=r["updated_at"],
                                time_in_minutes=r["time_in_minutes"],
                                deleted_at=r["deleted_at"]) for r in rows}


async def daily_summary(conn: asyncpg.Connection, since: date, until: date
                        ) -> list[tuple[date, int, int, datetime | None]]:
    """Live rows per `date_performed` in `since`..`until`: (date, count, minutes, max
    updated_at)."""
    rows = await conn.fetch(DAILY_SUMMARY, since, until)
    return [(r["date_performed"], r["n"], r["minutes"], r["newest"]) for r in rows]


async def prune_windows(conn: asyncpg.Connection, purpose: str, keep: Sequence[Window]) -> int:
    """Forget checkpoints of `purpose` for windows not in `keep` (running ones stay); return
    rows removed."""
    status = await conn.execute(PRUNE_WINDOWS, purpose, [w.start for w in keep],
                                [w.end for w in keep])
    return int(status.rsplit(" ", 1)[-1])


async def ensure_windows(conn: asyncpg.Connection, purpose: str, windows: Sequence[Window]
                         ) -> None:
    """Record `windows` as `pending` unless they already have a checkpoint, so that work not
    yet started is visible (freshness is not claimed before every window is read)."""
    if not windows:
        return
    await conn.execute(
        """INSERT INTO syncd.windows (purpose, window_start, window_end)
           SELECT $1, s, e FROM unnest($2::date[], $3::date[]) AS u(s, e)
           ON CONFLICT (purpose, window_start, window_end) DO NOTHING""",
        purpose, [w.start for w in windows], [w.end for w in windows])


# ---------------------------------------------------------------- reconciliation counts
# Live rows per day of a date range (issue #24: compared with Kantata's `count`). Served by
# time_entries_date_performed_idx.
LIVE_COUNTS_BY_DAY = """
SELECT date_performed, count(*) AS n
FROM kantata.time_entries
WHERE deleted_at IS NULL AND date_performed BETWEEN $1 AND $2
GROUP BY date_performed
"""

# Entry records syncd rejected whose entry has no live mirror row: Kantata counts them, the
# mirror does not hold them. (A reject of a newer version of an entry the mirror holds is
# counted by its mirror row.)
UNMIRRORED_REJECTS = """
SELECT r.entry_id, r.raw
FROM syncd.rejected_records r
WHERE r.entry_id IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM kantata.time_entries t
                  WHERE t.id::text = r.entry_id AND t.deleted_at IS NULL)
"""


async def live_counts_by_day(conn: asyncpg.Connection, since: date, until: date
                             ) -> dict[date, int]:
    """Live mirror rows per `date_performed` in `since`..`until` (inclusive); days without
    rows are absent."""
    rows = await conn.fetch(LIVE_COUNTS_BY_DAY, since, until)
    return {r["date_performed"]: r["n"] for r in rows}


async def unmirrored_rejects(conn: asyncpg.Connection) -> list[tuple[str, str]]:
    """`(entry_id, raw)` of the rejected entry records that have no live mirror row
    (`reconcile.rejects_by_day` dates them)."""
    return [(r["entry_id"], r["raw"]) for r in await conn.fetch(UNMIRRORED_REJECTS)]


async def record_full_read(conn: asyncpg.Connection, w: Window, *, count_offset: int,
                           count_trusted: bool) -> None:
    """Note on the reconcile checkpoint of `w` that it was just read in full, with what that
    read taught about Kantata's count (`reconcile.CountState`, migration 0012)."""
    await conn.execute(
        """UPDATE syncd.windows SET last_full_read_at = now(), count_offset = $3,
               count_trusted = $4
           WHERE purpose = 'reconcile' AND window_start = $1 AND window_end = $2""",
        w.start, w.end, count_offset, count_trusted)
