"""syncd's configuration: one `Settings` object built once by the CLI and passed down.

Sources, highest precedence first: keyword arguments (tests), `SYNCD_*` environment variables,
the TOML file named by `SYNCD_CONFIG_FILE` (keys are the field names, without the prefix), then
the defaults below. The database falls back to libpq's `PG*` variables when no URL is given.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from datetime import date, timedelta
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from syncd.errors import ConfigError, mask_dsn

__all__ = ["Settings", "describe", "format_validation_error", "is_loopback_url", "load_settings",
           "reference_table"]


def is_loopback_url(url: str) -> bool:
    """True when `url`'s host is localhost or a loopback address (127.0.0.0/8, ::1)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _one_line(token: SecretStr, setting: str) -> SecretStr:
    """`token` when it holds no control character; else ValueError naming `setting` and where
    the first one is, never what the token is."""
    at = next((i for i, c in enumerate(token.get_secret_value())
               if ord(c) < 32 or ord(c) == 127), None)
    if at is not None:
        raise ValueError(f"invalid setting {setting}: the token holds a control character (a "
                         f"line break?) at position {at + 1}; a bearer token is one line")
    return token


class Settings(BaseSettings):
    """Every knob of syncd. Durations are in seconds, rates per minute, dates are calendar dates.

    Raises pydantic `ValidationError` on invalid values; `load_settings` turns that into one line
    per bad setting that names the environment variable.
    """

    model_config = SettingsConfigDict(
        env_prefix="SYNCD_", extra="forbid", validate_default=True, frozen=True,
        allow_inf_nan=False,  # SYNCD_PULL_INTERVAL=inf is a typo, not a schedule
    )

    # --- connections -------------------------------------------------------------------------
    database_url: SecretStr | None = Field(
        None, description="`postgresql://user:pass@host:5432/db`; unset: libpq's `PGHOST`, "
                          "`PGUSER`, … variables")
    kantata_base_url: str = Field("https://api.mavenlink.com/api/v1",
                                  description="Kantata API base URL")
    kantata_token: SecretStr | None = Field(
        None, description="OAuth bearer token; this or `SYNCD_KANTATA_TOKEN_FILE`, exactly one")
    kantata_token_file: Path | None = Field(
        None, description="file holding the token (systemd `LoadCredential=`, Docker secrets)")
    kantata_tls_verify: bool = Field(
        True, description="verify Kantata's TLS certificate; `false` only for a loopback "
                          "simulator")
    kantata_allow_insecure_loopback: bool = Field(
        False, description="allow `http://` (or no TLS verification) to 127.0.0.1, ::1 or "
                           "localhost only")

    # --- pull --------------------------------------------------------------------------------
    pull_interval: float = Field(
        60.0, gt=0, description="seconds between incremental pulls (an idle one costs one "
                                "request); a remote edit reaches the mirror within this plus "
                                "one pull")
    overlap: float = Field(
        120.0, ge=0, description="seconds re-read behind the watermark (lookback), for entries "
                                 "Kantata makes visible late; once a complete pass has run this "
                                 "long after a change it is settled and not read again")
    backfill_start: date | None = Field(
        None, description="first `date_performed` to backfill (YYYY-MM-DD); unset: 10 years "
                          "before today")
    backfill_window_months: int = Field(
        1, ge=1, le=12, description="months per `date_performed_between` window")
    lookahead_days: int = Field(31, ge=0, le=3660,
                                description="the backfill also covers dates up to today + this")
    per_page: int = Field(
        5000, ge=1, le=5000,
        description="entries a list page asks for: Kantata's own client asks 5,000, Kantata "
                    "serves what it allows (documented: 200) and says so in meta.page_size; "
                    "halved, to 200 at least, after a page times out or fails with a 5xx, "
                    "and doubled again after 50 pages answered in a row (an idle daemon "
                    "reads one page a pull: 50 pull intervals a doubling)")
    window_concurrency: int = Field(
        4, ge=1, le=32, description="windows read at once by backfill and reconciliation")
    sideload: bool = Field(
        True, description="include workspaces, users, stories and roles (names for BI)")
    defer_indexes: bool = Field(
        True, description="a backfill into an empty mirror drops the non-unique, non-partial "
                          "indexes of `kantata.time_entries` and builds each once at its end "
                          "(one sorted "
                          "build instead of an insert per row; recorded in "
                          "`syncd.deferred_indexes`, never lost); `off` keeps them while it "
                          "loads, for queries on a half-loaded mirror")

    # --- HTTP --------------------------------------------------------------------------------
    max_connections: int = Field(8, ge=1, le=64, description="HTTP requests in flight at once")
    connect_timeout: float = Field(10.0, gt=0, description="seconds to connect to Kantata")
    request_timeout: float = Field(
        90.0, gt=0, description="seconds per request, counted once it holds a connection slot")
    max_retries: int = Field(
        6, ge=0, le=30, description="retries of a read on 5xx, timeouts, resets and malformed "
                                    "pages; a 429 is retried up to 30 times (a rate limit "
                                    "costs time, not data)")
    backoff_base: float = Field(
        1.0, gt=0, description="seconds; full-jitter exponential back-off, doubled per attempt")
    backoff_cap: float = Field(60.0, gt=0, description="longest back-off, seconds")
    retry_after_cap: float = Field(120.0, gt=0,
                                   description="longest `Retry-After` honoured, seconds")
    rate_limit_per_minute: float | None = Field(
        None, gt=0, description="an operator's request ceiling per token, shared by all jobs; "
                                "it only binds. Unset or set, syncd learns Kantata's limit "
                                "from its 429s (Kantata publishes no number): the window and "
                                "the requests admitted in it, kept in `syncd.request_budget` "
                                "across restarts and raised slowly to find a higher one")
    rate_limit_floor_per_minute: float = Field(
        6.0, gt=0, description="a learned limit is never lowered below this rate")
    rate_limit_forget_after: float = Field(
        86400.0, ge=0, description="seconds without a 429 after which a learned limit is "
                                   "forgotten (a throttle that has ended must not cap syncd "
                                   "for ever): syncd then runs unpaced and learns again at "
                                   "the next 429; 0: never")

    # --- push (outbox) -----------------------------------------------------------------------
    push_interval: float = Field(
        30.0, gt=0, description="outbox polling fallback, seconds (a NOTIFY wakes syncd at "
                                "once)")
    push_batch_size: int = Field(100, ge=1, le=100,
                                 description="items per bulk create or delete (Kantata's maximum)")
    push_concurrency: int = Field(
        4, ge=1, le=64, description="PUTs in flight at once (Kantata has no bulk update)")
    outbox_lease: float = Field(
        300.0, gt=0, description="seconds before another syncd may reclaim an in-flight row; "
                                 "longer than `SYNCD_REQUEST_TIMEOUT` + "
                                 "`SYNCD_CONNECT_TIMEOUT`")
    outbox_max_attempts: int = Field(
        10, ge=1, description="attempts before a row is dead-lettered as `failed`")
    conflict_policy: Literal["park", "local_wins"] = Field(
        "park", description="`park` (the row becomes `conflict`) or `local_wins`")
    external_reference_service_name: str = Field(
        "syncd", min_length=1, max_length=100,
        description="`external_reference.service_name` stamped on creates")

    # --- reconciliation ----------------------------------------------------------------------
    reconcile_recent_days: int = Field(
        60, ge=0, description="windows ending this recently are reconciled often")
    reconcile_recent_interval: float = Field(
        3600.0, gt=0, description="seconds between reconciliations of a recent window")
    reconcile_old_interval: float = Field(
        7 * 86400.0, gt=0, description="seconds between reconciliations of an older window")
    reconcile_full_interval: float = Field(
        30 * 86400.0, gt=0,
        description="seconds between full re-reads of a window; in between, a window whose "
                    "live mirror count equals Kantata's count costs one request and is not "
                    "read")

    # --- operations --------------------------------------------------------------------------
    http_host: str = Field("127.0.0.1", description="address of `/healthz`, `/readyz`, "
                                                     "`/metrics`, `/status`")
    http_port: int = Field(9187, ge=0, le=65535, description="port of that endpoint")
    shutdown_grace: float = Field(
        30.0, ge=0, description="seconds in-flight work may take to finish after SIGTERM")
    ready_max_pull_age_intervals: float = Field(
        3.0, gt=0, description="`/readyz` fails when the last good pull is older than this "
                               "many pull intervals")
    run_history_days: int = Field(
        90, ge=1, description="`syncd.sync_runs` rows older than this are pruned daily")
    outbox_done_retention_days: int = Field(
        90, ge=0, description="`done` outbox rows older than this are deleted daily "
                              "(`failed` and `conflict` rows are kept); 0 keeps them")
    history: bool = Field(
        True, description="history mode: every version of every entry "
                          "(`kantata.time_entry_versions`), `on` or `off`")
    history_retention_days: int = Field(
        0, ge=0, description="versions replaced more than this many days ago are deleted "
                             "daily; 0 keeps them forever (current versions always stay)")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="DEBUG, INFO, WARNING or ERROR")
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="`auto` = JSON lines unless stderr is a terminal")
    leader_lock_key: int = Field(
        0x53594E43, ge=-2**63, le=2**63 - 1, description="advisory lock electing the replica that pulls and "
                                "reconciles; replicas of one installation share it, separate "
                                "installations on one database need different keys")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = os.environ.get("SYNCD_CONFIG_FILE")
        if path:  # a named file that is missing or not TOML is an error, never ignored
            if not Path(path).is_file():
                raise ConfigError(f"invalid setting SYNCD_CONFIG_FILE: {path} is not a file")
            try:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(path)))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
                raise ConfigError(f"invalid setting SYNCD_CONFIG_FILE: {path} is not valid "
                                  f"TOML: {exc}") from None
        return tuple(sources)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, v: SecretStr | None) -> SecretStr | None:
        # Refused here, at start, naming the setting: a URL asyncpg cannot use made the daemon
        # retry "database unavailable" forever, and commands print asyncpg's bare parser error.
        # The messages never quote the URL (it may hold a password).
        if v is None:
            return None
        url = v.get_secret_value()
        if not url.strip():
            raise ValueError("is empty; unset it to use libpq's PGHOST, PGUSER, … variables")
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError("must be a postgresql:// URL such as "
                             "postgresql://user:pass@host:5432/db")
        try:
            parts.port  # noqa: B018 - parsing the port is the check
        except ValueError:
            raise ValueError("has a port that is not a number from 1 to 65535") from None
        return v

    @field_validator("kantata_base_url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL such as https://api.mavenlink.com/api/v1")
        return v.rstrip("/")

    @field_validator("outbox_lease")
    @classmethod
    def _lease_outlasts_a_request(cls, v: float, info: ValidationInfo) -> float:
        # A lease is renewed just before each request; one that ran out while its request is
        # still in flight lets another process claim the row and send it a second time.
        # (request_timeout and connect_timeout are declared above, so validated first; when
        # one of them is invalid it has its own error.)
        timeout, connect = info.data.get("request_timeout"), info.data.get("connect_timeout")
        if timeout is not None and connect is not None and v <= timeout + connect:
            raise ValueError(
                f"must be longer than SYNCD_REQUEST_TIMEOUT + SYNCD_CONNECT_TIMEOUT "
                f"({timeout + connect:g} s), or a lease can run out while its request is "
                "still in flight")
        return v

    @model_validator(mode="after")
    def _transport_security(self) -> Settings:
        loopback = is_loopback_url(self.kantata_base_url)
        insecure = (urlsplit(self.kantata_base_url).scheme == "http"
                    or not self.kantata_tls_verify)
        if insecure and not (loopback and self.kantata_allow_insecure_loopback):
            what = ("plain http" if urlsplit(self.kantata_base_url).scheme == "http"
                    else "SYNCD_KANTATA_TLS_VERIFY=false")
            host = urlsplit(self.kantata_base_url).hostname or ""
            if not loopback:  # the host only: a URL may carry credentials
                raise ValueError(
                    f"kantata_base_url: {what} is only allowed for a simulator on a loopback "
                    f"address (127.0.0.0/8, ::1, localhost), and host {host[:100]!r} is not "
                    "one; use https with TLS verification for Kantata")
            raise ValueError(
                f"kantata_base_url: {what} to loopback host {host[:100]!r} also needs "
                "SYNCD_KANTATA_ALLOW_INSECURE_LOOPBACK=true (a simulator, never Kantata)")
        if self.kantata_token is not None and self.kantata_token_file is not None:
            raise ValueError("kantata_token: set SYNCD_KANTATA_TOKEN or "
                             "SYNCD_KANTATA_TOKEN_FILE, not both")
        if self.kantata_token_file is not None and not self.kantata_token_file.is_file():
            raise ValueError(f"kantata_token_file: {self.kantata_token_file} is not a file")
        return self

    # --- derived values ------------------------------------------------------------------------
    def token(self) -> SecretStr:
        """The Kantata bearer token. Raises ValueError naming the setting when none is set, or
        when it holds a control character (a line break inside it: an HTTP header cannot carry
        it, RFC 9110 §5.5); the token itself is never shown."""
        if self.kantata_token is not None and self.kantata_token.get_secret_value().strip():
            return _one_line(self.kantata_token, "SYNCD_KANTATA_TOKEN")
        if self.kantata_token_file is not None:
            text = self.kantata_token_file.read_text().strip()
            if text:
                return _one_line(SecretStr(text), "SYNCD_KANTATA_TOKEN_FILE")
            raise ValueError(f"invalid setting SYNCD_KANTATA_TOKEN_FILE: "
                             f"{self.kantata_token_file} is empty (it must hold the token)")
        raise ValueError("invalid setting SYNCD_KANTATA_TOKEN: no Kantata token configured "
                         "(set SYNCD_KANTATA_TOKEN or SYNCD_KANTATA_TOKEN_FILE)")

    def dsn(self) -> str | None:
        """The database URL, or None to let asyncpg use libpq PG* variables."""
        return self.database_url.get_secret_value() if self.database_url else None

    def backfill_range(self, today: date) -> tuple[date, date]:
        """The default `date_performed` range of backfill, reconcile and verify: the backfill
        start .. today + `lookahead_days` (both inclusive)."""
        return self.backfill_from(today), today + timedelta(days=self.lookahead_days)

    def backfill_from(self, today: date) -> date:
        """First date of the backfill: `backfill_start`, or ten years before `today`."""
        return self.backfill_start or date(today.year - 10, today.month, 1)


