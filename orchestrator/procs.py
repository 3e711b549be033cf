"""Process-tree helpers: find every descendant, kill a whole tree, keep orphans from escaping.

A step runs as the leader of its own session, so `killpg` reaches the processes that stayed in its
group. Children that called `setsid` or double-forked leave the group; they are caught because every
pool worker is a Linux child subreaper (`PR_SET_CHILD_SUBREAPER`): orphans re-parent to the worker
instead of init, so "all descendants of this worker" is exactly "everything the step started". The
descendant walk reads `/proc/<pid>/task/<tid>/children` (cheap) and falls back to psutil. A run's
guardian (`start_guardian`) is a small forked process that outlives a SIGKILLed orchestrator just long
enough to end every process carrying the run's ORCHESTRATOR_RUN_ID.
"""
from __future__ import annotations

import errno
import os
import _signal as signal  # the C module: `signal` wraps it in enums, and `enum` costs start-up
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterable


PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

_prctl_call = None


def _prctl(option: int, value: int) -> bool:
    """prctl(2). Called as `ctypes.CDLL(None).prctl(...)` would call it (int arguments), through
    `_ctypes` itself where it offers dlsym and call_function: the `ctypes` package costs ~1.5 ms of
    every run's start-up for this one call."""
    global _prctl_call
    try:
        if _prctl_call is None:
            _prctl_call = _find_prctl()
        return _prctl_call(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux: the features degrade, nothing breaks
        return False


def _find_prctl():
    try:
        import _ctypes
        call, address = _ctypes.call_function, _ctypes.dlsym(_ctypes.dlopen(None), "prctl")
        return lambda *args: call(address, args)
    except (ImportError, AttributeError, OSError, TypeError):
        import ctypes
        return ctypes.CDLL(None).prctl


# Linux places a new child by how busy its tracked load says each CPU is. After a long burst of CPU
# (loading and checking a workstream of thousands of steps) the loop's own utilisation reads
# saturated, so the kernel puts each step it spawns on the other CPU, behind the step running there,
# while the loop's CPU idles; and the run stays in that pattern to its end: spawns block ~0.7 ms
# instead of ~0.2 ms (bench/NOTES.md, session 16: 10 000 `true` 11.1 -> 10.1 s with a rest first).
# Resting until the tracked utilisation has decayed puts the run in the other pattern.
SETTLE_MIN_STEPS = 2000    # shorter runs: a rest would cost more than the pattern it avoids
SETTLE_FROM = 700          # se.avg.util_avg (of 1024) at or above which the loop rests
SETTLE_TO = 400            # ... until it has decayed to about this
PELT_HALF_LIFE = 0.032     # seconds: the kernel's load tracking halves a stopped task's utilisation


def settle_time(sched_file: str = "/proc/thread-self/sched") -> float:
    """Seconds the calling thread should rest before it spawns a run's steps: 0 unless the kernel's
    tracked utilisation of it is at SETTLE_FROM or above, or where the kernel does not show it."""
    try:
        with open(sched_file, "rb") as f:
            text = f.read()
        start = text.index(b"se.avg.util_avg")
        util = int(text[text.index(b":", start) + 1:text.index(b"\n", start)])
    except (OSError, ValueError):
        return 0.0
    if util < SETTLE_FROM:
        return 0.0
    from math import log2
    return PELT_HALF_LIFE * log2(util / SETTLE_TO)


def settle_before_spawning(steps: int) -> None:
    """Rest (`settle_time`) before the first spawn of a run of `steps` that this thread spawns itself."""
    if steps >= SETTLE_MIN_STEPS:
        rest = settle_time()
        if rest:
            time.sleep(rest)


def become_subreaper() -> bool:
    """Orphaned descendants re-parent to this process instead of init."""
    return _prctl(PR_SET_CHILD_SUBREAPER, 1)


def signal_name(signum: int) -> str:
    """`SIGTERM` for 15 ("" for a number no signal has); the `signal` module (and its enums) only
    where a name is needed."""
    import signal as named
    try:
        return named.Signals(signum).name
    except ValueError:
        return ""


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send `sig` to this process when its parent dies."""
    return _prctl(PR_SET_PDEATHSIG, int(sig))


def children(pid: int) -> list[int]:
    """Direct children of `pid`."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    out: list[int] = []
    try:
        for tid in tids:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(x) for x in f.read().split())
        return out
    except FileNotFoundError:
        return out
    except OSError:
        import psutil  # only where /proc's children files are missing
        try:
            return [c.pid for c in psutil.Process(pid).children()]
        except psutil.Error:
            return []


def own_children() -> list[int]:
    """Children of this process's main thread, which is where our spawns and re-parented orphans
    land: one read, for the check at the end of every step."""
    try:
        fd = os.open(f"/proc/self/task/{os.getpid()}/children", os.O_RDONLY)
    except OSError:
        return children(os.getpid())
    try:
        return [int(x) for x in os.read(fd, 65536).split()]
    finally:
        os.close(fd)


