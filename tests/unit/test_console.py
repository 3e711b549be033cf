"""The console reporters on data: plain lines on a StringIO (no ANSI, -q, -v log tailing in whole
lines), the choice of view, NO_COLOR, the live view's pure parts and its fallback to plain lines.
Clocks are injected; nothing sleeps."""
from __future__ import annotations

import io
import re
import time
from types import SimpleNamespace

import pytest
from rich.console import Console

from orchestrator import live as live_mod
from orchestrator.console import (LINES_EVERY, TICK_INTERVAL, LogTail, PlainReporter, clean_line,
                                  make_reporter)
from orchestrator.live import LiveReporter, eta_seconds, render_view
from orchestrator.model import StepStatus
from orchestrator.records import StepRecord

pytestmark = pytest.mark.timeout(30)

T0 = 1_800_000_000.0                       # a fixed "now" for the wall clock
STAMP = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0))
LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] (\S) (\S+)(?: (.*))?$")


class FakeClock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def ws(*ids: str, estimates: dict | None = None):
    est = estimates or {}
    return SimpleNamespace(id="ws-test", steps=[SimpleNamespace(id=i, estimated_duration=est.get(i))
                                                for i in ids])


def record(sid: str, status: StepStatus, *, duration: float | None = None, error: str | None = None,
           attempts: int = 1, task: tuple[int, int] | None = None) -> StepRecord:
    rec = StepRecord(sid, (), 60.0)
    rec.status, rec.error, rec.attempts = status, error, attempts
    if duration is not None:
        rec.started_at, rec.finished_at = T0, T0 + duration
    if task:
        rec.task_index, rec.task_count = task
    return rec


def summary(status: str = "failed", **counts) -> dict:
    c = {"total": 4, "succeeded": 0, "failed": 0, "timed_out": 0, "blocked": 0, "skipped": 0,
         "cancelled": 0, "pending": 0, "wall_time_s": 3.2, "sequential_time_s": 5.0, "speedup": 1.56}
    c.update(counts)
    return {"status": status, "summary": c}


