#!/usr/bin/env python3
"""Show a workstream's latest run: the same as `orchestrator status`, e.g. `python scripts/check_step_status.py ID`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's package first

from orchestrator.entry import main  # noqa: E402

if __name__ == "__main__":
    main(["status", *sys.argv[1:]])
