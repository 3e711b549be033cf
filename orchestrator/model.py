"""The typed model: what a workstream is, and what crosses the process boundary.

`Workstream`, `Step`, `StepGroup`, `Tool` and `Execution` are built once by the loader from a validated
file and never change. `StepSpec` is the only thing that goes into a worker process and `StepResult` the
only thing that comes back; both are frozen records (`frozen.record`) of plain values, so they pickle
cheaply and identically for a local process pool and a Dask cluster.

Step states (`StepStatus`) and their legal transitions::

    pending  -> running            a slot was free, dependencies succeeded
    pending  -> blocked            a dependency ended in anything but succeeded
    pending  -> skipped            the failure policy, the run timeout or an open circuit stopped it
    running  -> succeeded | failed | timed_out | cancelled
    running  -> pending            a failed or timed-out attempt with retries left (waits retry_delay)
    (any terminal but succeeded) -> pending   only when a run is resumed

`running` exists only while a run is live; an interrupted run leaves never-started steps `pending`.
"""
from __future__ import annotations

from .fmt import json_encoder
from .lean import once
from .frozen import factory, record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Mapping
    from .graph import StepLinks

# SHA-256 from CPython's own implementation where it has one: `hashlib` loads OpenSSL first, 4-7 ms of
# every run's start-up for one digest a step. The digests are the same.
try:
    from _sha256 import sha256 as _sha256          # CPython <= 3.11
except ImportError:                                # pragma: no cover - other interpreters
    try:
        from _sha2 import sha256 as _sha256        # CPython >= 3.12
    except ImportError:
        from hashlib import sha256 as _sha256


class _Choices(type):
    """What these modules ask of `enum.Enum` for a set of named strings, without importing `enum`:
    with `re` and `signal` it is ~5 ms of every command's start-up (see `lean`). A class
    made by it has one instance per UPPER_CASE str attribute (its member, a str equal to the value,
    `.name` and `.value` set); `Cls(value)` gives the member of that value (ValueError for others),
    `for m in Cls` the members in order; members pickle as themselves."""

    def __new__(mcs, name: str, bases: tuple, ns: dict):
        cls = super().__new__(mcs, name, bases, ns)
        members = {}
        for attr, value in ns.items():
            if attr.isupper() and type(value) is str:
                m = str.__new__(cls, value)
                m.name, m.value = attr, value
                members[value] = m
                type.__setattr__(cls, attr, m)
        cls._members = members
        for m in members.values():
            m._init()
        return cls

    def __call__(cls, value: Any):
        try:
            return cls._members[value]
        except (KeyError, TypeError):
            raise ValueError(f"{value!r} is not a valid {cls.__name__}") from None

    def __iter__(cls):
        return iter(cls._members.values())

    def __len__(cls) -> int:
        return len(cls._members)

    def __setattr__(cls, name: str, value: Any) -> None:
        if name in cls.__dict__ and isinstance(cls.__dict__[name], cls):
            raise AttributeError(f"cannot reassign member {name!r}")
        super().__setattr__(name, value)


class _Choice(str):
    name: str
    value: str

    def _init(self) -> None:
        """Per member, once its class is made (derived attributes)."""

    def __reduce__(self):
        return type(self), (self.value,)

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __str__(self) -> str:  # f-strings show the value, not the member name
        return self.value

    def __repr__(self) -> str:
        return f"<{type(self).__name__}.{self.name}: {self.value!r}>"

    __hash__ = str.__hash__


class StepStatus(_Choice, metaclass=_Choices):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    BLOCKED = "blocked"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    terminal: bool
    bad: bool      # ended without success: dependents of such a step are blocked

    def _init(self) -> None:
        self.terminal = self.value not in ("pending", "running")
        self.bad = self.terminal and self.value != "succeeded"


TRANSITIONS: Mapping[StepStatus, frozenset[StepStatus]] = {
    StepStatus.PENDING: frozenset({StepStatus.RUNNING, StepStatus.BLOCKED, StepStatus.SKIPPED}),
    StepStatus.RUNNING: frozenset({StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.TIMED_OUT,
                                   StepStatus.CANCELLED, StepStatus.PENDING}),
}


