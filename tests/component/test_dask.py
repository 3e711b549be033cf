"""Component tests of the Dask executor on a real cluster on loopback.

One cluster serves the module, started the way an operator starts one: a `dask scheduler` process and
two `dask worker` processes (one thread each, so two steps running at once are on two workers; the
second offers `gpu=1`). The workers run with neither this repository on their path nor its working
directory, so the pool must make `orchestrator` importable itself. Runs go through the real
dispatcher with `DaskPool` in this process, or through a real `python -m orchestrator run --executor
dask --scheduler ADDRESS`. One test lets the pool start its own `LocalCluster`.

Nothing is timed: steps synchronise on files, waits are bounded polls, and the `marker` fixture proves
that no process a step started is left running anywhere after a timeout, a cancel or a lost worker.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest
from distributed import Client

from conftest import ignored_signals, steps_by_id, stray_processes, wait_until

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
PY = shlex.quote(sys.executable)


def sleeper(seconds: float, marker: str) -> str:
    """A shell task whose sleeping process carries the marker in its argv (so leaks are found)."""
    return f"{PY} -c 'import time; time.sleep({seconds})' {marker}"


# --- the cluster ------------------------------------------------------------------------------------

class Cluster:
    def __init__(self, address: str, client: Client, procs: list[subprocess.Popen]):
        self.address, self.client, self.procs = address, client, procs

    def workers(self) -> dict[str, dict]:
        return self.client.scheduler_info(n_workers=-1)["workers"]

    def gpu_worker(self) -> str:
        return next(a for a, w in self.workers().items() if w.get("resources", {}).get("gpu"))

    def ready(self) -> None:
        """Both workers up (a killed one is restarted by its nanny under a new address)."""
        self.client.wait_for_workers(2, timeout=60)
        assert wait_until(lambda: len(self.workers()) == 2, timeout=60)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """`dask scheduler` + two `dask worker` processes on 127.0.0.1, stopped after the module."""
    where = tmp_path_factory.mktemp("dask")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["DASK_DISTRIBUTED__LOGGING__DISTRIBUTED"] = "error"
    scheduler_file = where / "scheduler.json"
    procs: list[subprocess.Popen] = []

    def start(*argv: str, name: str) -> None:
        with open(where / f"{name}.log", "wb") as out:
            procs.append(subprocess.Popen([sys.executable, "-m", *argv], cwd=where, env=env,
                                          stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                          start_new_session=True))

    client = None
    try:
        start("distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
              "--no-dashboard", "--scheduler-file", str(scheduler_file), name="scheduler")
        assert wait_until(lambda: scheduler_file.exists() and scheduler_file.stat().st_size, 30)
        address = json.loads(scheduler_file.read_text())["address"]
        common = ("--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1")
        start("distributed.cli.dask_worker", address, *common, "--name", "plain", name="worker-plain")
        start("distributed.cli.dask_worker", address, *common, "--name", "gpu", "--resources", "gpu=1",
              name="worker-gpu")
        client = Client(address, timeout=30)
        c = Cluster(address, client, procs)
        c.ready()
        yield c
    finally:
        if client is not None:
            client.close()
        for p in procs:   # each in its own session: the group holds its nanny's worker process too
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


@pytest.fixture
def run_dask(project):
    """Run a workstream through the real dispatcher with a DaskPool (address None: own cluster)."""
    from orchestrator.dask_pool import dask_pool_factory
    from orchestrator.dispatcher import Dispatcher, RunOptions
    from orchestrator.loader import load_workstream

    def run(path, address, **options):
        ws = load_workstream(path, project_root=project)
        opts = RunOptions(project_root=project, worktrees=project / ".worktrees", executor="dask",
                          scheduler_address=address, **options)
        outcome = Dispatcher(ws, opts, pool_factory=dask_pool_factory(address)).run()
        summary = json.loads((Path(outcome.run_dir) / "results_summary.json").read_text())
        return outcome, summary
    return run


def run_cli(project: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("ORCHESTRATOR_WORKTREES_DIR", None)
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=project, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
                          start_new_session=True)


def dask_worker_of(step_pid: int) -> psutil.Process:
    """The Dask worker process running a step: the parent of the step's host process."""
    host = psutil.Process(step_pid).parent()
    return host.parent()


# --- what a run records ---------------------------------------------------------------------------