def descendants(pid: int) -> list[int]:
    """Every living descendant of `pid`, parents before children."""
    out: list[int] = []
    stack = children(pid)
    seen = set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        out.append(p)
        stack.extend(children(p))
    return out


def _signal(pids: Iterable[int], sig: int) -> None:
    for p in pids:
        try:
            os.kill(p, sig)
        except OSError:
            pass


def killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except OSError:
        pass


def reap_children() -> None:
    """Collect exit statuses of finished children (orphans adopted by this subreaper included)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        except OSError as e:  # pragma: no cover - EINTR is retried by Python
            if e.errno != errno.EINTR:
                return
            continue
        if pid == 0:
            return


def has_children() -> bool:
    """True when this process has any child at all, running or zombie (cheap: one waitid call)."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        return True
    except ChildProcessError:
        return False


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            # a zombie ("Z") is dead for our purposes; its parent will reap it
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def kill_tree(root: int | None, *, pgids: Iterable[int] = (), grace: float = 5.0,
              include_root: bool = False, reap: bool = True) -> None:
    """SIGTERM a process tree, wait up to `grace` seconds, SIGKILL what is left.

    The tree is: the process groups `pgids`, and every descendant of `root` (which, in a subreaper,
    includes orphans that escaped with setsid or double forks); `root` itself only with include_root.
    """
    pgids = list(pgids)

    def members() -> list[int]:
        found = descendants(root) if root is not None else []
        if include_root and root is not None and _alive(root):
            found.append(root)
        return found

    targets = members()
    for g in pgids:
        killpg(g, signal.SIGTERM)
    _signal(targets, signal.SIGTERM)
    deadline = time.monotonic() + max(0.0, grace)
    delay = 0.002
    while True:
        if reap:
            reap_children()
        alive = [p for p in members() if _alive(p)]
        group_alive = any(_group_alive(g) for g in pgids)
        if not alive and not group_alive:
            break
        if time.monotonic() >= deadline:
            for g in pgids:
                killpg(g, signal.SIGKILL)
            _signal(alive, signal.SIGKILL)
            # a process may fork between our listing and the kill: sweep until nothing is left
            for _ in range(50):
                if reap:
                    reap_children()
                rest = [p for p in members() if _alive(p)]
                if not rest and not any(_group_alive(g) for g in pgids):
                    break
                _signal(rest, signal.SIGKILL)
                for g in pgids:
                    killpg(g, signal.SIGKILL)
                time.sleep(0.01)  # waiting for the kernel to finish the kills, not synchronisation
            break
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    if reap:
        reap_children()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg succeeds while zombies remain in the group; look for a live member
    import psutil  # only on this slow path of a kill, where zombies linger in the group
    try:
        for p in psutil.process_iter(["pid"]):
            try:
                if os.getpgid(p.info["pid"]) == pgid and _alive(p.info["pid"]):
                    return True
            except OSError:
                continue
    except psutil.Error:
        return True
    return False


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def tree_rss(root: int) -> int:
    """Resident memory of every descendant of `root`, in bytes (a sample, read from /proc)."""
    total = 0
    for p in descendants(root):
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * _PAGE
        except (OSError, IndexError, ValueError):
            continue
    return total


def rss(pid: int) -> int:
    """Resident memory of one process, in bytes (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def run_marker(pid: int) -> tuple[str, str] | None:
    """(ORCHESTRATOR_RUN_ID, ORCHESTRATOR_STEP_ID) from a process's environment, if it has them."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read().split(b"\0")
    except OSError:
        return None
    run = step = None
    for item in env:
        if item.startswith(b"ORCHESTRATOR_RUN_ID="):
            run = item[20:].decode(errors="replace")
        elif item.startswith(b"ORCHESTRATOR_STEP_ID="):
            step = item[21:].decode(errors="replace")
    return (run, step) if run is not None and step is not None else None


def marked(run_id: str, step_id: str | None = None) -> list[int]:
    """Every living process (but this one) whose environment says it belongs to run `run_id` (and
    step `step_id`): a scan of /proc, for the rare paths where a tree has lost its parent links."""
    me, out = os.getpid(), []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != me:
            owner = run_marker(int(name))
            if (owner is not None and owner[0] == run_id and step_id in (None, owner[1])
                    and _alive(int(name))):
                out.append(int(name))
    return out


def kill_marked(run_id: str, grace: float) -> None:
    """SIGTERM every process of run `run_id`, wait up to `grace`, SIGKILL the rest; repeat until
    none is left (one may fork meanwhile)."""
    deadline = time.monotonic() + grace
    sig = signal.SIGTERM
    for _ in range(100):
        pids = marked(run_id)
        if not pids:
            return
        _signal(pids, sig)
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.01)  # waiting for the processes to end, with a deadline
        if time.monotonic() >= deadline:
            sig = signal.SIGKILL


