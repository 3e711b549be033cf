"""The one root of input errors.

Everything a user can get wrong *before* a run starts (a malformed file, a schema violation, a cycle,
a conflicting scope, a bad command-line value, a held lock) raises a subclass of `OrchestratorError`.
The CLI maps the root to its exit code and prints `str(error)` with no traceback. What steps do while
running is never an exception: it is data in `StepResult`.
"""
from __future__ import annotations


class OrchestratorError(Exception):
    """Root of every error the CLI reports as a one-line message."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | None = None, where: str | None = None,
                 line: int | None = None, column: int | None = None, hint: str | None = None):
        self.message = message
        self.path = path
        self.where = where
        self.line = line
        self.column = column
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        """`file:line:col: where: message (hint)` like a compiler, leaving out what is unknown."""
        head = ""
        if self.path:
            head = self.path
            if self.line is not None:
                head += f":{self.line}"
                if self.column is not None:
                    head += f":{self.column}"
            head += ": "
        if self.where:
            head += f"{self.where}: "
        text = head + self.message
        if self.hint:
            text += f" ({self.hint})"
        return text


class ValidationError(OrchestratorError):
    """The workstream file is not acceptable (JSON, schema, graph or scope)."""


class UsageError(OrchestratorError):
    """A command-line value is not acceptable."""


class LockHeldError(OrchestratorError):
    """Another live run of the same workstream holds its lock."""

    exit_code = 3


class RunNotFoundError(OrchestratorError):
    """`status` or `--resume` named a workstream or run that has no run directory."""


class WorkerDied(Exception):
    """The worker process running a call died (killed by a signal, or exited) before answering."""

    def __init__(self, pid: int, exitcode: int | None):
        self.pid = pid
        self.exitcode = exitcode
        if exitcode is not None and exitcode < 0:
            text = f"worker process died (signal {-exitcode})"
        else:
            text = f"worker process died (exit code {exitcode})"
        super().__init__(text)
