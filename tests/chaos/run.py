"""The chaos harness of issue #8: faults, crashes, restarts and bad input, then an oracle.

    .venv/bin/python -m tests.chaos.run --smoke          # CI size, about a minute
    .venv/bin/python -m tests.chaos.run --minutes 10     # the long run

What runs (all on loopback, in a throwaway directory):

* a throwaway PostgreSQL (`syncd.pgserver.TempPostgres`), restarted under load and with syncd's
  connections killed by `pg_terminate_backend`;
* the Kantata simulator as its own process, with faults injected through `PUT /_sim/faults`
  (429/500/502/503, latency, timeouts, connection resets, responses lost after the change was
  applied, corrupt pages: about 20 % of requests);
* "remote users" editing, creating, deleting and archiving through `/_sim`, sometimes writing
  text PostgreSQL cannot store (NUL) or 200 KB notes;
* "local programs" inserting outbox creates, updates and deletes with plain SQL;
* two `syncd run` daemons at once, SIGKILLed at random moments (anywhere, between a bulk POST and
  its commit, while a `syncd sync --since` is paging, in the middle of `syncd reconcile`),
  SIGTERMed while pushing, and restarted; an extra `syncd push` now and then.

Then faults stop and one clean cycle runs (push, sync, reconcile), after which the oracle checks:
the mirror equals `GET /_sim/entries` field by field (tests/oracle.py), every outbox create
produced exactly one remote entry (external references counted per correlation key), every
outbox row is done/failed/conflict with a reason, nothing inserted was lost, and `syncd verify`
exits 0. A report is printed; the exit code is 0 only when every check passed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

from syncd.pgserver import TempPostgres, free_port
from tests.oracle import mirror_diff

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "chaos-token-0123456789abcdef"
SERVICE = "syncd"
LOCAL_MARK = "chaos-local"
HARNESS_APP = "chaos-harness"
FINAL = ("done", "failed", "conflict")
LOG_ALARMS = ("Traceback", "Unclosed", "unclosed", "Task was destroyed",
              "was never awaited", "Exception ignored")


# ================================================================== configuration and report
@dataclass
class ChaosConfig:
    """One harness run. `seconds` of chaos; `entries` seeded in the simulator; `seed` drives
    every random choice of the harness (the processes' timing is real, so runs differ)."""

    seconds: float = 600.0
    entries: int = 20_000
    seed: int = 1
    daemons: int = 2
    error_rate: float = 0.08       # 429/500/502/503
    timeout_rate: float = 0.02
    reset_rate: float = 0.04
    lost_response_rate: float = 0.04
    bad_page_rate: float = 0.03    # truncated / HTML / missing ids, on list pages
    latency_ms: float = 10.0
    user_actions_per_second: float = 4.0
    outbox_rows_per_second: float = 5.0
    chaos_every: tuple[float, float] = (3.0, 8.0)  # seconds between crash/restart actions
    scripted: bool = False         # smoke: every kind of action once, in a fixed order
    workdir: Path | None = None
    keep: bool = False
    verbose: bool = True


@dataclass
class Report:
    """Everything the harness counted, and the oracle's verdict."""

    cfg: ChaosConfig
    started: float = field(default_factory=time.monotonic)
    faults: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    actions: Counter[str] = field(default_factory=Counter)      # kills, restarts, db events
    sigterm_exit_codes: list[int] = field(default_factory=list)
    users: Counter[str] = field(default_factory=Counter)
    outbox_inserted: Counter[str] = field(default_factory=Counter)
    outbox_insert_errors: int = 0
    bad_inputs: Counter[str] = field(default_factory=Counter)
    max_concurrent_syncd: int = 0
    clean_cycle: dict[str, int] = field(default_factory=dict)
    shifted_rows: int = 0
    rows_compared: int = 0
    mirror_diffs: list[str] = field(default_factory=list)
    outbox_final: Counter[str] = field(default_factory=Counter)
    outbox_open: int = 0
    without_reason: int = 0
    creates_checked: int = 0
    duplicates: int = 0
    lost: int = 0
    lost_detail: list[str] = field(default_factory=list)
    phantom: int = 0
    rejected_records: int = 0
    failed_reasons: Counter[str] = field(default_factory=Counter)
    health_misses: int = 0
    verify_exit: int | None = None
    chaos_seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    workdir: str = ""

    @property
    def ok(self) -> bool:
        return (not self.mirror_diffs and self.duplicates == 0 and self.lost == 0
                and self.phantom == 0 and self.outbox_open == 0 and self.without_reason == 0
                and self.verify_exit == 0 and not self.errors)

    def render(self) -> str:
        c = self.cfg
        kills = {k: v for k, v in self.actions.items() if k.startswith("sigkill")}
        lines = [
            "syncd chaos report",
            f"  chaos phase          {self.chaos_seconds:.0f} s (total "
            f"{time.monotonic() - self.started:.0f} s), {c.entries} seeded entries, seed {c.seed},"
            f" {c.daemons} daemons",
            f"  requests to Kantata  {self.requests} (at least; the simulator's log is sampled)",
            f"  faults injected      {sum(self.faults.values())}: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())),
            f"  kills (SIGKILL)      {sum(kills.values())}: "
            + ", ".join(f"{k.removeprefix('sigkill_')} {v}" for k, v in sorted(kills.items())),
            f"  SIGSTOP past lease   {self.actions['sigstop_past_lease']}, /healthz misses "
            f"of live daemons {self.health_misses}",
            f"  SIGTERM during push  {self.actions['sigterm_push']} (exit codes "
            f"{sorted(Counter(self.sigterm_exit_codes).items())})",
            f"  restarts             syncd {self.actions['restart']}, PostgreSQL "
            f"{self.actions['pg_restart']}, backends terminated "
            f"{self.actions['pg_terminate_backend']}",
            f"  concurrency          up to {self.max_concurrent_syncd} syncd processes at once "
            f"({self.actions['extra_push']} extra `syncd push`)",
            "  remote users         " + ", ".join(f"{k} {v}" for k, v in
                                                   sorted(self.users.items())),
            "  local programs       outbox rows inserted "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.outbox_inserted.items()))
            + f" ({self.outbox_insert_errors} inserts failed while PostgreSQL was away)",
            f"  bad inputs tried     {sum(self.bad_inputs.values())}: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.bad_inputs.items()))
            + f"; dead letters stored {self.rejected_records}",
            "  clean cycle          " + ", ".join(f"{k} exit {v}" for k, v in
                                                   self.clean_cycle.items())
            + f"; {self.shifted_rows} outbox rows needed the settle clock moved on",
            "  outbox final         " + ", ".join(f"{k} {v}" for k, v in
                                                   sorted(self.outbox_final.items()))
            + f"; open {self.outbox_open}; failed/conflict without a reason {self.without_reason}",
            "  why rows failed      " + ", ".join(f"{k} {v}" for k, v in
                                                  self.failed_reasons.most_common(6)),
            f"  rows compared        {self.rows_compared} (mirror differences "
            f"{len(self.mirror_diffs)})",
            f"  creates checked      {self.creates_checked} (external references per "
            "correlation key)",
            f"  duplicates found     {self.duplicates}",
            f"  lost                 {self.lost}",
            f"  phantom writes       {self.phantom} (failed creates that exist in Kantata)",
            f"  syncd verify         exit {self.verify_exit}",
        ]
        for d in self.mirror_diffs[:20]:
            lines.append(f"    mirror diff: {d}")
        for d in self.lost_detail[:20]:
            lines.append(f"    lost: {d}")
        for e in self.errors[:20]:
            lines.append(f"    error: {e}")
        lines.append(f"  RESULT               {'PASS' if self.ok else 'FAIL'}"
                     + (f" (logs kept in {self.workdir})" if self.workdir else ""))
        return "\n".join(lines)


