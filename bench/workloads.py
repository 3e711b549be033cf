"""The benchmark's workloads, and the same work written for each peer.

A `Workload` is a list of `Job`s (id, shell command, dependencies, the duration the command takes when
it is a `sleep`) plus the worker count. From it come the inputs of every engine: the orchestrator's
workstream JSON, a Makefile (one phony target per job, dependencies as prerequisites), a build.ninja
(one edge per job whose output is never written, so every build re-runs everything), a job list for
GNU parallel, and the level-barrier runner reads the workstream JSON itself.

`sleep_dag` is a seeded random layered DAG; `schedule_bounds` gives its lower bound and the makespans of
three zero-overhead list schedules (FIFO by file order, longest remaining path first, level barrier),
so a measured makespan can be split into schedule quality and per-step overhead.
"""
from __future__ import annotations

import heapq
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Job:
    id: str
    cmd: str
    deps: tuple[str, ...] = ()
    seconds: float | None = None          # how long the command takes (sleeps), for bounds and hints


@dataclass
class Workload:
    name: str
    jobs: list[Job]
    workers: int
    execution: dict = field(default_factory=dict)       # extra workstream `execution` keys
    step_extra: dict[str, dict] = field(default_factory=dict)   # extra keys per step id

    @property
    def has_deps(self) -> bool:
        return any(j.deps for j in self.jobs)

    @property
    def edges(self) -> int:
        return sum(len(j.deps) for j in self.jobs)


# --- generators ----------------------------------------------------------------------------------

def independent(name: str, n: int, cmd: str, workers: int, seconds: float | None = None) -> Workload:
    width = len(str(n - 1))
    return Workload(name, [Job(f"s{i:0{width}d}", cmd, (), seconds) for i in range(n)], workers)


def chain(name: str, n: int, cmd: str, workers: int) -> Workload:
    width = len(str(n - 1))
    ids = [f"s{i:0{width}d}" for i in range(n)]
    return Workload(name, [Job(sid, cmd, (ids[i - 1],) if i else ()) for i, sid in enumerate(ids)],
                    workers)


def sleep_dag(seed: int = 20261125, layers: int = 30, width: int = 5, workers: int = 4,
              lo: float = 0.02, hi: float = 0.4, critical_last: bool = True) -> Workload:
    """`layers` x `width` sleeps of lo..hi s (uniform, 10 ms steps). A step of layer k > 0 depends on
    one step of layer k-1 (so its topological level is k) and on 0-2 more of any earlier layer.

    File order: by remaining critical path (the step's own sleep plus the longest chain of sleeps
    after it), ascending when `critical_last` (the steps that matter most come last, the worst case for
    a scheduler that starts ready steps in file order), else descending (a topological order)."""
    rng = random.Random(seed)
    jobs: list[Job] = []
    done_layers: list[list[str]] = []
    earlier: list[str] = []
    for k in range(layers):
        layer = []
        for _ in range(width):
            sid = f"d{len(jobs):03d}"
            secs = round(rng.uniform(lo, hi), 2)
            deps: list[str] = []
            if k:
                want = rng.randint(1, 3)
                deps.append(rng.choice(done_layers[-1]))
                while len(deps) < want:
                    c = rng.choice(earlier)
                    if c not in deps:
                        deps.append(c)
            jobs.append(Job(sid, f"sleep {secs:.2f}", tuple(deps), secs))
            layer.append(sid)
        done_layers.append(layer)
        earlier.extend(layer)
    rp = remaining_path(jobs)
    jobs.sort(key=lambda j: (rp[j.id], j.id), reverse=not critical_last)
    order = "critical-last" if critical_last else "critical-first"
    return Workload(f"sleep-dag[{order}]", jobs, workers)


def big_graph(n: int, fanin: int = 3, window: int = 1000, seed: int = 7) -> Workload:
    """n steps `true`, each depending on `fanin` random steps among the `window` before it:
    about fanin * n edges."""
    rng = random.Random(seed)
    jobs = []
    for i in range(n):
        lo = max(0, i - window)
        deps = rng.sample(range(lo, i), min(fanin, i - lo)) if i else []
        jobs.append(Job(f"g{i}", "true", tuple(f"g{d}" for d in sorted(deps))))
    return Workload(f"big-graph-{n}", jobs, 4)


# --- schedule bounds -------------------------------------------------------------------------------

def remaining_path(jobs: list[Job]) -> dict[str, float]:
    """Per job: its own seconds plus the longest chain of seconds through its dependents."""
    users: dict[str, list[str]] = {j.id: [] for j in jobs}
    for j in jobs:
        for d in j.deps:
            users[d].append(j.id)
    secs = {j.id: j.seconds or 0.0 for j in jobs}
    rp: dict[str, float] = {}
    for sid in reversed(_topo(jobs)):
        rp[sid] = secs[sid] + max((rp[u] for u in users[sid]), default=0.0)
    return rp