class OnFailure(_Choice, metaclass=_Choices):
    CONTINUE = "continue"
    FAIL_ALL = "fail_all"
    COMPLETE_RUNNING = "complete_running"


class RunStatus(_Choice, metaclass=_Choices):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


_sorted_json = json_encoder(sort_keys=True, default=str)   # a step's digest (fmt.json_encoder)

SHELL = "shell"
PYTHON = "python"
DEFAULT_MAX_LOG_BYTES = 50 * 1024 * 1024


@record
class FilesScope:
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()


@record
class Tool:
    """A named command-line tool: `command` is an argv template with {task} {files} {step_id} {ws_id}."""

    name: str
    command: tuple[str, ...]
    env: Mapping[str, str] = factory(dict)


@record
class Step:
    id: str
    index: int                                   # position in the file: the last tie-breaker
    tool: str = SHELL
    tasks: tuple[str, ...] = ()
    callable: str | None = None                  # "package.module:function" for the python tool
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = factory(dict)
    depends_on: tuple[str, ...] = ()
    files_scope: FilesScope = FilesScope()
    acceptance_tests: tuple[str, ...] = ()
    timeout: float | None = None                 # None: execution.timeout_per_step
    retries: int = 0
    retry_delay: float = 1.0
    env: Mapping[str, str] = factory(dict)
    cwd: str | None = None                       # relative to the project root
    estimated_duration: float | None = None
    priority: int = 0
    resources: Mapping[str, float] = factory(dict)
    description: str = ""

    def definition_hash(self) -> str:
        """A digest of everything that decides what the step does (not its position or hints).

        `run --resume` keeps a succeeded step only while this digest is unchanged. Computed once
        (a run asks at its start and again for the history at its end).
        """
        cached = self.__dict__.get("_definition_hash")
        if cached is None:
            cached = self.__dict__["_definition_hash"] = self._digest()
        return cached

    def _digest(self) -> str:
        what = {
            "tool": self.tool, "tasks": list(self.tasks), "callable": self.callable,
            "args": list(self.args), "kwargs": dict(self.kwargs), "depends_on": list(self.depends_on),
            "acceptance_tests": list(self.acceptance_tests), "env": dict(self.env), "cwd": self.cwd,
            "files_scope": [list(self.files_scope.reads), list(self.files_scope.writes)],
        }
        blob = _sorted_json(what).encode()
        return _sha256(blob).hexdigest()[:16]


@record
class StepGroup:
    id: str
    steps: tuple[str, ...]
    execute: str = "parallel"                    # "parallel" | "sequential"
    max_workers: int | None = None
    on_failure: OnFailure | None = None
    timeout: float | None = None


@record
class Execution:
    parallel: bool = True
    max_workers: int = 4
    timeout_per_step: float = 300.0
    run_timeout: float | None = None
    rate_limit_delay: float = 0.0
    rate_limit: float | None = None
    on_failure: OnFailure = OnFailure.CONTINUE
    adaptive_scaling: bool = False
    executor: str = "process"                    # "process" | "dask"
    scheduler_address: str | None = None
    circuit_breaker_threshold: int | None = None
    max_log_bytes: int = DEFAULT_MAX_LOG_BYTES

    @property
    def min_start_interval(self) -> float:
        """Least seconds between two step starts: the stricter of rate_limit_delay and rate_limit."""
        interval = self.rate_limit_delay
        if self.rate_limit:
            interval = max(interval, 1.0 / self.rate_limit)
        return interval

    @property
    def effective_workers(self) -> int:
        return self.max_workers if self.parallel else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "parallel": self.parallel, "max_workers": self.max_workers,
            "timeout_per_step": self.timeout_per_step, "run_timeout": self.run_timeout,
            "rate_limit_delay": self.rate_limit_delay, "rate_limit": self.rate_limit,
            "on_failure": self.on_failure.value, "adaptive_scaling": self.adaptive_scaling,
            "executor": self.executor, "scheduler_address": self.scheduler_address,
            "circuit_breaker": ({"failure_threshold": self.circuit_breaker_threshold}
                                if self.circuit_breaker_threshold else None),
            "max_log_bytes": self.max_log_bytes,
        }