def test_the_example_workstream_runs_on_the_cluster_like_a_local_run(cluster, project):
    """The shipped example through the real CLI: statuses, logs and status view as a local run."""
    shutil.copytree(REPO / "examples" / "templates", project / "examples" / "templates")
    ws_id = "ws-example-02-parallel-execution"
    shutil.copy(REPO / "workstreams" / f"{ws_id}.json", project / "workstreams")
    done = run_cli(project, "run", "--ws-id", ws_id, "--executor", "dask", "--scheduler", cluster.address)

    assert done.returncode == 0, done.stderr
    latest = project / ".worktrees" / ws_id / "latest"
    summary = json.loads((latest / "results_summary.json").read_text())
    assert summary["status"] == "succeeded"
    assert summary["execution"]["executor"] == "dask"
    assert summary["execution"]["scheduler_address"] == cluster.address
    workers = set(cluster.workers())
    for s in summary["steps"]:
        assert s["status"] == "succeeded", s["error"]
        assert s["worker"] in workers
        assert [t["status"] for t in s["acceptance_tests"]] == ["passed"] * 3
        # as locally: a step that succeeded without printing anything leaves no log file
        assert not (latest / "steps" / f"{s['id']}.log").exists()
    assert (project / "examples" / "math_utils.py").exists()
    status = run_cli(project, "status", ws_id)
    assert status.returncode == 0 and "Status: succeeded" in status.stdout
    assert status.stdout.count("✓") == 3


def test_parallel_steps_land_on_two_workers_with_logs_and_outputs_back_home(cluster, project,
                                                                            make_workstream, run_dask):
    # each step waits until two of them have started: only two workers running at once can do that
    barrier = ("touch started/$ORCHESTRATOR_STEP_ID; "
               "until [ $(ls started | wc -l) -ge 2 ]; do sleep 0.02; done")
    steps = [{"id": f"s{i}", "timeout": 60,
              "tasks": [f"echo hello from s{i}", barrier, f"echo n={i} >> $ORCHESTRATOR_OUTPUT"]}
             for i in (1, 2, 3)]
    steps.append({"id": "use", "depends_on": ["s2"], "tasks": ["echo got ${steps.s2.outputs.n}"]})
    (project / "started").mkdir()
    outcome, summary = run_dask(make_workstream(steps, execution={"max_workers": 3}), cluster.address)

    assert outcome.exit_code == 0
    by = steps_by_id(summary)
    assert all(s["status"] == "succeeded" for s in by.values())
    assert len({by[f"s{i}"]["worker"] for i in (1, 2, 3)}) == 2
    assert all(s["worker"].startswith("tcp://127.0.0.1:") for s in by.values())
    assert by["s2"]["outputs"] == {"n": "2"}
    steps_dir = Path(outcome.run_dir) / "steps"
    for i in (1, 2, 3):
        log = steps_dir / f"s{i}.log"
        assert f"hello from s{i}" in log.read_text()
        assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert "got 2" in (steps_dir / "use.log").read_text()
    assert not list(steps_dir.glob("*.outputs"))   # outputs files stay on the worker's temp dir


def test_a_dag_with_a_failure_blocks_its_dependents_and_runs_the_rest(cluster, project,
                                                                        make_workstream, run_dask):
    (project / "pkg").mkdir()
    (project / "pkg" / "__init__.py").write_text("")
    (project / "pkg" / "calc.py").write_text(
        "def double(x):\n    print('doubling', x)\n    return {'y': 2 * x}\n")
    path = make_workstream([
        {"id": "py", "tool": "python", "callable": "pkg.calc:double", "args": [21]},
        {"id": "sh", "depends_on": ["py"], "tasks": ["echo y=${steps.py.outputs.y}"]},
        {"id": "bad", "tasks": ["echo about to fail", "exit 3"]},
        {"id": "child", "depends_on": ["bad"], "tasks": ["echo never"]},
        {"id": "grandchild", "depends_on": ["child", "sh"], "tasks": ["echo never"]},
        {"id": "free", "tasks": ["true"]},
    ], execution={"max_workers": 2})
    outcome, summary = run_dask(path, cluster.address)

    assert outcome.exit_code == 1 and summary["status"] == "failed"
    by = steps_by_id(summary)
    assert by["py"]["status"] == "succeeded" and by["py"]["outputs"] == {"y": 42}
    assert by["sh"]["status"] == "succeeded"
    assert "y=42" in (Path(outcome.run_dir) / "steps" / "sh.log").read_text()
    assert "doubling 21" in (Path(outcome.run_dir) / "steps" / "py.log").read_text()
    assert by["bad"]["status"] == "failed" and by["bad"]["exit_code"] == 3
    assert "exit code 3 in task 2" in by["bad"]["error"]
    assert "about to fail" in (Path(outcome.run_dir) / "steps" / "bad.log").read_text()
    assert by["child"]["status"] == "blocked" and by["child"]["blocked_by"] == ["bad"]
    assert by["grandchild"]["status"] == "blocked"
    assert by["free"]["status"] == "succeeded"
    assert summary["summary"]["blocked"] == 2 and summary["summary"]["failed"] == 1


