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
