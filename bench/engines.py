"""The engines under test, each run as a child process and measured from the outside.

`measure` starts a command, reaps it with `os.wait4` (so the CPU times and peak RSS are that child's
tree alone, not everything this process ever waited for, as RUSAGE_CHILDREN would give) and returns a
`Sample`. Each engine writes its input once (`prepare`) and then runs it once per repetition (`run`);
the orchestrator gets a fresh worktrees directory per repetition, and reads back its own
`results_summary.json` so the time spent outside the steps can be told from the schedule.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import workloads as W

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent


@dataclass
class Sample:
    wall_s: float
    cpu_s: float                      # user + system of the child and its reaped descendants
    maxrss_kb: int
    rc: int
    stderr_tail: str = ""
    extra: dict = field(default_factory=dict)


GNU_TIME = "/usr/bin/time"
RUN_TIMEOUT = float(os.environ.get("BENCH_RUN_TIMEOUT", "120"))   # seconds; one run, killed after it


def measure(argv: list[str], cwd: Path, *, env: dict | None = None, stderr_pipe: bool = False) -> Sample:
    """Run argv in cwd (stdout to /dev/null) and measure it. Peak RSS comes from GNU time when it is
    installed: the kernel starts a child's peak RSS at its parent's peak when it execs (vfork), so
    rusage read here would never show less than this Python process's own size. stderr goes to a
    file, or with `stderr_pipe` to a pipe read here as it comes, as a caller that captures the
    output (`subprocess.run(..., capture_output=True)`) reads it."""
    err_path, rss_path = cwd / ".bench-stderr", cwd / ".bench-rss"
    rss_path.unlink(missing_ok=True)
    timed = os.access(GNU_TIME, os.X_OK)
    if timed:
        argv = [GNU_TIME, "-f", "%M", "-o", str(rss_path), *argv]
    with open(err_path, "wb") as err:
        t0 = time.perf_counter()
        # own session, so that a run that hangs can be killed with everything it started
        proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE if stderr_pipe else err, env=env,
                                start_new_session=True)
        reader = None
        if stderr_pipe:
            def read() -> None:   # as it comes, into the file the tail is taken from
                for chunk in iter(lambda: proc.stderr.read1(65536), b""):
                    err.write(chunk)
            reader = threading.Thread(target=read, daemon=True)
            reader.start()
        hung = threading.Event()

        def kill() -> None:
            hung.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        watchdog = threading.Timer(RUN_TIMEOUT, kill)
        watchdog.start()
        try:
            _, status, ru = os.wait4(proc.pid, 0)
        finally:
            watchdog.cancel()
        if reader is not None:
            reader.join()   # EOF: the run and whatever held its stderr are gone
            proc.stderr.close()
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)   # reaped here: tell Popen so it won't wait
    maxrss = ru.ru_maxrss
    if timed:
        try:   # "Command exited with non-zero status N" may come first; the number is last
            maxrss = int(rss_path.read_text().split()[-1])
        except (OSError, ValueError, IndexError):
            pass
    tail = err_path.read_bytes()[-2000:].decode(errors="replace")
    if hung.is_set():
        tail = f"killed after {RUN_TIMEOUT:g} s (BENCH_RUN_TIMEOUT): it hung. " + tail
    return Sample(wall, ru.ru_utime + ru.ru_stime, maxrss, proc.returncode, tail)


def orchestrator_bin() -> str:
    return os.environ.get("BENCH_ORCHESTRATOR", str(REPO / ".venv" / "bin" / "orchestrator"))


class Engine:
    name = "?"
    expect_rc = 0

    def __init__(self, wl: W.Workload, workdir: Path):
        self.wl = wl
        self.dir = workdir / self.slug
        self.dir.mkdir(parents=True, exist_ok=True)

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.name).strip("-")

    def prepare(self) -> None: ...

    def run(self, rep: int) -> Sample:
        raise NotImplementedError


class Make(Engine):
    name = "make"

    def prepare(self):
        W.write(self.dir / "Makefile", W.makefile(self.wl))

    def run(self, rep):
        return measure(["make", "-j", str(self.wl.workers), "-f", "Makefile"], self.dir)


class Ninja(Engine):
    name = "ninja"

    def prepare(self):
        W.write(self.dir / "build.ninja", W.build_ninja(self.wl))

    def run(self, rep):
        # outputs are never written, so each build re-runs every edge; .ninja_log is kept as a user's
        # would be (ninja >= 1.12 ranks by it, as the orchestrator ranks by its history)
        return measure(["ninja", "-j", str(self.wl.workers)], self.dir)


class Parallel(Engine):
    name = "parallel"

    def prepare(self):
        W.write(self.dir / "jobs.txt", W.parallel_jobs(self.wl))

    def run(self, rep):
        return measure(["parallel", "--will-cite", "-j", str(self.wl.workers), "-a", "jobs.txt"],
                       self.dir)


class _BenchScript(Engine):
    """One of bench/'s own runners, given the workstream JSON and `-j workers`."""
    script = "?"

    def prepare(self):
        W.write(self.dir / "ws.json", W.workstream(self.wl, self.slug))

    def run(self, rep):
        return measure([sys.executable, str(BENCH_DIR / self.script), "ws.json",
                        "-j", str(self.wl.workers), *self.args(rep)], self.dir)

    def args(self, rep) -> list[str]:
        """What the script gets beyond the workstream and `-j`."""
        return []


