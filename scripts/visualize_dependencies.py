#!/usr/bin/env python3
"""Draw a workstream's dependency graph into dependency_graph.png: `orchestrator graph` for one WS_ID.

Usage: python scripts/visualize_dependencies.py WS_ID [more `orchestrator graph` options]
Without Graphviz installed, the graph command writes Mermaid text instead (and says where).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's package first

from orchestrator.entry import main  # noqa: E402

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help"):
        main(["graph", "--help"])
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        print(f"usage: {Path(sys.argv[0]).name} WS_ID [graph options]", file=sys.stderr)
        sys.exit(2)
    ws_id, rest = sys.argv[1], sys.argv[2:]
    main(["graph", "--ws-id", ws_id, "--format", "png", "-o", "dependency_graph.png", *rest])
