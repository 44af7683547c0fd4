"""Settings bounds that protect the outbox: a lease must outlast the request it covers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from syncd.cli import main
from syncd.settings import Settings, format_validation_error


def test_a_lease_shorter_than_one_request_is_refused_in_one_line_naming_the_variable() -> None:
    with pytest.raises(ValidationError) as exc:
        Settings(kantata_token="t", outbox_lease=1)
    msg = format_validation_error(exc.value)
    assert "\n" not in msg
    assert msg.startswith("invalid setting SYNCD_OUTBOX_LEASE:")
    assert "SYNCD_REQUEST_TIMEOUT + SYNCD_CONNECT_TIMEOUT (100 s)" in msg


def test_the_lease_bound_follows_the_timeouts() -> None:
    assert Settings(outbox_lease=8, request_timeout=5, connect_timeout=2).outbox_lease == 8
    with pytest.raises(ValidationError, match="SYNCD_CONNECT_TIMEOUT"):
        Settings(outbox_lease=7, request_timeout=5, connect_timeout=2)
    assert Settings().outbox_lease == 300  # the defaults fit


def test_the_command_line_refuses_it_with_exit_2(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SYNCD_OUTBOX_LEASE", "1")
    assert main(["outbox", "list"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("syncd: invalid setting SYNCD_OUTBOX_LEASE (from the environment): ") and "\n" not in err


def test_syncd_config_says_where_each_value_came_from_and_masks_secrets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from syncd import cli

    toml = tmp_path / "syncd.toml"
    toml.write_text("pull_interval = 600\n")
    for k in [k for k in os.environ if k.startswith("SYNCD_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("SYNCD_CONFIG_FILE", str(toml))
    monkeypatch.setenv("SYNCD_KANTATA_TOKEN", "tok-secret-0123456789")
    monkeypatch.setenv("SYNCD_DATABASE_URL", "postgresql://app:pw-secret@127.0.0.1:5432/db")
    assert cli.main(["config"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert lines["SYNCD_PULL_INTERVAL"].split(None, 1)[1] == f"600  (file {toml})"
    assert lines["SYNCD_KANTATA_TOKEN"].split()[1:] == ["********", "(env)"]
    assert "postgresql://app:********@127.0.0.1:5432/db" in lines["SYNCD_DATABASE_URL"]
    assert lines["SYNCD_OVERLAP"].split()[1:] == ["120", "(default)"]
    assert "tok-secret" not in out and "pw-secret" not in out
    assert len(lines) == len(Settings.model_fields)


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://127.0.0.1:5432/db?password=s3cret&user=bob",
     "postgresql://127.0.0.1:5432/db?password=********&user=bob"),
    ("postgresql://bob:s3cret@127.0.0.1:5432/db",
     "postgresql://bob:********@127.0.0.1:5432/db"),
    ("postgresql://bob:s3cret@127.0.0.1:5432/db?sslmode=disable&password=s3cret",
     "postgresql://bob:********@127.0.0.1:5432/db?sslmode=disable&password=********"),
])
def test_syncd_config_masks_the_database_password_in_either_form(
        url: str, shown: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A new user's `?password=` query parameter was shown in clear (libpq accepts both)."""
    from syncd import cli, errors

    monkeypatch.setattr(errors, "_SECRETS", set())  # what this command registers, only

    for k in [k for k in os.environ if k.startswith("SYNCD_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("SYNCD_DATABASE_URL", url)
    assert cli.main(["config"]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out
    assert "SYNCD_DATABASE_URL" in out and f"  {shown}  (env)" in out
    # and every command keeps it out of its errors and logs (asyncpg may quote the DSN)
    from syncd.errors import redact

    assert redact(f"cannot connect: {url}") == f"cannot connect: {shown}".replace(
        "********", "[redacted]")


def test_both_forms_of_the_database_password_are_kept_out_of_errors() -> None:
    from syncd.errors import dsn_passwords, mask_dsn, redact, register_secret

    url = "postgresql://bob:pw-in-userinfo@127.0.0.1/db?password=pw-in-query&user=bob"
    assert dsn_passwords(url) == ["pw-in-userinfo", "pw-in-query"]
    assert dsn_passwords("postgresql://127.0.0.1/db?user=bob") == []
    assert dsn_passwords(None) == []
    for p in dsn_passwords(url):
        register_secret(p)
    assert redact(f"cannot connect to {url}") == (
        "cannot connect to postgresql://bob:[redacted]@127.0.0.1/db?password=[redacted]&user=bob")
    # the psql line the demo prints leaves both out
    assert mask_dsn(url, None) == "postgresql://bob@127.0.0.1/db?user=bob"


@pytest.mark.parametrize("argv", [["config", "--reference"], ["config"], ["--help"]])
def test_a_closed_pipe_ends_quietly(argv: list[str]) -> None:
    """`syncd config | head -c0`: exit 0 and no traceback (found by a new-user trial)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    res = subprocess.run(f"{sys.executable} -m syncd {' '.join(argv)} | head -c0; "
                         "exit ${PIPESTATUS[0]}", shell=True, executable="/bin/bash",
                         capture_output=True, text=True, env=env, timeout=60)
    assert (res.returncode, res.stderr) == (0, ""), res.stderr


@pytest.mark.parametrize(("url", "why"), [
    ("mysql://u:hunter2@h/db", "must be a postgresql:// URL"),
    ("postgresql://u:hunter2@h:notaport/db", "has a port that is not a number"),
    ("postgresql://u:hunter2@h:99999/db", "has a port that is not a number"),
    ("", "is empty"),
])
def test_a_database_url_asyncpg_cannot_use_is_refused_at_start(
        url: str, why: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A trial user's `SYNCD_DATABASE_URL=mysql://…` made `syncd run` retry 'database
    unavailable' forever, and a bad port printed asyncpg's bare `int()` error: now exit 2 at
    start, naming the variable, never quoting the URL (it may hold a password)."""
    monkeypatch.setenv("SYNCD_DATABASE_URL", url)
    monkeypatch.setenv("SYNCD_KANTATA_TOKEN", "t")
    assert main(["run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("syncd: invalid setting SYNCD_DATABASE_URL (from the environment): ") and why in err
    assert "hunter2" not in err and "\n" not in err


def test_database_urls_libpq_accepts_still_pass() -> None:
    for url in ("postgresql://syncd@/syncd?host=/run/postgresql", "postgres://u:p@h:5432/d",
                "postgresql://u@127.0.0.1/d"):
        assert Settings(database_url=url, kantata_token="t").dsn() == url


def test_an_unknown_key_in_the_config_file_suggests_the_setting_meant(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A trial user's `pull_intervall = 600` was refused without a hint."""
    toml = tmp_path / "syncd.toml"
    toml.write_text("pull_intervall = 600\nkantata_url = 'x'\nzzz_nothing_like_it = 1\n")
    for k in [k for k in os.environ if k.startswith("SYNCD_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("SYNCD_CONFIG_FILE", str(toml))
    assert main(["config"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'pull_intervall' in SYNCD_CONFIG_FILE" in err
    assert "did you mean 'pull_interval'?" in err
    assert "did you mean 'kantata_base_url'?" in err
    nothing = next(line for line in err.splitlines() if "zzz_nothing_like_it" in line)
    assert "did you mean" not in nothing


def test_sync_help_says_what_since_and_until_mean(capsys: pytest.CaptureFixture[str]) -> None:
    """The dates are date_performed calendar dates, inclusive, with no time zone."""
    with pytest.raises(SystemExit):
        main(["sync", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for arg in ("--since SINCE first date_performed date", "--until UNTIL last date_performed "
                                                           "date"):
        assert arg in text
    assert text.count("inclusive; a calendar date, no time zone applies") == 2
