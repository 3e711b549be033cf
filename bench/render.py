"""What the results say and where they were measured: machine, versions, tables, targets.

Pure formatting apart from `machine()` and `versions()`, which read /proc and ask each tool.
"""
from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from tabulate import tabulate


@dataclass
class Section:
    title: str
    headers: list[str]
    rows: list[list]
    notes: list[str] = field(default_factory=list)


@dataclass
class Target:
    what: str
    goal: str
    measured: str
    met: bool | None          # None: could not be measured


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, digits: int = 3, suffix: str = "") -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}f}{suffix}"
    return f"{x}{suffix}"


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "not installed"


def machine() -> list[list[str]]:
    cpu = "unknown"
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = m.group(1).strip() if m else cpu
    except OSError:
        pass
    mem = "unknown"
    try:
        m = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        mem = f"{int(m.group(1)) / 1024 / 1024:.1f} GiB" if m else mem
    except OSError:
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [["nproc (usable CPUs)", str(len(os.sched_getaffinity(0)))],
            ["CPU model", cpu], ["memory", mem],
            ["kernel", platform.release()],
            ["load average at start (1, 5, 15 min)", load]]


def versions(orchestrator: str, repo: Path) -> list[list[str]]:
    rev = _first_line(["git", "-C", str(repo), "describe", "--always", "--dirty", "--abbrev=12"])
    return [["python", sys.version.split()[0] + f" ({sys.executable})"],
            ["make", _first_line(["make", "--version"])],
            ["ninja", _first_line(["ninja", "--version"])],
            ["GNU parallel", _first_line(["parallel", "--version"])],
            ["orchestrator", f"{_first_line([orchestrator, '--version'])}, git {rev}"]]


def markdown(*, date: str, elapsed_s: float, reps: int, only: list[str], machine_rows, version_rows,
             targets: list[Target], sections: list[Section], method: list[str],
             errors: list[str]) -> str:
    out = ["# Benchmark results", "",
           f"Written by `make bench` (`bench/run_bench.py`) on {date}, in {elapsed_s:.0f} s; "
           f"{reps} repetitions per engine ({3 * reps} for trivial-1000 and chain-200), engines "
           f"alternated within each repetition; "
           f"all times are medians of wall-clock seconds unless said otherwise.", ""]
    if reps < 5:
        out += [f"**Only {reps} repetitions (BENCH_REPS): the issue asks for at least 5.**", ""]
    if only:
        out += [f"Only these workloads were run (BENCH_ONLY): {', '.join(only)}.", ""]
    out += ["## Machine", "", tabulate(machine_rows, headers=["", ""], tablefmt="github"), "",
            "## Versions", "", tabulate(version_rows, headers=["", ""], tablefmt="github"), "",
            "## Targets (issue 5)", ""]
    if targets:
        rows = [[t.what, t.goal, t.measured, "—" if t.met is None else ("yes" if t.met else "**NO**")]
                for t in targets]
        out += [tabulate(rows, headers=["target", "goal", "measured", "met"], tablefmt="github"), ""]
        missed = [t.what for t in targets if t.met is False]
        unknown = [t.what for t in targets if t.met is None]
        out += [f"{sum(1 for t in targets if t.met)} of {len(targets)} targets met"
                + (f"; missed: {'; '.join(missed)}" if missed else "")
                + (f"; not measured (see Errors): {'; '.join(unknown)}" if unknown else "") + ".", ""]
    for s in sections:
        out += [f"## {s.title}", "", tabulate(s.rows, headers=s.headers, tablefmt="github",
                                               disable_numparse=True), ""]
        for n in s.notes:
            out += [n, ""]
    if errors:
        out += ["## Errors", ""] + [f"- {e}" for e in errors] + [""]
    out += ["## Method", ""] + [f"- {m}" for m in method] + [""]
    return "\n".join(out)


def now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
