"""Usage errors of the `syncd` command: options that contradict each other are refused with
exit code 2 and a line naming both, before anything runs."""

from __future__ import annotations

import pytest

from syncd import cli


def test_demo_refuses_stop_with_keep(capsys: pytest.CaptureFixture[str]) -> None:
    """`--stop --keep` was accepted and did only the stop (a new user's trial)."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(["demo", "--stop", "--keep"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --keep: not allowed with argument --stop" in err


def test_outbox_list_refuses_a_limit_below_one(capsys: pytest.CaptureFixture[str]) -> None:
    """`--limit -1` reached PostgreSQL ("LIMIT must not be negative", exit 1; a trial)."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(["outbox", "list", "--limit", "-1"])
    assert exit_.value.code == 2
    assert "argument --limit: expected a number >= 1, got -1" in capsys.readouterr().err
