"""The command line: parse, call one core function, map the error root to an exit code.

`orchestrator run | validate | status | graph` (SPEC §2). Bad input of any kind raises an
`OrchestratorError` in the core; `main` prints its one-line message to stderr and exits with its code
(2, or 3 for a held lock), never a traceback. Progress goes to stderr; `--json` and plans to stdout.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from . import __version__, commands, drawing
from .errors import OrchestratorError, UsageError

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
    return commands.max_workers_option(value)


@cli.command(help=_help("run", "Run a workstream (FILE or --ws-id)."))
@workstream_source
@click.option("--max-workers", callback=_positive_workers, metavar="N|auto",
              help="Most steps running at once (overrides the file).")
@click.option("--sequential", is_flag=True, help="One step at a time (dependencies still respected).")
@click.option("--fail-fast", is_flag=True, help="Same as --on-failure fail_all.")
@click.option("--on-failure", type=click.Choice(commands.ON_FAILURE_CHOICES),
              help="What a failed step does to the rest of the run.")
@click.option("--on-conflict", type=click.Choice(commands.ON_CONFLICT_CHOICES), default="error",
              show_default=True, help="Steps whose file scopes overlap: refuse, or never run them together.")
@click.option("--dry-run", is_flag=True, help="Print the plan (order and waves); run nothing.")
@click.option("--resume", is_flag=False, flag_value="", default=None, metavar="[RUN_ID]",
              help="Continue a run (the latest without RUN_ID): succeeded steps are kept.")
@click.option("--force", is_flag=True, help="With --resume: start from scratch instead.")
@click.option("--grace", type=float, default=5.0, show_default=True, metavar="SECONDS",
              help="Time between SIGTERM and SIGKILL when steps are cancelled.")
@click.option("--executor", type=click.Choice(commands.EXECUTOR_CHOICES), default=None,
              help="Where steps run (default: the file's execution.executor).")
@click.option("--scheduler", metavar="ADDRESS", help="Dask scheduler address, e.g. tcp://host:8786.")
@click.option("--worktrees-dir", metavar="DIR", help="Where run directories go (default ./.worktrees).")
@click.option("-q", "--quiet", is_flag=True, help="Only the final summary line.")
@click.option("-v", "--verbose", is_flag=True, help="Also stream each step's output, prefixed [step-id].")
def run(**options) -> None:
    sys.exit(commands.run(**options))


@cli.command(help=_help("validate", "Check a workstream (FILE or --ws-id) without running it."))
@workstream_source
@click.option("--on-conflict", type=click.Choice(commands.ON_CONFLICT_CHOICES), default="error",
              show_default=True, help="Whether overlapping file scopes are an error.")
def validate(**options) -> None:
    commands.validate(**options)


@cli.command(help=_help("status", "Show the progress of a workstream's latest run (or every workstream)."))
@click.argument("ws_id", required=False)
@click.option("--run", "run_id", metavar="RUN_ID", help="A specific run instead of the latest.")
@click.option("--json", "as_json", is_flag=True, help="Print the state as JSON (stdout).")
@click.option("--watch", type=float, metavar="SECONDS", help="Redraw every SECONDS until the run ends.")
@click.option("--worktrees-dir", metavar="DIR", help="Where run directories are (default ./.worktrees).")
def status(ws_id, run_id, as_json, watch, worktrees_dir) -> None:
    from .status import overview, read_status, render_one
    root = commands.worktrees(worktrees_dir)
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
    ws = commands.load(file, ws_id, workstreams_dir, on_conflict="serialize")
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
    """The whole command line through click (`entry.main` comes here for what it does not parse
    itself): the process ends here. Tests drive `cli` instead."""
    from .entry import exit_now, keep_to_exit
    keep_to_exit()
    try:
        cli.main(args=argv, prog_name="orchestrator")
    except SystemExit as e:
        exit_now(e.code)
        raise
