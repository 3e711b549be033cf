#!/usr/bin/env python3
"""Run a workstream: the same as `orchestrator run`, e.g. `python scripts/run_workstream.py --ws-id ID`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's package first

from orchestrator.entry import main  # noqa: E402

if __name__ == "__main__":
    main(["run", *sys.argv[1:]])
