"""What a person sees on stderr while a run goes on (the dispatcher's injected reporter).

Plain lines, safe for pipes and CI logs: `[12:30:01] ✓ step-01 (2.1s)`,
`[12:30:02] ✗ step-03 (exit code 1 in task 2: ...)` and, at most once a second and at the end,
`Progress: 3/10 steps complete`. `-q` prints only the final line, `-v` also each step's start.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, TextIO

from .dispatcher import Reporter
from .model import StepStatus, Workstream
from .records import StepRecord
from .report import SYMBOLS, human_duration, plain_line, progress_line

PROGRESS_EVERY = 1.0


class PlainReporter(Reporter):
    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False, verbose: bool = False):
        self.out = stream or sys.stderr
        self.quiet = quiet
        self.verbose = verbose
        self._last_progress = 0.0
        self._done = 0
        self._total = 0

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def run_started(self, ws: Workstream, run_id: str, run_dir: Path, workers: int) -> None:
        self._total = len(ws.steps)
        if not self.quiet:
            self._say(f"Run {run_id} of {ws.id}: {len(ws.steps)} steps, up to {workers} at once")

    def step_started(self, step_id: str, attempt: int, log_path: Path | None = None) -> None:
        if self.verbose:
            extra = f" (attempt {attempt})" if attempt > 1 else ""
            self._say(plain_line(time.time(), SYMBOLS["running"], step_id, f"started{extra}"))

    def step_finished(self, rec: StepRecord, done: int, total: int) -> None:
        self._done, self._total = done, total
        if self.quiet:
            return
        if rec.status is StepStatus.SUCCEEDED:
            detail = f"({human_duration(rec.duration_s)})"
        else:
            detail = f"({rec.error or rec.status.value})"
        self._say(plain_line(time.time(), SYMBOLS.get(rec.status.value, "?"), rec.step_id, detail))
        now = time.monotonic()
        if now - self._last_progress >= PROGRESS_EVERY:
            self._last_progress = now
            self._say(progress_line(done, total))

    def step_changed(self, step_id: str, status: StepStatus, reason: str | None) -> None:
        if self.quiet or status is StepStatus.PENDING and not self.verbose:
            return
        self._say(plain_line(time.time(), SYMBOLS.get(status.value, "?"), step_id,
                             f"({reason})" if reason else status.value))

    def message(self, text: str) -> None:
        self._say(text)

    def run_finished(self, summary: dict[str, Any], run_dir: Path) -> None:
        c = summary["summary"]
        done = c["total"] - c.get("pending", 0)
        if not self.quiet:
            self._say(progress_line(done, c["total"]))
        parts = [f"{c[k]} {k.replace('_', ' ')}" for k in
                 ("succeeded", "failed", "timed_out", "blocked", "skipped", "cancelled", "pending")
                 if c.get(k)]
        self._say(f"{summary['status'].upper()}: {', '.join(parts) or 'no steps'} in "
                  f"{human_duration(c['wall_time_s'])} (sequential {human_duration(c['sequential_time_s'])}, "
                  f"speedup {c['speedup']:.2f}x) — report: {run_dir / 'execution_report.md'}")
