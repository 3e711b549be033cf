"""The Python floor: the least a dispatcher written in Python can do per step, as a reference engine.

    python bench/floor.py WORKSTREAM.json [-j N] [--busy US]

It reads the workstream's steps and dependencies and runs each step's commands as the orchestrator's
inline pool does at its fastest (plain words exec'd directly with `posix_spawn`, anything else through
`/bin/sh -c`; the child's exit seen through a pidfd in one `poll`), starting a ready step whenever a
slot is free. It records nothing: no log files, no state, no summary, no report, no timeouts, no process
trees, no retries. Whatever the orchestrator costs above this is bookkeeping; whatever this costs above
make is the price of the interpreter and its system calls. Exit 1 when a step failed.

`--busy US` spins US microseconds of Python after each spawn, where a dispatcher does its bookkeeping:
the wall it gives is what a dispatcher spending that much per step can reach at best (bench/NOTES.md,
session 8, has the curve).

`--record DIR` adds the least a run must leave, written as simply as possible: each child in a session
of its own with stdin from /dev/null, stdout and stderr into a pipe read as produced (the step's log in
DIR/steps created with its first byte), the `ORCHESTRATOR_*` variables, the outputs file looked for at
the end; a START and an END line per step in DIR/orchestrator.log (written once a pass); a record per
step, DIR/state.json replaced atomically at most every 0.2 s, DIR/results_summary.json at the end.
Its distance from make is what a dispatcher whose records are plain lists costs (session 13).
"""
from __future__ import annotations

import json
import os
import select
import sys
import time


def _argv(cmd: str) -> list[str]:
    """Plain words are exec'd directly (as make and the orchestrator do); anything else goes to sh."""
    if cmd.strip() and not any(c in cmd for c in "\\'\"`$&|;<>()*?[]{}~=#!\n"):
        return cmd.split()
    return ["/bin/sh", "-c", cmd]


class Recorder:
    """`--record DIR`: the records of a run, kept as plain lists and dicts."""

    def __init__(self, run_dir: str, ws_id: str, sids: list[str]):
        self.dir = run_dir
        os.makedirs(os.path.join(run_dir, "steps"), exist_ok=True)
        self.log = open(os.path.join(run_dir, "orchestrator.log"), "a")
        self.lines: list[str] = []
        self.env = dict(os.environ, ORCHESTRATOR_WS_ID=ws_id, ORCHESTRATOR_RUN_ID="floor",
                        ORCHESTRATOR_RUN_DIR=run_dir, ORCHESTRATOR_ATTEMPT="1")
        self.steps: dict[str, dict] = {sid: {"status": "pending"} for sid in sids}
        self.logs: dict[int, tuple[str, list]] = {}    # pipe -> (step, [its log's fd or None])
        self.flushed = time.monotonic()
        self.dirty = True

    def spawn(self, sid: str, exe: str, words: list[str]) -> tuple[int, int]:
        r, w = os.pipe()
        env = self.env.copy()
        env["ORCHESTRATOR_STEP_ID"] = sid
        env["ORCHESTRATOR_OUTPUT"] = os.path.join(self.dir, "steps", f"{sid}.outputs")
        try:
            pid = os.posix_spawn(exe, words, env, setsid=True, file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, w, 1), (os.POSIX_SPAWN_DUP2, w, 2)])
        finally:
            os.close(w)
        self.logs[r] = (sid, [None])
        self.steps[sid] = {"status": "running", "started": time.time()}
        self.lines.append(f"STEP START {sid} attempt=1")
        self.dirty = True
        return pid, r

    def output(self, r: int) -> bool:
        """Read what the pipe has; False at its end (the pipe is closed)."""
        data = os.read(r, 65536)
        if data:
            sid, log = self.logs[r]
            if log[0] is None:
                log[0] = os.open(os.path.join(self.dir, "steps", f"{sid}.log"),
                                 os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.write(log[0], data)
            return True
        sid, log = self.logs.pop(r)
        os.close(r)
        if log[0] is not None:
            os.close(log[0])
        return False

    def ended(self, sid: str, code: int, cpu: float) -> None:
        rec = self.steps[sid]
        t = time.time()
        rec.update(status="succeeded" if code == 0 else "failed", finished=t, exit_code=code,
                   duration_s=round(t - rec["started"], 4), cpu_time_s=round(cpu, 4),
                   outputs=os.access(os.path.join(self.dir, "steps", f"{sid}.outputs"), os.F_OK))
        self.lines.append(f"STEP END {sid} status={rec['status']} attempt=1 "
                          f"duration={rec['duration_s']:.3f}s")
        self.dirty = True

    def flush(self, final: bool = False) -> None:
        if self.lines:
            self.log.write("\n".join(self.lines) + "\n")
            self.log.flush()
            self.lines.clear()
        now = time.monotonic()
        if final or (self.dirty and now - self.flushed >= 0.2):
            self._replace("state.json", json.dumps({"steps": self.steps}), final)
            self.flushed, self.dirty = now, False
        if final:
            self._replace("results_summary.json", json.dumps({"steps": [
                dict(rec, id=sid) for sid, rec in self.steps.items()]}, indent=1), True)
            self.log.close()

    def _replace(self, name: str, text: str, sync: bool) -> None:
        tmp = os.path.join(self.dir, f".{name}.tmp")
        with open(tmp, "w") as f:
            f.write(text)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, os.path.join(self.dir, name))


