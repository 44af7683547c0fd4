"""syncd.memory: the mmap threshold is fixed where the C library is glibc (this project's
machines and images are Debian: glibc)."""

from __future__ import annotations

import platform

import pytest

from syncd.memory import fix_mmap_threshold


def test_the_mmap_threshold_is_fixed_on_glibc() -> None:
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert fix_mmap_threshold() is True


def test_the_console_script_freezes_its_startup_objects_and_a_caller_of_main_does_not(
        ) -> None:
    """`syncd` (argv from the process) freezes what its imports made before the command runs,
    so the collector's full passes skip them; `cli.main([...])`, as tests call it, changes
    nothing in the caller's process."""
    import gc
    import subprocess
    import sys

    from syncd import cli

    probe = ("import gc, sys; from syncd import cli; "
             "sys.argv = ['syncd', 'config', '--reference']; "
             "import syncd.commands.config as c; run = c._cmd; "
             "c._cmd = lambda a, s: print(gc.get_freeze_count()) or 0; "
             "sys.exit(cli.main())")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env={"SYNCD_KANTATA_TOKEN": "t", "PATH": "/usr/bin:/bin"},
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) > 10_000  # the imported modules, classes, functions
    before = gc.get_freeze_count()
    cli.main(["config", "--reference"])
    assert gc.get_freeze_count() == before
