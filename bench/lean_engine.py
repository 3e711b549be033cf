"""An experiment, not the product: what a dispatcher whose records are flat lists costs with most of ours.

    python bench/lean_engine.py WORKSTREAM.json WORKTREES_DIR

The same loop as `floor.py --record`, with what the orchestrator does around it: the workstream loaded
and checked by our loader, a subreaper and the guardian process, a deadline per step in a heap (the
poll's timeout; a step past it has its tree ended), the orphan check 50 ms after a step ends, CPU time
from wait4, the outputs file read, orchestrator.log lines stamped as ours, state.json entries in our
format made once per ended step and joined at each flush, and results_summary.json, the markdown
report and junit.xml written by our own code at the end. Records are one list per field, indexed by
step: no spec, attempt, result or record objects. Single-task shell steps only, no `${...}`, retries,
tests, cancels or masking; leftovers that hold a step's pipe keep it open until its deadline.

bench/NOTES.md (session 13) has what it measured: 1.31x make on trivial-1000 where the orchestrator
took 1.53x and `floor.py --record` 1.24x, i.e. how far a redesign along these lines could go.
"""
from __future__ import annotations

import heapq
import json
import os
import select
import sys
import time

T0 = time.time()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from orchestrator import procs  # noqa: E402
from orchestrator.analysis import max_concurrency  # noqa: E402
from orchestrator.attempt import _read_outputs  # noqa: E402
from orchestrator.fmt import iso  # noqa: E402
from orchestrator.junit import render_junit  # noqa: E402
from orchestrator.lean import quote_ascii as q  # noqa: E402
from orchestrator.loader import load_workstream  # noqa: E402
from orchestrator.report import render_report  # noqa: E402
from orchestrator.specs import shell_argv  # noqa: E402
from orchestrator.store import atomic_write, readable_json  # noqa: E402

FLUSH_EVERY, SWEEP_AFTER = 0.2, 0.05
APPEND = os.O_WRONLY | os.O_CREAT | os.O_APPEND


def _null(value) -> str:
    return "null" if value is None else str(value)


