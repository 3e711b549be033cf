"""One attempt of a step, as both local pools keep it: its log, its verdict and its result.

`worker.run_step` (a pool worker, blocking) and `inline._Attempt` (the dispatcher's loop, event by
event) run children differently but record them the same way, through what is here::

    child output -> LogSink.write   (masked, head+tail capped, file created with the first byte)
    child ended  -> Ran -> judge_task / judge_test -> Verdict (status, error, exit code, tests)
    attempt over -> build_result -> StepResult (outputs read from ORCHESTRATOR_OUTPUT, then deleted)
"""
from __future__ import annotations

import os
import resource
import _signal as signal  # the C module: `signal` wraps it in enums, and `enum` costs start-up
import time
from _collections import deque

from .model import StepResult, StepSpec, StepStatus, Task, TestResult
from .lean import loads
from .procs import signal_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

RSS_SAMPLE_EVERY = 0.5


class LogSink:
    """Writes a step's output to its log as it comes: secrets masked, size capped (head and tail)."""

    def __init__(self, path: str, max_bytes: int, secrets: tuple[str, ...], append: bool):
        self.path = path
        self.flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (0 if append else os.O_TRUNC)
        self.fd: int | None = None     # created with the first output, or at close when kept
        self.held: list[str | Callable[[], str]] = []   # our own notes, until the file is created
        self.head_limit = max(0, max_bytes // 2)
        self.tail_limit = max(0, max_bytes - self.head_limit)
        self.written = 0
        self.total = 0
        self.cut = 0
        self.tail: deque[bytes] = deque()
        self.tail_size = 0
        self.secrets = sorted({s.encode() for s in secrets if s}, key=len, reverse=True)
        self.hold = max((len(s) for s in self.secrets), default=1) - 1
        self.pending = b""
        self.recent = bytearray()  # the last few KB, for error messages and test results

    def _mask(self, data: bytes) -> bytes:
        for s in self.secrets:
            data = data.replace(s, b"***")
        return data

    def _open(self) -> int:
        """Create the file: a new inode costs 0.01-0.7 ms on ext4, so a step that succeeds without
        printing anything never pays it. Held notes go first."""
        self.fd = os.open(self.path, self.flags, 0o600)
        held, self.held = self.held, []
        for text in held:   # not into `recent`: test tails are the tests' own output
            self._write(_line(text), remember=False)
        return self.fd

    def write(self, data: bytes, final: bool = False) -> None:
        if data and self.fd is None:
            self._open()
        self._write(data, final)

    def _write(self, data: bytes, final: bool = False, remember: bool = True) -> None:
        if self.secrets:
            # mask the whole buffer, then keep back its last bytes: they may be the start of a
            # secret that the next chunk completes (a secret starting earlier ends inside it)
            data = self._mask(self.pending + data)
            keep = 0 if final else min(self.hold, len(data))
            data, self.pending = data[:len(data) - keep], data[len(data) - keep:]
        if not data:
            return
        self.total += len(data)
        if remember:
            self.recent += data
        if len(self.recent) > 8192:
            del self.recent[:-4096]
        room = self.head_limit - self.written
        if room > 0:
            part = data[:room]
            os.write(self.fd if self.fd is not None else self._open(), part)
            self.written += len(part)
            data = data[room:]
        if data:
            self.tail.append(data)
            self.tail_size += len(data)
            while self.tail and self.tail_size - len(self.tail[0]) >= self.tail_limit:
                self.cut += len(self.tail[0])
                self.tail_size -= len(self.tail[0])
                self.tail.popleft()

    def note(self, text: str | Callable[[], str]) -> None:
        """A line of our own. It may be given as a function that makes it: a step that succeeds
        without output never has its lines made (the file is not created)."""
        if self.fd is None:
            self.held.append(text)
        else:
            self._write(_line(text))

    def recent_text(self, lines: int = 20) -> str:
        return "\n".join(bytes(self.recent).decode(errors="replace").splitlines()[-lines:])

    def close(self, keep: bool = True) -> None:
        """Finish the log. With nothing printed and `keep` false, no file is created at all."""
        if self.fd is None:
            if not keep:
                return
            self._open()
        self._write(b"", final=True)
        if self.tail:
            blob = b"".join(self.tail)
            extra = self.tail_size - self.tail_limit
            if extra > 0:
                blob = blob[extra:]
                self.cut += extra
            if self.cut:
                os.write(self.fd, f"\n[... {self.cut} bytes cut: the log keeps the first "
                                   f"{self.head_limit} and the last {len(blob)} bytes "
                                   f"(max_log_bytes) ...]\n".encode())
            os.write(self.fd, blob)
        os.close(self.fd)


def _line(text: str | Callable[[], str]) -> bytes:
    return (text if isinstance(text, str) else text()).encode() + b"\n"


def keep_log(spec: StepSpec, status: StepStatus) -> bool:
    """Whether a step that printed nothing still gets a log file: when it did not succeed (the log
    says what ran and how it ended), and on a retry (the attempts share one log)."""
    return status is not StepStatus.SUCCEEDED or spec.attempt > 1


# --- running one child ----------------------------------------------------------------------------

class Ran:
    __slots__ = ("rc", "outcome", "maxrss", "cpu")

    def __init__(self, rc: int | None, outcome: str, maxrss: int = 0, cpu: float = 0.0):
        self.rc, self.outcome, self.maxrss, self.cpu = rc, outcome, maxrss, cpu


_BASE_ENV: dict[str, str] | None = None


def base_env() -> dict[str, str]:
    """A copy of the environment the worker inherited (read once: os.environ decodes per access)."""
    global _BASE_ENV
    if _BASE_ENV is None:
        _BASE_ENV = dict(os.environ)
    return dict(_BASE_ENV)


def own_hwm() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _read_outputs(path: str) -> dict[str, str]:
    """`key=value` lines, and GitHub's `key<<DELIM` ... `DELIM` blocks for multi-line values."""
    out: dict[str, str] = {}
    if not os.access(path, os.F_OK):   # the usual case, without raising and catching an error
        return out
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    try:  # the values now live in the (masked) state; the raw file may hold a secret
        os.unlink(path)
    except OSError:
        pass
    i = 0
    while i < len(lines):
        line = lines[i]
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            key, delim = line.split("<<", 1)
            body = []
            i += 1
            while i < len(lines) and lines[i] != delim:
                body.append(lines[i])
                i += 1
            out[key.strip()] = "\n".join(body)
        elif "=" in line:
            key, value = line.split("=", 1)
            out[key.strip()] = value
        i += 1
    return out


def _describe(ran: Ran) -> str:
    if ran.rc is not None and ran.rc < 0:
        name = signal_name(-ran.rc)
        return f"killed by signal {-ran.rc} ({name})" if name else f"killed by signal {-ran.rc}"
    if ran.rc is not None and 128 < ran.rc <= 128 + 64:
        # a shell (or a script) reports a command that a signal killed as 128 + the signal: 137 is
        # SIGKILL, often the OOM killer; 139 a segfault
        name = signal_name(ran.rc - 128)
        if name:
            return (f"exit code {ran.rc} (128 + {ran.rc - 128}: how a shell reports a command killed "
                    f"by {name})")
    return f"exit code {ran.rc}"


class Verdict:
    """How an attempt is going, child by child: what `run_step` and the inline pool both keep."""

    __slots__ = ("status", "error", "exit_code", "value", "tests", "rss", "cpu")

    def __init__(self) -> None:
        self.status, self.error, self.exit_code, self.value = StepStatus.SUCCEEDED, None, 0, None
        self.tests: list[TestResult] = []
        self.rss, self.cpu = 0, 0.0


def note_spawn_error(sink: LogSink, task: Task, e: OSError) -> None:
    sink.note(f"[orchestrator] cannot start {task.argv[0]!r}: {e.strerror or e}")


def judge_task(v: Verdict, spec: StepSpec, i: int, task: Task, ran: Ran, cancelled: bool,
               result_path: str | None = None) -> None:
    """Task `i` (1-based) has ended: update the verdict. `cancelled`: the run cancelled this step."""
    v.rss, v.cpu, v.exit_code = max(v.rss, ran.maxrss), v.cpu + ran.cpu, ran.rc
    if ran.rc == 0 and ran.outcome == "exited" and not task.callable:
        return                                  # the common case: nothing to say
    where = f"in task {i}: `{task.label}`"
    if ran.outcome == "timeout":
        v.status, v.error = StepStatus.TIMED_OUT, f"timed out ({spec.timeout_reason}) {where}"
    elif ran.outcome == "cancelled" or (ran.rc != 0 and cancelled):
        v.status, v.error = StepStatus.CANCELLED, f"cancelled {where}"
    elif ran.rc != 0:
        v.status, v.error = StepStatus.FAILED, f"{_describe(ran)} {where}"
        reason = _python_error(result_path) if task.callable and result_path else None
        if reason:
            v.error = f"{v.error}: {reason}"
    elif task.callable and result_path:
        res = _load_json(result_path)
        if not res.get("ok"):
            v.status, v.error = StepStatus.FAILED, f"{res.get('error', 'no result')} {where}"
        else:
            v.value = res.get("value")


def judge_test(v: Verdict, spec: StepSpec, i: int, test: Task, ran: Ran, took: float,
               sink: LogSink, mark: int, cancelled: bool) -> None:
    """Acceptance test `i` (1-based) has ended; `mark`: where its output starts in `sink.recent`."""
    tail = bytes(sink.recent[mark:] if mark <= len(sink.recent) else sink.recent)
    tail_text = "\n".join(tail.decode(errors="replace").splitlines()[-20:])
    where = f"acceptance test {i}"
    if ran.outcome == "timeout":
        v.tests.append(TestResult(test.label, "timed_out", ran.rc, took, tail_text))
        v.status, v.error = StepStatus.TIMED_OUT, (
            f"timed out ({spec.timeout_reason}) in {where}: `{test.label}`")
    elif ran.outcome == "cancelled" or (ran.rc != 0 and cancelled):
        v.tests.append(TestResult(test.label, "cancelled", ran.rc, took, tail_text))
        v.status, v.error = StepStatus.CANCELLED, f"cancelled in {where}: `{test.label}`"
    elif ran.rc != 0:
        v.tests.append(TestResult(test.label, "failed", ran.rc, took, tail_text))
        if v.status is StepStatus.SUCCEEDED:
            v.status, v.error = StepStatus.FAILED, f"{where} failed ({_describe(ran)}): `{test.label}`"
    else:
        v.tests.append(TestResult(test.label, "passed", 0, took, tail_text))


def build_result(spec: StepSpec, started: float, v: Verdict, sink: LogSink, worker: str,
                 finished: float | None = None) -> StepResult:
    """The attempt's StepResult, with the outputs the step wrote (the file is then deleted).
    `finished`: when the attempt ended (now when None)."""
    outputs: dict[str, Any] = dict(_read_outputs(spec.output_path))   # and deletes the file
    if isinstance(v.value, dict):
        outputs.update(v.value)
    elif v.value is not None:
        outputs.setdefault("value", v.value)
    return StepResult(spec.step_id, spec.attempt, v.status, exit_code=v.exit_code, error=v.error,
                      started_at=started, finished_at=time.time() if finished is None else finished,
                      outputs=outputs,
                      return_value=v.value, acceptance_tests=tuple(v.tests),
                      peak_rss_bytes=v.rss or None, cpu_time_s=round(v.cpu, 4), worker=worker,
                      log_bytes=sink.total)


def _load_json(path: str) -> dict:
    try:
        with open(path) as f:
            return loads(f.read())
    except (OSError, ValueError):
        return {}


def _python_error(path: str) -> str | None:
    return _load_json(path).get("error")