def format_validation_error(exc: ValidationError,
                            environ: Mapping[str, str] | None = None) -> str:
    """One line per invalid setting, naming its variable and where its value came from (the
    environment, or the SYNCD_CONFIG_FILE path); never echoes the input value. `environ`:
    the process environment by default."""
    env = os.environ if environ is None else environ
    file = env.get("SYNCD_CONFIG_FILE")
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()))
        msg = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":  # only the TOML file can name unknown keys
            close = difflib.get_close_matches(loc.lower(), list(Settings.model_fields), n=1,
                                              cutoff=0.7)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            lines.append(f"invalid setting: unknown key {loc!r} in SYNCD_CONFIG_FILE {file} "
                         f"(keys are the SYNCD_* names in lower case without the prefix){hint}")
        elif loc:
            name = f"SYNCD_{loc.upper()}"
            where = (" (from the environment)" if name in env
                     else f" (from {file})" if file else "")
            lines.append(f"invalid setting {name}{where}: {msg}")
        else:
            lines.append(_name_setting(msg.removeprefix("Value error, ")))
    return "\n".join(lines)


def _name_setting(message: str) -> str:
    """'kantata_token: why' -> 'invalid setting SYNCD_KANTATA_TOKEN: why'."""
    m = re.match(r"^([a-z_]+): (.*)$", message, re.S)
    if m and m.group(1) in Settings.model_fields:
        return f"invalid setting SYNCD_{m.group(1).upper()}: {m.group(2)}"
    return f"invalid setting: {message}"