def test_steps_with_resources_run_only_where_they_fit(cluster, project, make_workstream, run_dask):
    cluster.ready()
    path = make_workstream([
        {"id": "gpu-1", "tasks": ["echo on a gpu"], "resources": {"gpu": 1}},
        {"id": "gpu-2", "tasks": ["echo on a gpu"], "resources": {"gpu": 1}},
        {"id": "tpu", "tasks": ["echo never"], "resources": {"tpu": 1}},
    ], execution={"max_workers": 3})
    outcome, summary = run_dask(path, cluster.address)

    by = steps_by_id(summary)
    gpu = cluster.gpu_worker()
    assert by["gpu-1"]["status"] == by["gpu-2"]["status"] == "succeeded"
    assert by["gpu-1"]["worker"] == by["gpu-2"]["worker"] == gpu
    assert by["tpu"]["status"] == "failed" and "tpu=1" in by["tpu"]["error"]
    assert "no Dask worker offers" in (Path(outcome.run_dir) / "steps" / "tpu.log").read_text()


# --- ending steps on the workers ------------------------------------------------------------------

def test_a_timeout_kills_the_whole_tree_on_the_worker(cluster, project, make_workstream, run_dask, marker):
    bg = f"{PY} -c 'import sys, time; open(sys.argv[1], \"w\").close(); time.sleep(30)' bg.started {marker}"
    ss = f"{PY} -c 'import sys, time; open(sys.argv[1], \"w\").close(); time.sleep(31)' ss.started {marker}"
    wait_both = "while [ ! -f bg.started ] || [ ! -f ss.started ]; do sleep 0.02; done"
    path = make_workstream([{"id": "runaway", "timeout": 2,
                             "tasks": [f"{bg} & setsid {ss} & {wait_both}; wait"]}])
    outcome, summary = run_dask(path, cluster.address, grace=1.0)

    step = steps_by_id(summary)["runaway"]
    assert step["status"] == "timed_out", step["error"]
    assert "timeout of 2s" in step["error"]
    assert (project / "bg.started").exists() and (project / "ss.started").exists()
    assert wait_until(lambda: not stray_processes(marker), timeout=5), \
        [p.info["cmdline"] for p in stray_processes(marker)]


def test_fail_all_cancels_a_long_remote_step_and_kills_its_tree(cluster, project, make_workstream,
                                                                 run_dask, marker):
    path = make_workstream([
        {"id": "long", "tasks": [f"touch long.started; {sleeper(60, marker)}"]},
        {"id": "a", "tasks": ["while [ ! -f long.started ]; do sleep 0.02; done; exit 1"], "timeout": 30},
        {"id": "later", "tasks": ["echo never"]},
        {"id": "after-long", "tasks": ["echo never"], "depends_on": ["long"]},
    ], execution={"max_workers": 2, "on_failure": "fail_all"})
    outcome, summary = run_dask(path, cluster.address, grace=2.0)

    assert outcome.exit_code == 1
    by = steps_by_id(summary)
    assert by["a"]["status"] == "failed"
    assert by["long"]["status"] == "cancelled" and by["long"]["error"].startswith("cancelled")
    assert by["later"]["status"] == "skipped" and by["after-long"]["status"] == "skipped"
    assert wait_until(lambda: not stray_processes(marker), timeout=5)


def test_ctrl_c_reaches_the_running_remote_steps(cluster, project, make_workstream, marker):
    make_workstream([
        {"id": "one", "tasks": [f"touch one.started; {sleeper(60, marker)}"]},
        {"id": "two", "tasks": [f"touch two.started; {sleeper(61, marker)}"]},
        {"id": "after", "tasks": ["echo never"], "depends_on": ["one"]},
    ], execution={"max_workers": 2})
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "run", "--ws-id", "ws-test",
                             "--executor", "dask", "--scheduler", cluster.address, "--grace", "2"],
                            cwd=project, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert wait_until(lambda: (project / "one.started").exists() and (project / "two.started").exists(),
                          timeout=60)
        os.killpg(proc.pid, signal.SIGINT)   # what a terminal's Ctrl-C does
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    summary = json.loads((project / ".worktrees" / "ws-test" / "latest" / "results_summary.json").read_text())
    by = steps_by_id(summary)
    assert summary["status"] == "interrupted"
    assert by["one"]["status"] == by["two"]["status"] == "cancelled"
    assert by["after"]["status"] == "pending"
    assert wait_until(lambda: not stray_processes(marker), timeout=5)


