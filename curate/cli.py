"""`curate`: a thin command-line shell over curate's library API.

Exit codes: 0 success; 1 the ledger invariant failed (inputs != kept + rejected + quarantined);
2 bad config, bad input path or, with --strict, a malformed record.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from curate.confighelp import config_flag_callbacks
from curate.quiet import quiet_third_party

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Curate fine-tuning data: ingest, normalize, filter, dedup, audit.")
quiet_third_party()  # only messages a user cannot act on (curate/quiet.py says why each is harmless)


def _fail(message: str, code: int = 2) -> None:
    """Exit ``code`` with ``message`` as one line on stderr (a config error's lines joined)."""
    from curate.config import one_line

    typer.secho(one_line(message), fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _funnel_lines(summary: dict) -> list[str]:
    lines = [f"  {'stage':<26}{'in':>10}{'rejected':>10}{'out':>10}"]
    for s in summary["stages"]:
        lines.append(f"  {s['name']:<26}{s['in']:>10,}{s['rejected']:>10,}{s['out']:>10,}")
    return lines


def _config_model():
    from curate.config import CurateConfig

    return CurateConfig


_print_config_help, _print_config_schema = config_flag_callbacks(_config_model, "curate run CONFIG: every key of the YAML config")


@app.command()
def run(
    config: Path = typer.Argument(..., help="YAML config (`--help-config` lists every key)"),
    force: bool = typer.Option(False, "--force", help="re-run even if an identical finished run exists"),
    strict: bool = typer.Option(False, "--strict", help="stop at the first malformed record instead of quarantining it"),
    dry_run: bool = typer.Option(False, "--dry-run", help="validate, then run on a small sample without writing anything"),
    sample: int = typer.Option(200, help="records per input for --dry-run"),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help="progress bars (default: when a terminal)"),
    help_config: bool = typer.Option(False, "--help-config", is_eager=True, callback=_print_config_help,
                                     help="print every config key (nested, every stage's params) with type, default and description, and exit"),
    schema: bool = typer.Option(False, "--schema", is_eager=True, callback=_print_config_schema,
                                help="print the config's JSON Schema (for editors and validators) and exit"),
) -> None:
    """Run a curate pipeline: every input record ends kept, rejected (with a reason) or quarantined."""
    from curate.config import ConfigError, load_config
    from curate.executor import EngineUnavailableError
    from curate.pipeline import Pipeline, StrictModeError
    from curate.readers import InputError
    from curate.workspace import WorkspaceBusy, WorkspaceError

    try:
        cfg = load_config(config)
        pipeline = Pipeline(cfg, progress=progress, strict=strict or None)
    except (ConfigError, InputError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
        return
    try:
        if dry_run:
            from curate.workspace import Workspace

            with Workspace(":memory:") as ws:
                result = pipeline.run(force=True, limit_per_input=sample, write_outputs=False, workspace=ws)
                _print_dry_run(result.summary, ws, result.run_id)
        else:
            result = pipeline.run(force=force)
    except StrictModeError as exc:
        _fail(str(exc))
        return
    except WorkspaceError as exc:
        _fail(str(exc))
        return
    except EngineUnavailableError as exc:
        _fail(str(exc))
        return
    except WorkspaceBusy as exc:
        _fail(f"{exc}; nothing of this run was registered as done", code=1)
        return
    s = result.summary
    if result.skipped:
        typer.echo(f"run {result.run_id} is up to date (same config and inputs); --force to re-run")
    mark = "OK" if s["invariant_ok"] else "MISMATCH"
    typer.echo(f"inputs = kept + rejected + quarantined: {s['inputs']:,} = {s['kept']:,} + {s['rejected']:,} + {s['quarantined']:,}  [{mark}]")
    for line in _funnel_lines(s):
        typer.echo(line)
    if not dry_run:
        typer.echo(f"run {result.run_id}: {s['seconds']:.1f} s; output {result.output_dir}; workspace {result.workspace}")
        typer.echo(f"report: {result.output_dir / 'report.html'}")
    if not s["invariant_ok"]:
        raise typer.Exit(1)


def _print_dry_run(summary: dict, ws, run_id: str) -> None:
    typer.echo(f"config is valid; dry run on a sample: shapes {summary['shapes']}")
    if summary["quarantine_reasons"]:
        typer.echo(f"quarantined in the sample: {summary['quarantine_reasons']}")
    rows = ws.query(run_id, "SELECT source_file, source_line, shape, messages FROM records WHERE run_id = ? ORDER BY uid LIMIT 3", [run_id])
    for row in rows.to_dicts():
        typer.echo(f"--- {row['source_file']}:{row['source_line']} ({row['shape']})")
        for m in row["messages"]:
            typer.echo(f"[{m['role']}] {m['content'][:300]}")


@app.command()
def inspect(
    path: str = typer.Argument(..., help="a file, directory or glob"),
    n: int = typer.Option(3, "-n", help="normalized records to show"),
    shape: str = typer.Option("auto", help="force a shape"),
    mapping: str | None = typer.Option(None, help="column mapping for shape 'mapped', e.g. user=question,assistant=answer"),
    limit: int = typer.Option(10_000, help="records to read for the shape counts"),
    plugin: list[str] | None = typer.Option(None, "--plugin", help="a module or .py file registering your own shapes (repeatable)"),
) -> None:
    """Show the shapes detected in a file and a few records as curate normalizes them."""
    from curate.config import ConfigError, parse_config
    from curate.pipeline import Pipeline
    from curate.readers import InputError

    spec: dict = {"path": path, "shape": shape}
    if mapping:
        spec["mapping"] = dict(kv.split("=", 1) for kv in mapping.split(","))
    try:
        cfg = parse_config({"name": "inspect", "inputs": [spec], "tokenizer": None, "stages": [], "plugins": plugin or []}, Path.cwd(), "inspect")
        pipeline = Pipeline(cfg, progress=False)
    except (ConfigError, InputError, ValueError) as exc:
        _fail(str(exc))
        return
    shapes: dict[str, int] = {}
    shown, bad = [], []
    total = 0
    for frame, quarantine, _ in pipeline.ingest(limit_per_input=limit):
        total += frame.height + quarantine.height
        for s, c in frame["shape"].value_counts().iter_rows():
            shapes[s] = shapes.get(s, 0) + c
        shown += frame.head(n - len(shown)).to_dicts() if len(shown) < n else []
        bad += quarantine.head(5 - len(bad)).to_dicts() if len(bad) < 5 else []
    typer.echo(f"{path}: {total:,} records read (limit {limit:,}); shapes: {json.dumps(shapes)}")
    for rec in shown:
        kind = "" if rec.get("kind") in (None, "sft") else f" kind={rec['kind']}" + (f" label={rec['label']}" if rec.get("label") is not None else "")
        typer.echo(f"--- {rec['source_file']}:{rec['source_line']}  shape={rec['shape']}{kind} id={rec['id']} fixes={rec['fixes']}")
        if rec.get("tools"):
            names = [t["function"]["name"] for t in json.loads(rec["tools"])]
            typer.echo(f"tools: {', '.join(names)}")
        sides = [("", rec["messages"])] + ([("rejected ", rec["rejected"])] if rec.get("rejected") is not None else [])
        for prefix, turns in sides:
            for m in turns:
                content = m["content"] or ""
                role = m["role"] + (f" → {m['tool_call_id']}" if m.get("tool_call_id") else "")
                typer.echo(f"[{prefix}{role}] {content[:400]}{'…' if len(content) > 400 else ''}")
                for call in m.get("tool_calls") or []:
                    typer.echo(f"    call {call['id']}: {call['function']['name']}({call['function']['arguments'][:300]})")
        if rec["meta"] != "{}":
            typer.echo(f"meta: {rec['meta'][:200]}")
    for q in bad:
        where = f" field {q['field']!r}" if q["field"] else ""
        typer.echo(f"quarantined {q['source_file']}:{q['source_line']}{where}: {q['error']}")


@app.command()
def stages(
    name: str = typer.Argument(None, help="one stage: its parameters, with descriptions, and every labeled set it was measured on"),
    plugin: list[str] | None = typer.Option(None, "--plugin", help="a module or .py file registering your own stages (repeatable), listed too"),
    config: Path | None = typer.Option(None, "--config", help="a curate config: its `plugins` and the stages it names by module:Class are listed too"),
) -> None:
    """List the registered stages: parameters, reason codes and measured precision/recall (bench/verdicts.py)."""
    from curate.config import ConfigError, load_config
    from curate.confighelp import doc_summary, field_lines
    from curate.plugins import PluginError, load_plugins
    from curate.registry import RegistryError, origin_file
    from curate.stages import all_stages, measured, resolve_stage

    try:
        load_plugins(plugin or [], Path.cwd())
        if config is not None:
            load_config(config)
        chosen = dict([resolve_stage(name)]) if name is not None else all_stages()
    except (PluginError, ConfigError, RegistryError) as exc:
        _fail(str(exc))
        return
    for stage, cls in chosen.items():
        kind = "global" if cls.is_global else "per-record"
        if (source := origin_file(cls)) is not None:
            kind += f", from {source}"
        typer.echo(f"{stage} ({kind}): {doc_summary(cls)}")
        for field, info in cls.Params.model_fields.items():
            for line in field_lines(field, info, depth=2):
                typer.echo(line)
        if cls.reasons:
            typer.echo(f"    reasons: {', '.join(cls.reasons)}")
        rows = measured(stage)
        if name is not None:
            for m in rows:
                typer.echo(f"    measured on {m['set']} ({m['part']}): {_measured_line(m)}")
        elif rows and (line := _summary_line(rows)):
            typer.echo(f"    measured at these defaults, held-out labels: {line} (`curate stages {stage}` lists each set)")


def _measured_line(m: dict) -> str:
    """precision / recall / false-positive rate of one measured set, those that apply."""
    parts = [f"precision {m['precision']:.3f}" if m.get("precision") is not None else None,
             f"recall {m['recall']:.3f} of {m['n_pos']:,}" if m.get("recall") is not None else None,
             f"false positives {m['fp']:,} of {m['n_neg']:,} ({m['fp_rate']:.2%})" if m.get("fp_rate") is not None else None]
    return ", ".join(p for p in parts if p)


def _summary_line(rows: list[dict]) -> str | None:
    """The stage's measured claim in one line, over its held-out sets: the lowest recall among the sets it is
    meant to catch and the highest false-positive rate among the sets it must keep, each naming its set.
    Rows of scope ``context`` (reported, not claimed) are left out; None when nothing is left."""
    held = [m for m in rows if m["part"] == "holdout" and m.get("scope") != "context"]
    pos = [m for m in held if (m.get("scope") or "target") == "target" and m["n_pos"]]
    neg = [m for m in held if m.get("n_neg")]
    parts = []
    if pos:
        low = min(pos, key=lambda m: m["recall"])
        parts.append(f"recall >= {low['recall']:.3f} on {len(pos)} set{'s' if len(pos) > 1 else ''} (lowest: {low['set']})")
    if neg:
        high = max(neg, key=lambda m: m["fp_rate"])
        parts.append(f"false positives <= {high['fp_rate']:.2%} on {len(neg)} set{'s' if len(neg) > 1 else ''} "
                     f"(highest: {high['set']}, {high['fp']:,} of {high['n_neg']:,})")
    return "; ".join(parts) or None


def _is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves this machine alone: ``localhost`` or a loopback address
    (127.0.0.0/8, ``::1``)."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: whatever it resolves to, it is not known to be loopback
        return False


def _app_url(host: str, port: int) -> str:
    """The address to open for a server bound to ``host``: this machine's name for a wildcard bind, where
    no address would be right for every visitor; brackets around an IPv6 address."""
    import socket

    if host in ("0.0.0.0", "::", ""):  # noqa: S104
        host = socket.gethostname()
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}/"


MIN_TOKEN_CHARS = 16


@app.command("app")
def review_app(
    workspace: str = typer.Option("out/workspace", "--workspace", help="the workspace to review"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to bind; loopback by default (records may be private): any other needs --expose"),
    port: int = typer.Option(8501, "--port"),
    expose: bool = typer.Option(False, "--expose", help="allow a --host other than loopback; the app then asks for an access token"),
    token: str | None = typer.Option(None, "--token", envvar="FTW_APP_TOKEN", show_envvar=True,
                                        help=f"the access token (at least {MIN_TOKEN_CHARS} characters); with --expose and none given, "
                                             "one is generated and printed"),
) -> None:
    """Start the review app (Streamlit): runs, data browser, labeling, eval review.

    Binds loopback unless ``--expose`` is given with another ``--host``; then a warning goes to stderr
    and every visitor needs the token (``?token=`` in the URL, or typed into the page). The token reaches
    the server in its environment, not its command line."""
    import os
    import secrets
    import sys
    from pathlib import Path

    from curate.workspace import workspace_problem

    if not _is_loopback(host) and not expose:
        _fail(f"--host {host} is not a loopback address: it would serve the workspace's records to the network; "
              f"add --expose to do that (the app then asks for an access token)")
    token = token or None  # an empty FTW_APP_TOKEN is no token
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        _fail(f"the access token is too short: at least {MIN_TOKEN_CHARS} characters (or leave it out and --expose generates one)")
    problem = workspace_problem(workspace)
    if problem:
        _fail(problem)
    generated = expose and token is None
    if generated:
        token = secrets.token_urlsafe(24)
    env = {k: v for k, v in os.environ.items() if k != "FTW_APP_TOKEN"}
    if token:
        env["FTW_APP_TOKEN"] = token
    if expose:
        where = "every network interface of this machine" if host in ("0.0.0.0", "::", "") else host  # noqa: S104
        typer.secho(f"warning: serving the review app on {where}, port {port}: anyone who can reach it and has the token "
                    f"can read every record of {Path(workspace).resolve()} and add labels; the connection is plain HTTP",
                    fg=typer.colors.YELLOW, err=True)
        url = _app_url(host, port)
        typer.echo(f"open: {url}?token={token}" if generated else f"open: {url}?token=<your token>  (or type the token into the page)")
    main = Path(__file__).resolve().parents[1] / "app" / "main.py"
    cmd = [sys.executable, "-m", "app.serve", "run", str(main), "--server.address", host, "--server.port", str(port),
           "--server.headless", "true", "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal",
           "--", "--workspace", str(Path(workspace).resolve())]
    # the server replaces this process (so stopping `curate app` stops the server, no orphan; and the
    # command line holding a --token is gone from `ps`); app.serve imports the app package from the
    # repository root. The app is started by its path, never imported here: curate sits below it
    sys.stdout.flush()
    sys.stderr.flush()
    os.chdir(main.parents[1])
    os.execve(sys.executable, cmd, env)


workspace_app = typer.Typer(no_args_is_help=True, help="Workspace maintenance: convert a workspace of an earlier version.")
app.add_typer(workspace_app, name="workspace")


@workspace_app.command("upgrade")
def workspace_upgrade(
    old: Path = typer.Argument(..., help="a single-file DuckDB workspace of an earlier version (read, never changed)"),
    new: Path = typer.Argument(..., help="the workspace folder to create (must not exist, or be empty)"),
) -> None:
    """Copy every run, label, preference and cached embedding of an old single-file workspace into a new
    workspace folder."""
    from curate.workspace import WorkspaceError
    from curate.workspace.upgrade import upgrade

    try:
        counts = upgrade(old, new)
    except WorkspaceError as exc:
        _fail(str(exc))
        return
    typer.echo(f"{new}: " + ", ".join(f"{v:,} {k}" for k, v in counts.items()))


if __name__ == "__main__":
    app()
