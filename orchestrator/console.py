"""What a person sees on stderr while a run goes on (the dispatcher's injected reporter).

`make_reporter` picks the view: the rich live view of `live.py` on a terminal (not `-q`, not
`TERM=dumb`), otherwise the plain lines of `PlainReporter`, safe for pipes and CI logs and free of ANSI
codes: `[12:30:01] ✓ step-01 (2.1s)`, `[12:30:02] ✗ step-03 (exit code 1 in task 2: ...)`, blocked and
skipped steps, and `Progress: 3/10 steps complete` at most once a second and always at the end. `-q`
prints only the final summary line (and warnings); `-v` also prints each step's start and streams its
output live as `[step-id] line`. Output is forwarded in whole lines only: `tick` reads the new bytes of
each running step's log (`LogTail`), keeps the unfinished last line back, and the rest is flushed when
the step ends — so lines of parallel steps interleave, but never mid-line. The worker's own
`=== <step> attempt N ... ===` header and footer are filtered out (the ✓/✗ line says the same);
`--- task i/n: ...` and `--- acceptance test ...` lines are kept, they say which command is talking.
Lines are written in bursts: the first line after a quiet spell at once, the lines that follow it
with the loop's next `tick`, at most `LINES_EVERY` later (with -v, whose ticks never stop, every line
waits for the next tick, at most `TICK_INTERVAL`). A run of 1000 quick steps writes ~10 times instead
of ~1000, each of which would wake whoever reads our stderr. Warnings and the final lines are
written at once. A reporter never stops a run: a stream that cannot be written (a closed pipe) is
given up silently.
"""
from __future__ import annotations

import os
import sys
import time

from .dispatcher import Reporter
from .model import StepStatus, Workstream
from .records import StepRecord
from .fmt import SYMBOLS, human_duration, plain_line, progress_line
from .lean import Pattern

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Mapping, TextIO

PROGRESS_EVERY = 1.0          # least time between two `Progress:` lines (the last one always prints)
TICK_INTERVAL = 0.25          # how often the dispatcher calls `tick` when we need it (4 a second)
LINES_EVERY = 0.1             # longest a step's line is held back to be written with the next ones
READ_CHUNK = 1 << 20          # most bytes read from one log per tick, so one chatty step cannot stall the loop
MAX_LINE = 64 * 1024          # a "line" without a newline longer than this is forwarded anyway

_ANSI = Pattern(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
_CONTROL = Pattern(r"[\x00-\x08\x0b-\x1f\x7f]")


def clean_line(text: str) -> str:
    """A step's output line made safe for a log: no ANSI sequences, only what a `\\r` left visible."""
    text = _ANSI.sub("", text)
    if "\r" in text:
        parts = [p for p in text.split("\r") if p]
        text = parts[-1] if parts else ""
    return _CONTROL.sub("", text)


class LogTail:
    """Follows one step's log file and hands out its complete new lines.

    The log of attempt 1 is truncated by the worker when it starts (and may still hold an earlier
    session's text when a run is resumed), so lines are only taken after this attempt's own header
    `=== <step> attempt N started <UTC stamp> ===` with a stamp not older than the start event. A file
    that shrinks was truncated (the attempt was restarted on a new pool): read it again from the top.
    """

    def __init__(self, step_id: str, path: str, attempt: int, since: float):
        self.step_id = step_id
        self.path = path
        self.offset = 0
        self.partial = b""
        import re   # only where step output is followed
        sid = re.escape(step_id)
        self._header = re.compile(rf"^=== {sid} attempt (\d+) started (\S+) ===$")
        self._ours = re.compile(rf"^=== {sid} attempt \d+ [a-z_]+(?: \S+)? ===$")
        self.restart(attempt, since)

    def restart(self, attempt: int, since: float) -> None:
        """A new attempt begins: skip to its header (an appended log continues where we were)."""
        self.attempt = attempt
        self.min_stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since))
        self.synced = False

    def _is_start(self, line: str, *, strict: bool = True) -> bool:
        m = self._header.match(line)
        return bool(m) and int(m.group(1)) == self.attempt and (not strict or m.group(2) >= self.min_stamp)

    def _read(self, limit: int | None) -> bytes:
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < self.offset:
                    self.offset, self.partial, self.synced = 0, b"", False
                f.seek(self.offset)
                data = f.read(limit if limit is not None else -1)
        except OSError:        # not created yet, or gone: nothing to show
            return b""
        self.offset += len(data)
        return data

    def lines(self, *, final: bool = False) -> list[str]:
        """New complete lines; with `final` (the step ended) also the unfinished last one."""
        data = self.partial + self._read(None if final else READ_CHUNK)
        raw, _, self.partial = data.rpartition(b"\n")
        chunks = raw.split(b"\n") if raw or _ else []
        if len(self.partial) > MAX_LINE or (final and self.partial):
            chunks.append(self.partial)
            self.partial = b""
        out = self._take(chunks)
        if final and not self.synced:
            out = self._resync()
        return out

    def _take(self, chunks: list[bytes], strict: bool = True) -> list[str]:
        out = []
        for chunk in chunks:
            line = chunk.decode("utf-8", errors="replace")
            if not self.synced:
                self.synced = self._is_start(line, strict=strict)
                continue
            if self._ours.match(line):
                continue
            out.append(clean_line(line))
        return out

    def _resync(self) -> list[str]:
        """The step ended before we saw its header (e.g. we read past it in a truncation race):
        read the finished log once more and take the lines after the last header of this attempt."""
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except OSError:
            return []
        self.offset = len(data)
        chunks = data.split(b"\n")
        if chunks and chunks[-1] == b"":
            chunks.pop()
        starts = [i for i, c in enumerate(chunks)
                  if self._is_start(c.decode("utf-8", errors="replace"), strict=False)]
        if not starts:
            return []
        self.synced = True
        return self._take(chunks[starts[-1] + 1:])