class LevelBarrier(_BenchScript):
    """bench/levelrun.py: one topological level at a time."""
    name, script = "level-barrier", "levelrun.py"


class PythonFloor(_BenchScript):
    """bench/floor.py: a bare Python ready-queue loop that spawns and reaps and records nothing."""
    name, script = "python floor", "floor.py"


class PythonFloorRecords(_BenchScript):
    """bench/floor.py --record: the same loop, leaving the least a run must (output to logs through
    a pipe, a session per step, log lines, a live state, a summary), kept as plain dicts."""
    name, script = "python floor + records", "floor.py"

    def args(self, rep):
        out = self.dir / f"rec-{rep}"
        shutil.rmtree(out, ignore_errors=True)
        return ["--record", str(out)]


class Orchestrator(Engine):
    """`orchestrator run FILE -q` in a fresh worktrees dir. `hints`: steps carry estimated_duration.
    `twice`: run twice in the same worktrees dir (the second run has the first one's history); the
    sample is the second run, the first is kept in `extra["first"]`. `quiet=False`: without `-q`,
    the console's plain lines to a pipe read as they come, as a caller capturing the output has it."""

    def __init__(self, wl, workdir, *, hints: bool = False, twice: bool = False, name: str = "",
                 expect_rc: int = 0, argv_extra: tuple[str, ...] = (), quiet: bool = True):
        self.name = name or "orchestrator"
        self.hints, self.twice, self.expect_rc, self.argv_extra = hints, twice, expect_rc, argv_extra
        self.quiet = quiet
        super().__init__(wl, workdir)

    def prepare(self):
        ws_id = "bench-" + "".join(c if c.isalnum() else "-" for c in self.wl.name).strip("-").lower()
        W.write(self.dir / "ws.json", W.workstream(self.wl, ws_id[:120], hints=self.hints))

    def _once(self, wt: Path) -> Sample:
        s = measure([orchestrator_bin(), "run", "ws.json", *(["-q"] if self.quiet else []),
                     "--worktrees-dir", str(wt), *self.argv_extra], self.dir, stderr_pipe=not self.quiet)
        summaries = sorted(wt.glob("*/runs/*/results_summary.json"), key=lambda p: p.stat().st_mtime)
        if summaries:
            summary = json.loads(summaries[-1].read_text())
            s.extra["summary"] = summary
            steps = [x for x in summary["steps"] if x.get("start_offset_s") is not None]
            if steps:
                first = min(x["start_offset_s"] for x in steps)
                last = max(x["end_offset_s"] for x in steps if x.get("end_offset_s") is not None)
                s.extra["span_s"] = last - first           # first step start to last step end
                s.extra["first_start_s"] = first
                s.extra["run_wall_s"] = summary["summary"].get("wall_time_s")
            s.extra["history"] = any(wt.glob("*/history.json"))
        return s

    def run(self, rep):
        wt = self.dir / f"wt-{rep}"
        shutil.rmtree(wt, ignore_errors=True)
        try:
            if not self.twice:
                return self._once(wt)
            first = self._once(wt)
            second = self._once(wt)
            first.extra.pop("summary", None)
            second.extra["first"] = first
            return second
        finally:
            shutil.rmtree(wt, ignore_errors=True)


class Command(Engine):
    """A fixed command line, measured like an engine (run in `dir`)."""

    def __init__(self, name: str, argv: list[str], workdir: Path):
        self.name, self.argv, self.dir = name, argv, workdir
        self.dir.mkdir(parents=True, exist_ok=True)

    def run(self, rep):
        return measure(self.argv, self.dir)


def available(tool: str) -> bool:
    return shutil.which(tool) is not None