@record
class Workstream:
    id: str
    steps: tuple[Step, ...]
    execution: Execution = Execution()
    tools: Mapping[str, Tool] = factory(dict)
    step_groups: tuple[StepGroup, ...] = ()
    title: str = ""
    description: str = ""
    source: str = ""                             # the file it was loaded from, for messages

    @once
    def _by_id(self) -> dict[str, Step]:
        return dict(zip(self.step_ids, self.steps))

    def step(self, step_id: str) -> Step:
        return self._by_id[step_id]

    @once
    def step_ids(self) -> tuple[str, ...]:
        """The ids in file order (made once: a pass over 100 000 steps costs ~50 ms)."""
        return tuple(s.id for s in self.steps)

    @once
    def links(self) -> StepLinks:
        """The dependency graph over file positions (`graph.StepLinks`), made once."""
        from .graph import StepLinks
        return StepLinks(self.step_ids, [s.depends_on for s in self.steps])


# --- the process boundary -------------------------------------------------------------------------

@record
class Task:
    """One thing to run in a child process of the worker."""

    label: str                                   # what a person reads in messages: the task string
    argv: tuple[str, ...] = ()                   # exec'd without a shell (shell tasks: /bin/sh -c)
    callable: str | None = None                  # python tasks: "module:function"
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = factory(dict)
    inputs: Mapping[str, Any] = factory(dict)


@record
class StepSpec:
    """Everything a worker needs to run one attempt of one step, and nothing else."""

    ws_id: str
    run_id: str
    step_id: str
    attempt: int
    tasks: tuple[Task, ...]
    acceptance_tests: tuple[Task, ...]
    env: Mapping[str, str]                       # added to the inherited environment
    cwd: str                                     # absolute
    project_root: str
    timeout: float                               # seconds for tasks and acceptance tests together
    timeout_reason: str                          # e.g. "timeout of 30s", "step group 'g' timeout"
    log_path: str
    output_path: str
    grace: float = 5.0
    max_log_bytes: int = DEFAULT_MAX_LOG_BYTES
    secrets: tuple[str, ...] = ()                # values masked as *** in the log
    cancel_dir: str = ""                         # local runs: the run's cancel flags live here
    resources: Mapping[str, float] = factory(dict)   # Dask worker resources


@record
class TestResult:
    command: str
    status: str                                  # "passed" | "failed" | "timed_out" | "cancelled" | "not_run"
    exit_code: int | None
    duration_s: float
    output_tail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"command": self.command, "status": self.status, "exit_code": self.exit_code,
                "duration_s": round(self.duration_s, 4)}


@record
class StepResult:
    """What a worker returns for one attempt. Workers never raise: every outcome is one of these."""

    step_id: str
    attempt: int
    status: StepStatus                           # succeeded | failed | timed_out | cancelled
    exit_code: int | None = None
    error: str | None = None
    started_at: float = 0.0                      # epoch seconds
    finished_at: float = 0.0
    outputs: Mapping[str, Any] = factory(dict)
    return_value: Any = None                     # python steps: what the callable returned
    acceptance_tests: tuple[TestResult, ...] = ()
    peak_rss_bytes: int | None = None
    cpu_time_s: float | None = None
    worker: str = ""
    log_bytes: int = 0

    def __init__(self, step_id: str, attempt: int, status: StepStatus, exit_code: int | None = None,
                 error: str | None = None, started_at: float = 0.0, finished_at: float = 0.0,
                 outputs: Mapping[str, Any] | None = None, return_value: Any = None,
                 acceptance_tests: tuple[TestResult, ...] = (), peak_rss_bytes: int | None = None,
                 cpu_time_s: float | None = None, worker: str = "", log_bytes: int = 0):
        # the fields as declared above, in one dict update (one result a step: the generic record
        # __init__ costs twice as much)
        self.__dict__.update(
            step_id=step_id, attempt=attempt, status=status, exit_code=exit_code, error=error,
            started_at=started_at, finished_at=finished_at, outputs={} if outputs is None else outputs,
            return_value=return_value, acceptance_tests=acceptance_tests, peak_rss_bytes=peak_rss_bytes,
            cpu_time_s=cpu_time_s, worker=worker, log_bytes=log_bytes)

    @property
    def duration_s(self) -> float:
        return max(0.0, self.finished_at - self.started_at)
