"""deploy/syncd.service: hardening, notify/watchdog wiring and timeouts.

systemd unit files allow repeated keys (they accumulate, and an empty
assignment resets the list), which configparser rejects, so a small parser
keeps every value in order. `systemd-analyze` checks run when it is installed.
"""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "syncd.service"
BACKOFF_DROPIN = REPO / "deploy" / "dropins" / "restart-backoff.conf"
ENV_EXAMPLE = REPO / "deploy" / "syncd.env.example"
SYNCD_BIN = "/opt/syncd/venv/bin/syncd"

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """Parses systemd unit syntax: sections, repeated keys, comments, line continuations."""
    sections: Unit = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        if current is None or "=" not in line:
            raise ValueError(f"not a unit-file assignment: {raw!r}")
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def parse_seconds(value: str) -> float:
    """systemd time span ("45", "45s", "2min", "1h 30s", "15min") in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "ms": 0.001}
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value.strip())
    assert parts, value
    for number, unit in parts:
        total += float(number) * units[unit]
    return total


@pytest.fixture(scope="module")
def unit() -> Unit:
    return parse_unit(UNIT.read_text())


def one(unit: Unit, section: str, key: str) -> str:
    values = unit[section].get(key)
    assert values is not None, f"[{section}] {key}= missing"
    assert len(values) == 1, f"[{section}] {key}= set {len(values)} times: {values}"
    return values[0]


def test_parser_keeps_repeated_keys_and_continuations() -> None:
    parsed = parse_unit(
        "# c\n[Service]\nA=1\n; c\nA=\nA=2 \\\n  3\nB=x=y\n[Install]\nWantedBy=m.target\n"
    )
    assert parsed == {"Service": {"A": ["1", "", "2 3"], "B": ["x=y"]},
                      "Install": {"WantedBy": ["m.target"]}}
    with pytest.raises(ValueError):
        parse_unit("[Service]\nnot an assignment\n")


def test_parse_seconds() -> None:
    assert parse_seconds("45") == 45
    assert parse_seconds("30s") == 30
    assert parse_seconds("15min") == 900
    assert parse_seconds("1h 30s") == 3630


# --- service type, notify, watchdog -------------------------------------------------------


def test_notify_service_with_watchdog(unit: Unit) -> None:
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "NotifyAccess") == "main"
    watchdog = parse_seconds(one(unit, "Service", "WatchdogSec"))
    assert watchdog == 120
    # ProgressWatchdog pings every interval/2; a 60 s cadence is cheap and still
    # catches a hang within minutes.
    assert 30 <= watchdog <= 600


def test_migrate_runs_before_the_daemon_with_the_same_binary(unit: Unit) -> None:
    assert one(unit, "Service", "ExecStartPre") == f"{SYNCD_BIN} migrate"
    assert one(unit, "Service", "ExecStart") == f"{SYNCD_BIN} run"
    # The same venv path as the Dockerfile, so docs and images agree.
    assert "/opt/syncd/venv" in (REPO / "deploy" / "Dockerfile").read_text()
    assert parse_seconds(one(unit, "Service", "TimeoutStartSec")) >= 120


def test_restart_policy_and_start_limits(unit: Unit) -> None:
    assert one(unit, "Service", "Restart") == "on-failure"
    # syncd exits 2 on a configuration error: no point restarting into it.
    assert one(unit, "Service", "RestartPreventExitStatus") == "2"
    restart_sec = parse_seconds(one(unit, "Service", "RestartSec"))
    assert restart_sec == 30
    interval = parse_seconds(one(unit, "Unit", "StartLimitIntervalSec"))
    burst = int(one(unit, "Unit", "StartLimitBurst"))
    assert (interval, burst) == (900, 10)
    # With the fixed delay a persistent failure is given (burst-1)*RestartSec
    # of retries (4.5 min) before the unit parks in "failed".
    assert (burst - 1) * restart_sec < interval


def test_backoff_dropin_for_newer_systemd() -> None:
    dropin = parse_unit(BACKOFF_DROPIN.read_text())
    assert set(dropin) == {"Service"}
    service = dropin["Service"]
    assert service["RestartSteps"] == ["8"]
    assert parse_seconds(service["RestartMaxDelaySec"][0]) == 300
    assert parse_seconds(service["RestartSec"][0]) == 5
    # systemd grows the delay geometrically from RestartSec to RestartMaxDelaySec in
    # RestartSteps steps. The 9 delays between 10 starts must fit the unit's start-limit
    # window, or a real outage would never park the unit, yet take over 10 minutes.
    unit = parse_unit(UNIT.read_text())
    first, last = parse_seconds(service["RestartSec"][0]), 300.0
    steps = int(service["RestartSteps"][0])
    delays = [min(last, first * (last / first) ** (i / steps)) for i in range(9)]
    window = parse_seconds(one(unit, "Unit", "StartLimitIntervalSec"))
    assert int(one(unit, "Unit", "StartLimitBurst")) - 1 == len(delays)
    assert 600 < sum(delays) < window


def test_stop_timeout_exceeds_shutdown_grace(unit: Unit) -> None:
    from syncd.settings import Settings

    grace_default = Settings.model_fields["shutdown_grace"].default
    assert grace_default == 30
    assert one(unit, "Service", "KillSignal") == "SIGTERM"
    assert one(unit, "Service", "SendSIGKILL") == "yes"
    assert one(unit, "Service", "KillMode") == "mixed"
    stop = parse_seconds(one(unit, "Service", "TimeoutStopSec"))
    assert stop == 45
    assert stop - grace_default >= 10  # room for the last in-flight request after the drain
    # The unit must not quietly shorten the grace below what it budgets for.
    env = unit["Service"].get("Environment", [])
    assert not any(e.startswith("SYNCD_SHUTDOWN_GRACE=") for e in env)


# --- configuration and secrets ---------------------------------------------------------------


def test_token_comes_from_a_credential(unit: Unit) -> None:
    assert one(unit, "Service", "LoadCredential") == "kantata_token:/etc/syncd/kantata_token"
    env = unit["Service"]["Environment"]
    assert "SYNCD_KANTATA_TOKEN_FILE=%d/kantata_token" in env
    assert not any(e.startswith("SYNCD_KANTATA_TOKEN=") for e in env)
    assert one(unit, "Service", "EnvironmentFile") == "-/etc/syncd/syncd.env"


# --- hardening --------------------------------------------------------------------------------

HARDENING = {
    "DynamicUser": "yes",
    "User": "syncd",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "PrivateMounts": "yes",
    "PrivateUsers": "yes",
    "ProtectHostname": "yes",
    "ProtectClock": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectProc": "invisible",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "RemoveIPC": "yes",
    "SystemCallArchitectures": "native",
    "SystemCallErrorNumber": "EPERM",
    "UMask": "0077",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    # Empty: no capabilities at all, neither bounding nor ambient.
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
}


@pytest.mark.parametrize(("key", "expected"), sorted(HARDENING.items()))
def test_hardening_directive(unit: Unit, key: str, expected: str) -> None:
    assert one(unit, "Service", key) == expected


def test_system_call_filter_allows_service_set_minus_privileged(unit: Unit) -> None:
    assert unit["Service"]["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]


def test_nothing_reopens_write_access(unit: Unit) -> None:
    # syncd keeps no local state; a ReadWritePaths= would undo ProtectSystem=strict.
    for key in ("ReadWritePaths", "StateDirectory", "LogsDirectory", "SupplementaryGroups"):
        assert key not in unit["Service"]
    # ProcSubset=pid would hide /proc/stat and silently empty the process_* metrics.
    assert "ProcSubset" not in unit["Service"]


def test_installs_into_multi_user(unit: Unit) -> None:
    assert one(unit, "Install", "WantedBy") == "multi-user.target"
    assert "network-online.target" in one(unit, "Unit", "Wants")
    assert "network-online.target" in one(unit, "Unit", "After")


# --- environment example ---------------------------------------------------------------------


#: Set on an active line of the example for the unit (not defaults); the one such line is
#: pinned by test_env_example_holds_no_secret.
ENV_EXAMPLE_ACTIVE = {"SYNCD_DATABASE_URL"}


def env_example_entries(text: str) -> list[tuple[bool, str, str]]:
    """(commented out, variable, value) for every `SYNCD_*=` line of an env file text, in
    order. Prose comments (`# ...`, with a space) are not entries."""
    out = []
    for line in text.splitlines():
        m = re.fullmatch(r"(#?)(SYNCD_[A-Z0-9_]+)=(.*)", line.strip())
        if m:
            out.append((m.group(1) == "#", m.group(2), m.group(3)))
    return out


def env_example_problems(text: str) -> list[str]:
    """What makes an env file text break its own rule (its header): every setting of
    `Settings`, and SYNCD_CONFIG_FILE, appears exactly once; a commented-out line's value is
    the built-in default as syncd would parse it from the environment, or empty when the
    default is unset; only the variables of ENV_EXAMPLE_ACTIVE are set on active lines."""
    from pydantic import TypeAdapter, ValidationError

    from syncd.settings import Settings

    fields = {f"SYNCD_{name.upper()}": field for name, field in Settings.model_fields.items()}
    expected = set(fields) | {"SYNCD_CONFIG_FILE"}
    entries = env_example_entries(text)
    names = [name for _, name, _ in entries]
    problems = [f"{name}: listed {names.count(name)} times"
                for name in sorted(set(names)) if names.count(name) > 1]
    problems += [f"{name}: missing" for name in sorted(expected - set(names))]
    problems += [f"{name}: not a setting (typo or renamed?)"
                 for name in sorted(set(names) - expected)]
    for commented, name, value in entries:
        if not commented:
            if name not in ENV_EXAMPLE_ACTIVE:
                problems.append(f"{name}: set on an active line; comment it out")
            continue
        if name == "SYNCD_CONFIG_FILE" or name not in fields:
            if name == "SYNCD_CONFIG_FILE" and value:
                problems.append(f"{name}={value}: unset by default; show it empty")
            continue
        field = fields[name]
        if field.default is None or value == "":
            if (field.default is None) != (value == ""):
                problems.append(f"{name}={value}: the default is {field.default!r}; an empty "
                                "value means unset")
            continue
        try:
            parsed = TypeAdapter(field.annotation).validate_python(value)
        except ValidationError as exc:
            problems.append(f"{name}={value}: not a valid value: {exc.errors()[0]['msg']}")
            continue
        if parsed != field.default:
            problems.append(f"{name}={value}: the default is {field.default!r}")
    return problems


def test_env_example_lists_every_setting_with_its_default() -> None:
    problems = env_example_problems(ENV_EXAMPLE.read_text())
    assert not problems, ("deploy/syncd.env.example disagrees with syncd.settings.Settings:\n"
                          + "\n".join(problems))


def test_env_example_check_finds_each_kind_of_drift() -> None:
    good = ENV_EXAMPLE.read_text()
    assert "#SYNCD_PULL_INTERVAL=60\n" in good and "#SYNCD_HISTORY=true\n" in good
    cases = {
        "#SYNCD_PULL_INTERVAL=300\n": "SYNCD_PULL_INTERVAL=300: the default is 60.0",
        "": "SYNCD_PULL_INTERVAL: missing",
        "#SYNCD_PULL_INTERVAL=60\n#SYNCD_PULL_INTERVAL=60\n": "SYNCD_PULL_INTERVAL: listed 2",
        "#SYNCD_PULL_INTERVALL=60\n": "SYNCD_PULL_INTERVALL: not a setting",
        "#SYNCD_PULL_INTERVAL=\n": "SYNCD_PULL_INTERVAL=: the default is 60.0; an empty",
        "#SYNCD_PULL_INTERVAL=soon\n": "SYNCD_PULL_INTERVAL=soon: not a valid value",
        "SYNCD_PULL_INTERVAL=60\n": "SYNCD_PULL_INTERVAL: set on an active line",
    }
    for replacement, problem in cases.items():
        found = env_example_problems(good.replace("#SYNCD_PULL_INTERVAL=60\n", replacement))
        assert any(p.startswith(problem) for p in found), (replacement, found)
    found = env_example_problems(good.replace("#SYNCD_RATE_LIMIT_PER_MINUTE=\n",
                                              "#SYNCD_RATE_LIMIT_PER_MINUTE=9000\n"))
    assert found == ["SYNCD_RATE_LIMIT_PER_MINUTE=9000: the default is None; an empty value "
                     "means unset"]
    found = env_example_problems(good.replace("#SYNCD_HISTORY=true\n", "#SYNCD_HISTORY=off\n"))
    assert found == ["SYNCD_HISTORY=off: the default is True"]


def test_env_example_holds_no_secret() -> None:
    active = [ln for ln in ENV_EXAMPLE.read_text().splitlines()
              if ln.strip() and not ln.lstrip().startswith("#")]
    # The only active line is the password-less Unix-socket database URL.
    assert active == ["SYNCD_DATABASE_URL=postgresql://syncd@/syncd?host=/run/postgresql"]


# --- systemd-analyze (only where installed) ----------------------------------------------------

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")


def systemd_version() -> int:
    out = subprocess.run([SYSTEMD_ANALYZE, "--version"], capture_output=True, text=True,
                         check=True).stdout
    return int(re.match(r"systemd (\d+)", out).group(1))


def unit_with_stub_binary(tmp_path: Path) -> Path:
    """Copies the unit next to an executable stand-in for SYNCD_BIN.

    `verify` checks that ExecStart= binaries exist; on a build machine syncd
    is not installed at /opt/syncd, so only that path is rewritten.
    """
    stub = tmp_path / "bin" / "syncd"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    copy = tmp_path / "syncd.service"
    copy.write_text(UNIT.read_text().replace(SYNCD_BIN, str(stub)))
    assert SYNCD_BIN not in copy.read_text()
    return copy


@needs_systemd_analyze
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    unit_file = unit_with_stub_binary(tmp_path)
    if systemd_version() >= 254:
        # Newer systemd knows RestartSteps=: verify the drop-in along with the unit.
        (tmp_path / "syncd.service.d").mkdir()
        shutil.copy(BACKOFF_DROPIN, tmp_path / "syncd.service.d" / BACKOFF_DROPIN.name)
    proc = subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit_file)],
                          capture_output=True, text=True, timeout=60)
    # Messages about the host's own units (no systemd running in a container,
    # missing sysinit.target) are not ours; anything naming our unit is.
    ours = [ln for ln in (proc.stdout + proc.stderr).splitlines()
            if "syncd" in ln and "sysinit.target" not in ln]
    assert ours == [], "\n".join(ours)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_systemd_analyze
def test_systemd_analyze_security_exposure_is_low(tmp_path: Path) -> None:
    unit_file = unit_with_stub_binary(tmp_path)
    # --threshold is the exposure level x10: fail above 2.0 ("OK" is < 4.0 on systemd's scale).
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--threshold=20", "--no-pager",
         str(unit_file)],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert re.search(r"Overall exposure level for syncd\.service: [01]\.\d", proc.stdout), \
        proc.stdout[-500:]
