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


def main(argv: list[str]) -> int:
    path, workers, busy = argv[0], 0, 0.0
    rest = argv[1:]
    while len(rest) >= 2:
        if rest[0] == "-j":
            workers = int(rest[1])
        elif rest[0] == "--busy":
            busy = float(rest[1]) / 1e6
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
    env = dict(os.environ)
    path_dirs = env.get("PATH", "/usr/bin:/bin").split(":")
    poll = select.poll()
    running: dict[int, tuple[str, int, int]] = {}     # pidfd -> (step, pid, index of its command)
    failed = 0

    def spawn(sid: str, i: int) -> None:
        words = _argv(tasks[sid][i])
        exe = words[0] if "/" in words[0] else next(
            (p for d in path_dirs if os.access(p := os.path.join(d, words[0]), os.X_OK)), words[0])
        pid = os.posix_spawn(exe, words, env)
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

    while ready or running:
        while ready and len(running) < workers:
            sid = ready.pop()
            if tasks[sid]:
                spawn(sid, 0)
            else:
                finish(sid)
        for fd, _ in poll.poll():
            sid, pid, i = running.pop(fd)
            poll.unregister(fd)
            os.close(fd)
            _, status = os.waitpid(pid, 0)
            if os.waitstatus_to_exitcode(status):
                failed += 1                           # its dependents never start
            elif i + 1 < len(tasks[sid]):
                spawn(sid, i + 1)
            else:
                finish(sid)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
