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
