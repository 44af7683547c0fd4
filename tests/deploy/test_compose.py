"""docker-compose.yml and deploy/compose.demo.yml, checked as data (no Docker engine)."""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shlex
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
DEMO = REPO / "deploy" / "compose.demo.yml"


class ComposeLoader(yaml.SafeLoader):
    """SafeLoader that understands Compose's merge tags `!reset` and `!override`."""


class Reset:
    def __repr__(self) -> str:
        return "!reset"


class Override:
    def __init__(self, value: Any) -> None:
        self.value = value


ComposeLoader.add_constructor("!reset", lambda loader, node: Reset())
ComposeLoader.add_constructor(
    "!override",
    lambda loader, node: Override(
        loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode)
        else loader.construct_mapping(node)),
)


def load(path: Path) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=ComposeLoader)  # noqa: S506 (SafeLoader subclass)


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR-default}, with an empty environment."""
    env = env or {}

    def sub(m: re.Match[str]) -> str:
        name, op, default = m.group(1), m.group(2), m.group(3) or ""
        if op == ":-":
            return env.get(name) or default
        if op == "-":
            return env.get(name, default)
        return env.get(name, "")

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}", sub, value)


def merge(base: Any, override: Any) -> Any:
    """The Compose merge rules this project relies on (mappings merge, !reset drops,
    !override replaces, command/entrypoint/healthcheck.test replace, other lists append)."""
    if isinstance(override, Reset):
        return None
    if isinstance(override, Override):
        return override.value
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            if key in out and key not in ("command", "entrypoint", "test"):
                merged = merge(out[key], value)
                if merged is None:
                    del out[key]
                else:
                    out[key] = merged
            elif not isinstance(value, Reset):
                out[key] = value.value if isinstance(value, Override) else value
        return out
    if isinstance(base, list) and isinstance(override, list):
        return base + override
    return override


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load(COMPOSE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


@pytest.fixture(scope="module")
def demo(compose: dict[str, Any]) -> dict[str, Any]:
    return merge(compose, load(DEMO))


def seconds(value: str) -> float:
    """Compose durations such as 45s, 2m, 1m30s."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", value)
    assert parts and "".join(n + u for n, u in parts) == value, value
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * scale[u] for n, u in parts)


def test_merge_helper_follows_compose_rules() -> None:
    base = {"a": {"ports": ["1:1"], "env": {"X": "1"}, "command": ["x"]}}
    over = {"a": {"ports": Reset(), "env": {"Y": "2"}, "command": ["y"]}}
    assert merge(base, over) == {"a": {"env": {"X": "1", "Y": "2"}, "command": ["y"]}}
    assert merge({"l": [1]}, {"l": [2]}) == {"l": [1, 2]}
    assert merge({"l": [1]}, {"l": Override([2])}) == {"l": [2]}
    assert interpolate("${A:-x}/${B-y}/${C}") == "x/y/"
    assert interpolate("${A:-x}", {"A": "set"}) == "set"


def test_services_and_volume(compose: dict[str, Any], services: dict[str, Any]) -> None:
    assert set(services) == {"postgres", "syncd", "simulator"}
    assert compose["name"] == "syncd"
    assert compose["volumes"] == {"pgdata": None}
    assert services["postgres"]["volumes"] == ["pgdata:/var/lib/postgresql/data"]