# --- lost workers -----------------------------------------------------------------------------------

def run_killing_the_victims_worker(project, run):
    """Run, and meanwhile kill the Dask worker whose step wrote its pid to victim.pid."""
    def kill_its_worker():
        pid_file = project / "victim.pid"
        assert wait_until(pid_file.exists, timeout=60)
        dask_worker_of(int(pid_file.read_text())).kill()

    killer = threading.Thread(target=kill_its_worker)
    killer.start()
    try:
        return run()
    finally:
        killer.join()


def test_a_worker_killed_mid_step_fails_the_attempt_and_the_retry_runs(cluster, project, make_workstream,
                                                                        run_dask, marker):
    """`dask scheduler` allows a task 3 failures by default and would run it again silently; the step's
    own `retries` decide instead: attempt 1 fails "worker process died", attempt 2 runs."""
    cluster.ready()
    victim = (f"if [ -e victim.pid ]; then echo second attempt; "
              f"else echo $$ > victim.pid.tmp && mv victim.pid.tmp victim.pid; exec {sleeper(60, marker)}; fi")
    path = make_workstream([
        {"id": "victim", "tasks": [victim], "retries": 1, "retry_delay": 0.1},
    ], execution={"max_workers": 2})

    outcome, summary = run_killing_the_victims_worker(project, lambda: run_dask(path, cluster.address,
                                                                                grace=1.0))

    step = steps_by_id(summary)["victim"]
    assert step["status"] == "succeeded" and step["attempts"] == 2
    lifecycle = (project / ".worktrees" / "ws-test" / "orchestrator.log").read_text()
    assert ("STEP RETRY victim attempt=1 failed: worker process died (its Dask worker was lost while "
            "running it)") in lifecycle
    log = (Path(outcome.run_dir) / "steps" / "victim.log").read_text()
    assert "worker process died" in log and "second attempt" in log
    assert wait_until(lambda: not stray_processes(marker), timeout=5)
    cluster.ready()


def test_an_own_local_cluster_runs_steps_and_fails_the_step_of_a_killed_worker(project, make_workstream,
                                                                                run_dask, marker):
    """Without an address the pool starts a LocalCluster (a task whose worker dies is not re-run)."""
    path = make_workstream([
        {"id": "victim", "tasks": [f"echo $$ > victim.pid.tmp && mv victim.pid.tmp victim.pid; "
                                   f"exec {sleeper(60, marker)}"]},
        {"id": "fine", "tasks": ["echo fine", "cat /proc/self/status > status.out"]},
        {"id": "after", "tasks": ["echo after"], "depends_on": ["fine"]},
    ], execution={"max_workers": 2})

    outcome, summary = run_killing_the_victims_worker(project, lambda: run_dask(path, None, grace=1.0))
    # the cluster's workers ignore Ctrl-C (the dispatcher decides what it means); their steps do not
    status = (project / "status.out").read_text()
    assert not ignored_signals(status) & {signal.SIGINT, signal.SIGPIPE}, status

    by = steps_by_id(summary)
    assert by["fine"]["status"] == by["after"]["status"] == "succeeded"
    assert by["fine"]["worker"].startswith("tcp://127.0.0.1:")
    assert by["victim"]["status"] == "failed"
    assert by["victim"]["error"].startswith("worker process died"), by["victim"]["error"]
    assert "worker process died" in (Path(outcome.run_dir) / "steps" / "victim.log").read_text()
    assert wait_until(lambda: not stray_processes(marker), timeout=5)
    # the cluster went with the run: no worker process of ours is left
    assert wait_until(lambda: not spawned_workers(), timeout=15)


def spawned_workers() -> list[int]:
    found = []
    for child in psutil.Process().children():   # a LocalCluster's workers are our children
        try:
            if "spawn_main" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child.pid)
        except psutil.Error:
            continue
    return found


def test_the_remote_runner_never_raises():
    from orchestrator.dask_worker import run_remote
    result, log = run_remote(b"not a pickled spec", {"all": "a", "now": "n", "step": "s-", "started": ""})
    assert result.status.value == "failed"
    assert result.error.startswith("internal error on the Dask worker: UnpicklingError")
    assert log == b""
