"""deploy/Dockerfile: multi-stage build, non-root runtime, health check, signals.

No Docker engine is needed: the Dockerfile is parsed, and the HEALTHCHECK
command itself is executed against a local HTTP server.
"""

from __future__ import annotations

import http.server
import json
import re
import shlex
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "Dockerfile"
DOCKERIGNORE = REPO / "deploy" / "Dockerfile.dockerignore"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"no {keyword} in stage {self.name or self.base}"
        return found[-1]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Returns (global ARG defaults, stages). Handles comments and `\\` continuations."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue  # comments (also inside a continuation) and blank lines
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, "dangling line continuation"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", args, re.I)
            assert m, line
            stages.append(Stage(base=m.group(1), name=m.group(2)))
        elif not stages:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            name, _, default = args.partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append((keyword, args))
    return global_args, stages


@pytest.fixture(scope="module")
def parsed() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def final(parsed: tuple[dict[str, str], list[Stage]]) -> Stage:
    return parsed[1][-1]


def exec_form(args: str) -> list[str]:
    """A JSON-array instruction argument (exec form); shell form fails the test."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def test_parser_handles_comments_and_continuations() -> None:
    args, stages = parse_dockerfile(
        "ARG B=img:1\nFROM ${B} AS one\nRUN a \\\n# note\n    && b\nFROM ${B}\nUSER 1\n")
    assert args == {"B": "img:1"}
    assert [(s.base, s.name) for s in stages] == [("${B}", "one"), ("${B}", None)]
    assert stages[0].instructions == [("RUN", "a && b")]
    assert stages[1].last("USER") == "1"


def test_multi_stage_on_python_311_slim(parsed: tuple[dict[str, str], list[Stage]]) -> None:
    global_args, stages = parsed
    assert len(stages) == 2
    builder, final = stages
    assert builder.name == "builder"
    # Same interpreter in both stages: the copied venv links to it.
    assert builder.base == final.base == "${PYTHON_IMAGE}"
    assert global_args["PYTHON_IMAGE"].startswith("python:3.11-slim")


def test_builder_builds_the_wheel_into_a_venv(parsed: tuple[dict[str, str], list[Stage]]) -> None:
    builder = parsed[1][0]
    run = " ".join(builder.all("RUN"))
    assert "python -m venv /opt/syncd/venv" in run
    assert "pip wheel" in run and "pip install /dist/syncd-" in run


def test_builder_copies_everything_the_wheel_needs(
    parsed: tuple[dict[str, str], list[Stage]],
) -> None:
    """pyproject's readme, packages and force-included migrations must reach the builder."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    wheel = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]
    needed = {"pyproject.toml", pyproject["project"]["readme"], *wheel["packages"],
              *wheel.get("force-include", {})}
    assert "migrations" in needed
    copied: set[str] = set()
    for args in parsed[1][0].all("COPY"):
        *sources, _dest = shlex.split(args)
        copied.update(s.rstrip("/") for s in sources if not s.startswith("--"))
    assert needed <= copied, f"not copied into the build stage: {sorted(needed - copied)}"


def test_final_stage_only_copies_the_venv_from_the_builder(final: Stage) -> None:
    assert final.all("COPY") == ["--from=builder /opt/syncd/venv /opt/syncd/venv"]
    assert not any("pip install" in r for r in final.all("RUN"))


def test_runs_as_fixed_non_root_user(final: Stage) -> None:
    user = final.last("USER")
    assert user == "10001:10001"
    uid = int(user.split(":")[0])
    assert uid != 0
    run = " ".join(final.all("RUN"))
    assert "useradd" in run and "--uid ${SYNCD_UID}" in run
    assert "SYNCD_UID=10001" in final.all("ARG")
    # USER comes after the last RUN so nothing after it runs as root.
    keywords = [kw for kw, _ in final.instructions]
    assert keywords.index("USER") > max(i for i, kw in enumerate(keywords) if kw == "RUN")


def test_environment_listens_beyond_container_loopback(final: Stage) -> None:
    env = " ".join(final.all("ENV"))
    assert "SYNCD_HTTP_HOST=0.0.0.0" in env
    assert "SYNCD_HTTP_PORT=9187" in env
    assert "PATH=/opt/syncd/venv/bin:$PATH" in env


def test_signals_ports_and_entrypoint(final: Stage) -> None:
    assert final.last("STOPSIGNAL") == "SIGTERM"
    assert final.last("EXPOSE") == "9187"
    assert exec_form(final.last("ENTRYPOINT")) == ["syncd"]
    assert exec_form(final.last("CMD")) == ["run"]


def healthcheck_parts(final: Stage) -> tuple[dict[str, str], list[str]]:
    options, _, cmd = final.last("HEALTHCHECK").partition(" CMD ")
    opts = dict(o.removeprefix("--").split("=", 1) for o in options.split())
    return opts, exec_form(cmd)


def test_healthcheck_probes_healthz_in_exec_form(final: Stage) -> None:
    opts, cmd = healthcheck_parts(final)
    assert cmd[:2] == ["python", "-c"]
    assert "/healthz" in cmd[2]
    assert "SYNCD_HTTP_PORT" in cmd[2]
    assert opts == {"interval": "30s", "timeout": "5s", "start-period": "60s", "retries": "3"}


class _Handler(http.server.BaseHTTPRequestHandler):
    status_for_healthz = 200

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        code = self.status_for_healthz if self.path == "/healthz" else 404
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"ok" if code == 200 else b"no")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[int, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()


def run_probe(cmd: list[str], port: int) -> int:
    argv = [sys.executable if cmd[0] == "python" else cmd[0], *cmd[1:]]
    # A proxy configured for reaching Kantata must not capture the local probe.
    env = {"SYNCD_HTTP_PORT": str(port), "HTTP_PROXY": "http://127.0.0.1:9",
           "http_proxy": "http://127.0.0.1:9"}
    return subprocess.run(argv, env=env, capture_output=True, timeout=30).returncode


def test_healthcheck_command_passes_on_200_and_fails_otherwise(
    final: Stage, health_server: tuple[int, type[_Handler]]
) -> None:
    _, cmd = healthcheck_parts(final)
    port, handler = health_server
    assert run_probe(cmd, port) == 0
    handler.status_for_healthz = 503
    assert run_probe(cmd, port) != 0
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    assert run_probe(cmd, closed_port) != 0


def test_dockerignore_is_an_allow_list_matching_the_copies(
    parsed: tuple[dict[str, str], list[Stage]],
) -> None:
    patterns = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    assert patterns[0] == "*"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = set()
    for args in parsed[1][0].all("COPY"):
        *sources, _dest = shlex.split(args)
        copied.update(s.rstrip("/") for s in sources)
    assert allowed == copied
    assert not allowed & {".git", ".venv", "deploy", "tests"}
