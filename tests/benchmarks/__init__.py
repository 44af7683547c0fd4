"""Benchmarks: syncd's backfill against the plain-listing reference client (and the reference
clients between the two) and against dlt, measured side by side on one machine
(`python -m tests.benchmarks.run`). Never run in CI except the tiny smoke size in
test_smoke.py."""