def lines_of(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


def header(sid: str, attempt: int = 1, stamp: str = STAMP) -> str:
    return f"=== {sid} attempt {attempt} started {stamp} ===\n"


# --- plain lines ----------------------------------------------------------------------------------

def test_plain_reporter_prints_step_lines_progress_and_summary_without_ansi(tmp_path):
    out, clock = io.StringIO(), FakeClock()
    r = PlainReporter(out, clock=clock, wall=lambda: T0)
    assert r.tick_interval is None          # nothing to tick: a plain run costs the loop nothing
    r.run_started(ws("a", "b", "c", "d"), "RUN1", tmp_path, 2)
    r.step_started("a", 1, tmp_path / "a.log")
    r.step_finished(record("a", StepStatus.SUCCEEDED, duration=2.1), 1, 4)
    clock.t += 0.2
    r.step_finished(record("b", StepStatus.FAILED, duration=1, error="exit code 1 in task 2: `false`"), 2, 4)
    r.step_changed("c", StepStatus.BLOCKED, "dependency b ended failed")
    clock.t += 1.0
    r.step_changed("d", StepStatus.SKIPPED, None)
    r.run_finished(summary(succeeded=1, failed=1, blocked=1, skipped=1), tmp_path)

    text = out.getvalue()
    assert "\x1b" not in text
    lines = lines_of(out)
    assert lines[0] == "Run RUN1 of ws-test: 4 steps, up to 2 at once"
    parsed = [LINE.match(line) for line in lines]
    steps = [(m.group(1), m.group(2), m.group(3)) for m in parsed if m]
    assert steps == [("✓", "a", "(2.1s)"), ("✗", "b", "(exit code 1 in task 2: `false`)"),
                     ("⊘", "c", "(dependency b ended failed)"), ("–", "d", "skipped")]
    # one progress line after the first finish (the second came within a second), one at the end
    assert [line for line in lines if line.startswith("Progress:")] == [
        "Progress: 1/4 steps complete", "Progress: 4/4 steps complete"]
    assert lines[-2] == "Progress: 4/4 steps complete"
    assert lines[-1].startswith("FAILED: 1 succeeded, 1 failed, 1 blocked, 1 skipped in 3.2s")
    assert lines[-1].endswith(str(tmp_path / "execution_report.md"))


def test_progress_lines_at_most_once_a_second():
    out, clock = io.StringIO(), FakeClock()
    r = PlainReporter(out, clock=clock, wall=lambda: T0)
    for i in range(1, 6):
        r.step_finished(record(f"s{i}", StepStatus.SUCCEEDED, duration=1), i, 5)
        clock.t += 0.4
    r.flush()
    progress = [line for line in lines_of(out) if line.startswith("Progress:")]
    assert progress == ["Progress: 1/5 steps complete", "Progress: 4/5 steps complete"]


class CountingStream(io.StringIO):
    """Counts flushes: each is one write(2) on a real stream."""

    flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def test_lines_are_held_for_the_loops_next_tick_and_written_together(tmp_path):
    out, clock = CountingStream(), FakeClock()
    r = PlainReporter(out, clock=clock, wall=lambda: T0)
    assert r.tick_interval is None
    r.step_finished(record("a", StepStatus.SUCCEEDED, duration=1), 1, 3)
    assert out.getvalue() == "" and r.tick_interval == LINES_EVERY   # the loop ticks for it
    r.step_finished(record("b", StepStatus.SUCCEEDED, duration=1), 2, 3)
    r.step_changed("c", StepStatus.BLOCKED, "dependency b ended failed")
    r.tick({}, T0)
    assert out.flushes == 1
    assert [m.group(2) for m in map(LINE.match, lines_of(out)) if m] == ["a", "b", "c"]
    r.tick({}, T0)                               # nothing held: the loop need not tick any more
    assert r.tick_interval is None and out.flushes == 1


def test_a_message_is_written_at_once_after_the_lines_held_before_it(tmp_path):
    out = io.StringIO()
    r = PlainReporter(out, wall=lambda: T0)
    r.step_finished(record("a", StepStatus.SUCCEEDED, duration=1), 1, 2)
    r.message("holding new starts: machine overloaded")
    lines = lines_of(out)
    assert lines[0].endswith("✓ a (1.0s)") and lines[-1] == "holding new starts: machine overloaded"


def test_verbose_keeps_its_tick_when_no_line_is_held(tmp_path):
    r = PlainReporter(io.StringIO(), verbose=True, wall=lambda: T0)
    r.tick({}, T0)
    assert r.tick_interval == TICK_INTERVAL


def test_quiet_prints_only_the_final_line(tmp_path):
    out = io.StringIO()
    r = PlainReporter(out, quiet=True)
    r.run_started(ws("a", "b"), "RUN1", tmp_path, 2)
    r.step_started("a", 1, tmp_path / "a.log")
    r.step_finished(record("a", StepStatus.SUCCEEDED, duration=1), 1, 2)
    r.step_changed("b", StepStatus.BLOCKED, "dependency a ended failed")
    r.run_finished(summary("succeeded", total=2, succeeded=2), tmp_path)
    assert lines_of(out) == [lines_of(out)[-1]]
    assert lines_of(out)[0].startswith("SUCCEEDED: 2 succeeded in 3.2s")


def test_a_closed_stream_never_stops_the_run(tmp_path):
    out = io.StringIO()
    out.close()
    r = PlainReporter(out)
    r.run_started(ws("a"), "RUN1", tmp_path, 1)
    r.step_finished(record("a", StepStatus.SUCCEEDED, duration=1), 1, 1)
    r.run_finished(summary("succeeded", total=1, succeeded=1), tmp_path)


# --- -v: step output in whole lines ---------------------------------------------------------------

def test_verbose_streams_complete_prefixed_lines_only_in_order(tmp_path):
    out = io.StringIO()
    r = PlainReporter(out, verbose=True, wall=lambda: T0)
    assert r.tick_interval and r.tick_interval <= 0.25
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    r.step_started("a", 1, log_a)
    r.step_started("b", 1, log_b)
    r.tick({}, T0)                                       # no log file yet: nothing, no error
    with open(log_a, "w") as fa, open(log_b, "w") as fb:
        fa.write(header("a") + "--- task 1/2: make\nfirst\nsec")
        fa.flush()
        fb.write(header("b") + "b-one\n")
        fb.flush()
        r.tick({}, T0)
        shown = [line for line in lines_of(out) if line.startswith("[a] ") or line.startswith("[b] ")]
        assert shown == ["[a] --- task 1/2: make", "[a] first", "[b] b-one"]
        fa.write("ond\nthird")
        fa.flush()
        r.tick({}, T0)
        r.tick({}, T0)
        assert [line for line in lines_of(out) if line.startswith("[a] ")][-1] == "[a] second"
        fa.write(" and last\n=== a attempt 1 succeeded ===\nno newline at the end")
        fa.flush()
    r.step_finished(record("a", StepStatus.SUCCEEDED, duration=1), 1, 2)
    r.flush()
    lines = lines_of(out)
    a_lines = [line for line in lines if line.startswith("[a] ")]
    assert a_lines == ["[a] --- task 1/2: make", "[a] first", "[a] second", "[a] third and last",
                       "[a] no newline at the end"]
    # the step's remaining output comes before its ✓ line; no partial line was ever printed
    finished = next(i for i, line in enumerate(lines) if LINE.match(line) and "✓ a" in line)
    assert lines.index("[a] no newline at the end") < finished
    assert not any(line in ("[a] sec", "[a] third") for line in lines)
    assert "\x1b" not in out.getvalue()


def test_verbose_skips_an_earlier_sessions_log_and_follows_retries(tmp_path):
    out = io.StringIO()
    wall = FakeClock(T0)
    r = PlainReporter(out, verbose=True, wall=wall)
    log = tmp_path / "a.log"
    old = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 - 3600))
    log.write_text(header("a", 1, old) + "stale output\n")   # a resumed run: the old session's log
    r.step_started("a", 1, log)
    r.tick({}, T0)
    log.write_text(header("a") + "fresh\n")                  # the worker truncates and writes anew
    r.tick({}, T0)
    with open(log, "a") as f:
        f.write("=== a attempt 1 failed ===\n")
    r.step_changed("a", StepStatus.PENDING, "retrying: exit code 1")
    wall.t += 2
    r.step_started("a", 2, log)
    with open(log, "a") as f:                                # later attempts append
        f.write(header("a", 2, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall.t))) + "again\n")
    r.step_finished(record("a", StepStatus.SUCCEEDED, duration=1, attempts=2), 1, 1)
    r.flush()
    shown = [line for line in lines_of(out) if line.startswith("[a] ")]
    assert shown == ["[a] fresh", "[a] again"]
    assert lines_of(out)[-2].endswith("✓ a (1.0s, attempt 2)")


