"""Benchmark the orchestrator against GNU make, ninja, GNU parallel and a level-barrier runner.

    make bench                                   # or: .venv/bin/python bench/run_bench.py
    BENCH_REPS=5 BENCH_ONLY=trivial-1000,chain-200 make bench

Every workload is generated into a fresh temporary project directory and run by each engine in turn,
alternating (A B C A B C ...) so that drift on the machine hits every engine alike; medians are
reported. trivial-1000 and chain-200, runs of about a second whose walls swing most, get three times
BENCH_REPS. Prints the tables and writes them, with the machine, the versions and the issue-5 targets,
to bench/results.md (BENCH_OUT to write elsewhere; BENCH_KEEP=1 keeps the temporary directory;
BENCH_JSON=FILE also dumps every sample; a single run still going after BENCH_RUN_TIMEOUT seconds,
default 120, is killed and reported as an error).

Workloads: startup, trivial-1000, chain-200, sleep-wide, sleep-dag, big-graph, timeout, rate-limit.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import engines as E  # noqa: E402
import render as R  # noqa: E402
import workloads as W  # noqa: E402
from render import Section, Target, fmt, med  # noqa: E402

WORKLOADS = ["startup", "trivial-1000", "chain-200", "sleep-wide", "sleep-dag", "big-graph",
             "timeout", "rate-limit"]
MB = 1024  # ru_maxrss is in KiB
PLAIN_LINES = "orchestrator (plain lines, stderr piped)"   # the run without -q, as users start it


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Bench:
    def __init__(self, root: Path, reps: int):
        self.root, self.reps = root, reps
        self.targets: list[Target] = []
        self.sections: list[Section] = []
        self.errors: list[str] = []
        self.raw: dict[str, dict[str, list[dict]]] = {}
        self.skipped: list[str] = [t for t in ("make", "ninja", "parallel") if not E.available(t)]

    # --- running ---------------------------------------------------------------------------------

    def peers(self, wl: W.Workload, workdir: Path, *, parallel: bool,
              level_barrier: bool = True) -> list[E.Engine]:
        out: list[E.Engine] = []
        if E.available("make"):
            out.append(E.Make(wl, workdir))
        if E.available("ninja"):
            out.append(E.Ninja(wl, workdir))
        if parallel and not wl.has_deps and E.available("parallel"):
            out.append(E.Parallel(wl, workdir))
        if level_barrier:
            out.append(E.LevelBarrier(wl, workdir))
        return out

    def alternate(self, label: str, engines: list[E.Engine], *, warmup: bool = False,
                  reps: int | None = None, times: dict[str, int] | None = None
                  ) -> dict[str, list[E.Sample]]:
        """`reps` rounds of every engine in turn; `times`: engines that run more than once a round
        (their runs spread over the round, between the others')."""
        reps = reps or self.reps
        times = times or {}
        rounds = max([1, *times.values()])
        order = [e for k in range(rounds) for e in engines if k < times.get(e.name, 1)]
        for e in engines:
            e.prepare()
        if warmup:                                   # page cache, pyc files: not part of the numbers
            for e in engines:
                e.run(10_000)
        res: dict[str, list[E.Sample]] = {e.name: [] for e in engines}
        for rep in range(reps):
            t0 = time.perf_counter()
            for e in order:
                s = e.run(rep)
                for which, x in (("", s), (" (1st run)", s.extra.get("first"))):
                    if x is not None and x.rc != e.expect_rc:
                        self.errors.append(f"{label} / {e.name}{which}, repetition {rep + 1}: exit code "
                                           f"{x.rc} (expected {e.expect_rc}): "
                                           f"`{x.stderr_tail.strip()[-300:]}`")
                res[e.name].append(s)
            log(f"  {label}: repetition {rep + 1}/{reps} ({time.perf_counter() - t0:.1f} s)")
        self.raw[label] = {k: [_plain(s) for s in v] for k, v in res.items()}
        return res

    def target(self, t: Target, *sample_lists: list[E.Sample], expect_rc: int = 0) -> None:
        """Record a target; runs it rests on that failed or hung make it missed, whatever the numbers."""
        runs = [s for ss in sample_lists for s in ss]
        runs += [s.extra["first"] for s in runs if "first" in s.extra]
        bad = sum(1 for s in runs if s.rc != expect_rc)
        if bad:
            t.measured += f"; {bad} of {len(runs)} runs failed or hung (see Errors)"
            t.met = False
        self.targets.append(t)

    def workdir(self, name: str) -> Path:
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    # --- workloads -------------------------------------------------------------------------------

    def startup(self) -> None:
        wl = W.independent("startup-1", 1, "true", 1)
        d = self.workdir("startup")
        cmds = {
            "python -c pass (venv interpreter)": [sys.executable, "-c", "pass"],
            "orchestrator --version": [E.orchestrator_bin(), "--version"],
            "orchestrator validate (1 step)": [E.orchestrator_bin(), "validate", "ws.json"],
        }
        W.write(d / "commands" / "ws.json", W.workstream(wl, "startup-1"))
        engines = [*(E.Command(n, argv, d / "commands") for n, argv in cmds.items()),
                   E.Orchestrator(wl, d, name="orchestrator run (1 step)")]
        if E.available("make"):
            engines.append(E.Make(wl, d))
        res = self.alternate("startup", engines, warmup=True)
        rows = []
        for e in engines:
            ss = res[e.name]
            rows.append([e.name if e.name != "make" else "make -j1 (1 step)", fmt(med(s.wall_s for s in ss)),
                         fmt(med(s.cpu_s for s in ss)), fmt(med(s.maxrss_kb / MB for s in ss), 1),
                         fmt(med(s.extra.get("span_s") for s in ss))])
        self.sections.append(Section(
            "startup: fixed cost of one run", ["command", "wall s", "CPU s", "peak RSS MB",
                                               "steps span s"], rows,
            ["What every orchestrator run pays before and after its steps; it counts against every "
             "ratio below (against make's few milliseconds)."]))

    def simple(self, name: str, wl: W.Workload, *, goal: float | None = None,
               lower_bound: float | None = None, reps: int | None = None) -> None:
        d = self.workdir(name)
        engines = [E.Orchestrator(wl, d), E.Orchestrator(wl, d, quiet=False, name=PLAIN_LINES),
                   *self.peers(wl, d, parallel=True), E.PythonFloor(wl, d), E.PythonFloorRecords(wl, d)]
        res = self.alternate(name, engines, warmup=lower_bound is None, reps=reps)
        make_w = med(s.wall_s for s in res.get("make", []))
        headers = ["engine", "wall s", "min", "max", "× make"]
        if lower_bound:
            headers.append("× LB")
        headers += ["CPU s", "peak RSS MB", "steps span s", "outside steps s"]
        rows = []
        for e in engines:
            ss = res[e.name]
            w = med(s.wall_s for s in ss)
            span = med(s.extra.get("span_s") for s in ss)
            row = [e.name + ("" if e.name.startswith("orchestrator") else f" -j{wl.workers}"), fmt(w),
                   fmt(min(s.wall_s for s in ss)), fmt(max(s.wall_s for s in ss)),
                   fmt(w / make_w if make_w else None, 2, "×")]
            if lower_bound:
                row.append(fmt(w / lower_bound, 3, "×"))
            row += [fmt(med(s.cpu_s for s in ss)), fmt(med(s.maxrss_kb / MB for s in ss), 1),
                    fmt(span), fmt(w - span if span is not None else None)]
            rows.append(row)
        notes = [f"{len(wl.jobs)} steps, {wl.edges} dependencies, {wl.workers} workers, command "
                 f"`{wl.jobs[0].cmd}`. *steps span*: first step start to last step end, from the "
                 f"orchestrator's results_summary.json; *outside steps*: wall minus span (interpreter "
                 f"start, loading, pool start-up, writing the run directory)."]
        notes.append(f"*{PLAIN_LINES}*: the same run without `-q`, its console lines (one a step) "
                     "to a pipe this harness reads as they come, as a caller that captures the output "
                     "has them; the targets use the `-q` row.")
        notes.append("*python floor*: `bench/floor.py`, a bare Python ready-queue loop that spawns each "
                     "command as the orchestrator does (`posix_spawn`, exit seen through a pidfd) and "
                     "records nothing: no logs, state, summary or report. What any dispatcher written "
                     "in Python pays per step before its bookkeeping. *python floor + records*: the "
                     "same loop with `--record`: output through a pipe into lazily made logs, a "
                     "session per step, the ORCHESTRATOR_* variables, START/END log lines, a live "
                     "state.json and a summary, kept as plain dicts: what the least complete "
                     "bookkeeping costs.")
        if lower_bound:
            notes.append(f"LB = total work / workers = {lower_bound:.3f} s.")
        self.sections.append(Section(f"{name}", headers, rows, notes))
        orch = med(s.wall_s for s in res["orchestrator"])
        if goal is not None:
            ratio = orch / make_w if make_w else None

            def vs_make(engine: str) -> str:
                w = med(s.wall_s for s in res[engine])
                return fmt(w / make_w if make_w else None, 2, "×")

            self.target(Target(f"{name}: orchestrator wall vs make -j{wl.workers}",
                               f"≤ {goal:g}× make", f"{fmt(ratio, 2, '×')} "
                               f"({fmt(orch)} s vs {fmt(make_w)} s; python floor "
                               f"{vs_make('python floor')}, with records "
                               f"{vs_make('python floor + records')})",
                               None if ratio is None else ratio <= goal),
                        res["orchestrator"], res.get("make", []))

    def sleep_dag(self) -> None:
        rows, sim_rows, notes = [], [], []
        d = self.workdir("sleep-dag")
        # both declaration orders, alternated within each repetition too
        variants = []
        for critical_last in (True, False):
            wl = W.sleep_dag(critical_last=critical_last)
            wd = d / ("critical-last" if critical_last else "critical-first")
            engs = [E.Orchestrator(wl, wd, hints=True, name="orchestrator (estimated_duration)"),
                    E.Orchestrator(wl, wd, hints=False, twice=True,
                                   name="orchestrator (no hints, 2nd run: history)"),
                    *self.peers(wl, wd, parallel=False, level_barrier=critical_last)]
            variants.append((wl, engs, W.schedule_bounds(wl)))
        merged = [_Prefixed(e, wl.name) for wl, engs, _ in variants for e in engs]
        res = self.alternate("sleep-dag", merged)
        for wl, engs, b in variants:
            lb = b["lower_bound_s"]
            order = wl.name.split("[")[1].rstrip("]")
            peer_best = None
            peer_names = ", ".join(e.name for e in engs if not isinstance(e, E.Orchestrator))
            for e in engs:
                ss = res[f"{wl.name} {e.name}"]
                w = med(s.wall_s for s in ss)
                span = med(s.extra.get("span_s") for s in ss)
                rows.append([order, e.name if e.name.startswith("orch") else f"{e.name} -j{wl.workers}",
                             fmt(w), fmt(w / lb, 3, "×"), fmt(min(s.wall_s for s in ss)),
                             fmt(max(s.wall_s for s in ss)), fmt(span),
                             fmt(span / lb if span else None, 3, "×")])
                if isinstance(e, E.Orchestrator) and e.twice:
                    w1 = med(s.extra["first"].wall_s for s in ss)
                    s1 = med(s.extra["first"].extra.get("span_s") for s in ss)
                    rows.append([order, "orchestrator (no hints, 1st run: no history)", fmt(w1),
                                 fmt(w1 / lb, 3, "×"), fmt(min(s.extra["first"].wall_s for s in ss)),
                                 fmt(max(s.extra["first"].wall_s for s in ss)), fmt(s1),
                                 fmt(s1 / lb if s1 else None, 3, "×")])
                    if not all(s.extra.get("history") for s in ss):
                        notes.append(f"{order}: no `.worktrees/<id>/history.json` was found after the "
                                     "second no-hint run: the orchestrator kept no history.")
                if not isinstance(e, E.Orchestrator):
                    peer_best = w if peer_best is None else min(peer_best, w)
            for e in engs:
                if isinstance(e, E.Orchestrator):
                    ss = res[f"{wl.name} {e.name}"]
                    w = med(s.wall_s for s in ss)
                    self.target(Target(f"sleep-dag {order}: {e.name}", "≤ 1.05 × LB",
                                       f"{w / lb:.3f}× ({w:.2f} s, LB {lb:.2f} s)", w / lb <= 1.05), ss)
                    if peer_best is not None:
                        self.target(Target(
                            f"sleep-dag {order}: {e.name} ahead of every peer",
                            f"faster than {peer_names}",
                            f"{w:.2f} s vs best peer {peer_best:.2f} s", w < peer_best), ss)
            sim_rows.append([order, fmt(b["critical_path_s"], 2), fmt(b["total_work_s"], 2),
                             fmt(b["work_per_worker_s"], 2), fmt(lb, 2),
                             fmt(b["sim_fifo_s"] / lb, 3, "×"), fmt(b["sim_critical_path_s"] / lb, 3, "×"),
                             fmt(b["sim_level_barrier_s"] / lb, 3, "×")])
        wl0 = variants[0][0]
        self.sections.append(Section(
            "sleep-dag: schedule quality", ["declared", "engine", "wall s", "wall × LB", "min", "max",
                                            "steps span s", "span × LB"], rows,
            [f"{len(wl0.jobs)} steps `sleep 0.02..0.40` in {variants[0][2]['levels']} layers of "
             f"{len(wl0.jobs) // variants[0][2]['levels']}, {wl0.edges} dependencies (1-3 per step, one "
             f"on the previous layer), {wl0.workers} workers, seed fixed. *critical-last*: steps in the "
             "file by remaining critical path ascending (the long chain comes last, the worst case for "
             "a first-in-first-out scheduler); *critical-first*: descending. LB = max(critical path, "
             "total work / workers). The no-hint variant runs twice in one worktrees dir per "
             "repetition; the 2nd run is the one that counts, the 1st is shown for comparison. The "
             "level-barrier runner is measured in the critical-last order only (its levels are the "
             "same in both orders; that keeps `make bench` near 10 minutes); the simulations below "
             "cover both.",
             *notes]))
        self.sections.append(Section(
            "sleep-dag: bounds and zero-overhead simulations",
            ["declared", "critical path s", "total work s", "work / workers s", "LB s",
             "sim FIFO × LB", "sim longest-path-first × LB", "sim level barrier × LB"], sim_rows,
            ["Greedy list schedules computed with no overhead at all: what each policy can reach at "
             "best. The gap between a measured wall and its simulation is overhead, not policy."]))

    def big_graph(self) -> None:
        d = self.workdir("big-graph")
        sizes = {"1": W.independent("big-graph-1", 1, "true", 4), "10k": W.big_graph(10_000),
                 "100k": W.big_graph(100_000)}
        cmds = {}
        for label, wl in sizes.items():
            W.write(d / "commands" / f"g{label}.json", W.workstream(wl, f"big-graph-{label}"))
            cmds[f"validate {label}"] = [E.orchestrator_bin(), "validate", f"g{label}.json"]
            cmds[f"dry-run {label}"] = [E.orchestrator_bin(), "run", f"g{label}.json", "--dry-run",
                                        "--worktrees-dir", str(d / "wt")]
        engines = [E.Command(n, argv, d / "commands") for n, argv in cmds.items()]
        # the growth is a ratio to the 10k runs, short enough (~0.2 s) for a noisy moment to move a
        # median of five by half: they, and the 1-step runs, go three times a round
        res = self.alternate("big-graph", engines, warmup=True,
                             times={n: 3 for n in cmds if not n.endswith("100k")})
        rows = []
        stat = {}
        for e in engines:
            kind, label = e.name.split()
            ss = res[e.name]
            w, rss = med(s.wall_s for s in ss), med(s.maxrss_kb / MB for s in ss)
            stat[(kind, label)] = (w, rss)
            wl = sizes[label]
            rows.append([kind, len(wl.jobs), wl.edges, fmt(w), fmt(min(s.wall_s for s in ss)),
                         fmt(max(s.wall_s for s in ss)), fmt(med(s.cpu_s for s in ss)), fmt(rss, 1)])
        growth_notes = []
        for kind in ("validate", "dry-run"):
            w1, w10, w100 = (stat[(kind, k)][0] for k in ("1", "10k", "100k"))
            raw = w100 / w10
            adj = (w100 - w1) / (w10 - w1) if w10 > w1 else None
            growth_notes.append(f"{kind}: 10k → 100k growth {raw:.2f}× in wall time; "
                                f"{fmt(adj, 2, '×')} after subtracting the 1-step run ({w1:.3f} s of "
                                f"start-up).")
            self.target(Target(f"big-graph {kind}: 10k → 100k growth", "between 8× and 12×",
                               f"{raw:.2f}× (start-up subtracted: {fmt(adj, 2, '×')})", 8 <= raw <= 12),
                        *(res[f"{kind} {k}"] for k in ("1", "10k", "100k")))
        v, dr = stat[("validate", "100k")], stat[("dry-run", "100k")]
        big = (res["validate 100k"], res["dry-run 100k"])
        self.target(Target("big-graph 100k: validate + dry-run", "< 5 s",
                           f"{v[0] + dr[0]:.2f} s (validate {v[0]:.2f} s, dry-run {dr[0]:.2f} s)",
                           v[0] + dr[0] < 5), *big)
        peak = max(v[1], dr[1])
        self.target(Target("big-graph 100k: peak memory", "< 1 GB (1024 MB)",
                           f"{peak:.0f} MB (validate {v[1]:.0f}, dry-run {dr[1]:.0f})", peak < 1024), *big)
        self.sections.append(Section(
            "big-graph: validate and dry-run", ["command", "steps", "edges", "wall s", "min", "max",
                                                "CPU s", "peak RSS MB"], rows,
            ["Steps `true`, each depending on 3 random steps among the 1000 before it. Peak RSS of each "
             "run from GNU time (`%M`). The dry-run's plan goes to /dev/null.",
             *growth_notes]))

    def timeout(self) -> None:
        wl = W.Workload("timeout", [W.Job("sleeper", "sleep 10")], 1,
                        step_extra={"sleeper": {"timeout": 0.5}})
        d = self.workdir("timeout")
        e = E.Orchestrator(wl, d, expect_rc=1)
        res = self.alternate("timeout", [e])[e.name]
        rows, over = [], []
        for i, s in enumerate(res):
            st = s.extra["summary"]["steps"][0] if "summary" in s.extra else {}
            dur = st.get("duration_s")
            o = dur - 0.5 if dur is not None else None
            over.append(o)
            rows.append([i + 1, st.get("status", "?"), fmt(dur), fmt(o), fmt(s.wall_s)])
        m = med(over)
        worst = max((o for o in over if o is not None), default=None)
        self.target(Target("timeout fires on time", "ends ≤ 100 ms after the deadline (median)",
                           f"{fmt(m)} s after it (max {fmt(worst)} s)", None if m is None else m <= 0.1),
                    res, expect_rc=1)
        self.sections.append(Section(
            "timeout: `sleep 10` with `timeout: 0.5`", ["repetition", "status", "duration_s",
                                                        "after deadline s", "whole run wall s"], rows,
            ["duration_s from results_summary.json (SIGTERM to the step's process tree at the "
             "deadline; `sleep` ends on SIGTERM, so the grace period does not come into it)."]))

    def rate_limit(self) -> None:
        d = self.workdir("rate-limit")
        stamp = d / "starts.txt"
        wl = W.Workload("rate-limit", [W.Job(f"r{i}", f"date +%s.%N >> {stamp}") for i in range(10)], 4,
                        execution={"rate_limit_delay": 0.2})
        e = _Stamped(wl, d, stamp)
        res = self.alternate("rate-limit", [e])[e.name]
        rows, errs = [], []
        for i, s in enumerate(res):
            st = s.extra.get("summary", {}).get("steps", [])
            starts = sorted(x["start_offset_s"] for x in st if x.get("start_offset_s") is not None)
            gaps = [b - a for a, b in zip(starts, starts[1:])]
            seen = s.extra.get("stamps", [])
            seen_gaps = [b - a for a, b in zip(seen, seen[1:])]
            err = max((abs(g - 0.2) for g in gaps), default=None)
            errs.append(err)
            rows.append([i + 1, fmt(med(gaps)), fmt(min(gaps, default=None)), fmt(max(gaps, default=None)),
                         fmt(err), fmt(max((abs(g - 0.2) for g in seen_gaps), default=None))])
        m = med(errs)
        worst = max((e for e in errs if e is not None), default=None)
        self.target(Target("rate-limit spacing", "within 20 ms of 0.2 s (median of each run's worst gap)",
                           f"{fmt(m)} s off (worst {fmt(worst)} s)", None if m is None else m <= 0.02),
                    res)
        self.sections.append(Section(
            "rate-limit: 10 steps, `rate_limit_delay: 0.2`",
            ["repetition", "median gap s", "min gap s", "max gap s", "worst |gap − 0.2| s",
             "worst |gap − 0.2| seen by the steps s"], rows,
            ["Gaps between consecutive `start_offset_s` in results_summary.json; the last column uses the "
             "times the steps themselves wrote (`date +%s.%N`), which adds process start jitter."]))


class _Prefixed(E.Engine):
    """An engine whose results are filed under `<workload> <engine>`, so two variants can alternate."""

    def __init__(self, inner: E.Engine, prefix: str):
        self.inner, self.name, self.expect_rc = inner, f"{prefix} {inner.name}", inner.expect_rc

    def prepare(self):
        self.inner.prepare()

    def run(self, rep):
        return self.inner.run(rep)


class _Stamped(E.Orchestrator):
    """The orchestrator, plus the start times the steps wrote themselves."""

    def __init__(self, wl, workdir, stamp: Path):
        super().__init__(wl, workdir)
        self.stamp = stamp

    def run(self, rep):
        self.stamp.unlink(missing_ok=True)
        s = super().run(rep)
        if self.stamp.exists():
            s.extra["stamps"] = sorted(float(x) for x in self.stamp.read_text().split())
        return s


def _plain(s: E.Sample) -> dict:
    extra = {k: v for k, v in s.extra.items() if k not in ("summary", "first")}
    if "first" in s.extra:
        extra["first"] = _plain(s.extra["first"])
    return {"wall_s": s.wall_s, "cpu_s": s.cpu_s, "maxrss_kb": s.maxrss_kb, "rc": s.rc, **extra}


METHOD = [
    "Each engine is a child process timed from `Popen` to `os.wait4` (wall = what a user waits, "
    "start-up included), started through GNU time for its peak RSS (`%M`; the same ~1 ms for every "
    "engine); CPU = user + system time of the child and everything it waited for.",
    "The machine is shared: other work running at the same time slows every engine, which is why the "
    "engines alternate and the load average is shown above; compare ratios of one run, not walls "
    "across runs.",
    "orchestrator: `.venv/bin/orchestrator run ws.json -q --worktrees-dir <fresh dir>` from the project "
    "directory. Like make, it execs a command of plain words directly (`true`, `sleep 0.1`) and "
    "gives anything with shell syntax to `/bin/sh -c`.",
    "make: generated Makefile, one `.PHONY` target per step, dependencies as prerequisites, recipe "
    "`@CMD`, goal `all` listing the steps in file order; `make -j N -f Makefile`.",
    "ninja: generated build.ninja, `build <step>: run <deps>` with `command = CMD`; the outputs are "
    "never written, so every build re-runs every edge (no stamps needed); `ninja -j N`.",
    "GNU parallel: `parallel --will-cite -j N -a jobs.txt`, one command a line (workloads without "
    "dependencies only).",
    "level-barrier: `bench/levelrun.py`, a thread pool of N that runs one topological level at a time "
    "and waits for all of it before the next.",
    "python floor: `bench/floor.py`, the same spawning as the orchestrator's with no records at all; "
    "python floor + records: `bench/floor.py --record DIR`, the least complete records kept as plain "
    "dicts (both on trivial-1000, chain-200 and sleep-wide only).",
    "Within each repetition the engines run one after the other (A B C A B C ...); cheap workloads and "
    "big-graph get one untimed warm-up run per engine first, and big-graph's 1-step and 10k commands "
    "(the denominators of its growth ratios) run three times a repetition.",
]


def main() -> int:
    try:
        reps = int(os.environ.get("BENCH_REPS", "5"))
        if reps < 1:
            raise ValueError
    except ValueError:
        log("BENCH_REPS must be a whole number ≥ 1")
        return 2
    only = [w.strip() for w in os.environ.get("BENCH_ONLY", "").split(",") if w.strip()]
    unknown = [w for w in only if w not in WORKLOADS]
    if unknown:
        log(f"BENCH_ONLY: unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
        return 2
    orch = E.orchestrator_bin()
    if not os.access(orch, os.X_OK):
        log(f"{orch} not found: run `make venv` first (or set BENCH_ORCHESTRATOR)")
        return 2
    out_path = Path(os.environ.get("BENCH_OUT", E.BENCH_DIR / "results.md"))
    machine_rows, version_rows = R.machine(), R.versions(orch, E.REPO)
    date = R.now_utc()
    root = Path(tempfile.mkdtemp(prefix="orchestrator-bench-"))
    bench = Bench(root, reps)
    if bench.skipped:
        bench.errors.append(f"not installed, so not measured: {', '.join(bench.skipped)} "
                            "(`make bench` installs them)")
    plan = {
        "startup": bench.startup,
        # runs of about a second, whose walls swing by 2x on this machine: three times the repetitions
        "trivial-1000": lambda: bench.simple("trivial-1000", W.independent("trivial-1000", 1000, "true", 2),
                                             goal=1.25, reps=3 * reps),
        "chain-200": lambda: bench.simple("chain-200", W.chain("chain-200", 200, "true", 2), goal=1.5,
                                          reps=3 * reps),
        "sleep-wide": lambda: bench.simple("sleep-wide", W.independent("sleep-wide", 64, "sleep 0.1", 8, 0.1),
                                           lower_bound=64 * 0.1 / 8),
        "sleep-dag": bench.sleep_dag,
        "big-graph": bench.big_graph,
        "timeout": bench.timeout,
        "rate-limit": bench.rate_limit,
    }
    t0 = time.perf_counter()
    log(f"benchmark in {root}, {reps} repetitions")
    try:
        for name in WORKLOADS:
            if only and name not in only:
                continue
            log(f"{name} ...")
            t = time.perf_counter()
            try:
                plan[name]()
            except Exception as exc:  # one broken workload must not lose the others' numbers
                import traceback
                traceback.print_exc()
                bench.errors.append(f"{name}: the harness failed: {type(exc).__name__}: {exc}")
            log(f"{name}: {time.perf_counter() - t:.1f} s")
    finally:
        if os.environ.get("BENCH_KEEP") == "1":
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    elapsed = time.perf_counter() - t0
    machine_rows.append(["load average at end (1, 5, 15 min)",
                         " ".join(f"{x:.2f}" for x in os.getloadavg())])
    text = R.markdown(date=date, elapsed_s=elapsed, reps=reps, only=only, machine_rows=machine_rows,
                      version_rows=version_rows, targets=bench.targets, sections=bench.sections,
                      method=METHOD, errors=bench.errors)
    print(text)
    dask_results = E.BENCH_DIR / "dask" / "results.md"
    if dask_results.exists():  # issue 6's numbers live beside the peers' (made by bench/dask/bench_dask.py)
        body = dask_results.read_text().split("\n", 1)[-1].replace("\n## ", "\n### ")
        text = text.rstrip("\n") + "\n\n## Dask executor vs the local pool\n" + body
    out_path.write_text(text)
    log(f"wrote {out_path}")
    if os.environ.get("BENCH_JSON"):
        Path(os.environ["BENCH_JSON"]).write_text(json.dumps(bench.raw, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
