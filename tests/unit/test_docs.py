"""The documentation stays true: every relative link and anchor in the markdown files resolves,
every `syncd ...` command line names a subcommand and flags that exist, every `--help` runs
and shows a purpose, and the settings table in deploy/README.md is the one generated from
`syncd.settings.Settings` (issue #15)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import yaml

from syncd import cli
from syncd.settings import Settings, reference_table

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted(p for p in ROOT.rglob("*.md")
              if not any(part in (".venv", "node_modules", ".git") or part.startswith(".")
                         for part in p.relative_to(ROOT).parts))


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a markdown heading (punctuation dropped, spaces to dashes)."""
    text = re.sub(r"`", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(md: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    in_code = False
    for line in md.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not re.match(r"^#{1,6} ", line):
            continue
        a = github_anchor(line.lstrip("#"))
        n = seen.get(a, 0)
        out.add(a if n == 0 else f"{a}-{n}")
        seen[a] = n + 1
    return out


def links(md: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", md.read_text(), flags=re.S)
    return re.findall(r"\]\(([^)\s]+)\)", text)


def test_there_is_a_page_for_each_audience() -> None:
    names = {str(p.relative_to(ROOT)) for p in DOCS}
    assert {"README.md", "deploy/README.md", "migrations/README.md", "tests/chaos/README.md",
            "tests/benchmarks/README.md"} <= names


def test_the_readme_is_a_front_page() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


@pytest.mark.parametrize("md", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_every_relative_link_and_anchor_resolves(md: Path) -> None:
    bad = []
    for link in links(md):
        if re.match(r"^[a-z]+:", link):  # http:, https:, mailto:
            continue
        path, _, anchor = link.partition("#")
        target = (md.parent / path).resolve() if path else md
        if not target.exists():
            bad.append(f"{link}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            bad.append(f"{link}: no heading #{anchor} in {target.relative_to(ROOT)}")
    assert bad == []


def test_the_readme_reaches_every_reference_in_one_link() -> None:
    """From the front page: the BI schema, the outbox contract, every setting, the systemd
    unit, the runbook for a stuck outbox."""
    readme = links(ROOT / "README.md")
    joined = " ".join(readme)
    assert "migrations/README.md#the-schema-for-bi-users" in joined
    assert "migrations/README.md#the-outbox-changing-kantata-from-postgresql" in joined
    assert "deploy/README.md#settings" in joined
    assert "deploy/README.md" in readme
    deploy = (ROOT / "deploy" / "README.md").read_text()
    assert "### Running under systemd" in deploy and "#### SyncdOutboxStuck" in deploy


def test_the_settings_reference_is_the_generated_one() -> None:
    text = (ROOT / "deploy" / "README.md").read_text()
    committed = text.split("<!-- settings-reference:begin -->\n", 1)[1].split(
        "<!-- settings-reference:end -->", 1)[0]
    assert committed == reference_table(), (
        "deploy/README.md's settings table differs from the code: paste "
        "`syncd config --reference` between the settings-reference markers")


DBT = ROOT / "deploy" / "dbt"


def freshness_criteria(pull_interval: float, max_age_intervals: float) -> dict[str, dict]:
    """The dbt source freshness of `syncd.freshness` for these settings (seconds, count): warn
    after 2 pull intervals (one pull missed), error after `max_age_intervals` of them, when
    `/readyz` fails (syncd/http.py). dbt counts whole minutes."""
    warn, error = 2 * pull_interval / 60, max_age_intervals * pull_interval / 60
    assert warn.is_integer() and error.is_integer(), (warn, error)
    return {"warn_after": {"count": int(warn), "period": "minute"},
            "error_after": {"count": int(error), "period": "minute"}}


def test_dbt_freshness_thresholds_follow_the_default_pull_interval() -> None:
    """sources_spec.yml, the generated sources.yml the package ships, and the two READMEs that
    state the thresholds agree with the defaults of Settings (they once said 10 and 15
    minutes from a 300 s default that had become 60 s)."""
    interval = Settings.model_fields["pull_interval"].default
    intervals = Settings.model_fields["ready_max_pull_age_intervals"].default
    expected = freshness_criteria(interval, intervals)
    spec_text = (DBT / "sources_spec.yml").read_text()
    spec = yaml.safe_load(spec_text)["sources"]["syncd"]["tables"]["freshness"]
    assert spec["config"]["freshness"] == expected
    shipped = yaml.safe_load((DBT / "syncd_kantata" / "models" / "sources.yml").read_text())
    [table] = [t for s in shipped["sources"] if s["name"] == "syncd" for t in s["tables"]
               if t["name"] == "freshness"]
    assert table["config"]["freshness"] == expected
    assert f"SYNCD_PULL_INTERVAL (default {interval:g} s)" in spec_text
    warn, error = expected["warn_after"]["count"], expected["error_after"]["count"]
    stated = f"{warn} and {error} minutes with the defaults ({interval:g} s, {intervals:g})"
    package_readme = DBT / "syncd_kantata" / "README.md"
    for md in (ROOT / "migrations" / "README.md", package_readme):
        assert stated in " ".join(md.read_text().split()), f"{md} should say: {stated}"
    # The override example of the package README follows the same rule.
    m = re.search(r"warn_after: \{count: (\d+), period: minute\}\s+# SYNCD_PULL_INTERVAL=(\d+)"
                  r"\s+error_after: \{count: (\d+), period: minute\}", package_readme.read_text())
    assert m, "override example not found"
    example = freshness_criteria(float(m.group(2)), intervals)
    assert (int(m.group(1)), int(m.group(3))) == (example["warn_after"]["count"],
                                                  example["error_after"]["count"])


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


COMMAND = re.compile(r"^(?:\$ )?(?:[A-Z_]+=\S+ )*(?:sudo |exec )?(?:\S*/)?syncd "
                     r"([a-z][\w-]*(?: [^#|;&`]*)?)")


def command_lines() -> list[tuple[str, str]]:
    """(file, command line, from a shell block) for every command line starting with
    `syncd <word>` in shell code blocks and in inline code."""
    out = []
    for md in DOCS:
        text = md.read_text()
        blocks = re.findall(r"```(?:sh|bash|console|shell)\n(.*?)```", text, re.S)
        spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
        for chunks, shell in ((blocks, True), (spans, False)):
            for chunk in chunks:
                for line in chunk.splitlines():
                    m = COMMAND.match(line.strip())
                    if m:
                        out.append((str(md.relative_to(ROOT)), m.group(1).strip(), shell))
    return out


def test_every_syncd_command_line_in_the_docs_exists() -> None:
    subs = subparsers()
    problems = []
    lines = command_lines()
    assert len(lines) > 20
    for where, line, shell in lines:
        words = line.split()
        name = words[0]
        if name not in subs and not shell:
            continue  # an inline span of prose, e.g. `syncd` ... `syncd.outbox`
        if name not in subs:
            problems.append(f"{where}: `syncd {line}`: no command {name!r}")
            continue
        p = subs[name]
        known = {o for a in p._actions for o in a.option_strings}
        nested = next((a for a in p._actions if isinstance(a, argparse._SubParsersAction)),
                      None)
        if nested is not None and len(words) > 1 and words[1] in nested.choices:
            known |= {o for a in nested.choices[words[1]]._actions for o in a.option_strings}
        for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", line):
            if flag not in known:
                problems.append(f"{where}: `syncd {line}`: {name} has no {flag}")
    assert problems == []


@pytest.mark.parametrize("name", sorted(subparsers()))
def test_every_command_help_runs_with_a_purpose_and_shows_defaults(
        name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    purpose = out.split("\n\n", 2)[1] if "\n\n" in out else ""
    assert purpose.strip() and not purpose.lstrip().startswith(("positional", "options")), out
    p = subparsers()[name]
    for a in p._actions:
        if a.option_strings and a.default not in (None, False, argparse.SUPPRESS) \
                and a.help and a.help != argparse.SUPPRESS:
            assert "default" in (a.help % {"default": a.default, "prog": ""}).lower() or \
                isinstance(p.formatter_class, type) and issubclass(
                    p.formatter_class, argparse.ArgumentDefaultsHelpFormatter), (name, a.dest)


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 0
    return capsys.readouterr().out


def test_help_says_where_settings_come_from_and_what_run_and_status_mean(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Issue #23: `syncd run --help` named no option, setting, config file or port; `syncd
    status --help` did not explain "settled through"; the top-level help did not say where
    settings come from."""
    top = _help(["--help"], capsys)
    assert "SYNCD_" in top and "SYNCD_CONFIG_FILE" in top and "TOML" in top
    assert "syncd config" in top
    run = " ".join(_help(["run", "--help"], capsys).split())
    for needle in ("SYNCD_CONFIG_FILE", "SYNCD_DATABASE_URL", "SYNCD_KANTATA_TOKEN",
                   "SYNCD_HTTP_PORT", "(default 9187)", "SYNCD_PULL_INTERVAL",
                   "SYNCD_SHUTDOWN_GRACE", "/metrics", "no options besides --help",
                   "SIGTERM", "syncd migrate"):
        assert needle in run, needle
    status = " ".join(_help(["status", "--help"], capsys).split())
    assert "settled through changes up to this instant" in status
    assert "SYNCD_OVERLAP" in status and "watermark" in status


def test_the_readme_says_what_tests_run_needs_and_installs() -> None:
    """Issue #23: tests/run installs Chromium system-wide (as root), the contract test needs
    the shared folder beside the repository, the promtool tests need promtool."""
    text = " ".join((ROOT / "README.md").read_text().split())
    run = (ROOT / "tests" / "run").read_text()
    assert "apt-get install" in run and "chromium" in run and 'id -u)" = 0' in run
    assert "installs Debian's package system-wide" in text and "you are root" in text
    assert "../shared/kantata/" in text and "SYNCD_REQUIRE_CONTRACT=1" in text
    assert "SYNCD_REQUIRE_PROMTOOL=1 tests/run tests/deploy/test_monitoring.py" in text
    contract = (ROOT / "tests" / "simulator" / "test_sim_contract.py").read_text()
    assert "SYNCD_REQUIRE_CONTRACT" in contract and "../shared/kantata/" in contract