def _topo(jobs: list[Job]) -> list[str]:
    unmet = {j.id: len(j.deps) for j in jobs}
    users: dict[str, list[str]] = {j.id: [] for j in jobs}
    for j in jobs:
        for d in j.deps:
            users[d].append(j.id)
    out = [j.id for j in jobs if not j.deps]
    for sid in out:                      # grows while iterating: a breadth-first topological order
        for u in users[sid]:
            unmet[u] -= 1
            if unmet[u] == 0:
                out.append(u)
    return out


def levels(jobs: list[Job]) -> dict[str, int]:
    by_id = {j.id: j for j in jobs}
    lev: dict[str, int] = {}
    for sid in _topo(jobs):
        lev[sid] = 1 + max((lev[d] for d in by_id[sid].deps), default=-1)
    return lev


def list_schedule(jobs: list[Job], workers: int, rank: dict[str, float]) -> float:
    """Makespan of greedy list scheduling with no overhead: whenever a worker is free, start the ready
    job with the smallest rank."""
    secs = {j.id: j.seconds or 0.0 for j in jobs}
    users: dict[str, list[str]] = {j.id: [] for j in jobs}
    unmet = {j.id: len(j.deps) for j in jobs}
    for j in jobs:
        for d in j.deps:
            users[d].append(j.id)
    ready = [(rank[s], s) for s, n in unmet.items() if n == 0]
    heapq.heapify(ready)
    running: list[tuple[float, str]] = []
    now, free = 0.0, workers
    while ready or running:
        while free and ready:
            _, s = heapq.heappop(ready)
            heapq.heappush(running, (now + secs[s], s))
            free -= 1
        now, s = heapq.heappop(running)
        free += 1
        for u in users[s]:
            unmet[u] -= 1
            if unmet[u] == 0:
                heapq.heappush(ready, (rank[u], u))
    return now


def schedule_bounds(wl: Workload) -> dict[str, float]:
    rp = remaining_path(wl.jobs)
    work = math.fsum(j.seconds or 0.0 for j in wl.jobs)
    cp = max(rp.values())
    lev = levels(wl.jobs)
    barrier = 0.0
    for k in sorted(set(lev.values())):
        members = [Job(j.id, j.cmd, (), j.seconds) for j in wl.jobs if lev[j.id] == k]
        barrier += list_schedule(members, wl.workers, {j.id: i for i, j in enumerate(members)})
    return {
        "critical_path_s": cp,
        "total_work_s": work,
        "work_per_worker_s": work / wl.workers,
        "lower_bound_s": max(cp, work / wl.workers),
        "levels": max(lev.values()) + 1,
        "sim_fifo_s": list_schedule(wl.jobs, wl.workers, {j.id: i for i, j in enumerate(wl.jobs)}),
        "sim_critical_path_s": list_schedule(wl.jobs, wl.workers, {s: -v for s, v in rp.items()}),
        "sim_level_barrier_s": barrier,
    }


# --- the inputs of each engine -----------------------------------------------------------------------

def workstream(wl: Workload, ws_id: str, *, hints: bool = False) -> dict:
    steps = []
    for j in wl.jobs:
        step: dict = {"id": j.id, "tasks": [j.cmd]}
        if j.deps:
            step["depends_on"] = list(j.deps)
        if hints and j.seconds is not None:
            step["estimated_duration"] = j.seconds
        step.update(wl.step_extra.get(j.id, {}))
        steps.append(step)
    return {"id": ws_id, "execution": {"max_workers": wl.workers, **wl.execution}, "steps": steps}


def makefile(wl: Workload) -> str:
    ids = [j.id for j in wl.jobs]
    lines = [".PHONY: all " + " ".join(ids), "all: " + " ".join(ids), ""]
    for j in wl.jobs:
        lines.append(f"{j.id}:" + "".join(" " + d for d in j.deps))
        lines.append("\t@" + j.cmd.replace("$", "$$"))
    return "\n".join(lines) + "\n"


def build_ninja(wl: Workload) -> str:
    # The outputs are never written: ninja then sees every edge as dirty on every build, as make sees
    # its phony targets, and no stamp (or `touch` process per step) is needed.
    lines = ["rule run", "  command = $cmd", "  description = $out", ""]
    for j in wl.jobs:
        lines.append(f"build {j.id}: run" + "".join(" " + d for d in j.deps))
        lines.append("  cmd = " + j.cmd.replace("$", "$$"))
    lines.append("default " + " ".join(j.id for j in wl.jobs))
    return "\n".join(lines) + "\n"


def parallel_jobs(wl: Workload) -> str:
    assert not wl.has_deps, "GNU parallel runs only workloads without dependencies"
    return "".join(j.cmd + "\n" for j in wl.jobs)


def write(path: Path, text_or_obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text_or_obj, str):
        path.write_text(text_or_obj)
    else:
        path.write_text(json.dumps(text_or_obj))
    return path