def test_postgres_is_15_with_pg_isready(services: dict[str, Any]) -> None:
    pg = services["postgres"]
    assert pg["image"] == "postgres:15"
    test = pg["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL" and test[1].startswith("pg_isready ")
    args = shlex.split(test[1])
    env = pg["environment"]
    assert args[args.index("-U") + 1] == env["POSTGRES_USER"]
    assert args[args.index("-d") + 1] == env["POSTGRES_DB"]
    assert "ports" not in pg  # database stays on the compose network
    assert pg["restart"] == "unless-stopped"


def test_syncd_waits_for_healthy_postgres(services: dict[str, Any]) -> None:
    assert services["syncd"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}


def test_syncd_builds_from_deploy_dockerfile(services: dict[str, Any]) -> None:
    for name in ("syncd", "simulator"):
        svc = services[name]
        assert svc["build"] == {"context": ".", "dockerfile": "deploy/Dockerfile"}, name
        assert svc["image"] == "syncd:local", name
    assert (REPO / services["syncd"]["build"]["dockerfile"]).is_file()


def test_syncd_migrates_then_execs_the_daemon(services: dict[str, Any]) -> None:
    entrypoint = services["syncd"]["entrypoint"]
    assert entrypoint[:2] == ["/bin/sh", "-c"]
    # `&&`: a failed migration must not start the daemon; `exec`: SIGTERM reaches syncd.
    assert entrypoint[2] == "syncd migrate && exec syncd run"
    assert "command" not in services["syncd"]
    assert services["syncd"]["init"] is True


def test_syncd_database_url_points_at_the_postgres_service(services: dict[str, Any]) -> None:
    env = services["syncd"]["environment"]
    pg_env = services["postgres"]["environment"]
    url = urlsplit(interpolate(env["SYNCD_DATABASE_URL"]))
    assert url.scheme == "postgresql"
    assert (url.hostname, url.port) == ("postgres", 5432)
    assert url.username == pg_env["POSTGRES_USER"]
    assert url.path == "/" + pg_env["POSTGRES_DB"]
    # Both sides use the same password variable with the same default.
    assert url.password == interpolate(pg_env["POSTGRES_PASSWORD"]) == "syncd"
    assert interpolate(env["SYNCD_DATABASE_URL"], {"POSTGRES_PASSWORD": "s3cret"}).count(
        ":s3cret@postgres:5432/") == 1


def test_syncd_token_is_a_secret_file(compose: dict[str, Any], services: dict[str, Any]) -> None:
    env = services["syncd"]["environment"]
    assert env["SYNCD_KANTATA_TOKEN_FILE"] == "/run/secrets/kantata_token"
    assert "SYNCD_KANTATA_TOKEN" not in env  # both set is a configuration error
    assert services["syncd"]["secrets"] == ["kantata_token"]
    path = interpolate(compose["secrets"]["kantata_token"]["file"])
    assert path == "./deploy/secrets/kantata_token"
    ignore = (REPO / "deploy" / "secrets" / ".gitignore").read_text().split()
    assert "*" in ignore  # real tokens are never committed


def test_syncd_http_health_and_port(services: dict[str, Any]) -> None:
    syncd = services["syncd"]
    env = syncd["environment"]
    assert env["SYNCD_HTTP_HOST"] == "0.0.0.0"
    assert env["SYNCD_HTTP_PORT"] == "9187"
    assert syncd["ports"] == ["127.0.0.1:9187:9187"]
    hc = syncd["healthcheck"]
    assert hc["test"][:3] == ["CMD", "python", "-c"] and "/healthz" in hc["test"][3]
    assert seconds(hc["start_period"]) >= 60
    assert syncd["restart"] == "unless-stopped"


def test_syncd_healthcheck_matches_the_image(services: dict[str, Any]) -> None:
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    m = re.search(r"^HEALTHCHECK [^\n]*\\\n\s*CMD (\[.*\])$", dockerfile, re.M)
    assert m, "HEALTHCHECK ... \\ CMD [...] not found in deploy/Dockerfile"
    assert services["syncd"]["healthcheck"]["test"][1:] == json.loads(m.group(1))


def test_stop_grace_exceeds_shutdown_grace(services: dict[str, Any]) -> None:
    syncd = services["syncd"]
    grace = float(syncd["environment"]["SYNCD_SHUTDOWN_GRACE"])
    assert grace == 30
    assert syncd["stop_signal"] == "SIGTERM"
    assert seconds(syncd["stop_grace_period"]) == 45
    assert seconds(syncd["stop_grace_period"]) - grace >= 10


def test_containers_are_locked_down(services: dict[str, Any]) -> None:
    for name in ("syncd", "simulator"):
        svc = services[name]
        assert svc["read_only"] is True, name
        assert svc["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in svc["security_opt"], name


def test_simulator_only_in_demo_profile(services: dict[str, Any]) -> None:
    sim = services["simulator"]
    assert sim["profiles"] == ["demo"]
    assert sim["command"] == ["simulator", "--host", "0.0.0.0", "--port", "8089",
                              "--token", "demo-token", "--entries", "5000"]
    assert "profiles" not in services["syncd"] and "profiles" not in services["postgres"]
    assert "healthcheck" in sim


def test_simulator_command_parses_with_the_real_cli(services: dict[str, Any]) -> None:
    simcli = pytest.importorskip("syncd.simulator.cli")
    parser = argparse.ArgumentParser()
    simcli.configure_parser(parser)
    command = services["simulator"]["command"]
    assert command[0] == "simulator"  # the image's entrypoint is `syncd`
    args = parser.parse_args(command[1:])
    assert (args.host, args.port, args.token, args.entries) == ("0.0.0.0", 8089, "demo-token", 5000)


def simulator_arg(services: dict[str, Any], flag: str) -> str:
    cmd = services["simulator"]["command"]
    return cmd[cmd.index(flag) + 1]


@pytest.fixture
def tcp_listener() -> Iterator[int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):  # accept timeout: check `stop` again
                srv.accept()[0].close()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join()
        srv.close()


def test_simulator_healthcheck_probes_its_port(
    services: dict[str, Any], tcp_listener: int
) -> None:
    test = services["simulator"]["healthcheck"]["test"]
    port = simulator_arg(services, "--port")
    assert test[:3] == ["CMD", "python", "-c"] and f", {port})" in test[3]
    probe = test[3].replace(f", {port})", ", {})")

    def run(p: int) -> int:
        return subprocess.run([sys.executable, "-c", probe.format(p)], capture_output=True,
                              timeout=30).returncode

    assert run(tcp_listener) == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert run(closed) != 0


# --- demo override ------------------------------------------------------------------------


def test_demo_points_syncd_at_the_simulator_over_loopback(demo: dict[str, Any]) -> None:
    services = demo["services"]
    syncd = services["syncd"]
    env = syncd["environment"]
    url = urlsplit(env["SYNCD_KANTATA_BASE_URL"])
    assert (url.scheme, url.hostname) == ("http", "127.0.0.1")
    assert str(url.port) == simulator_arg(services, "--port")
    assert env["SYNCD_KANTATA_ALLOW_INSECURE_LOOPBACK"] == "true"
    # Loopback only reaches the simulator because they share a network namespace.
    assert syncd["network_mode"] == "service:simulator"
    assert "ports" not in syncd  # not allowed together with network_mode
    assert "127.0.0.1:9187:9187" in services["simulator"]["ports"]
    assert syncd["depends_on"]["simulator"] == {"condition": "service_healthy"}
    assert syncd["depends_on"]["postgres"] == {"condition": "service_healthy"}
    # Database wiring is untouched by the override.
    assert urlsplit(interpolate(env["SYNCD_DATABASE_URL"])).hostname == "postgres"


def test_demo_environment_is_accepted_by_the_daemons_settings(demo: dict[str, Any]) -> None:
    """The demo env (token file path mapped to the repo copy) loads as real Settings."""
    from syncd.settings import Settings, is_loopback_url

    env = demo["services"]["syncd"]["environment"]
    assert is_loopback_url(env["SYNCD_KANTATA_BASE_URL"])
    token_file = REPO / demo["secrets"]["kantata_token"]["file"]
    settings = Settings(
        database_url=interpolate(env["SYNCD_DATABASE_URL"]),
        kantata_base_url=env["SYNCD_KANTATA_BASE_URL"],
        kantata_allow_insecure_loopback=env["SYNCD_KANTATA_ALLOW_INSECURE_LOOPBACK"],
        kantata_token_file=token_file,
        http_host=env["SYNCD_HTTP_HOST"],
        http_port=env["SYNCD_HTTP_PORT"],
        shutdown_grace=env["SYNCD_SHUTDOWN_GRACE"],
        log_level=interpolate(env["SYNCD_LOG_LEVEL"]),
        log_format=env["SYNCD_LOG_FORMAT"],
    )
    assert settings.token().get_secret_value() == "demo-token"
    assert settings.kantata_base_url == "http://127.0.0.1:8089/api/v1"
    # Without the loopback switch the same URL is refused: the override needs it.
    with pytest.raises(ValueError, match="loopback"):
        Settings(kantata_base_url=env["SYNCD_KANTATA_BASE_URL"], kantata_token_file=token_file)


def test_demo_token_file_matches_the_simulator_token(demo: dict[str, Any]) -> None:
    token_file = REPO / demo["secrets"]["kantata_token"]["file"]
    assert token_file.read_text().strip() == simulator_arg(demo["services"], "--token")


def test_base_file_without_override_keeps_production_defaults(services: dict[str, Any]) -> None:
    env = services["syncd"]["environment"]
    assert interpolate(env["SYNCD_KANTATA_BASE_URL"]) == "https://api.mavenlink.com/api/v1"
    assert "SYNCD_KANTATA_ALLOW_INSECURE_LOOPBACK" not in env
    assert "network_mode" not in services["syncd"]


def test_base_environment_is_accepted_by_the_daemons_settings(
    services: dict[str, Any], tmp_path: Path
) -> None:
    from syncd.settings import Settings

    env = {k: interpolate(v) for k, v in services["syncd"]["environment"].items()}
    token = tmp_path / "kantata_token"  # stands in for /run/secrets/kantata_token
    token.write_text("real-token\n")
    env["SYNCD_KANTATA_TOKEN_FILE"] = str(token)
    settings = Settings(**{k.removeprefix("SYNCD_").lower(): v for k, v in env.items()})
    assert settings.dsn() == "postgresql://syncd:syncd@postgres:5432/syncd"
    assert settings.http_port == 9187 and settings.shutdown_grace == 30
    assert settings.token().get_secret_value() == "real-token"
