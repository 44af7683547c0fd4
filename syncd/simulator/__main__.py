"""``python -m syncd.simulator [options]``: same as ``syncd simulator`` (see cli.py)."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
