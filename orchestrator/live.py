"""The live view on a terminal: running steps, counts per state and a progress bar with an ETA.

`LiveReporter` is a `PlainReporter` whose lines (✓/✗ per finished step, and with `-v` the steps' output)
go above a `rich.live.Live` area that is redrawn from the dispatcher's `tick` — at most every
`TICK_INTERVAL` (4 a second), in the caller's thread: there is no refresh thread (`auto_refresh=False`),
so nothing renders while the loop changes the records, and the pool's forked workers inherit no thread.
Lines that arrive between two ticks are buffered and written in the same terminal write as the redraw.
`render_view` and `eta_seconds` are pure functions of the records, so tests check them on data.

ETA: each step not yet ended is expected to take its `estimated_duration`, or, without one, the average
duration of the steps that have run to an end in this run (running steps count only what is left of it);
ETA = max(the longest of those, their sum / workers). Without an estimate or a finished step it is
unknown and shown as `ETA -`. It ignores dependencies: a rough guide, not a schedule.

Robustness: any exception while drawing turns the live view off for the rest of the run — the Live is
stopped, a one-line notice says why, and the run goes on with the plain lines of `PlainReporter`.
"""
from __future__ import annotations

import atexit
import statistics

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .console import _ANSI, TICK_INTERVAL, PlainReporter
from .model import StepStatus, Workstream
from .records import StepRecord
from .fmt import SYMBOLS, human_duration

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Mapping, TextIO

STYLES = {
    "succeeded": "green", "failed": "bold red", "timed_out": "red", "cancelled": "yellow",
    "blocked": "yellow", "skipped": "dim", "pending": "dim", "running": "cyan",
}
ORDER = ("succeeded", "failed", "timed_out", "cancelled", "blocked", "skipped", "running", "pending")
_BY_SYMBOL = {sym: STYLES[status] for status, sym in SYMBOLS.items()}


def eta_seconds(records: Mapping[str, StepRecord], now: float, started: Mapping[str, float],
                estimates: Mapping[str, float | None], workers: int) -> float | None:
    """Seconds left, roughly (see the module docstring); None when nothing lets us guess."""
    ran = [r.duration_s for r in records.values()
           if r.status.terminal and r.duration_s is not None and not r.kept]
    average = statistics.fmean(ran) if ran else None
    left: list[float] = []
    for sid, rec in records.items():
        if rec.status.terminal:
            continue
        guess = estimates.get(sid)
        if guess is None:
            guess = average
        if guess is None:
            return None
        if rec.status is StepStatus.RUNNING:
            guess = max(0.0, guess - max(0.0, now - started.get(sid, now)))
        left.append(guess)
    if not left:
        return 0.0
    return max(max(left), sum(left) / max(1, workers))


def render_view(records: Mapping[str, StepRecord], now: float, *, started: Mapping[str, float],
                estimates: Mapping[str, float | None], workers: int, total: int, run_start: float,
                max_rows: int = 20) -> RenderableType:
    """The live area: the running steps' table, the counts per state, the bar with elapsed and ETA."""
    counts = {k: 0 for k in ORDER}
    for rec in records.values():
        counts[rec.status.value] = counts.get(rec.status.value, 0) + 1
    if not records:
        counts["pending"] = total
    total = total or len(records)
    running = sorted((r for r in records.values() if r.status is StepStatus.RUNNING),
                     key=lambda r: (started.get(r.step_id, now), r.step_id))

    parts: list[RenderableType] = []
    if running:
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, expand=False,
                      header_style="bold")
        table.add_column(f"Running ({len(running)}/{workers})", no_wrap=True, overflow="ellipsis",
                         max_width=60)
        table.add_column("Task", justify="right", no_wrap=True)
        table.add_column("Elapsed", justify="right", no_wrap=True)
        shown = running if len(running) <= max_rows else running[:max(1, max_rows - 1)]
        for rec in shown:
            task = (f"{rec.task_index}/{rec.task_count}" if rec.task_index and rec.task_count else "")
            attempt = f" (attempt {rec.attempts})" if rec.attempts > 1 else ""
            elapsed = now - started[rec.step_id] if rec.step_id in started else None
            table.add_row(Text(f"{SYMBOLS['running']} {rec.step_id}{attempt}", style=STYLES["running"]),
                          task, human_duration(elapsed))
        if len(shown) < len(running):
            table.add_row(Text(f"… and {len(running) - len(shown)} more", style="dim"), "", "")
        parts.append(table)

    line = Text()
    for status in ORDER:
        if counts.get(status):
            if line:
                line.append("  ")
            line.append(f"{SYMBOLS[status]} {counts[status]} {status.replace('_', ' ')}",
                        style=STYLES[status])
    parts.append(line)

    done = sum(n for status, n in counts.items() if status not in ("running", "pending"))
    eta = eta_seconds(records, now, started, estimates, workers) if records else None
    bar = Table.grid(padding=(0, 1))
    bar.add_column(width=40)
    bar.add_column(no_wrap=True)
    percent = 100.0 * done / total if total else 100.0
    bad = any(counts.get(k) for k in ("failed", "timed_out", "cancelled", "blocked"))
    label = f"{done}/{total} steps ({percent:.0f}%)  elapsed {human_duration(now - run_start)}"
    if done < total:
        label += f"  ETA {'~' + human_duration(eta) if eta is not None else '-'}"
    bar.add_row(ProgressBar(total=max(1, total), completed=done, width=40, complete_style="cyan",
                            finished_style="red" if bad else "green"),
                Text(label))
    parts.append(bar)
    return Group(*parts)