class PlainReporter(Reporter):
    """Plain lines, no ANSI: for pipes and CI logs, and the fallback of the live view."""

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False, verbose: bool = False,
                 no_color: bool = False, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time):
        self.out = stream or sys.stderr
        self.quiet = quiet
        self.verbose = verbose
        self.no_color = no_color          # plain lines never have colour; kept for the record
        self.clock = clock
        self.wall = wall
        # only a verbose run has logs to tail; a plain run costs the loop nothing extra
        self.tick_interval = TICK_INTERVAL if verbose and not quiet else None
        self.progress_lines = True
        self._last_progress_line: str | None = None
        self.tails: dict[str, LogTail] = {}
        self._last_progress: float | None = None
        self._done = 0
        self._total = 0
        self._stream_ok = True
        self._held: list[str] = []        # lines for the next tick (see the module doc)
        self._ticks_for_lines = False     # tick_interval was set by held lines, not by -v

    def _say(self, text: str) -> None:
        """A line, written with the next `tick` (or `flush`); the loop ticks at once the first time."""
        if not self._stream_ok:
            return
        # escape codes: whatever a step put in its error
        self._held.append(_ANSI.sub("", text) if "\x1b" in text else text)
        if self.tick_interval is None:
            self.tick_interval, self._ticks_for_lines = LINES_EVERY, True

    def flush(self) -> bool:
        """Write the held lines, in one write; whether there were any."""
        held, self._held = self._held, []
        if held and self._stream_ok:
            try:
                print("\n".join(held), file=self.out, flush=True)
            except (OSError, ValueError):   # a closed pipe or stream: the run goes on without us
                self._stream_ok = False
        return bool(held)

    def _say_now(self, text: str) -> None:
        self._say(text)
        self.flush()

    # --- step output (-v) ------------------------------------------------------------------------
    def _forward(self, step_id: str, *, final: bool = False) -> None:
        tail = self.tails.get(step_id)
        if tail is None:
            return
        for line in tail.lines(final=final):
            self._say(f"[{step_id}] {line}")
        if final:
            del self.tails[step_id]

    def tick(self, records: Mapping[str, StepRecord], now: float) -> None:
        for step_id in list(self.tails):
            self._forward(step_id)
        if not self.flush() and self._ticks_for_lines:   # a quiet spell: no more ticks for lines
            self.tick_interval, self._ticks_for_lines = None, False

    # --- events ------------------------------------------------------------------------------------
    def run_started(self, ws: Workstream, run_id: str, run_dir: str, workers: int) -> None:
        self._total = len(ws.steps)
        if not self.quiet:
            self._say(f"Run {run_id} of {ws.id}: {len(ws.steps)} steps, up to {workers} at once")

    def step_started(self, step_id: str, attempt: int, log_path: str | None = None) -> None:
        if not self.verbose or self.quiet:
            return
        extra = f" (attempt {attempt})" if attempt > 1 else ""
        self._say(plain_line(self.wall(), SYMBOLS["running"], step_id, f"started{extra}"))
        if log_path is not None:
            tail = self.tails.get(step_id)
            if tail is not None and tail.path == os.fspath(log_path):
                tail.restart(attempt, self.wall())
            else:
                self.tails[step_id] = LogTail(step_id, os.fspath(log_path), attempt, self.wall())

    def step_finished(self, rec: StepRecord, done: int, total: int) -> None:
        self._done, self._total = done, total
        if self.quiet:
            return
        self._forward(rec.step_id, final=True)
        if rec.status is StepStatus.SUCCEEDED:
            retried = f", attempt {rec.attempts}" if rec.attempts > 1 else ""
            detail = f"({human_duration(rec.duration_s)}{retried})"
        else:
            detail = f"({rec.error or rec.status.value})"
        self._say(plain_line(self.wall(), SYMBOLS.get(rec.status.value, "?"), rec.step_id, detail))
        now = self.clock()
        if self.progress_lines and (self._last_progress is None
                                    or now - self._last_progress >= PROGRESS_EVERY):
            self._last_progress = now
            self._last_progress_line = progress_line(done, total)
            self._say(self._last_progress_line)

    def step_changed(self, step_id: str, status: StepStatus, reason: str | None) -> None:
        if self.quiet:
            return
        if status is StepStatus.PENDING:
            # a retry: this attempt's output is complete, show its last line before the next attempt
            tail = self.tails.get(step_id)
            if tail is not None:
                for line in tail.lines(final=True):
                    self._say(f"[{step_id}] {line}")
            if not self.verbose:
                return
        self._say(plain_line(self.wall(), SYMBOLS.get(status.value, "?"), step_id,
                             f"({reason})" if reason else status.value))

    def message(self, text: str) -> None:
        self._say_now(text)        # warnings and interrupt notices: shown even with -q, at once

    def run_finished(self, summary: dict[str, Any], run_dir: str) -> None:
        for step_id in list(self.tails):
            self._forward(step_id, final=True)
        c = summary["summary"]
        done = c["total"] - c.get("pending", 0)
        final = progress_line(done, c["total"])
        if not self.quiet and self.progress_lines and final != self._last_progress_line:
            self._say(final)  # the last Progress line always shows, but never twice
        self._say_now(summary_line(summary, run_dir))