_RESET: list[frozenset[int]] = []   # the signals a step starts with at their default (spawn)


def step_signals() -> frozenset[int]:
    """Every signal but those that were ignored when this process started: nohup's SIGHUP or a
    background job's SIGINT stay ignored in the steps, as in a shell's children. SIGPIPE and SIGXFSZ
    are ignored by the Python runtime itself, not by whoever started us, so a step gets them back (as
    `subprocess` does with restore_signals); otherwise `yes | head -1` in a step says "Broken pipe" and
    a writer that does not check its writes never ends. Read once: a pool worker, which ignores
    SIGINT itself (the dispatcher alone decides what Ctrl-C means), reads it before it does.
    Handlers never reach a child: the run's own SIGINT/SIGTERM handlers count as not ignored."""
    if not _RESET:
        keep = {s for s in signal.valid_signals() if signal.getsignal(s) == signal.SIG_IGN}
        keep -= {signal.SIGPIPE, signal.SIGXFSZ}
        _RESET.append(frozenset(signal.valid_signals()) - keep - {signal.SIGKILL, signal.SIGSTOP})
    return _RESET[0]


def spawn(argv: tuple[str, ...], env: dict[str, str], wfd: int, stdin: int) -> int:
    """Start argv (argv[0] looked up on PATH) as the leader of a new session, stdout and stderr to
    `wfd`, stdin from `stdin` (/dev/null, opened once by the caller), signals at their defaults
    (`step_signals`); in our cwd.

    posix_spawn (vfork-like in glibc) is several times cheaper than subprocess.Popen; every other
    descriptor of ours is close-on-exec (PEP 446), so the child inherits only these three. The caller
    waits until the child has exec'd, so what the child does first counts: naming the signals to
    reset saves it a query per signal (~5 us), and a dup2 of an open /dev/null an open (~4 us)."""
    actions = [(os.POSIX_SPAWN_DUP2, stdin, 0), (os.POSIX_SPAWN_DUP2, wfd, 1),
               (os.POSIX_SPAWN_DUP2, wfd, 2)]
    return os.posix_spawnp(argv[0], list(argv), env, file_actions=actions, setsid=True,
                           setsigdef=step_signals())


_NO_PIDFD: list[bool] = []   # set once pidfd_open turned out to be missing here


def exit_fd(pid: int) -> int:
    """A descriptor that turns readable when our child `pid` exits, leaving it to be reaped (wait4
    still gets its status and CPU time); close it with os.close. The child's pidfd, or where there
    are none (Linux before 5.3, gVisor, valgrind) a pipe written by a thread that waits for the exit
    without reaping it."""
    if not _NO_PIDFD:
        try:
            return os.pidfd_open(pid)
        except AttributeError:
            _NO_PIDFD.append(True)
        except OSError as e:
            if e.errno not in (errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP):
                raise
            _NO_PIDFD.append(True)
    import threading
    r, w = os.pipe()
    threading.Thread(target=_tell_exit, args=(pid, w), name=f"exit of {pid}", daemon=True).start()
    return r


def _tell_exit(pid: int, w: int) -> None:
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    except ChildProcessError:   # reaped already (a shutdown): the reader is told all the same
        pass
    finally:
        try:
            os.write(w, b"x")
        except OSError:
            pass
        os.close(w)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists and is not a zombie."""
    return _alive(pid)


# --- the guardian of a run -------------------------------------------------------------------------

GUARDIAN_GRACE = 0.5     # the guardian's grace between SIGTERM and SIGKILL


def start_guardian(run_id: str) -> int | None:
    """Fork a process that waits for the orchestrator's death (PR_SET_PDEATHSIG), then ends every
    process whose environment carries this run's ORCHESTRATOR_RUN_ID. Stopped with SIGTERM."""
    parent = os.getpid()
    # blocked before the fork, so that a SIGTERM sent at once waits for sigwait (an inherited
    # Python handler would swallow it and leave the guardian waiting forever)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM})
    try:
        pid = os.fork()
    except OSError:
        return None
    finally:
        if os.getpid() == parent:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
    if pid:
        return pid
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        die_with_parent(signal.SIGUSR1)
        sig = signal.SIGUSR1 if os.getppid() != parent else signal.sigwait(
            {signal.SIGUSR1, signal.SIGTERM})
        if sig == signal.SIGUSR1:
            kill_marked(run_id, grace=GUARDIAN_GRACE)
    except BaseException:  # noqa: BLE001 - the guardian exits quietly
        code = 1
    finally:
        os._exit(code)


def stop_guardian(pid: int | None) -> None:
    """SIGTERM to the guardian; it exits meanwhile, and `reap` waits for it."""
    if pid is not None:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass


def reap(pid: int | None) -> None:
    """Wait for our child `pid` to end (nothing when it is already reaped, or None)."""
    if pid is not None:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
