#!/usr/bin/env python3
"""Run a workstream: the same as `orchestrator run`, e.g. `python scripts/run_workstream.py --ws-id ID`."""
import os
import sys

# the checkout's package first (os.path, not pathlib: pathlib costs ~8 ms of start-up)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))

from orchestrator.entry import main  # noqa: E402

if __name__ == "__main__":
    main(["run", *sys.argv[1:]])
