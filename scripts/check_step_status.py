#!/usr/bin/env python3
"""Show a workstream's latest run: the same as `orchestrator status`, e.g. `python scripts/check_step_status.py ID`."""
import os
import sys

# the checkout's package first (os.path, not pathlib: pathlib costs ~8 ms of start-up)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))

from orchestrator.entry import main  # noqa: E402

if __name__ == "__main__":
    main(["status", *sys.argv[1:]])