def test_log_tail_finds_its_header_when_the_step_ended_before_the_first_tick(tmp_path):
    log = tmp_path / "x.log"
    log.write_text(header("x") + "only line\n=== x attempt 1 succeeded ===\n")
    tail = LogTail("x", log, 1, T0)
    assert tail.lines(final=True) == ["only line"]


def test_step_output_is_stripped_of_ansi_and_carriage_returns():
    assert clean_line("\x1b[31mred\x1b[0m text") == "red text"
    assert clean_line("10%\r50%\r100%") == "100%"
    assert clean_line("\x1b]0;title\x07bell\x07") == "bell"


# --- choosing the view, NO_COLOR ------------------------------------------------------------------

@pytest.mark.parametrize("stream, quiet, env, live", [
    (io.StringIO(), False, {"TERM": "xterm"}, False),
    (FakeTTY(), False, {"TERM": "xterm"}, True),
    (FakeTTY(), True, {"TERM": "xterm"}, False),
    (FakeTTY(), False, {"TERM": "dumb"}, False),
])
def test_make_reporter_picks_live_only_on_a_real_terminal(stream, quiet, env, live):
    r = make_reporter(quiet=quiet, verbose=False, stream=stream, environ=env)
    assert isinstance(r, LiveReporter) is live
    assert isinstance(r, PlainReporter)
    assert r.out is stream


