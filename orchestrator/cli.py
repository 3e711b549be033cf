"""The command line: parse, call one core function, map the error root to an exit code.

`orchestrator run | validate | status | graph` (SPEC §2). Bad input of any kind raises an
`OrchestratorError` in the core; `main` prints its one-line message to stderr and exits with its code
(2, or 3 for a held lock), never a traceback. Progress goes to stderr; `--json` and plans to stdout.
"""
from __future__ import annotations

import gc
import json
import os
import sys
import time
from pathlib import Path

import click

from . import __version__, drawing, scopes
from .errors import OrchestratorError, UsageError
from .model import OnFailure, Workstream

EXAMPLES = {
    "run": "  orchestrator run --ws-id ws-example-02-parallel-execution\n"
           "  orchestrator run workstreams/my.json --max-workers 8 --fail-fast\n"
           "  orchestrator run --ws-id my-ws --resume          # continue the latest run",
    "validate": "  orchestrator validate workstreams/my.json\n  orchestrator validate --ws-id my-ws",
    "status": "  orchestrator status ws-example-02-parallel-execution\n"
              "  orchestrator status my-ws --json | jq .status\n"
              "  orchestrator status my-ws --watch 2\n  orchestrator status            # every workstream",
    "graph": "  orchestrator graph --ws-id my-ws                 # Mermaid to stdout\n"
             "  orchestrator graph --ws-id my-ws --format png -o graph.png",
}


def _help(name: str, text: str) -> str:
    return f"{text}\n\n\b\nExamples:\n{EXAMPLES[name]}"


def _project_root() -> Path:
    return Path.cwd().resolve()


def _load(file: str | None, ws_id: str | None, workstreams_dir: str | None, *,
          on_conflict: str = "error") -> Workstream:
    from .loader import load_by_id, load_workstream
    root = _project_root()
    if bool(file) == bool(ws_id):
        raise UsageError("give either a workstream FILE or --ws-id ID (one of them)")
    if ws_id:
        ws = load_by_id(ws_id, Path(workstreams_dir or "workstreams"), project_root=root,
                        on_conflict=on_conflict)
    else:
        ws = load_workstream(file, project_root=root, on_conflict=on_conflict)
    # the workstream lives as long as the process: keep the collector from rescanning it (with
    # 100 000 steps, full collections cost more than the scheduling itself)
    gc.freeze()
    return ws


def _worktrees(override: str | None) -> Path:
    from .store import worktrees_root
    return worktrees_root(_project_root(), override)


def workstream_source(f):
    """FILE | --ws-id ID [--workstreams-dir DIR], shared by run, validate and graph."""
    f = click.argument("file", required=False)(f)
    f = click.option("--ws-id", help="Load <workstreams-dir>/<ID>.json.")(f)
    f = click.option("--workstreams-dir", default=None, metavar="DIR",
                     help="Where --ws-id looks (default: ./workstreams).")(f)
    return f