class LiveReporter(PlainReporter):
    """The terminal view; falls back to `PlainReporter`'s lines if drawing ever fails."""

    def __init__(self, stream: TextIO, *, verbose: bool = False, no_color: bool = False,
                 console: Console | None = None, wall: Callable[[], float] | None = None):
        kwargs = {"wall": wall} if wall is not None else {}
        super().__init__(stream, quiet=False, verbose=verbose, no_color=no_color, **kwargs)
        self.console = console or Console(file=stream, force_terminal=True, no_color=no_color,
                                          highlight=False, emoji=False, markup=False,
                                          soft_wrap=False)
        self.tick_interval = TICK_INTERVAL       # redraws, and with -v the log tails too
        self.progress_lines = False              # the bar says it
        self.live: Live | None = None
        self.failure: str | None = None          # why the live view was turned off
        self._pending: list[str] = []
        self._records: Mapping[str, StepRecord] = {}
        self._started: dict[str, float] = {}
        self._estimates: dict[str, float | None] = {}
        self._workers = 1
        self._total = 0
        self._run_start = self.wall()

    # --- output ------------------------------------------------------------------------------------
    def _say(self, text: str) -> None:
        if self.live is not None:
            self._pending.append(_ANSI.sub("", text))   # written with the next redraw, above the area
        else:
            super()._say(text)

    def _line(self, text: str) -> Text:
        out = Text(text)
        head, sep, _ = text.partition("] ")
        if sep and head.startswith("[") and len(text) > len(head) + 2:
            style = _BY_SYMBOL.get(text[len(head) + 2])
            if style:                            # colour the ✓/✗ of a step line, nothing else
                out.stylize(style, len(head) + 2, len(head) + 3)
        return out

    def _view(self) -> RenderableType:
        height = self.console.size.height
        return render_view(self._records, self.wall(), started=self._started, estimates=self._estimates,
                           workers=self._workers, total=self._total, run_start=self._run_start,
                           max_rows=max(3, height - 8))

    def _draw(self) -> None:
        assert self.live is not None
        view = self._view()
        with self.console:                       # one write: the new lines and the redrawn area
            if self._pending:
                # lines leave the buffer only once printed: a failure must not lose them
                self.console.print(Group(*(self._line(t) for t in self._pending)), soft_wrap=True)
                self._pending = []
            self.live.update(view, refresh=True)

    def _safely(self, fn: Callable[..., Any], *args: Any) -> None:
        if self.live is None:
            return
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - drawing must never end the run
            self._give_up(e)

    def _give_up(self, error: BaseException) -> None:
        live, self.live = self.live, None
        lines, self._pending = self._pending, []
        self.failure = f"{type(error).__name__}: {error}"
        atexit.unregister(self._stop_at_exit)
        self.tick_interval = TICK_INTERVAL if self.verbose else None
        self.progress_lines = True
        try:
            if live is not None:
                live.stop()
        except Exception:  # noqa: BLE001
            pass
        super()._say(f"(live view turned off after an error: {self.failure}; plain lines follow)")
        for text in lines:
            super()._say(text)

    def _stop(self) -> None:
        live = self.live
        if live is None:
            return
        self._draw()
        self.live = None
        live.stop()
        atexit.unregister(self._stop_at_exit)

    def _stop_at_exit(self) -> None:
        """A crash skipped `run_finished`: give the terminal its cursor back."""
        try:
            if self.live is not None:
                self.live.stop()
        except Exception:  # noqa: BLE001
            pass

    # --- events --------------------------------------------------------------------------------------
    def run_started(self, ws: Workstream, run_id: str, run_dir: str, workers: int) -> None:
        super().run_started(ws, run_id, run_dir, workers)
        self._total, self._workers, self._run_start = len(ws.steps), workers, self.wall()
        self._estimates = {s.id: s.estimated_duration for s in ws.steps}
        try:
            self.live = Live(console=self.console, refresh_per_second=4, auto_refresh=False,
                             transient=False, redirect_stdout=False, redirect_stderr=False)
            self.live.start()
            atexit.register(self._stop_at_exit)
            self._draw()
        except Exception as e:  # noqa: BLE001
            self._give_up(e)

    def step_started(self, step_id: str, attempt: int, log_path: str | None = None) -> None:
        self._started[step_id] = self.wall()
        super().step_started(step_id, attempt, log_path)

    def tick(self, records: Mapping[str, StepRecord], now: float) -> None:
        self._records = records
        super().tick(records, now)               # -v: new output lines, buffered by _say
        self._safely(self._draw)

    def run_finished(self, summary: dict[str, Any], run_dir: str) -> None:
        for step_id in list(self.tails):
            self._forward(step_id, final=True)
        self._safely(self._stop)
        super().run_finished(summary, run_dir)