SGR = re.compile(r"\x1b\[([0-9;]*)m")
CSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


def colour_codes(text: str) -> set[int]:
    codes = {int(p) for m in SGR.finditer(text) for p in m.group(1).split(";") if p}
    return {c for c in codes if 30 <= c <= 49 or 90 <= c <= 107}


def drive(r, tmp_path) -> None:
    recs = {"a": record("a", StepStatus.RUNNING, task=(2, 3)), "b": record("b", StepStatus.PENDING)}
    r.run_started(ws("a", "b"), "RUN1", tmp_path, 2)
    r.step_started("a", 1, tmp_path / "a.log")
    r.tick(recs, T0)
    recs["a"] = record("a", StepStatus.SUCCEEDED, duration=1)
    r.step_finished(recs["a"], 1, 2)
    recs["b"] = record("b", StepStatus.FAILED, duration=1, error="exit code 1 in task 1")
    r.step_finished(recs["b"], 2, 2)
    r.tick(recs, T0)
    r.run_finished(summary(total=2, succeeded=1, failed=1), tmp_path)


@pytest.mark.parametrize("no_color", ["1", ""])
def test_no_color_turns_colour_off_in_the_live_view(tmp_path, no_color):
    out = FakeTTY()
    r = make_reporter(quiet=False, verbose=False, stream=out, environ={"TERM": "xterm", "NO_COLOR": no_color})
    assert isinstance(r, LiveReporter)
    drive(r, tmp_path)
    text = out.getvalue()
    assert "✓" in text and " a " in text and "FAILED: 1 succeeded, 1 failed" in text
    assert bool(colour_codes(text)) is (no_color == "")


def test_no_color_plain_lines_have_no_escapes(tmp_path):
    out = io.StringIO()
    r = make_reporter(quiet=False, verbose=True, stream=out, environ={"NO_COLOR": "1"})
    assert type(r) is PlainReporter and r.no_color
    drive(r, tmp_path)
    assert "\x1b" not in out.getvalue()


# --- the live view ----------------------------------------------------------------------------------

def test_live_view_prints_finished_steps_above_and_the_summary_last(tmp_path):
    out = FakeTTY()
    r = LiveReporter(out, no_color=True, wall=lambda: T0)
    assert 0 < r.tick_interval <= 0.25
    drive(r, tmp_path)
    text = CSI.sub("", out.getvalue())                   # styles and cursor moves aside
    assert r.live is None and r.failure is None
    assert "✗ b (exit code 1 in task 1)" in text
    assert text.rstrip().splitlines()[-1].startswith("FAILED: 1 succeeded, 1 failed")
    assert "Progress:" not in text                       # the bar replaces the progress lines
    assert "2/2 steps (100%)" in text


