"""Run several dbt commands in one process (run by .venv-dbt/bin/python, not by pytest).

    .venv-dbt/bin/python tests/dbt/dbt_steps.py STEPS.json

STEPS.json is a list of {"name": str, "args": [dbt arguments], "save": {artifact: copy}} ("save"
optional: after the step, copy each artifact, e.g. PROJECT/target/run_results.json, to the path
given, so later steps do not overwrite it). Each step runs through dbt's
programmatic entry point (dbtRunner, one invocation after the other), so Python and dbt are
imported once instead of once per command (about 3 s each on a 2-vCPU machine). Before each
step a line `@@step <name>` is printed and after it `@@done <name> <0|1>` (1 = dbt reported
failure or raised), so the caller can split dbt's output by step. Exit code 0.
"""

from __future__ import annotations

import json
import shutil
import sys
import time


def main() -> int:
    from dbt.cli.main import dbtRunner

    steps = json.loads(open(sys.argv[1]).read())
    for step in steps:
        print(f"@@step {step['name']}", flush=True)
        t0 = time.monotonic()
        try:
            res = dbtRunner().invoke(step["args"])
            ok, note = res.success, "" if res.exception is None else str(res.exception)
        except Exception as exc:  # a crash of one step must not hide the others
            ok, note = False, f"{type(exc).__name__}: {exc}"
        if note:
            print(note, flush=True)
        for src, dst in (step.get("save") or {}).items():
            try:
                shutil.copyfile(src, dst)
            except OSError as exc:
                print(f"could not save {src}: {exc}", flush=True)
        print(f"@@done {step['name']} {0 if ok else 1} {time.monotonic() - t0:.1f}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