class _Group(click.Group):
    """Maps the input-error root to its exit code and one line, for every subcommand."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except OrchestratorError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, message="%(prog)s %(version)s")  # not from metadata: 20 ms
def cli() -> None:
    """Run the steps of a workstream in parallel, in dependency order, and record what happened."""


def _positive_workers(ctx, param, value):
    if value is None:
        return None
    if value == "auto":
        return len(os.sched_getaffinity(0))
    try:
        n = int(value)
    except ValueError:
        raise UsageError(f"--max-workers: expected a whole number or 'auto', got {value!r}") from None
    if n < 1:
        raise UsageError("max-workers must be at least 1")
    return n


@cli.command(help=_help("run", "Run a workstream (FILE or --ws-id)."))
@workstream_source
@click.option("--max-workers", callback=_positive_workers, metavar="N|auto",
              help="Most steps running at once (overrides the file).")
@click.option("--sequential", is_flag=True, help="One step at a time (dependencies still respected).")
@click.option("--fail-fast", is_flag=True, help="Same as --on-failure fail_all.")
@click.option("--on-failure", type=click.Choice([m.value for m in OnFailure]),
              help="What a failed step does to the rest of the run.")
@click.option("--on-conflict", type=click.Choice(["error", "serialize"]), default="error",
              show_default=True, help="Steps whose file scopes overlap: refuse, or never run them together.")
@click.option("--dry-run", is_flag=True, help="Print the plan (order and waves); run nothing.")
@click.option("--resume", is_flag=False, flag_value="", default=None, metavar="[RUN_ID]",
              help="Continue a run (the latest without RUN_ID): succeeded steps are kept.")
@click.option("--force", is_flag=True, help="With --resume: start from scratch instead.")
@click.option("--grace", type=float, default=5.0, show_default=True, metavar="SECONDS",
              help="Time between SIGTERM and SIGKILL when steps are cancelled.")
@click.option("--executor", type=click.Choice(["process", "dask"]), default=None,
              help="Where steps run (default: the file's execution.executor).")
@click.option("--scheduler", metavar="ADDRESS", help="Dask scheduler address, e.g. tcp://host:8786.")
@click.option("--worktrees-dir", metavar="DIR", help="Where run directories go (default ./.worktrees).")
@click.option("-q", "--quiet", is_flag=True, help="Only the final summary line.")
@click.option("-v", "--verbose", is_flag=True, help="Also stream each step's output, prefixed [step-id].")
def run(file, ws_id, workstreams_dir, max_workers, sequential, fail_fast, on_failure, on_conflict,
        dry_run, resume, force, grace, executor, scheduler, worktrees_dir, quiet, verbose) -> None:
    if quiet and verbose:
        raise UsageError("-q and -v exclude each other")
    if grace < 0:
        raise UsageError("--grace must be at least 0")
    ws = _load(file, ws_id, workstreams_dir, on_conflict=on_conflict)
    if sequential:
        max_workers = 1
    policy = OnFailure.FAIL_ALL if fail_fast else (OnFailure(on_failure) if on_failure else None)
    chosen_executor = executor or ws.execution.executor
    pool_factory = None
    if chosen_executor == "dask":
        from .dask_pool import dask_pool_factory
        pool_factory = dask_pool_factory(scheduler or ws.execution.scheduler_address)
    if dry_run:
        gc.disable()  # a short-lived command that builds ~10 objects a step and frees them at exit
        click.echo(_plan_text(ws, max_workers, on_conflict, worktrees_dir))
        return
    from .console import make_reporter
    from .dispatcher import Dispatcher, RunOptions
    opts = RunOptions(project_root=_project_root(), worktrees=_worktrees(worktrees_dir),
                      max_workers=max_workers, on_failure=policy, on_conflict=on_conflict, grace=grace,
                      resume=resume, force=force, executor=chosen_executor,
                      scheduler_address=scheduler or ws.execution.scheduler_address)
    reporter = make_reporter(quiet=quiet, verbose=verbose, stream=sys.stderr)
    outcome = Dispatcher(ws, opts, pool_factory=pool_factory, reporter=reporter).run()
    sys.exit(outcome.exit_code)


def _plan_text(ws: Workstream, max_workers: int | None, on_conflict: str,
               worktrees_dir: str | None = None) -> str:
    from .plan import build_plan
    from .status_view import render_plan
    from .store import RunStore
    serialize = ([(c.step_a, c.step_b) for c in scopes.scope_conflicts(ws)]
                 if on_conflict == "serialize" else [])
    past = RunStore(_worktrees(worktrees_dir), ws.id).read_history()
    return render_plan(build_plan(ws, workers=max_workers or ws.execution.effective_workers,
                                  history=past, serialize=serialize))


@cli.command(help=_help("validate", "Check a workstream (FILE or --ws-id) without running it."))
@workstream_source
@click.option("--on-conflict", type=click.Choice(["error", "serialize"]), default="error",
              show_default=True, help="Whether overlapping file scopes are an error.")
def validate(file, ws_id, workstreams_dir, on_conflict) -> None:
    ws = _load(file, ws_id, workstreams_dir, on_conflict=on_conflict)
    edges = sum(len(s.depends_on) for s in ws.steps)
    click.echo(f"OK: {ws.source}: workstream {ws.id}, {len(ws.steps)} steps, {edges} dependencies")


@cli.command(help=_help("status", "Show the progress of a workstream's latest run (or every workstream)."))
@click.argument("ws_id", required=False)
@click.option("--run", "run_id", metavar="RUN_ID", help="A specific run instead of the latest.")
@click.option("--json", "as_json", is_flag=True, help="Print the state as JSON (stdout).")
@click.option("--watch", type=float, metavar="SECONDS", help="Redraw every SECONDS until the run ends.")
@click.option("--worktrees-dir", metavar="DIR", help="Where run directories are (default ./.worktrees).")
def status(ws_id, run_id, as_json, watch, worktrees_dir) -> None:
    from .status import overview, read_status, render_one
    root = _worktrees(worktrees_dir)
    if watch is not None and watch <= 0:
        raise UsageError("--watch must be a positive number of seconds")
    while True:
        if ws_id is None:
            text = overview(root, now=time.time())
            done = True
        else:
            state, stale = read_status(root, ws_id, run_id)
            if as_json:
                text = json.dumps(dict(state, status="stale") if stale else state, indent=2)
            else:
                text = render_one(state, stale)
            done = stale or state.get("status") != "running"
        if watch is not None and sys.stdout.isatty():
            click.clear()
        click.echo(text)
        if watch is None or done:
            return
        time.sleep(watch)  # the redraw period the user asked for


@cli.command(help=_help("graph", "Draw the dependency graph: Mermaid, Graphviz dot, or PNG."))
@workstream_source
@click.option("--format", "fmt", type=click.Choice(["mermaid", "dot", "png"]), default="mermaid",
              show_default=True)
@click.option("-o", "--output", metavar="FILE", help="Write here instead of stdout (required for png).")
def graph(file, ws_id, workstreams_dir, fmt, output) -> None:
    ws = _load(file, ws_id, workstreams_dir, on_conflict="serialize")
    if fmt == "mermaid":
        text = drawing.mermaid(ws)
    else:
        text = drawing.dot(ws)
    if fmt == "png":
        out = Path(output or "dependency_graph.png")
        import shutil
        import subprocess
        dot = shutil.which("dot")
        if dot is None:
            mmd = out.with_suffix(".mmd")
            mmd.write_text(drawing.mermaid(ws) + "\n")
            click.echo(f"Graphviz `dot` is not installed (apt-get install graphviz), so the graph "
                       f"was written as Mermaid to {mmd}", err=True)
            return
        proc = subprocess.run([dot, "-Tpng", "-o", str(out)], input=text.encode(), capture_output=True)
        if proc.returncode != 0:
            raise UsageError(f"dot failed: {proc.stderr.decode(errors='replace').strip()}")
        click.echo(f"wrote {out}", err=True)
        return
    if output:
        Path(output).write_text(text + "\n")
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry (also `python -m orchestrator` and the scripts/ wrappers): the process
    ends here. Tests drive `cli` instead."""
    try:
        cli.main(args=argv, prog_name="orchestrator")
    except SystemExit as e:
        _exit_now(e.code)
        raise


def _exit_now(code: object) -> None:
    """End the process without the interpreter's teardown, which frees every object and module one
    by one: ~10 ms after any command, more after a big workstream. By now every file this command
    wrote is closed (the store writes through raw descriptors). Skipped whenever the teardown could
    still matter: another thread alive (a kill thread in its grace period must finish), an exit
    handler registered (the live view restores the terminal), a Dask client (distributed cleans up
    at exit), or stdout/stderr that cannot be flushed (the normal exit reports it)."""
    import atexit
    import threading
    if (not isinstance(code, int) and code is not None) or threading.active_count() > 1 \
            or getattr(atexit, "_ncallbacks", lambda: 1)() or "distributed" in sys.modules:
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    os._exit(code or 0)