def summary_line(summary: dict[str, Any], run_dir: str) -> str:
    """`SUCCEEDED: 3 succeeded in 1.2s (sequential 3.0s, speedup 2.50x) — report: ...`"""
    c = summary["summary"]
    parts = [f"{c[k]} {k.replace('_', ' ')}" for k in
             ("succeeded", "failed", "timed_out", "blocked", "skipped", "cancelled", "pending")
             if c.get(k)]
    return (f"{summary['status'].upper()}: {', '.join(parts) or 'no steps'} in "
            f"{human_duration(c['wall_time_s'])} (sequential {human_duration(c['sequential_time_s'])}, "
            f"speedup {c['speedup']:.2f}x) — report: {os.path.join(run_dir, 'execution_report.md')}")


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def make_reporter(*, quiet: bool, verbose: bool, stream: TextIO | None = None,
                  environ: Mapping[str, str] | None = None) -> Reporter:
    """The live view on a terminal (unless `-q` or `TERM=dumb`), plain lines everywhere else.

    `NO_COLOR` (any non-empty value, https://no-color.org) turns colour off in the live view; plain
    lines have none anyway.
    """
    stream = stream if stream is not None else sys.stderr
    env = os.environ if environ is None else environ
    no_color = bool(env.get("NO_COLOR"))
    if not quiet and _is_terminal(stream) and env.get("TERM", "") != "dumb":
        try:
            from .live import LiveReporter
            return LiveReporter(stream, verbose=verbose, no_color=no_color)
        except Exception:  # noqa: BLE001 - no rich, or it cannot set up: plain lines still work
            pass
    return PlainReporter(stream, quiet=quiet, verbose=verbose, no_color=no_color)