def _reason_kind(text: str | None) -> str:
    """A short label for an outbox last_error (for the report)."""
    t = (text or "").lower()
    for needle, label in (("archived", "archived workspace"), ("not found", "entry gone"),
                          ("changed since", "conflict"), ("lock", "lock date"),
                          ("invoiced", "invoiced"), ("dead letter", "dead letter")):
        if needle in t:
            return label
    return (text or "no reason")[:40]


def say(cfg: ChaosConfig, msg: str) -> None:
    if cfg.verbose:
        print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ================================================================== processes
class Proc:
    """A child process with its output copied to a log file and JSON log events parsed."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logdir: Path) -> None:
        self.name, self.argv, self.env = name, argv, env
        self.log_path = logdir / f"{name}.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.events: deque[dict[str, Any]] = deque(maxlen=3000)
        self.seen = 0  # events ever parsed (absolute index of the next one)
        self.tail: deque[str] = deque(maxlen=60)
        self._reader: asyncio.Task[None] | None = None
        self.ready = False  # logged daemon_ready
        self.port = int(env.get("SYNCD_HTTP_PORT", "0"))

    async def start(self) -> Proc:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, env=self.env, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with self.log_path.open("ab") as f:
            async for raw in self.proc.stdout:
                f.write(raw)
                line = raw.decode(errors="replace").rstrip("\n")
                self.tail.append(line)
                if line.startswith("{"):
                    with contextlib.suppress(orjson.JSONDecodeError):
                        e = orjson.loads(line)
                        self.events.append(e)
                        self.seen += 1
                        self.ready = self.ready or e.get("event") == "daemon_ready"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def wait_event(self, pred: Callable[[dict[str, Any]], bool], timeout: float,
                         *, after: int | None = None) -> dict[str, Any] | None:
        """The first event matching `pred` parsed after index `after` (default: now)."""
        start = self.seen if after is None else after
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.running:
            new = self.seen - start
            if new > 0:
                for e in list(self.events)[-min(new, len(self.events)):]:
                    if pred(e):
                        return e
                start = self.seen
            await asyncio.sleep(0.01)
        return None

    def signal(self, sig: int) -> None:
        if self.running:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    async def wait(self, timeout: float) -> int | None:
        assert self.proc is not None
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            return None
        if self._reader is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reader, 5)
        return code

    async def stop(self, grace: float = 10.0) -> int | None:
        if not self.running:
            return self.proc.returncode if self.proc else None
        self.signal(signal.SIGTERM)
        code = await self.wait(grace)
        if code is None:
            self.signal(signal.SIGKILL)
            code = await self.wait(5)
        return code


# ================================================================== the harness
class Harness:
    def __init__(self, cfg: ChaosConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.report = Report(cfg)
        self.workdir = cfg.workdir or Path(tempfile.mkdtemp(prefix="syncd-chaos-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)
        self.logdir = self.workdir / "logs"
        self.logdir.mkdir(exist_ok=True)
        self.pg: TempPostgres | None = None
        self.dsn = ""
        self.sim: Proc | None = None
        self.sim_url = ""
        self.http: aiohttp.ClientSession | None = None
        self.daemons: dict[str, Proc] = {}
        self.clis: list[Proc] = []
        self.generation = Counter[str]()
        self.stop_load = asyncio.Event()
        self.db: asyncpg.Connection | None = None
        self.inserted: dict[int, str] = {}        # outbox id -> op
        self.entry_ids: list[int] = []            # remote ids, refreshed
        self.protected: set[int] = set()          # entries syncd created: never deleted
        self.workspaces: list[int] = []           # on my account
        self.dirty: dict[int, float] = {}         # entries with unstorable notes -> fix at
        self.lock_date: date | None = None
        self._files: list[Any] = []
        self._structlog_before: dict[str, Any] | None = None
        self.frozen: set[Proc] = set()
        today = datetime.now(UTC).date()
        self.backfill_start = today - timedelta(days=745)

    # ---------------------------------------------------------------- settings / env
    def syncd_settings(self) -> dict[str, str]:
        return {
            "database_url": self.dsn, "kantata_base_url": self.sim_url,
            "kantata_token": TOKEN, "kantata_allow_insecure_loopback": "true",
            "backfill_start": self.backfill_start.isoformat(), "backfill_window_months": "3",
            "window_concurrency": "2", "per_page": "100", "pull_interval": "3",
            "push_interval": "2", "reconcile_recent_interval": "15",
            "reconcile_old_interval": "45", "reconcile_recent_days": "60",
            "outbox_lease": "15", "shutdown_grace": "5", "max_retries": "4",
            "backoff_base": "0.05", "backoff_cap": "0.5", "retry_after_cap": "1",
            "request_timeout": "2", "connect_timeout": "2", "overlap": "5",
            "log_format": "json", "log_level": "INFO",
        }

    def env(self, **over: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SYNCD_", "NOTIFY_SOCKET", "WATCHDOG_"))}
        env.update({f"SYNCD_{k.upper()}": v for k, v in self.syncd_settings().items()})
        env.update(over)
        return env

    # ---------------------------------------------------------------- setup
    async def setup(self) -> None:
        cfg = self.cfg
        self.pg = await asyncio.to_thread(TempPostgres(self.workdir / "pg").start)
        admin = await asyncpg.connect(self.pg.dsn)
        await admin.execute("CREATE DATABASE chaos")
        await admin.close()
        self.dsn = self.pg.dsn.rsplit("/", 1)[0] + "/chaos"
        port = free_port()
        self.sim = await Proc("simulator", [
            sys.executable, "-m", "syncd.simulator.cli", "--port", str(port), "--token", TOKEN,
            "--entries", str(cfg.entries), "--seed", str(cfg.seed), "--lock-date", "auto",
            "--hang-seconds", "3"], self.env(), self.logdir).start()
        self.sim_url = f"http://127.0.0.1:{port}/api/v1"
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        for _ in range(600):
            try:
                st = await self.ctl("GET", "/_sim/state")
                break
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
        else:
            raise RuntimeError("the simulator did not start:\n" + "\n".join(self.sim.tail))
        self.lock_date = date.fromisoformat(st["lock_date"]) if st["lock_date"] else None
        ws = (await self.ctl("GET", "/_sim/workspaces"))["workspaces"]
        self.workspaces = [int(w["id"]) for w in ws if w["on_my_account"] and not w["archived"]]
        await self.refresh_entries()
        code, out = await self.cli("migrate", timeout=60)
        if code != 0:
            raise RuntimeError(f"syncd migrate failed: {out}")
        self.db = await self.connect()
        say(cfg, f"PostgreSQL {self.pg.dsn}, simulator {self.sim_url}, logs in {self.logdir}")

    async def connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.dsn, timeout=5,
                                     server_settings={"application_name": HARNESS_APP})

    async def ctl(self, method: str, path: str, body: Any = None) -> Any:
        assert self.http is not None
        base = self.sim_url.rsplit("/api/v1", 1)[0]
        data = orjson.dumps(body) if body is not None else None
        async with self.http.request(method, base + path, data=data) as resp:
            raw = await resp.read()
            if resp.status >= 400:
                raise RuntimeError(f"{method} {path}: {resp.status} {raw[:200]!r}")
            return orjson.loads(raw) if raw else None

    async def refresh_entries(self) -> None:
        doc = await self.ctl("GET", "/_sim/entries")
        self.entry_ids = [int(e["id"]) for e in doc["time_entries"]]
        self.protected |= {int(e["id"]) for e in doc["time_entries"]
                           if (e.get("notes") or "").startswith(LOCAL_MARK)}

    # ---------------------------------------------------------------- syncd processes
    async def start_daemon(self, name: str) -> Proc:
        self.generation[name] += 1
        p = await Proc(f"daemon-{name}-{self.generation[name]}", [
            sys.executable, "-m", "syncd", "run"],
            self.env(SYNCD_HTTP_PORT=str(free_port())), self.logdir).start()
        self.daemons[name] = p
        self.note_concurrency()
        return p

    def note_concurrency(self) -> None:
        n = sum(p.running for p in self.daemons.values()) + sum(p.running for p in self.clis)
        self.report.max_concurrent_syncd = max(self.report.max_concurrent_syncd, n)

    async def start_cli(self, *args: str) -> Proc:
        n = len(self.clis) + 1
        p = await Proc(f"cli-{n}-{args[0]}", [sys.executable, "-m", "syncd", *args],
                       self.env(), self.logdir).start()
        self.clis.append(p)
        self.note_concurrency()
        return p

    async def cli(self, *args: str, timeout: float = 300) -> tuple[int, str]:
        p = await self.start_cli(*args)
        code = await p.wait(timeout)
        if code is None:
            p.signal(signal.SIGKILL)
            await p.wait(5)
            return -1, "\n".join(p.tail)
        return code, "\n".join(p.tail)

    # ---------------------------------------------------------------- faults
    def fault_config(self) -> dict[str, Any]:
        c = self.cfg
        return {"error_rate": c.error_rate, "statuses": [429, 500, 502, 503],
                "timeout_rate": c.timeout_rate, "reset_rate": c.reset_rate,
                "lost_response_rate": c.lost_response_rate, "bad_page_rate": c.bad_page_rate,
                "latency_ms": c.latency_ms, "seed": c.seed}

    async def count_requests(self) -> None:
        """Sample the simulator's request log (read, then clear) every second."""
        while True:
            with contextlib.suppress(Exception):
                log = (await self.ctl("GET", "/_sim/requests"))["requests"]
                await self.ctl("DELETE", "/_sim/requests")
                self.report.requests += len(log)
                for r in log:
                    f = r.get("fault")
                    if f:
                        self.report.faults[f] += 1
                        if f.startswith("bad_page"):
                            self.report.bad_inputs[f] += 1
            await asyncio.sleep(1.0)

    # ---------------------------------------------------------------- remote users
    def recent_date(self) -> str:
        today = datetime.now(UTC).date()
        lo = max(self.lock_date + timedelta(days=1) if self.lock_date else today,
                 today - timedelta(days=40))
        span = max((today - lo).days, 0)
        return (lo + timedelta(days=self.rng.randint(0, span))).isoformat()

    async def remote_users(self) -> None:
        rng, rep = self.rng, self.report
        archived: list[int] = []
        last_refresh = 0.0
        while not self.stop_load.is_set():
            await asyncio.sleep(rng.expovariate(self.cfg.user_actions_per_second))
            try:
                if time.monotonic() - last_refresh > 5:
                    await self.refresh_entries()
                    last_refresh = time.monotonic()
                await self.fix_dirty(due_only=True)
                ids = self.entry_ids
                roll = rng.random()
                if roll < 0.45 and ids:
                    eid = rng.choice(ids)
                    cur = await self.ctl("GET", f"/_sim/entries/{eid}")
                    notes = cur.get("notes") or ""
                    prefix = notes.split(" |", 1)[0] if notes.startswith(LOCAL_MARK) else ""
                    fields: dict[str, Any] = {
                        "notes": f"{prefix} | remote edit {uuid.uuid4().hex[:8]}".strip(" |"),
                        "time_in_minutes": rng.randint(5, 480)}
                    bad = rng.random()
                    if bad < 0.05:  # text PostgreSQL cannot store; the user fixes it later
                        fields["notes"] = f"{prefix} pasted\x00from a terminal".strip()
                        self.dirty[eid] = time.monotonic() + rng.uniform(3, 15)
                        rep.bad_inputs["nul_in_notes"] += 1
                    elif bad < 0.08:
                        fields["notes"] = f"{prefix} " + "long notes ✓ " * 16_000
                        rep.bad_inputs["notes_200kb"] += 1
                    await self.ctl("PATCH", f"/_sim/entries/{eid}", fields)
                    rep.users["edits"] += 1
                elif roll < 0.7:
                    e = await self.ctl("POST", "/_sim/entries", {
                        "workspace_id": rng.choice(self.workspaces),
                        "date_performed": self.recent_date(),
                        "time_in_minutes": rng.randint(5, 480), "notes": "remote create"})
                    self.entry_ids.append(int(e["id"]))
                    rep.users["creates"] += 1
                elif roll < 0.9 and ids:
                    candidates = [i for i in rng.sample(ids, min(20, len(ids)))
                                  if i not in self.protected]
                    if candidates:
                        eid = candidates[0]
                        cur = await self.ctl("GET", f"/_sim/entries/{eid}")
                        if not (cur.get("notes") or "").startswith(LOCAL_MARK):
                            await self.ctl("DELETE", f"/_sim/entries/{eid}")
                            self.entry_ids.remove(eid)
                            self.dirty.pop(eid, None)
                            rep.users["deletes"] += 1
                else:
                    if archived and (len(archived) > 1 or rng.random() < 0.5):
                        await self.ctl("POST", f"/_sim/workspaces/{archived.pop(0)}/unarchive")
                        rep.users["unarchives"] += 1
                    else:
                        wid = rng.choice(self.workspaces)
                        await self.ctl("POST", f"/_sim/workspaces/{wid}/archive")
                        archived.append(wid)
                        rep.users["archives"] += 1
            except (RuntimeError, aiohttp.ClientError, ValueError) as exc:
                rep.users["errors"] += 1
                if rep.users["errors"] < 5:
                    say(self.cfg, f"remote user action failed: {exc}")
        for wid in archived:  # leave the account as users found it (not required)
            with contextlib.suppress(Exception):
                await self.ctl("POST", f"/_sim/workspaces/{wid}/unarchive")

    async def fix_dirty(self, *, due_only: bool) -> None:
        now = time.monotonic()
        for eid, at in list(self.dirty.items()):
            if due_only and at > now:
                continue
            try:
                cur = await self.ctl("GET", f"/_sim/entries/{eid}")
            except RuntimeError as exc:
                if ": 404 " not in str(exc):
                    raise
                self.dirty.pop(eid, None)  # deleted meanwhile (e.g. by an outbox delete)
                continue
            notes = (cur.get("notes") or "").replace("\x00", " ")
            await self.ctl("PATCH", f"/_sim/entries/{eid}", {"notes": notes + " (fixed)"})
            self.dirty.pop(eid, None)
            self.report.users["fixed_notes"] += 1

    # ---------------------------------------------------------------- local programs
    async def local_programs(self) -> None:
        rng = self.rng
        while not self.stop_load.is_set():
            await asyncio.sleep(rng.expovariate(self.cfg.outbox_rows_per_second))
            roll = rng.random()
            try:
                if roll < 0.5:
                    big = rng.random()
                    await self.insert_creates(1 if big < 0.8 else rng.randint(5, 40)
                                              if big < 0.97 else rng.randint(100, 250))
                elif roll < 0.85:
                    await self.insert_target_rows("update")
                else:
                    await self.insert_target_rows("delete")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                self.report.outbox_insert_errors += 1
                await self.reconnect()

    async def reconnect(self) -> None:
        if self.db is not None:
            with contextlib.suppress(Exception):
                self.db.terminate()
        self.db = None
        for _ in range(100):
            try:
                self.db = await self.connect()
                return
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                await asyncio.sleep(0.2)

    def create_payload(self) -> dict[str, Any]:
        return {"workspace_id": self.rng.choice(self.workspaces),
                "date_performed": self.recent_date(),
                "time_in_minutes": self.rng.randint(5, 480),
                "notes": f"{LOCAL_MARK} {uuid.uuid4().hex[:12]}"}

    async def insert_creates(self, n: int, conn: asyncpg.Connection | None = None) -> None:
        if conn is None and self.db is None:
            await self.reconnect()
        db = conn or self.db
        assert db is not None
        payloads = [orjson.dumps(self.create_payload()).decode() for _ in range(n)]
        async with db.transaction():  # one application transaction, n changes
            ids = await db.fetch(
                """INSERT INTO syncd.outbox (op, payload)
                   SELECT 'create', p FROM unnest($1::jsonb[]) AS p RETURNING id""", payloads)
        for r in ids:
            self.inserted[r["id"]] = "create"
        self.report.outbox_inserted["create"] += n

    async def insert_target_rows(self, op: str) -> None:
        if self.db is None:
            await self.reconnect()
        assert self.db is not None
        rows = await self.db.fetch(
            """SELECT id FROM kantata.time_entries
               WHERE deleted_at IS NULL AND NOT is_invoiced
                 AND ($1::date IS NULL OR date_performed > $1)
                 AND id NOT IN (SELECT entry_id FROM syncd.outbox
                                WHERE op = 'create' AND entry_id IS NOT NULL)
                 AND coalesce(notes, '') NOT LIKE $2
               ORDER BY random() LIMIT 1""",
            self.lock_date if op == "delete" or self.rng.random() < 0.9 else None,
            f"{LOCAL_MARK}%" if op == "delete" else "\x01never")
        if not rows:
            return
        eid = rows[0]["id"]
        payload = None
        if op == "update":
            payload = orjson.dumps(
                {"notes": f"local edit {uuid.uuid4().hex[:8]}"} if self.rng.random() < 0.6
                else {"time_in_minutes": self.rng.randint(5, 480)}).decode()
        rid = await self.db.fetchval(
            "INSERT INTO syncd.outbox (op, entry_id, payload) VALUES ($1, $2, $3::jsonb) "
            "RETURNING id", op, eid, payload)
        self.inserted[rid] = op
        self.report.outbox_inserted[op] += 1

    # ---------------------------------------------------------------- chaos actions
    def running_daemons(self) -> list[Proc]:
        return [p for p in self.daemons.values() if p.running]

    async def restart(self, name: str) -> None:
        await asyncio.sleep(self.rng.uniform(0.2, 1.5))
        await self.start_daemon(name)
        self.report.actions["restart"] += 1

    def name_of(self, p: Proc) -> str:
        return next(n for n, q in self.daemons.items() if q is p)

    async def sigkill(self, p: Proc, kind: str) -> None:
        p.signal(signal.SIGKILL)
        await p.wait(10)
        self.report.actions[f"sigkill_{kind}"] += 1
        say(self.cfg, f"SIGKILL {p.name} ({kind})")

    async def act_kill_random(self) -> None:
        ds = self.running_daemons()
        if ds:
            p = self.rng.choice(ds)
            await self.sigkill(p, "random")
            await self.restart(self.name_of(p))

    async def wait_for_push(self, procs: list[Proc], timeout: float) -> Proc | None:
        """Insert a burst of creates and return the first process that claims a batch."""
        marks = {p: p.seen for p in procs}
        conn = await self.connect()  # its own: the local programs' connection is busy
        try:
            await self.insert_creates(self.rng.randint(20, 60), conn)
        finally:
            await conn.close()
        tasks = {asyncio.create_task(p.wait_event(
            lambda e: e.get("event") == "outbox_batch_claimed", timeout, after=marks[p])): p
            for p in procs}
        winner, pending = None, set(tasks)
        while pending and winner is None:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            winner = next((tasks[t] for t in done if t.result() is not None), None)
        for t in pending:
            t.cancel()
        return winner

    async def act_kill_between_post_and_commit(self) -> None:
        p = await self.wait_for_push(self.running_daemons(), 15)
        if p is None:
            return
        await asyncio.sleep(self.rng.uniform(0.0, 0.15))  # the bulk POST is on its way
        await self.sigkill(p, "between_post_and_commit")
        await self.restart(self.name_of(p))

    async def act_sigterm_during_push(self) -> None:
        p = await self.wait_for_push(self.running_daemons(), 15)
        if p is None:
            return
        p.signal(signal.SIGTERM)
        code = await p.wait(20)
        if code is None:
            p.signal(signal.SIGKILL)
            await p.wait(5)
            code = -9
        self.report.sigterm_exit_codes.append(code)
        self.report.actions["sigterm_push"] += 1
        say(self.cfg, f"SIGTERM {p.name} during a push: exit {code}")
        if code != 0:
            self.report.errors.append(f"{p.name}: SIGTERM during a push exited {code}")
        await self.restart(self.name_of(p))

    async def act_freeze_during_push(self) -> None:
        """SIGSTOP a daemon that just claimed a batch for longer than its lease, then SIGCONT:
        another process takes the rows over meanwhile, and the woken one must notice that its
        lease is gone instead of overwriting their outcome."""
        p = await self.wait_for_push(self.running_daemons(), 15)
        if p is None:
            return
        await asyncio.sleep(self.rng.uniform(0.0, 0.1))
        p.signal(signal.SIGSTOP)
        self.frozen.add(p)
        say(self.cfg, f"SIGSTOP {p.name} (lease {self.syncd_settings()['outbox_lease']} s)")
        try:
            await asyncio.sleep(float(self.syncd_settings()["outbox_lease"]) + 3)
        finally:
            p.signal(signal.SIGCONT)
            self.frozen.discard(p)
        self.report.actions["sigstop_past_lease"] += 1

    async def act_kill_during_paging(self) -> None:
        p = await self.start_cli("sync", "--since", self.backfill_start.isoformat())
        e = await p.wait_event(lambda e: e.get("event") in ("backfill_progress",
                                                           "window_failed"), 30)
        if e is None:
            await p.stop()
            return
        await asyncio.sleep(self.rng.uniform(0.0, 0.3))
        await self.sigkill(p, "during_paging")

    async def act_kill_mid_reconcile(self) -> None:
        p = await self.start_cli("reconcile")
        e = await p.wait_event(lambda e: e.get("event") in ("window_reconciled",
                                                           "window_failed"), 40)
        if e is None:
            await p.stop()
            return
        await asyncio.sleep(self.rng.uniform(0.0, 0.3))
        await self.sigkill(p, "mid_reconcile")

    async def act_pg_restart(self) -> None:
        assert self.pg is not None
        say(self.cfg, "restarting PostgreSQL")
        await asyncio.to_thread(self.pg.restart)
        self.report.actions["pg_restart"] += 1
        await self.reconnect()

    async def act_pg_terminate(self) -> None:
        c = await self.connect()
        try:
            n = await c.fetchval(
                """SELECT count(pg_terminate_backend(pid)) FROM (
                       SELECT pid FROM pg_stat_activity
                       WHERE datname = current_database() AND pid <> pg_backend_pid()
                         AND coalesce(application_name, '') <> $1
                       ORDER BY random() LIMIT 3) s""", HARNESS_APP)
        finally:
            await c.close()
        self.report.actions["pg_terminate_backend"] += n or 0
        say(self.cfg, f"pg_terminate_backend: {n} syncd connection(s)")

    async def act_extra_push(self) -> None:
        await self.start_cli("push")  # runs beside the daemons; not waited for
        self.report.actions["extra_push"] += 1

    ACTIONS: tuple[tuple[str, float], ...] = (
        ("act_kill_between_post_and_commit", 3), ("act_pg_terminate", 2),
        ("act_kill_during_paging", 2), ("act_sigterm_during_push", 2), ("act_pg_restart", 1),
        ("act_kill_mid_reconcile", 2), ("act_kill_random", 3), ("act_extra_push", 1),
        ("act_freeze_during_push", 1))

    async def chaos_monkey(self, until: float) -> None:
        names = [n for n, _ in self.ACTIONS]
        plan = list(names)  # every kind once first
        if not self.cfg.scripted:
            self.rng.shuffle(plan)
        while time.monotonic() < until:
            await asyncio.sleep(self.rng.uniform(*self.cfg.chaos_every))
            if time.monotonic() >= until:
                break
            name = plan.pop(0) if plan else self.rng.choices(
                names, weights=[w for _, w in self.ACTIONS])[0]
            try:
                await asyncio.wait_for(getattr(self, name)(), 60)
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError,
                    RuntimeError) as exc:
                say(self.cfg, f"{name} did not complete: {type(exc).__name__}: {exc}")
            # a daemon that died on its own is a finding: restart it, and say so
            for n, p in list(self.daemons.items()):
                if not p.running and p.proc is not None and p.proc.returncode not in (
                        0, -signal.SIGKILL, -signal.SIGTERM):
                    self.report.errors.append(f"{p.name} exited {p.proc.returncode} by itself:"
                                              f" {' | '.join(list(p.tail)[-5:])}")
                    await self.start_daemon(n)
            self.note_concurrency()

    async def watch_health(self) -> None:
        """/healthz of every live, ready, not frozen daemon must answer 200 (liveness never
        depends on PostgreSQL or Kantata); five misses in a row are a finding."""
        assert self.http is not None
        misses: Counter[str] = Counter()
        while True:
            await asyncio.sleep(2.0)
            for p in list(self.daemons.values()):
                if not (p.running and p.ready) or p in self.frozen:
                    continue
                try:
                    async with self.http.get(f"http://127.0.0.1:{p.port}/healthz",
                                             timeout=aiohttp.ClientTimeout(total=2)) as r:
                        ok = r.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    ok = False
                if ok:
                    misses[p.name] = 0
                    continue
                misses[p.name] += 1
                if misses[p.name] == 5 and p.running and p not in self.frozen:
                    self.report.health_misses += 1
                    self.report.errors.append(f"{p.name}: /healthz unanswered for 10 s")

    # ---------------------------------------------------------------- phases
    async def chaos(self) -> None:
        cfg = self.cfg
        await self.ctl("PUT", "/_sim/faults", self.fault_config())
        counter = asyncio.create_task(self.count_requests())
        health = asyncio.create_task(self.watch_health())
        for i in range(cfg.daemons):
            await self.start_daemon(chr(ord("A") + i))
        t0 = time.monotonic()
        until = t0 + cfg.seconds
        load = [asyncio.create_task(self.remote_users()),
                asyncio.create_task(self.local_programs())]
        say(cfg, f"chaos for {cfg.seconds:.0f} s")
        await self.chaos_monkey(until)
        self.stop_load.set()
        await asyncio.gather(*load, return_exceptions=True)
        self.report.chaos_seconds = time.monotonic() - t0
        await self.ctl("DELETE", "/_sim/faults")
        say(cfg, "faults off; stopping syncd processes")
        codes = await asyncio.gather(*(p.stop(10) for p in self.daemons.values()))
        for p in self.clis:
            if p.running:
                p.signal(signal.SIGKILL)
                await p.wait(5)
        for p, code in zip(self.daemons.values(), codes, strict=True):
            started = any(e.get("event") == "daemon_starting" for e in p.events)
            # SIGTERM before the daemon installed its handlers (still importing) kills it by
            # the default action, which is a clean stop too: it had nothing to drain
            if code not in (0, None, -signal.SIGKILL) and (started or code != -signal.SIGTERM):
                self.report.errors.append(f"{p.name}: final SIGTERM exited {code}")
        for t in (counter, health):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        # count what the last second of chaos did
        log = (await self.ctl("GET", "/_sim/requests"))["requests"]
        self.report.requests += len(log)
        for r in log:
            if r.get("fault"):
                self.report.faults[r["fault"]] += 1

    async def clean_cycle(self) -> None:
        cfg = self.cfg
        await self.fix_dirty(due_only=False)  # users fix what they broke
        await self.reconnect()
        code, _ = await self.cli("push")
        self.report.clean_cycle["push"] = code
        self.report.shifted_rows = await self.drain_with_clock_moved_on()
        for step in ("sync", "reconcile"):
            code, out = await self.cli(step)
            self.report.clean_cycle[step] = code
            if code != 0:
                self.report.errors.append(f"clean `syncd {step}` exited {code}: {out[-800:]}")
        code, out = await self.cli("verify")
        self.report.verify_exit = code
        if code != 0:
            say(cfg, f"syncd verify exited {code}:\n{out[-3000:]}")

    async def drain_with_clock_moved_on(self) -> int:
        """Rows that wait for their settle time or back-off are pushed with the claim clock
        moved past it (what waiting would do; no other syncd runs now). Returns their count."""
        from syncd import push
        from syncd.app import open_deps
        from syncd.settings import Settings

        assert self.db is not None
        open_q = "SELECT count(*) FROM syncd.outbox WHERE status IN ('pending', 'in_flight')"
        waiting = await self.db.fetchval(open_q)
        if not waiting:
            return 0
        settings = Settings(**self.syncd_settings())  # type: ignore[arg-type]
        self.log_to_file("oracle-push.log")
        now = await self.db.fetchval("SELECT now()")
        async with open_deps(settings) as deps:
            for _ in range(20):
                now += timedelta(hours=1)
                await push.push_once(deps, owner="chaos-oracle", now=now)
                if not await self.db.fetchval(open_q):
                    break
        return int(waiting)

    def log_to_file(self, name: str) -> None:
        """This process's own syncd logs (the in-process drain) go to a file, not the report."""
        import logging

        import structlog

        f = (self.logdir / name).open("a")
        self._files.append(f)
        if self._structlog_before is None:  # put back in teardown (pytest runs more tests)
            self._structlog_before = structlog.get_config()
        structlog.configure(processors=[structlog.processors.add_log_level,
                                        structlog.processors.TimeStamper(fmt="iso", utc=True),
                                        structlog.processors.JSONRenderer()],
                            logger_factory=structlog.PrintLoggerFactory(file=f),
                            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
                            cache_logger_on_first_use=False)

    async def oracle(self) -> None:
        rep = self.report
        assert self.db is not None
        remote = (await self.ctl("GET", "/_sim/entries"))["time_entries"]
        rep.rows_compared = len(remote)
        rep.mirror_diffs = await mirror_diff(self.db, remote)
        rows = await self.db.fetch(
            """SELECT id, op, status, last_error, correlation_key::text AS key, entry_id
               FROM syncd.outbox""")
        by_id = {r["id"]: r for r in rows}
        rep.outbox_final = Counter(r["status"] for r in rows)
        rep.outbox_open = sum(1 for r in rows if r["status"] not in FINAL)
        rep.without_reason = sum(1 for r in rows if r["status"] in ("failed", "conflict")
                                 and not (r["last_error"] or "").strip())
        for rid, op in self.inserted.items():
            if rid not in by_id:
                rep.lost += 1
                rep.lost_detail.append(f"outbox row {rid} ({op}) committed by a local program "
                                       "is gone")
        refs = await self.syncd_refs()
        creates = [r for r in rows if r["op"] == "create"]
        rep.creates_checked = len(creates)
        keys = {r["key"] for r in creates}
        for r in creates:
            n = len(refs.get(r["key"], []))
            rep.duplicates += max(0, n - 1)
            if r["status"] == "done" and n == 0:
                rep.lost += 1
                rep.lost_detail.append(f"outbox create {r['id']} is done but Kantata has no "
                                       f"entry for {r['key']}")
            if r["status"] == "failed" and n > 0:
                rep.phantom += n
        rep.phantom += sum(len(v) for k, v in refs.items() if k not in keys)
        for d in rep.mirror_diffs:
            if "missing from mirror" in d:
                rep.lost += 1
        live = {int(e["id"]) for e in remote}
        for r in rows:
            if r["op"] == "delete" and r["status"] == "done" and r["entry_id"] in live:
                rep.lost += 1
                rep.lost_detail.append(f"outbox delete {r['id']} is done but entry "
                                       f"{r['entry_id']} is still in Kantata")
        rep.failed_reasons = Counter(
            _reason_kind(r["last_error"]) for r in rows if r["status"] in ("failed", "conflict"))
        rep.rejected_records = await self.db.fetchval(
            "SELECT count(*) FROM syncd.rejected_records")
        self.scan_logs()

    def scan_logs(self) -> None:
        """Crash signs in any syncd process's output are findings even when the data is
        right: a traceback, an unclosed resource, a task destroyed while pending."""
        for path in sorted(self.logdir.glob("*.log")):
            if path.name.startswith(("simulator", "oracle")):
                continue
            text = path.read_text(errors="replace")
            for bad in LOG_ALARMS:
                if bad in text:
                    at = text.index(bad)
                    self.report.errors.append(
                        f"{path.name}: {bad!r}: {text[max(0, at - 300):at + 500]!r}")

    async def syncd_refs(self) -> dict[str, list[int]]:
        """correlation key -> live Kantata entries carrying syncd's external reference, read
        through the public API (faults are off)."""
        assert self.http is not None
        out: dict[str, list[int]] = {}
        page = 1
        while True:
            params = {"external_reference_service_name": SERVICE,
                      "include": "external_references", "from_archived_workspaces": "true",
                      "on_my_account": "false", "per_page": "200", "page": str(page)}
            async with self.http.get(f"{self.sim_url}/time_entries", params=params,
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                body = orjson.loads(await resp.read())
            for ref in (body.get("external_references") or {}).values():
                if ref["service_name"] == SERVICE:
                    out.setdefault(ref["service_model_ref"], []).append(int(ref["subject_id"]))
            if page >= body["meta"]["page_count"]:
                return out
            page += 1

    async def teardown(self, failed: bool) -> None:
        for p in [*self.daemons.values(), *self.clis]:
            if p.running:
                p.signal(signal.SIGKILL)
                await p.wait(5)
        if self.db is not None:
            with contextlib.suppress(Exception):
                await self.db.close()
        if self.http is not None:
            await self.http.close()
        if self._structlog_before is not None:
            import structlog

            structlog.configure(**self._structlog_before)
        for f in self._files:
            f.close()
        if self.sim is not None:
            await self.sim.stop(5)
        if self.pg is not None:
            await asyncio.to_thread(self.pg.stop, remove=not (failed or self.cfg.keep))
        if failed or self.cfg.keep:
            self.report.workdir = str(self.workdir)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


async def run_chaos(cfg: ChaosConfig) -> Report:
    """Run the whole harness once and return its report (see the module docstring)."""
    h = Harness(cfg)
    failed = True
    try:
        await h.setup()
        await h.chaos()
        say(cfg, "clean cycle: push, sync, reconcile, verify")
        await h.clean_cycle()
        await h.oracle()
        failed = not h.report.ok
    except Exception as exc:
        h.report.errors.append(f"harness: {type(exc).__name__}: {exc}")
        raise
    finally:
        await h.teardown(failed)
    return h.report


SMOKE = dict(seconds=30.0, entries=1500, chaos_every=(1.0, 2.5), scripted=True,
             user_actions_per_second=6.0, outbox_rows_per_second=6.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.chaos.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="length of the chaos phase")
    p.add_argument("--smoke", action="store_true",
                   help="CI size: 30 s of chaos on 1,500 entries, every action once")
    p.add_argument("--entries", type=int, help="entries seeded in the simulator (20,000)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    p.add_argument("--daemons", type=int, default=2, help="`syncd run` processes at once")
    p.add_argument("--keep", action="store_true", help="keep logs and PostgreSQL's directory")
    p.add_argument("--workdir", type=Path, help="directory for logs (default: a temp dir)")
    args = p.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1, 10**6)
    cfg = ChaosConfig(seed=seed, daemons=args.daemons, keep=args.keep, workdir=args.workdir)
    if args.smoke:
        cfg = ChaosConfig(**{**cfg.__dict__, **SMOKE})
    else:
        cfg.seconds = args.minutes * 60
    if args.entries:
        cfg.entries = args.entries
    report = asyncio.run(run_chaos(cfg))
    print(report.render())
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