def test_a_drawing_error_falls_back_to_plain_lines(tmp_path, monkeypatch):
    out = FakeTTY()
    r = LiveReporter(out, no_color=True, wall=lambda: T0)
    r.run_started(ws("a", "b"), "RUN1", tmp_path, 2)

    def broken(*args, **kwargs):
        raise RuntimeError("cannot draw")
    monkeypatch.setattr(live_mod, "render_view", broken)
    r.step_finished(record("a", StepStatus.SUCCEEDED, duration=1), 1, 2)
    r.tick({"a": record("a", StepStatus.SUCCEEDED, duration=1)}, T0)   # must not raise
    assert r.live is None and "cannot draw" in r.failure
    r.tick({}, T0)                                       # writes the fallback's lines
    r.tick({}, T0)                                       # nothing more to write: no more ticks
    assert r.tick_interval is None                       # not verbose: nothing left to tick
    r.step_finished(record("b", StepStatus.SUCCEEDED, duration=2), 2, 2)
    r.run_finished(summary("succeeded", total=2, succeeded=2), tmp_path)
    tail = out.getvalue().split("live view turned off", 1)[1]
    lines = tail.splitlines()[1:]
    assert "\x1b" not in "\n".join(lines)
    assert [line for line in lines if LINE.match(line)][0].endswith("✓ a (1.0s)")
    assert any(line.endswith("✓ b (2.0s)") for line in lines)
    assert "Progress: 2/2 steps complete" in lines
    assert lines[-1].startswith("SUCCEEDED: 2 succeeded")


def test_eta_from_estimates_then_from_the_average_of_finished_steps():
    recs = {"a": record("a", StepStatus.SUCCEEDED, duration=4.0),
            "b": record("b", StepStatus.RUNNING), "c": record("c", StepStatus.PENDING),
            "d": record("d", StepStatus.PENDING)}
    started = {"b": T0}
    # b: estimate 10, 3 s in -> 7 left; c: 6; d: no estimate -> average of finished (4)
    assert eta_seconds(recs, T0 + 3, started, {"b": 10, "c": 6}, workers=2) == pytest.approx(8.5)
    assert eta_seconds(recs, T0 + 3, started, {"b": 10, "c": 6}, workers=8) == pytest.approx(7.0)
    recs["a"] = record("a", StepStatus.RUNNING)
    assert eta_seconds(recs, T0, {}, {"b": 10, "c": 6}, workers=2) is None   # nothing to go on
    assert eta_seconds({"a": record("a", StepStatus.SUCCEEDED, duration=1)}, T0, {}, {}, 1) == 0.0


def test_render_view_shows_running_steps_tasks_counts_and_bar():
    recs = {"build": record("build", StepStatus.RUNNING, task=(2, 3)),
            "lint": record("lint", StepStatus.RUNNING),
            "docs": record("docs", StepStatus.SUCCEEDED, duration=2.0),
            "pkg": record("pkg", StepStatus.BLOCKED), "up": record("up", StepStatus.PENDING)}
    view = render_view(recs, T0 + 12.3, started={"build": T0, "lint": T0 + 12}, estimates={},
                       workers=4, total=5, run_start=T0 - 1)
    console = Console(file=io.StringIO(), width=100, no_color=True, force_terminal=False)
    console.print(view)
    text = console.file.getvalue()
    assert "Running (2/4)" in text and "build" in text and "2/3" in text and "12.3s" in text
    assert "✓ 1 succeeded" in text and "⊘ 1 blocked" in text and "● 2 running" in text
    assert "○ 1 pending" in text and "2/5 steps (40%)" in text and "ETA ~" in text
    assert text.index("build") < text.index("lint")      # in order of start


def test_render_view_caps_the_running_rows():
    recs = {f"s{i:02d}": record(f"s{i:02d}", StepStatus.RUNNING) for i in range(30)}
    view = render_view(recs, T0, started={}, estimates={}, workers=30, total=30, run_start=T0, max_rows=5)
    console = Console(file=io.StringIO(), width=100, no_color=True, force_terminal=False)
    console.print(view)
    text = console.file.getvalue()
    assert "s03" in text and "s04" not in text and "… and 26 more" in text


def test_escape_codes_in_an_error_never_reach_plain_lines(tmp_path):
    out = io.StringIO()
    r = PlainReporter(out, wall=lambda: T0)
    r.step_finished(record("a", StepStatus.FAILED, duration=1, error="exit code 1: \x1b[31mboom\x1b[0m"), 1, 1)
    r.flush()
    assert "\x1b" not in out.getvalue() and "✗ a (exit code 1: boom)" in out.getvalue()
