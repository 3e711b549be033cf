"""A level-barrier runner: the baseline for engines that schedule a DAG level by level.

    python bench/levelrun.py WORKSTREAM.json [-j N]

Each step's level is one more than the highest level of its dependencies. All steps of a level run on a
pool of N threads (each waits on its `/bin/sh -c` child without polling); the next level starts only
when the whole level has finished. Exit 1 when a step failed (its later levels still run: this is a
timing baseline, not an engine).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor


def run_step(tasks: list[str]) -> int:
    for cmd in tasks:
        rc = subprocess.Popen(["/bin/sh", "-c", cmd]).wait()
        if rc:
            return rc
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workstream")
    ap.add_argument("-j", "--jobs", type=int, default=None)
    args = ap.parse_args(argv)
    with open(args.workstream) as f:
        ws = json.load(f)
    workers = args.jobs or ws.get("execution", {}).get("max_workers", 4)
    steps = {s["id"]: s for s in ws["steps"]}
    level: dict[str, int] = {}

    def level_of(sid: str) -> int:                      # iterative: chains may be deep
        stack = [sid]
        while stack:
            top = stack[-1]
            missing = [d for d in steps[top].get("depends_on", []) if d not in level]
            if missing:
                stack.extend(missing)
                continue
            stack.pop()
            level[top] = 1 + max((level[d] for d in steps[top].get("depends_on", [])), default=-1)
        return level[sid]

    by_level: dict[int, list[str]] = {}
    for sid in steps:                                   # file order within a level
        by_level.setdefault(level_of(sid), []).append(sid)
    failed = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for k in sorted(by_level):
            rcs = list(pool.map(lambda sid: run_step(steps[sid].get("tasks", [])), by_level[k]))
            failed += sum(1 for rc in rcs if rc)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