NOT_SETTINGS = {"SYNCD_CONFIG_FILE", "SYNCD_TEST_DSN", "SYNCD_PG_DIR"}


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """Warnings for `SYNCD_*` variables that are not settings (typos are otherwise silent)."""
    known = {f"SYNCD_{n.upper()}" for n in Settings.model_fields} | NOT_SETTINGS
    out = []
    for key in sorted(k for k in environ if k.startswith("SYNCD_") and k not in known):
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.8)
        hint = f" (did you mean {close[0]}?)" if close else ""
        out.append(f"{key} is not a setting{hint}; ignored")
    return out


def load_settings(**overrides: object) -> Settings:
    """Build Settings from the environment (and overrides); ValidationError propagates."""
    return Settings(**overrides)  # type: ignore[arg-type]


def _shown(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def reference_table() -> str:
    """The settings reference as a markdown table (variable, default, meaning), generated from
    the field descriptions of `Settings`; deploy/README.md holds it, checked by a test."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        meaning = (field.description or "").replace("|", "\\|")
        rows.append(f"| `SYNCD_{name.upper()}` | `{_shown(field.default)}` | {meaning} |")
    return "\n".join(rows) + "\n"


def _masked_url(url: str) -> str:
    return mask_dsn(url)


def describe(settings: Settings, environ: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(variable, effective value, source) for every setting; source is `env`, `file <path>`
    (SYNCD_CONFIG_FILE) or `default`. Secrets are masked: the token as `********`, the
    password in the database URL likewise; values never leave this function unmasked."""
    file_keys: set[str] = set()
    path = environ.get("SYNCD_CONFIG_FILE")
    if path:
        try:
            file_keys = set(tomllib.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, tomllib.TOMLDecodeError):
            file_keys = set()
    out = []
    for name in Settings.model_fields:
        var = f"SYNCD_{name.upper()}"
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            secret = value.get_secret_value()
            shown = _masked_url(secret) if name == "database_url" else "********"
        else:
            shown = _shown(value)
        if var in environ:
            source = "env"
        elif name in file_keys:
            source = f"file {path}"
        elif name == "database_url" and value is None:
            source = "default (libpq PG* variables)"
        else:
            source = "default"
        out.append((var, shown, source))
    return out
