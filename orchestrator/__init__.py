"""Run the steps of a JSON workstream in parallel, in dependency order.

A workstream file (``workstreams/<ws-id>.json``) lists steps — shell commands, Python callables or
named command-line tools — with their dependencies, file scopes, timeouts and acceptance tests. The
orchestrator validates the file, runs every step whose dependencies succeeded on a process pool (or a
Dask cluster) within the configured limits, and records the lifecycle log, live state, per-step logs,
results summary, markdown report and JUnit XML under ``.worktrees/<ws-id>/``. Entry points: the
``orchestrator`` console script and ``python -m orchestrator`` (see ``orchestrator.cli``).
"""

__version__ = "0.1.0"