class Run:
    def __init__(self, path: str, worktrees: str):
        self.ws = ws = load_workstream(path, project_root=os.getcwd())
        self.run_dir = os.path.join(worktrees, ws.id, "runs", "r1")
        self.steps_dir = os.path.join(self.run_dir, "steps")
        os.makedirs(self.steps_dir, exist_ok=True)
        self.log_fd = os.open(os.path.join(worktrees, ws.id, "orchestrator.log"), APPEND, 0o600)
        steps = self.steps = ws.steps
        n = self.n = len(steps)
        self.ids = [s.id for s in steps]
        pos = {sid: i for i, sid in enumerate(self.ids)}
        self.unmet = [len(s.depends_on) for s in steps]
        self.users: list[list[int]] = [[] for _ in steps]
        for i, s in enumerate(steps):
            for d in s.depends_on:
                self.users[pos[d]].append(i)
        self.deps_json = [json.dumps(list(s.depends_on)) for s in steps]
        self.timeout = [s.timeout or ws.execution.timeout_per_step for s in steps]
        self.workers = ws.execution.max_workers or 2
        # the records: one list per field
        self.status = ["pending"] * n
        self.started: list[float | None] = [None] * n
        self.finished: list[float | None] = [None] * n
        self.rc: list[int | None] = [None] * n
        self.cpu: list[float | None] = [None] * n
        self.outputs: list[dict] = [{} for _ in steps]
        self.error: list[str | None] = [None] * n
        self.entry: list[str | None] = [None] * n    # state.json entries of ended steps
        self.lines: list[str] = []
        self.stamp = (0, "")
        self.env = dict(os.environ, ORCHESTRATOR_WS_ID=ws.id, ORCHESTRATOR_RUN_ID="r1",
                        ORCHESTRATOR_RUN_DIR=self.run_dir, ORCHESTRATOR_ATTEMPT="1")

    def log(self, line: str) -> None:
        now = time.time()
        sec = int(now)
        if sec != self.stamp[0]:
            self.stamp = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
        self.lines.append(f"{self.stamp[1]}.{int((now - sec) * 1000):03d}Z {line}\n")

    def state_entry(self, i: int) -> str:
        st, s0, f0 = self.status[i], self.started[i], self.finished[i]
        ended = st not in ("pending", "running")
        return (f'{q(self.ids[i])}:{{"status":"{st}","depends_on":{self.deps_json[i]},'
                f'"attempt":{1 if s0 else 0},"started_at":{q(iso(s0)) if s0 else "null"},'
                f'"finished_at":{q(iso(f0)) if f0 and ended else "null"},'
                f'"started_epoch":{_null(s0)},"finished_epoch":{_null(f0)},'
                f'"duration_s":{round(f0 - s0, 4) if ended and f0 and s0 else "null"},'
                f'"task_index":1,"task_count":1,'
                f'"error":{q(self.error[i]) if self.error[i] else "null"},'
                f'"exit_code":{_null(self.rc[i])},"blocked_by":[],"worker":"local",'
                f'"definition_hash":"","outputs":{json.dumps(self.outputs[i])},"return_value":null,'
                f'"acceptance_tests":[],"peak_rss_bytes":null,"cpu_time_s":{_null(self.cpu[i])}}}')

    def write_state(self, final: bool) -> None:
        body = ",".join(e if e is not None else self.state_entry(i) for i, e in enumerate(self.entry))
        atomic_write(os.path.join(self.run_dir, "state.json"),
                     '{"schema_version":1,"steps":{' + body + "}}\n", fsync=final)

    def flush_log(self) -> None:
        if self.lines:
            os.write(self.log_fd, "".join(self.lines).encode())
            self.lines.clear()

    def summary(self, finished: float) -> dict:
        steps = []
        for i in range(self.n):
            s0, f0 = self.started[i], self.finished[i]
            steps.append({
                "id": self.ids[i], "status": self.status[i], "description": self.steps[i].description,
                "depends_on": list(self.steps[i].depends_on), "attempts": 1, "exit_code": self.rc[i],
                "error": self.error[i], "started_at": iso(s0) if s0 else None,
                "finished_at": iso(f0) if f0 else None,
                "start_offset_s": round(s0 - T0, 4) if s0 else None,
                "end_offset_s": round(f0 - T0, 4) if f0 else None,
                "duration_s": round(f0 - s0, 4) if f0 and s0 else None, "timeout_s": self.timeout[i],
                "log_file": f"steps/{self.ids[i]}.log", "blocked_by": [], "outputs": self.outputs[i],
                "acceptance_tests": [], "peak_rss_bytes": None, "cpu_time_s": self.cpu[i],
                "worker": "local", "kept_from_earlier_session": False})
        ok = self.status.count("succeeded")
        wall = finished - T0
        sequential = sum(s["duration_s"] or 0.0 for s in steps)
        totals = {"succeeded": ok, "failed": self.n - ok, "total": self.n,
                  "wall_time_s": round(wall, 4), "sequential_time_s": round(sequential, 4),
                  "speedup": round(sequential / wall, 3) if wall > 0 else 0.0,
                  "success_rate": ok / self.n if self.n else 0.0,
                  "max_concurrency": max_concurrency(steps)}
        return {"schema_version": 1, "workstream_id": self.ws.id, "run_id": "r1", "title": self.ws.title,
                "status": "succeeded" if ok == self.n else "failed", "started_at": iso(T0),
                "finished_at": iso(finished), "execution": {"max_workers": self.workers},
                "steps": steps, "summary": totals}