def main(argv: list[str]) -> int:
    path, workers, busy, record = argv[0], 0, 0.0, None
    rest = argv[1:]
    while len(rest) >= 2:
        if rest[0] == "-j":
            workers = int(rest[1])
        elif rest[0] == "--busy":
            busy = float(rest[1]) / 1e6
        elif rest[0] == "--record":
            record = rest[1]
        rest = rest[2:]
    with open(path) as f:
        ws = json.load(f)
    workers = workers or ws.get("execution", {}).get("max_workers") or 4
    steps = ws["steps"]
    unmet = {s["id"]: len(s.get("depends_on", ())) for s in steps}
    users: dict[str, list[str]] = {s["id"]: [] for s in steps}
    tasks = {s["id"]: list(s.get("tasks") or []) for s in steps}
    for s in steps:
        for d in s.get("depends_on", ()):
            users[d].append(s["id"])
    ready = [s["id"] for s in steps if not unmet[s["id"]]]
    ready.reverse()                                   # pop() takes file order
    rec = Recorder(record, ws["id"], list(tasks)) if record else None
    env = dict(os.environ)
    path_dirs = env.get("PATH", "/usr/bin:/bin").split(":")
    poll = select.poll()
    running: dict[int, tuple[str, int, int]] = {}     # pidfd -> (step, pid, index of its command)
    pipes: set[int] = set()                           # --record: the children's output
    failed = 0

    def spawn(sid: str, i: int) -> None:
        words = _argv(tasks[sid][i])
        exe = words[0] if "/" in words[0] else next(
            (p for d in path_dirs if os.access(p := os.path.join(d, words[0]), os.X_OK)), words[0])
        if rec is None:
            pid = os.posix_spawn(exe, words, env)
        else:
            pid, r = rec.spawn(sid, exe, words)
            poll.register(r, select.POLLIN)
            pipes.add(r)
        fd = os.pidfd_open(pid)
        poll.register(fd, select.POLLIN)
        running[fd] = (sid, pid, i)
        if busy:
            until = time.perf_counter() + busy
            while time.perf_counter() < until:
                pass

    def finish(sid: str) -> None:
        for u in users[sid]:
            unmet[u] -= 1
            if not unmet[u]:
                ready.append(u)

    while ready or running or pipes:
        while ready and len(running) < workers:
            sid = ready.pop()
            if tasks[sid]:
                spawn(sid, 0)
            else:
                finish(sid)
        if rec is not None:
            rec.flush()
        for fd, _ in poll.poll():
            if fd in pipes:
                if not rec.output(fd):
                    poll.unregister(fd)
                    pipes.discard(fd)
                continue
            sid, pid, i = running.pop(fd)
            poll.unregister(fd)
            os.close(fd)
            _, status, ru = os.wait4(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            if code:
                failed += 1                           # its dependents never start
            elif i + 1 < len(tasks[sid]):
                spawn(sid, i + 1)
                continue
            else:
                finish(sid)
            if rec is not None:
                rec.ended(sid, code, ru.ru_utime + ru.ru_stime)
    if rec is not None:
        rec.flush(final=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
