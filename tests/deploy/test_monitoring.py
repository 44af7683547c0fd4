"""The monitoring pack (deploy/monitoring/) checked with the real tool: `promtool check rules`
and the rule unit tests, every dashboard query parsed by promtool, no hard-coded datasource
UIDs, and every runbook link naming a heading that exists. That every metric the pack uses is
exposed by a live syncd is tests/ops/test_monitoring_metrics.py. CI (.ci/run) installs
Debian's `prometheus` for promtool and sets SYNCD_REQUIRE_PROMTOOL=1; elsewhere these tests are
skipped when promtool is missing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from tests.unit.test_docs import anchors

ROOT = Path(__file__).resolve().parents[2]
PACK = ROOT / "deploy" / "monitoring"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None and not os.environ.get("SYNCD_REQUIRE_PROMTOOL"),
    reason="promtool not installed (apt-get install prometheus)")


def promtool(*args: str, cwd: Path = PACK) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL, "promtool is required here (SYNCD_REQUIRE_PROMTOOL is set)"
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True,
                          check=False, timeout=60)


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((PACK / "alerts.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def rules_table() -> str:
    """The markdown table of the shipped rules that deploy/README.md shows (issue #23: the
    README suggested hand-written rules that disagreed with alerts.yml, one with a label
    syncd does not export)."""
    lines = ["| alert | severity | for | expression |", "|---|---|---|---|"]
    for r in rules():
        expr = " ".join(r["expr"].split()).replace("|", "\\|")
        lines.append(f"| [{r['alert']}](#{r['annotations']['runbook'].partition('#')[2]}) "
                     f"| {r['labels']['severity']} | {r['for']} | `{expr}` |")
    return "\n".join(lines) + "\n"


README = ROOT / "deploy" / "README.md"
BEGIN, END = "<!-- alert-rules:begin -->\n", "<!-- alert-rules:end -->"


def readme_rules_block() -> str:
    return README.read_text().split(BEGIN, 1)[1].split(END, 1)[0]


def dashboard() -> dict[str, Any]:
    return orjson.loads((PACK / "dashboard.json").read_bytes())


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


@needs_promtool
def test_promtool_checks_the_rules_and_their_unit_tests_pass() -> None:
    check = promtool("check", "rules", "alerts.yml")
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(rules())} rules found" in check.stdout
    test = promtool("test", "rules", "alerts.test.yml")
    assert test.returncode == 0, test.stdout + test.stderr


@needs_promtool
def test_a_broken_rule_is_caught_by_promtool(tmp_path: Path) -> None:
    """The check can fail: a rule with a syntax error is refused."""
    (tmp_path / "bad.yml").write_text(
        "groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: rate(up[5m]\n")
    assert promtool("check", "rules", "bad.yml", cwd=tmp_path).returncode != 0


def test_the_main_alerts_have_unit_tests_and_every_alert_its_annotations() -> None:
    tested = set(re.findall(r"alertname: (\w+)", (PACK / "alerts.test.yml").read_text()))
    names = {r["alert"] for r in rules()}
    assert {"SyncdDown", "SyncdMirrorStale", "SyncdOutboxStuck", "SyncdOutboxNeedsDecision",
            "SyncdKantataThrottled", "SyncdRequestBudgetAtFloor", "SyncdRecordsRejected",
            "SyncdNoLeader", "SyncdReconciliationOverdue", "SyncdJobsFailing"} <= tested
    assert tested <= names
    for r in rules():
        assert r["labels"]["severity"] in ("critical", "warning", "info"), r["alert"]
        assert {"summary", "description", "runbook"} <= set(r["annotations"]), r["alert"]
        assert "for" in r, r["alert"]


def test_every_runbook_link_resolves_to_a_heading() -> None:
    for r in rules():
        path, _, anchor = r["annotations"]["runbook"].partition("#")
        target = ROOT / path
        assert target.is_file(), (r["alert"], path)
        assert anchor in anchors(target), (r["alert"], anchor, sorted(anchors(target)))


def test_dashboard_has_no_hard_coded_datasource_and_the_variables_it_needs() -> None:
    d = dashboard()
    assert "uid" not in d or d["uid"] in (None, "")
    names = {v["name"] for v in d["templating"]["list"]}
    assert {"datasource", "instance"} <= names
    for p in d["panels"]:
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
    titles = " ".join(p["title"].lower() for p in d["panels"])
    for subject in ("freshness", "throughput", "budget", "outbox", "errors", "duration",
                    "replicas"):
        assert subject in titles, subject


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """Each query becomes a recording rule (Grafana's variables filled in) that promtool
    parses; a typo in a dashboard query fails here."""
    exprs = [e.replace("$__rate_interval", "5m").replace("$instance", ".*")
             for e in dashboard_exprs()]
    doc = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"syncd_dashboard:query{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    (tmp_path / "dashboard_rules.yml").write_text(yaml.safe_dump(doc))
    res = promtool("check", "rules", "dashboard_rules.yml", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in res.stdout


def test_the_readme_shows_exactly_the_shipped_rules() -> None:
    """deploy/README.md shows the rules of alerts.yml, generated, and no other rule."""
    assert readme_rules_block() == rules_table(), (
        "deploy/README.md's alert table differs from deploy/monitoring/alerts.yml: run "
        "`.venv/bin/python -m tests.deploy.test_monitoring`")
    outside = README.read_text().replace(readme_rules_block(), "")
    assert not re.search(r"(?m)^\s*-?\s*alert:", outside), "a hand-written rule in the README"
    assert not re.search(r"(?m)^\s*expr:", outside), "a hand-written rule in the README"


def metric_labels() -> dict[str, set[str]]:
    """Every series name syncd exports, with its label names (from syncd.metrics)."""
    from syncd.metrics import Metrics

    out: dict[str, set[str]] = {}
    for m in vars(Metrics()).values():
        name, labels = getattr(m, "_name", None), getattr(m, "_labelnames", None)
        if name is None or labels is None:
            continue
        for suffix in ("", "_total", "_sum", "_count", "_created"):
            out[name + suffix] = set(labels)
        out[name + "_bucket"] = set(labels) | {"le"}
    return out


def test_every_selector_of_a_syncd_metric_uses_labels_it_has() -> None:
    """`syncd_job_last_success_timestamp_seconds{job="pull"}` (the README's old suggestion)
    never matches: syncd's job label is `syncd_job`. Checked in every markdown file, the rules
    and the dashboard; Prometheus's target labels (job, instance) may be used on any."""
    known = metric_labels()
    texts = {str(p.relative_to(ROOT)): p.read_text()
             for p in [*ROOT.glob("*.md"), *ROOT.glob("deploy/**/*.md"),
                       *ROOT.glob("migrations/*.md"), PACK / "alerts.yml",
                       PACK / "alerts.test.yml"]}
    texts["dashboard.json"] = "\n".join(dashboard_exprs())
    bad = []
    for where, text in texts.items():
        for name, sel in re.findall(r"\b(syncd_[a-z_]+)\{([^}]*)\}", text):
            if name not in known:
                bad.append(f"{where}: no metric {name}")
                continue
            keys = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", sel))
            wrong = keys - known[name] - {"instance"} - (
                {"job"} if where.endswith(".test.yml") else set())
            if wrong:
                bad.append(f"{where}: {name}{{{sel}}}: {name} has no label {sorted(wrong)}")
    assert bad == []


if __name__ == "__main__":  # rewrite deploy/README.md's alert table from alerts.yml
    text = README.read_text()
    README.write_text(text.replace(BEGIN + readme_rules_block() + END,
                                   BEGIN + rules_table() + END))
