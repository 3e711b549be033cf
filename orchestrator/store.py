"""The run directory: the one module that writes under `.worktrees/<ws-id>/`.

Layout (SPEC §3)::

    .worktrees/<ws-id>/orchestrator.log   appended, one event a line, flushed per line (tail -f)
    .worktrees/<ws-id>/latest             symlink to runs/<run-id>, replaced atomically
    .worktrees/<ws-id>/lock               flock()ed while a run is active; holds "pid run-id"
    .worktrees/<ws-id>/runs/<run-id>/     state.json, steps/<id>.log, results_summary.json, ...

Every file is replaced atomically (temp file, fsync, rename), so a poller never reads a torn file and a
crash leaves the previous complete version. The lock is an `flock`, which the kernel drops when its
holder dies, so a lock left by a killed run is taken over (with a warning naming the dead holder).
Directories are 0700 and files 0600: logs may hold what a step printed.
"""
from __future__ import annotations

import errno
import fcntl
import os
import time
from _thread import allocate_lock

from .masking import mask, mask_obj
from .errors import LockHeldError, RunNotFoundError
from .fmt import json_encoder
from .lean import DIGITS, Thread, dumps, loads
from .procs import pid_alive

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Mapping
    from os import PathLike

_HEX = frozenset(DIGITS + "abcdef")


def is_run_id(name: str) -> bool:
    """`20261125_143022_1a2b3c4d` (what `new_run_id` makes): the names of a workstream's runs."""
    return (len(name) == 24 and name[8] == name[15] == "_" and name[:8].isdecimal()
            and name[9:15].isdecimal() and _HEX.issuperset(name[16:]))