def main(path: str, worktrees: str) -> int:
    run = Run(path, worktrees)
    procs.become_subreaper()
    guardian = procs.start_guardian("lean-engine")
    ready = [(0, i) for i in range(run.n) if not run.unmet[i]]
    heapq.heapify(ready)
    poll = select.poll()
    by_fd: dict[int, list] = {}       # pidfd and pipe -> [step, pid, pidfd, pipe, exited, eof, log fd]
    deadlines: list[tuple[float, int, int]] = []
    running, last_flush, dirty, sweep_at = 0, 0.0, True, None
    stdin = (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)

    def spawn(i: int) -> None:
        sid = run.ids[i]
        argv = shell_argv(run.steps[i].tasks[0])
        r, w = os.pipe()
        env = run.env.copy()
        env["ORCHESTRATOR_STEP_ID"] = sid
        env["ORCHESTRATOR_OUTPUT"] = os.path.join(run.steps_dir, sid + ".outputs")
        try:
            pid = os.posix_spawn(argv[0], list(argv), env, setsid=True, file_actions=[
                stdin, (os.POSIX_SPAWN_DUP2, w, 1), (os.POSIX_SPAWN_DUP2, w, 2)])
        finally:
            os.close(w)
        pidfd = os.pidfd_open(pid)
        poll.register(pidfd, select.POLLIN)
        poll.register(r, select.POLLIN)
        by_fd[pidfd] = by_fd[r] = [i, pid, pidfd, r, False, False, None]
        heapq.heappush(deadlines, (time.monotonic() + run.timeout[i], i, pid))
        run.status[i], run.started[i] = "running", time.time()
        run.log(f"STEP START {sid} attempt=1")

    def ended(child: list) -> None:
        i = child[0]
        _, status, usage = os.wait4(child[1], 0)
        for fd in (child[2], child[3], child[6]):
            if fd is not None:
                os.close(fd)
        code = os.waitstatus_to_exitcode(status)
        run.finished[i], run.rc[i] = time.time(), code
        run.cpu[i] = round(usage.ru_utime + usage.ru_stime, 4)
        run.outputs[i] = _read_outputs(os.path.join(run.steps_dir, run.ids[i] + ".outputs"))
        if code == 0:
            run.status[i] = "succeeded"
            for u in run.users[i]:
                run.unmet[u] -= 1
                if not run.unmet[u]:
                    heapq.heappush(ready, (0, u))
        else:
            run.status[i] = "failed"
            run.error[i] = f"exit code {code} in task 1: `{run.steps[i].tasks[0]}`"
        run.entry[i] = run.state_entry(i)
        detail = f" error={run.error[i]}" if run.error[i] else ""
        run.log(f"STEP END {run.ids[i]} status={run.status[i]} attempt=1 "
                f"duration={run.finished[i] - run.started[i]:.3f}s{detail}")

    while ready or running:
        while ready and running < run.workers:
            spawn(heapq.heappop(ready)[1])
            running += 1
            dirty = True
        run.flush_log()
        now = time.monotonic()
        if dirty and now - last_flush >= FLUSH_EVERY:
            run.write_state(final=False)
            last_flush, dirty = now, False
        due = [t for t in (last_flush + FLUSH_EVERY if dirty else None,
                           deadlines[0][0] if deadlines else None, sweep_at) if t is not None]
        for fd, _ in poll.poll(max(0.0, (min(due) - now) * 1000) if due else None):
            child = by_fd.get(fd)
            if child is None:
                continue
            if fd == child[3]:
                data = os.read(fd, 65536)
                if data:
                    if child[6] is None:
                        child[6] = os.open(os.path.join(run.steps_dir, run.ids[child[0]] + ".log"),
                                           APPEND, 0o600)
                    os.write(child[6], data)
                    continue
                child[5] = True
            else:
                child[4] = True
            poll.unregister(fd)
            del by_fd[fd]
            if child[4] and child[5]:
                ended(child)
                running -= 1
                dirty = True
                if sweep_at is None:
                    sweep_at = time.monotonic() + SWEEP_AFTER
        now = time.monotonic()
        while deadlines and (deadlines[0][0] <= now or run.status[deadlines[0][1]] != "running"):
            due_at, i, pid = heapq.heappop(deadlines)
            if run.status[i] == "running" and due_at <= now:
                procs.kill_tree(pid, pgids=[pid], grace=0.0, include_root=True, reap=False)
        if sweep_at is not None and now >= sweep_at:
            sweep_at = None
            procs.own_children()
    run.write_state(final=True)
    summary = run.summary(time.time())
    atomic_write(os.path.join(run.run_dir, "results_summary.json"), readable_json(summary) + "\n")
    atomic_write(os.path.join(run.run_dir, "execution_report.md"), render_report(summary, log_tails={}),
                 fsync=False)
    atomic_write(os.path.join(run.run_dir, "junit.xml"), render_junit(summary), fsync=False)
    run.log(f"RUN END ws={run.ws.id}")
    run.flush_log()
    procs.stop_guardian(guardian)
    procs.reap(guardian)
    code = 0 if summary["status"] == "succeeded" else 1
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
