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

from syncd.errors import ConfigError

__all__ = ["Settings", "format_validation_error", "is_loopback_url", "load_settings"]


def is_loopback_url(url: str) -> bool:
    """True when `url`'s host is localhost or a loopback address (127.0.0.0/8, ::1)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """Every knob of syncd. Durations are in seconds, rates per minute, dates are calendar dates.

    Raises pydantic `ValidationError` on invalid values; `load_settings` turns that into one line
    per bad setting that names the environment variable.
    """

    model_config = SettingsConfigDict(
        env_prefix="SYNCD_", extra="forbid", validate_default=True, frozen=True
    )

    # --- connections -------------------------------------------------------------------------
    database_url: SecretStr | None = Field(
        None, description="postgresql:// URL; None falls back to libpq PG* variables")
    kantata_base_url: str = "https://api.mavenlink.com/api/v1"
    kantata_token: SecretStr | None = None
    kantata_token_file: Path | None = Field(
        None, description="file holding the token (systemd LoadCredential, Docker secrets)")
    kantata_tls_verify: bool = True
    kantata_allow_insecure_loopback: bool = Field(
        False, description="allow plain http (or tls_verify=false) to a loopback simulator only")

    # --- pull --------------------------------------------------------------------------------
    pull_interval: float = Field(300.0, gt=0, description="seconds between incremental pulls")
    overlap: float = Field(120.0, ge=0, description="seconds re-read behind the watermark")
    backfill_start: date | None = Field(
        None, description="first date_performed to backfill; default: 10 years before today")
    backfill_window_months: int = Field(1, ge=1, le=12)
    lookahead_days: int = Field(31, ge=0, le=3660)
    per_page: int = Field(200, ge=1, le=200)
    window_concurrency: int = Field(4, ge=1, le=32, description="windows fetched at once")
    sideload: bool = Field(True, description="include workspace,user,story,role on pulls")

    # --- HTTP --------------------------------------------------------------------------------
    max_connections: int = Field(8, ge=1, le=64, description="concurrent HTTP requests")
    connect_timeout: float = Field(10.0, gt=0)
    request_timeout: float = Field(
        90.0, gt=0, description="seconds per request once it has a connection")
    max_retries: int = Field(6, ge=0, le=30)
    backoff_base: float = Field(1.0, gt=0, description="seconds; doubled per attempt")
    backoff_cap: float = Field(60.0, gt=0)
    retry_after_cap: float = Field(120.0, gt=0)
    rate_limit_per_minute: float = Field(
        9000.0, gt=0, description="request ceiling per token; lowered on 429, raised slowly")
    rate_limit_floor_per_minute: float = Field(6.0, gt=0)

    # --- push (outbox) -----------------------------------------------------------------------
    push_interval: float = Field(30.0, gt=0, description="fallback poll when no NOTIFY arrives")
    push_batch_size: int = Field(100, ge=1, le=100)
    push_concurrency: int = Field(4, ge=1, le=64, description="PUTs in flight at once")
    outbox_lease: float = Field(
        300.0, gt=0, description="seconds before a claim expires; longer than one request "
                                 "(request_timeout + connect_timeout)")
    outbox_max_attempts: int = Field(10, ge=1)
    conflict_policy: Literal["park", "local_wins"] = "park"
    external_reference_service_name: str = Field("syncd", min_length=1, max_length=100)

    # --- reconciliation ----------------------------------------------------------------------
    reconcile_recent_days: int = Field(60, ge=0)
    reconcile_recent_interval: float = Field(3600.0, gt=0)
    reconcile_old_interval: float = Field(7 * 86400.0, gt=0)

    # --- operations --------------------------------------------------------------------------
    http_host: str = "127.0.0.1"
    http_port: int = Field(9187, ge=0, le=65535)
    shutdown_grace: float = Field(30.0, ge=0)
    ready_max_pull_age_intervals: float = Field(3.0, gt=0)
    run_history_days: int = Field(90, ge=1)
    outbox_done_retention_days: int = Field(
        90, ge=0, description="done outbox rows older than this are deleted daily; 0 keeps them")
    history: bool = Field(
        True, description="history mode: every version of every entry in "
                          "kantata.time_entry_versions (on/off)")
    history_retention_days: int = Field(
        0, ge=0, description="versions replaced more than this many days ago are deleted "
                             "daily; 0 keeps them forever (the current versions always stay)")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"
    leader_lock_key: int = 0x53594E43  # "SYNC"

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
            raise ValueError(
                "kantata_base_url: plain http or disabled TLS verification is only allowed for a "
                "loopback simulator with SYNCD_KANTATA_ALLOW_INSECURE_LOOPBACK=true")
        if self.kantata_token is not None and self.kantata_token_file is not None:
            raise ValueError("kantata_token: set SYNCD_KANTATA_TOKEN or "
                             "SYNCD_KANTATA_TOKEN_FILE, not both")
        if self.kantata_token_file is not None and not self.kantata_token_file.is_file():
            raise ValueError(f"kantata_token_file: {self.kantata_token_file} is not a file")
        return self

    # --- derived values ------------------------------------------------------------------------
    def token(self) -> SecretStr:
        """The Kantata bearer token. Raises ValueError naming the setting when none is set."""
        if self.kantata_token is not None and self.kantata_token.get_secret_value().strip():
            return self.kantata_token
        if self.kantata_token_file is not None:
            text = self.kantata_token_file.read_text().strip()
            if text:
                return SecretStr(text)
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


def format_validation_error(exc: ValidationError) -> str:
    """One line per invalid setting, naming its variable; never echoes the input value."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()))
        msg = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":  # only the TOML file can name unknown keys
            lines.append(f"invalid setting: unknown key {loc!r} in SYNCD_CONFIG_FILE (keys are "
                         "the SYNCD_* names in lower case without the prefix)")
        elif loc:
            lines.append(f"invalid setting SYNCD_{loc.upper()}: {msg}")
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
