"""Run the steps of a JSON workstream in parallel, in dependency order.

A workstream file (``workstreams/<ws-id>.json``) lists steps — shell commands, Python callables or
named command-line tools — with their dependencies, file scopes, timeouts and acceptance tests. The
orchestrator validates the file, runs every step whose dependencies succeeded on a process pool (or a
Dask cluster) within the configured limits, and records the lifecycle log, live state, per-step logs,
results summary, markdown report and JUnit XML under ``.worktrees/<ws-id>/``. Entry points: the
``orchestrator`` console script and ``python -m orchestrator`` (see ``orchestrator.cli``).
"""

__version__ = "0.1.0"

import os as _os
import sys as _sys

# Our own bytecode cache is worth ~50 ms of every command's start-up (8k lines to compile). Where
# PYTHONDONTWRITEBYTECODE is set it would never be written, so it is, once, for this process (as the
# Makefile's `compileall` does at install); `python` steps get the user's setting back.
USER_DONT_WRITE_BYTECODE = _sys.dont_write_bytecode
_here = _os.path.dirname(__file__)
_cache = _os.path.join(_here, "__pycache__")
if _sys.dont_write_bytecode and _os.access(_cache if _os.path.isdir(_cache) else _here, _os.W_OK):
    _sys.dont_write_bytecode = False