def new_run_id(now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%d_%H%M%S", time.gmtime(now if now is not None else time.time()))
    return f"{stamp}_{os.urandom(4).hex()}"  # not `secrets`: it loads OpenSSL, ~7 ms of start-up


def worktrees_root(project_root: str | PathLike[str], override: str | None = None) -> str:
    """`--worktrees-dir`, else $ORCHESTRATOR_WORKTREES_DIR, else `<project>/.worktrees`."""
    chosen = override or os.environ.get("ORCHESTRATOR_WORKTREES_DIR")
    return os.path.realpath(chosen) if chosen else os.path.join(project_root, ".worktrees")


class _Writer:
    """A thread that writes the newest text given for each file, atomically (see atomic_write)."""

    def __init__(self) -> None:
        self._lock = allocate_lock()     # guards _pending and _closed
        self._idle = allocate_lock()     # held while there is nothing to do (a binary semaphore)
        self._idle.acquire()
        self._pending: dict[str, str] = {}
        self._closed = False
        self._thread = Thread(self._run)

    def _wake(self) -> None:   # with _lock held
        if self._idle.locked():
            self._idle.release()

    def put(self, path: str, text: str) -> None:
        with self._lock:
            self._pending[path] = text
            self._wake()

    def _run(self) -> None:
        while True:
            self._idle.acquire()   # until put or close wakes it
            with self._lock:
                if not self._pending:
                    if self._closed:
                        return
                    continue
                path, text = self._pending.popitem()
                if self._pending or self._closed:
                    self._wake()   # more to do: the next acquire does not wait
            try:
                atomic_write(path, text)
            except OSError:   # the next write (or the final, foreground one) tries again
                pass

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wake()
        self._thread.join()


def atomic_write(path: str | PathLike[str], data: str | bytes, *, fsync: bool = True) -> None:
    blob = data.encode() if isinstance(data, str) else data
    head, name = os.path.split(os.fspath(path))
    tmp = os.path.join(head, f".{name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(blob)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _mkdir(path: str) -> None:
    """Create with 0700 (parents too: run records may hold what steps printed)."""
    missing = []
    p = path
    while p and not os.path.exists(p):      # a relative path ends in "" (the working directory)
        missing.append(p)
        p = os.path.dirname(p)
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass


class RunStore:
    """Owns `.worktrees/<ws-id>/` for one run: lock, log, state, step logs and result files."""

    def __init__(self, root: str | PathLike[str], ws_id: str):
        self.root = os.fspath(root)
        self.ws_id = ws_id
        self.ws_dir = os.path.join(self.root, ws_id)
        self.run_id: str | None = None
        self.run_dir: str | None = None
        self._lock_fd: int | None = None
        self._log: int | None = None   # orchestrator.log, opened on the first line
        self._held: list[bytes] | None = None   # lines kept back (hold_log)
        self._writer: _Writer | None = None
        self.secrets: tuple[str, ...] = ()   # masked in everything this store writes
        self._stamp_sec, self._stamp = -1, ""

    # --- lock --------------------------------------------------------------------------------------
    def acquire_lock(self, run_id: str) -> str | None:
        """Take the workstream's lock; returns a warning when a dead holder's lock was taken over."""
        _mkdir(self.ws_dir)
        path = os.path.join(self.ws_dir, "lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_holder(path)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
                pid, rid = holder
                raise LockHeldError(
                    f"workstream {self.ws_id} is already running (pid {pid or '?'}, run {rid or '?'}); "
                    f"wait for it, or stop it with: kill -INT {pid or '<pid>'}", path=str(path)) from None
            raise
        warning = None
        pid, rid = _read_holder(path)
        if pid and pid != os.getpid():
            state = self.read_state(rid) if rid else None
            if state and state.get("status") == "running" and not pid_alive(pid):
                warning = (f"took over the lock of run {rid}: its orchestrator (pid {pid}) is gone; "
                           f"resume it with --resume {rid}")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {run_id}\n".encode(), 0)
        self._lock_fd = fd
        return warning

    def release_lock(self) -> None:
        if self._lock_fd is not None:
            try:
                os.ftruncate(self._lock_fd, 0)
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            finally:
                os.close(self._lock_fd)
                self._lock_fd = None

    # --- the run directory -------------------------------------------------------------------------
    def open_run(self, run_id: str, *, new: bool) -> str:
        self.run_id = run_id
        runs = os.path.join(self.ws_dir, "runs")
        self.run_dir = os.path.join(runs, run_id)
        if not new and not os.path.isdir(self.run_dir):
            raise RunNotFoundError(f"no run {run_id} of workstream {self.ws_id}", path=runs)
        for d in (self.run_dir, os.path.join(self.run_dir, "steps"), self.cancel_dir):
            _mkdir(d)
        for stale in os.listdir(self.cancel_dir):  # a resumed run starts uncancelled
            os.unlink(os.path.join(self.cancel_dir, stale))
        link = os.path.join(self.ws_dir, "latest")
        tmp = os.path.join(self.ws_dir, f".latest.{os.getpid()}")
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        os.symlink(f"runs/{run_id}", tmp)
        os.replace(tmp, link)
        return self.run_dir

    @property
    def cancel_dir(self) -> str:
        assert self.run_dir is not None
        return os.path.join(self.run_dir, ".cancel")

    def step_log(self, step_id: str) -> str:
        assert self.run_dir is not None
        return f"{self.run_dir}/steps/{step_id}.log"

    def step_output(self, step_id: str) -> str:
        assert self.run_dir is not None
        return f"{self.run_dir}/steps/{step_id}.outputs"

    def log_tail(self, step_id: str, lines: int = 20) -> str:
        """The last lines of a step's log, read from the end (logs may be large)."""
        path = self.step_log(step_id)
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - 16384))
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def cancel(self, what: str) -> None:
        """Raise a cancel flag that workers see: "all", "now" (skip the grace) or a step id."""
        try:
            os.close(os.open(os.path.join(self.cancel_dir, what), os.O_WRONLY | os.O_CREAT, 0o600))
        except OSError:
            pass

    # --- writing -----------------------------------------------------------------------------------
    def log(self, line: str) -> None:
        """Append one event line to orchestrator.log (flushed at once, for tail -f)."""
        if self._log is None:
            _mkdir(self.ws_dir)
            self._log = os.open(os.path.join(self.ws_dir, "orchestrator.log"),
                                os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        now = time.time()
        sec = int(now)
        if sec != self._stamp_sec:  # one clock read per line; strftime once a second
            self._stamp_sec, self._stamp = sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        data = f"{self._stamp}.{int((now - sec) * 1000):03d}Z {mask(line, self.secrets)}\n".encode()
        if self._held is not None:
            self._held.append(data)
        else:  # one write(2) a line, to an O_APPEND descriptor: whole lines, at once, for tail -f
            os.write(self._log, data)

    def hold_log(self) -> None:
        """Keep the next lines until `release_log`, which writes them at once: the lines one pass
        of the run loop logs (a step's END, the next one's START) cost one write(2), not one each."""
        if self._held is None:
            self._held = []

    def release_log(self) -> None:
        held, self._held = self._held, None
        if held and self._log is not None:
            os.write(self._log, b"".join(held))

    def close(self) -> None:
        self.settle()
        self.release_log()
        if self._log is not None:
            os.close(self._log)
            self._log = None
        self.release_lock()

    def write_json(self, name: str, obj: Any,
                   known: Mapping[int, tuple[Any, str]] | None = None) -> str:
        """Replace a JSON file atomically, readable (`readable_json`, with the `known` lines of its
        items when there are no secrets to mask), secrets masked."""
        assert self.run_dir is not None
        path = os.path.join(self.run_dir, name)
        if self.secrets:
            atomic_write(path, readable_json(mask_obj(obj, self.secrets)) + "\n")
        else:
            atomic_write(path, readable_json(obj, known) + "\n")
        return path

    def write_json_text(self, name: str, text: str, *, background: bool = False) -> str:
        """Replace a file with JSON text that is already masked (see `records.StateJson`).

        `background`: from the store's writer thread (the temp file, its fsync and the rename cost
        milliseconds the run loop need not wait for); a newer text for the same file replaces one not
        yet written. A foreground write of a file first waits for its background writes."""
        assert self.run_dir is not None
        path = os.path.join(self.run_dir, name)
        if background:
            if self._writer is None:
                self._writer = _Writer()
            self._writer.put(path, text + "\n")
            return path
        self.settle()
        atomic_write(path, text + "\n")
        return path

    def settle(self) -> None:
        """Wait until every background write is on disk."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def write_text(self, name: str, text: str, *, fsync: bool = True) -> str:
        """Replace a text file atomically, secrets masked. `fsync=False` for a file made from one
        that was synced (the report, from the summary): still whole or absent after a crash of this
        process, only a power loss could lose it, and the summary it came from is on disk."""
        assert self.run_dir is not None
        path = os.path.join(self.run_dir, name)
        atomic_write(path, mask(text, self.secrets) or "", fsync=fsync)
        return path

    def read_history(self) -> dict | None:
        return read_json(os.path.join(self.ws_dir, "history.json"))

    def write_history(self, data: dict) -> None:
        _mkdir(self.ws_dir)
        atomic_write(os.path.join(self.ws_dir, "history.json"),
                     dumps(data, separators=(",", ":")) + "\n", fsync=False)

    # --- reading (also used by `status`, which never writes) ----------------------------------------
    def read_state(self, run_id: str | None = None) -> dict | None:
        return read_run_state(self.ws_dir, run_id or self.run_id or "")

    def latest_run_id(self) -> str | None:
        return latest_run_id(self.ws_dir)


# one list item's line in `readable_json` (an encoder made once: see fmt.json_encoder)
readable_item = json_encoder(default=str, ensure_ascii=False)


def readable_json(obj: Any, known: Mapping[int, tuple[Any, str]] | None = None) -> str:
    """Indented JSON whose list items (the steps) stand one per line in compact form.

    Python's indenting encoder is pure Python and several times slower than the compact C encoder;
    this keeps a 1000-step summary readable (and greppable by step) at C speed. `known`: lines of
    items encoded before (`readable_item`), by id(item): (item, line).
    """
    enc = readable_item
    if not isinstance(obj, dict):
        return enc(obj)

    def item(x: Any) -> str:
        seen = known.get(id(x)) if known else None
        return seen[1] if seen is not None and seen[0] is x else enc(x)

    lines = []
    for k, v in obj.items():
        if isinstance(v, list) and v:
            body = ",\n".join("    " + item(x) for x in v)
            lines.append(f"  {enc(k)}: [\n{body}\n  ]")
        elif isinstance(v, dict) and v:
            body = ",\n".join(f"    {enc(kk)}: {enc(vv)}" for kk, vv in v.items())
            lines.append(f"  {enc(k)}: {{\n{body}\n  }}")
        else:
            lines.append(f"  {enc(k)}: {enc(v)}")
    return "{\n" + ",\n".join(lines) + "\n}"


def _read_holder(path: str) -> tuple[int | None, str | None]:
    try:
        with open(path) as f:
            parts = f.read().split()
    except OSError:
        return None, None
    pid = int(parts[0]) if parts and parts[0].isdigit() else None
    rid = parts[1] if len(parts) > 1 else None
    return pid, rid


def read_json(path: str | PathLike[str]) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return loads(f.read())
    except (OSError, ValueError):
        return None


def read_run_state(ws_dir: str | PathLike[str], run_id: str) -> dict | None:
    """`runs/<run_id>/state.json` of a workstream's directory, or None when it cannot be read."""
    return read_json(os.path.join(ws_dir, "runs", run_id, "state.json"))


def latest_run_id(ws_dir: str | PathLike[str]) -> str | None:
    runs = os.path.join(ws_dir, "runs")
    try:
        rid = os.path.basename(os.readlink(os.path.join(ws_dir, "latest")).rstrip("/"))
        if os.path.isdir(os.path.join(runs, rid)):
            return rid
    except OSError:
        pass
    try:
        names = os.listdir(runs)
    except OSError:
        return None
    found = sorted(n for n in names if is_run_id(n))
    return found[-1] if found else None


def list_workstreams(root: str | PathLike[str]) -> list[str]:
    try:
        names = os.listdir(root)
    except OSError:
        return []
    return sorted(n for n in names if os.path.isdir(os.path.join(root, n, "runs")))
