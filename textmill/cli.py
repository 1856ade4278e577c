"""The `textmill` command: demo, run, ui, inspect, status, gc, quality.

`demo` and `run` materialize assets through Dagster (so every run has lineage and shows
up in `textmill ui`); `inspect` reads dataset versions directly.
"""

from __future__ import annotations

import importlib.resources
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from textmill.config import RecipeError, resolve_recipe

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="textmill: raw web crawls to a language-model pre-training mix, orchestrated by Dagster.",
)
console = Console()

SAMPLE_CRAWL = "CC-MAIN-SAMPLE"
RecipeOption = Annotated[Optional[Path], typer.Option("--recipe", "-r", help="recipe YAML (default: recipes/default.yaml)")]
# Dagster records the `textmill` logger's records (stage started/finished, timings) in each run's event log
DAGSTER_PYTHON_LOGS = "python_logs:\n  managed_python_loggers: [textmill]\n  python_log_level: INFO\n"
RootOption = Annotated[Optional[str], typer.Option("--root", help="storage root override: a folder or s3://bucket/prefix")]


def _name(value: str | None, *, field: str) -> str | None:
    """A crawl/stage/version name from the command line, checked before it becomes a path (exit 2 if unsafe)."""
    from rich.markup import escape

    from textmill.names import InvalidNameError, check_name

    if value is None:
        return None
    try:
        return check_name(value, field=field)
    except InvalidNameError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None


@app.callback()
def _logging(log_json: Annotated[bool, typer.Option(
        "--log-json", envvar="TEXTMILL_LOG_JSON", help="log one JSON object per line (stage timings and counts as keys)")
        ] = False) -> None:
    from textmill.logs import configure_logging

    configure_logging(json=log_json, level=logging.INFO if log_json else logging.WARNING)


def _configure(recipe_path: Path | None, root: str | None):
    """Validate the recipe before any work and export the settings the Dagster code location reads."""
    try:
        recipe = resolve_recipe(recipe_path)
    except RecipeError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if recipe_path:
        os.environ["TEXTMILL_RECIPE"] = str(Path(recipe_path).resolve())
    if root:
        recipe = recipe.with_root(root)
        os.environ["TEXTMILL_ROOT"] = root
    elif "://" not in recipe.storage.root:
        # pin the root to an absolute folder so Dagster processes agree with this one
        os.environ["TEXTMILL_ROOT"] = str(Path(recipe.storage.root).resolve())
        recipe = recipe.with_root(os.environ["TEXTMILL_ROOT"])
    dagster_home = Path(os.environ.get("DAGSTER_HOME") or ".textmill/dagster").resolve()
    dagster_home.mkdir(parents=True, exist_ok=True)
    instance_config = dagster_home / "dagster.yaml"
    if not instance_config.exists():  # SQLite storage under DAGSTER_HOME; no telemetry leaves the machine
        instance_config.write_text("telemetry:\n  enabled: false\n")
    if "python_logs:" not in instance_config.read_text():  # textmill's log records in Dagster's run logs
        with instance_config.open("a") as handle:
            handle.write(DAGSTER_PYTHON_LOGS)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    return recipe


class _ProgressHandler(logging.Handler):
    """Renders the core's progress log records (extra={"progress": (stage, done, total)}) as bars."""

    def __init__(self, progress: Progress) -> None:
        super().__init__(logging.INFO)
        self.progress = progress
        self.tasks: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        info = getattr(record, "progress", None)
        if not info:
            return
        stage, done, total = info
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total)
        self.progress.update(self.tasks[stage], completed=done, total=total)


def install_sample(store, crawl: str = SAMPLE_CRAWL) -> int:
    """Copy the bundled real crawl sample into landing/{crawl}/ (once); returns files copied."""
    sample = importlib.resources.files("textmill") / "sample"
    copied = 0
    for folder in ("warc", "jsonl"):
        for item in (sample / folder).iterdir():
            target = store.path("landing", crawl, folder, item.name)
            if not store.exists(target):
                store.write_bytes(target, item.read_bytes())
                copied += 1
    return copied


def _materialize(crawl: str, recipe) -> None:
    from dagster import DagsterInstance, materialize

    from assets.definitions import ALL_ASSETS
    from checks.gx_reports import CRAWL_GX_REPORT_CHECKS
    from assets.partitions import crawls_partitions
    from assets.resources import resource_from_env

    instance = DagsterInstance.get()
    if crawl not in instance.get_dynamic_partitions(crawls_partitions.name):
        instance.add_dynamic_partitions(crawls_partitions.name, [crawl])
    core_logger = logging.getLogger("textmill")
    core_logger.setLevel(logging.INFO)
    with Progress(TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        handler = _ProgressHandler(progress)
        core_logger.addHandler(handler)
        try:
            result = materialize(ALL_ASSETS + CRAWL_GX_REPORT_CHECKS, partition_key=crawl, instance=instance,
                                 resources={"textmill": resource_from_env()}, raise_on_error=False,
                                 run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}})
        finally:
            core_logger.removeHandler(handler)
    _summary(result, crawl, recipe)
    if not result.success:
        console.print("[red]materialization failed[/red]; see the run in `textmill ui`")
        raise typer.Exit(1)
    _materialize_mixes(recipe, instance)


def _materialize_mixes(recipe, instance) -> None:
    """Every mix of the recipe, over every crawl materialized so far."""
    from dagster import materialize

    from assets.definitions import MIX_ASSETS
    from checks.gx_reports import MIX_GX_REPORT_CHECKS
    from assets.partitions import mixes_partitions
    from assets.resources import resource_from_env

    names = [mix.name for mix in recipe.mixed]
    known = set(instance.get_dynamic_partitions(mixes_partitions.name))
    if set(names) - known:
        instance.add_dynamic_partitions(mixes_partitions.name, sorted(set(names) - known))
    table = Table(title="textmill: training mixes")
    for column in ("mix", "version", "documents", "tokens", "checks"):
        table.add_column(column, overflow="fold")
    cards, failed = [], False
    for name in names:
        result = materialize(MIX_ASSETS + MIX_GX_REPORT_CHECKS, partition_key=name, instance=instance,
                             resources={"textmill": resource_from_env()}, raise_on_error=False,
                             run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}})
        evaluations = list(result.get_asset_check_evaluations())
        bad = [e.check_name for e in evaluations if not e.passed]
        verdict = f"{len(evaluations) - len(bad)}/{len(evaluations)} passed" + (
            f" [red](failed: {', '.join(bad)})[/red]" if bad else "")
        events = result.get_asset_materialization_events()
        if events:
            meta = {k: v.value for k, v in events[0].step_materialization_data.materialization.metadata.items()}
            table.add_row(name, str(meta.get("version")), str(meta.get("dagster/row_count")), f"{meta.get('tokens'):,}",
                          verdict)
            cards.append((name, meta.get("data_card_path")))
        else:
            table.add_row(name, "-", "-", "-", "[red]failed[/red]")
        failed = failed or not result.success
    console.print(table)
    for name, path in cards:
        console.print(f"  data card of {name}: {path} (and report.html beside it)", soft_wrap=True)
    if failed:
        console.print("[red]a mix failed[/red]; see the run in `textmill ui`")
        raise typer.Exit(1)


def _summary(result, crawl: str, recipe) -> None:
    table = Table(title=f"textmill: crawl {crawl}")
    for column in ("asset", "version", "documents", "set aside", "checks"):
        table.add_column(column, overflow="fold")
    checks: dict[str, list] = {}
    for evaluation in result.get_asset_check_evaluations():
        checks.setdefault(evaluation.asset_key.to_user_string(), []).append(evaluation)
    paths = []
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        key = materialization.asset_key.to_user_string()
        meta = {k: v.value for k, v in materialization.metadata.items()}
        evaluations = checks.get(key, [])
        passed = sum(1 for e in evaluations if e.passed)
        failed = [e.check_name for e in evaluations if not e.passed]
        verdict = f"{passed}/{len(evaluations)} passed" + (f" [red](failed: {', '.join(failed)})[/red]" if failed else "")
        removed = meta.get("documents_in", 0) - meta.get("dagster/row_count", 0)
        set_aside = {"raw": f"{meta['quarantined']} quarantined",
                     "filtered": f"{removed} rejected ({meta.get('recyclable', 0)} recyclable)",
                     "rewritten": f"{meta.get('selected', 0)} selected, {meta.get('dropped', 0)} dropped",
                     }.get(key, f"{removed} removed")
        table.add_row(key, str(meta.get("version")), str(meta.get("dagster/row_count")), set_aside, verdict)
        paths.append((key, meta.get("path")))
    console.print(table)
    for key, path in paths:
        console.print(f"  {key:>9}: {path}", soft_wrap=True)
    for evaluation in result.get_asset_check_evaluations():  # Great Expectations Data Docs per version
        if "data_docs_path" in evaluation.metadata:
            console.print(f"  {evaluation.asset_key.to_user_string():>9} GX report: "
                          f"{evaluation.metadata['data_docs_path'].value}", soft_wrap=True)
    console.print(f"Dagster runs are recorded under [bold]{os.environ['DAGSTER_HOME']}[/bold]; "
                  "look at them with [bold]textmill ui[/bold].")
    console.print(f"Inspect documents with [bold]textmill inspect --crawl {crawl} --stage filtered[/bold]; "
                  f"why documents were rejected: [bold]textmill inspect --crawl {crawl} --stage filtered --rejected "
                  f"--signals[/bold].")


@app.command()
def demo(recipe: RecipeOption = None, root: RootOption = None, crawl: str = SAMPLE_CRAWL) -> None:
    """Materialize every asset for the bundled real crawl sample through Dagster."""
    from textmill.storage import Store

    _name(crawl, field="--crawl")
    settings = _configure(recipe, root)
    store = Store(settings.storage.root, storage_options=settings.storage.storage_options)
    copied = install_sample(store, crawl)
    console.print(f"sample crawl [bold]{crawl}[/bold] in {store.uri(store.landing_dir(crawl))} "
                  f"({copied} files copied)")
    _materialize(crawl, settings)


@app.command()
def run(crawl: Annotated[str, typer.Argument(help="crawl folder under landing/")], recipe: RecipeOption = None,
        root: RootOption = None) -> None:
    """Materialize every asset of one crawl partition through Dagster."""
    from textmill import stages
    from textmill.storage import Store

    _name(crawl, field="crawl")
    settings = _configure(recipe, root)
    store = Store(settings.storage.root, storage_options=settings.storage.storage_options)
    if crawl not in stages.crawls(store):
        console.print(f"[red]error:[/red] no folder {store.uri(store.landing_dir(crawl))}")
        raise typer.Exit(2)
    _materialize(crawl, settings)


@app.command()
def ui(recipe: RecipeOption = None, root: RootOption = None, port: int = 3000,
       host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
       daemon: Annotated[bool, typer.Option(help="also run the Dagster daemon (schedules, sensors, backfills)")] = True,
       ) -> None:
    """Start the Dagster web UI on this machine over textmill's definitions (and the daemon that runs backfills)."""
    _configure(recipe, root)
    dagster_home = Path(os.environ["DAGSTER_HOME"])
    # the UI's first-visit newsletter dialog would hide the asset graph; this machine may have no network
    (dagster_home / ".nux").mkdir(exist_ok=True)
    (dagster_home / ".nux" / "nux.yaml").write_text("seen: 1\n")
    bin_dir = str(Path(sys.executable).parent)
    webserver = shutil.which("dagster-webserver", path=bin_dir) or "dagster-webserver"
    command = [webserver, "-h", host, "-p", str(port), "-m", "assets.definitions"]
    background = None
    if daemon:  # without it a backfill launched from the UI would wait in "requested" forever
        daemon_bin = shutil.which("dagster-daemon", path=bin_dir) or "dagster-daemon"
        background = subprocess.Popen([daemon_bin, "run", "-m", "assets.definitions"])
    console.print(f"Dagster UI on http://{host}:{port} (DAGSTER_HOME={dagster_home})"
                  + (", with the daemon" if background else ""))
    try:
        code = subprocess.call(command)
    finally:
        if background is not None:
            background.terminate()
            try:
                background.wait(timeout=30)
            except subprocess.TimeoutExpired:
                background.kill()
    raise typer.Exit(code)


@app.command()
def inspect(
    crawl: Annotated[Optional[str], typer.Option(help="crawl partition (default: all)")] = None,
    stage: str = "raw",
    version: Annotated[Optional[str], typer.Option(help="version (default: the latest)")] = None,
    lang: Annotated[Optional[str], typer.Option(help="only this language code")] = None,
    search: Annotated[Optional[str], typer.Option("--search", "-s", help="only documents whose text contains this")] = None,
    doc_id: Annotated[Optional[str], typer.Option("--id", help="only documents whose id starts with this")] = None,
    rejected: Annotated[bool, typer.Option("--rejected", help="filtered: rejected documents instead of kept ones; "
                                           "deduped: removed duplicates")] = False,
    reason: Annotated[Optional[str], typer.Option(help="filtered: only rejects whose reason starts with this "
                                                  "(e.g. gopher_quality)")] = None,
    signals: Annotated[bool, typer.Option("--signals", help="filtered: print every signal of each document")] = False,
    limit: int = 5,
    chars: Annotated[int, typer.Option(help="characters of text to show")] = 300,
    recipe: RecipeOption = None,
    root: RootOption = None,
) -> None:
    """Show documents of a dataset version, filtered by crawl, language, text or id; why a document was rejected."""
    import polars as pl

    from textmill.storage import Store

    _name(crawl, field="--crawl")
    _name(stage, field="--stage")
    _name(version, field="--version")
    settings = _configure(recipe, root)
    store = Store(settings.storage.root, storage_options=settings.storage.storage_options)
    partitions = [crawl] if crawl else store.partitions(stage)
    manifests = []
    for partition in partitions:
        manifest = store.manifest(stage, partition, version) if version else store.latest(stage, partition)
        if manifest is not None:
            manifests.append(manifest)
    if not manifests:
        console.print(f"[red]no {stage} version found[/red] under {store.uri(store.path('datasets', stage))}")
        raise typer.Exit(1)
    extra = {"filtered": "rejected", "deduped": "removed"}.get(stage)
    if (rejected or reason) and extra is None:
        console.print(f"[red]error:[/red] --rejected/--reason apply to filtered and deduped, not {stage}")
        raise typer.Exit(2)
    scans = [store.scan_extra(m, extra) if rejected or reason else store.scan(m) for m in manifests]
    scans = [scan for scan in scans if scan is not None]
    if not scans:
        console.print("0 documents match")
        return
    frame = pl.concat(scans, how="diagonal_relaxed")
    names = frame.collect_schema().names()
    if lang:
        frame = frame.filter(pl.col("lang") == lang)
    if search:
        frame = frame.filter(pl.col("text").str.contains(search, literal=True))
    if doc_id:
        frame = frame.filter(pl.col("id").str.starts_with(doc_id))
    if reason:
        frame = frame.filter(pl.col("reject_reason").str.starts_with(reason))
    total = frame.select(pl.len()).collect().item()
    shown = frame.head(limit).collect()
    for manifest in manifests:
        console.print(f"{stage}/{manifest.partition} version [bold]{manifest.version}[/bold]: {manifest.rows} documents")
    console.print(f"{total} documents match; showing {shown.height}")
    signal_columns = [c for m in manifests[:1] for c in m.statistics.get("signal_columns", [])]
    for row in shown.iter_rows(named=True):
        head = f"{row['id'][:16]}  {row.get('lang')} ({row.get('lang_score') or 0:.2f})  {row.get('n_chars')} chars"
        console.rule(head)
        console.print(f"[dim]{row['url']}[/dim]")
        if row.get("reject_reason"):
            recycle = "recyclable" if row.get("recyclable") else "not recyclable"
            console.print(f"[yellow]rejected by {row['reject_reason']}[/yellow] ({recycle})")
        if row.get("kind"):
            console.print(f"[yellow]removed as {row['kind']} duplicate of {row.get('dup_cluster')}[/yellow]")
        if signals and signal_columns:
            table = Table(show_header=False, box=None)
            for name in signal_columns:
                if name in names:
                    value = row.get(name)
                    table.add_row(name, f"{value:.4g}" if isinstance(value, float) else str(value))
            console.print(table)
        text = row.get("text") or ""
        if text:
            console.print(text[:chars] + ("…" if len(text) > chars else ""), markup=False, highlight=False)


CHAIN = (("raw", None), ("deduped", "raw"), ("filtered", "deduped"), ("rewritten", "filtered"))


def version_status(store) -> list[dict]:
    """Per crawl and stage: the latest version, how many exist, and whether it is stale (built
    from an upstream version that is no longer the upstream's latest, or upstream is stale)."""
    rows = []
    crawls = sorted(set().union(*(store.partitions(stage) for stage, _ in CHAIN)))
    for crawl in crawls:
        latest: dict[str, object] = {}
        stale: dict[str, bool] = {}
        for stage, upstream in CHAIN:
            versions = store.versions(stage, crawl)
            manifest = versions[-1] if versions else None
            latest[stage] = manifest
            if manifest is None:
                rows.append({"crawl": crawl, "stage": stage, "version": None, "versions": 0, "stale": None,
                             "why": "not built"})
                continue
            why = ""
            if upstream is not None:
                source = next((i for i in manifest.inputs if i.get("stage") == upstream), None)
                up = latest.get(upstream)
                if up is None:
                    why = f"{upstream} not built"
                elif source is None or source.get("version") != up.version:
                    why = f"built from {upstream} {source.get('version') if source else '?'}, latest is {up.version}"
                elif stale.get(upstream):
                    why = f"{upstream} is stale"
            stale[stage] = bool(why)
            rows.append({"crawl": crawl, "stage": stage, "version": manifest.version, "versions": len(versions),
                         "stale": bool(why), "why": why, "documents": manifest.rows})
    return rows


@app.command()
def status(recipe: RecipeOption = None, root: RootOption = None) -> None:
    """Per crawl: which dataset versions exist, and which are stale against their upstream."""
    from textmill.storage import Store

    settings = _configure(recipe, root)
    store = Store(settings.storage.root, storage_options=settings.storage.storage_options)
    rows = version_status(store)
    if not rows:
        console.print(f"no dataset versions under {store.uri(store.path('datasets'))}")
        return
    table = Table(title=f"textmill status: {store.uri(store.path('datasets'))}")
    for column in ("crawl", "stage", "latest version", "versions", "documents", "state"):
        table.add_column(column, overflow="fold")
    for row in rows:
        state = ("[dim]not built[/dim]" if row["version"] is None else
                 f"[yellow]stale[/yellow]: {row['why']}" if row["stale"] else "[green]current[/green]")
        table.add_row(row["crawl"], row["stage"], row["version"] or "-", str(row["versions"]),
                      str(row.get("documents", "-")), state)
    console.print(table)
    for mix in store.partitions("mixed"):
        manifest = store.latest("mixed", mix)
        if manifest is not None:
            console.print(f"mix {mix}: version {manifest.version}, {manifest.statistics.get('tokens', 0):,} tokens")


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:,} {unit}" if unit == "B" else f"{count:,.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    return str(count)


def _age(age) -> str:
    seconds = age.total_seconds()
    return (f"{seconds / 86400:.1f} d" if seconds >= 2 * 86400 else f"{seconds / 3600:.1f} h" if seconds >= 3600
            else f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s")


@app.command()
def gc(
    recipe: RecipeOption = None,
    root: RootOption = None,
    older_than: Annotated[str, typer.Option(
        "--older-than", help="grace period: only leftovers untouched for this long (24h, 6h, 30m, 2d)")] = "24h",
    apply: Annotated[bool, typer.Option("--apply", help="delete them (default: a dry run that only lists)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the list as JSON lines")] = False,
) -> None:
    """Remove what killed runs left behind: unfinished version folders, their quarantine, work
    folders, incomplete dedup index entries and temp files. A dry run unless --apply."""
    import json

    from textmill.gc import collect_garbage, parse_duration
    from textmill.storage import Store

    try:
        grace = parse_duration(older_than)
    except ValueError as exc:
        console.print(f"[red]error:[/red] --older-than: {exc}")
        raise typer.Exit(2) from None
    settings = _configure(recipe, root)
    store = Store(settings.storage.root, storage_options=settings.storage.storage_options)
    report = collect_garbage(store, older_than=grace, apply=apply)
    if as_json:
        for item in report.found:
            print(json.dumps(item.as_dict(store) | {"deleted": item in report.deleted}))
    elif report.found:
        table = Table(title=f"textmill gc: {store.uri(store.base)} (older than {older_than})")
        for column in ("kind", "path", "files", "bytes", "age"):
            table.add_column(column, overflow="fold")
        for item in report.found:
            table.add_row(item.kind, store.uri(item.path), str(item.files), _size(item.bytes), _age(item.age))
        console.print(table)
    total = f"{len(report.found)} leftover(s), {_size(report.bytes_found)}"
    if not apply:
        console.print(f"dry run: {total} would be deleted; nothing was deleted (--apply deletes them)")
    else:
        console.print(f"deleted {len(report.deleted)} of {total}"
                      + (f"; {len(report.skipped)} changed since found and were left alone" if report.skipped else ""))


quality_app = typer.Typer(no_args_is_help=True, help="fastText quality classifier: train it, or distil it from LLM grades.")
app.add_typer(quality_app, name="quality")


def _print_train_report(report) -> None:
    table = Table(title=f"quality classifier {report.model_path}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name in ("n_train", "n_heldout", "accuracy", "precision", "recall", "f1", "seconds"):
        value = getattr(report, name)
        table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
    table.add_row("labels", ", ".join(f"{k}: {v}" for k, v in report.labels.items()))
    table.add_row("skipped", ", ".join(f"{k}: {v}" for k, v in report.skipped.items() if v) or "none")
    console.print(table)


@quality_app.command("train")
def quality_train(
    inputs: Annotated[list[Path], typer.Argument(help="labelled JSONL files (.jsonl or .jsonl.gz)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="model file to write")],
    text_field: str = "text",
    label_field: str = "label",
    positive_label: Annotated[str, typer.Option(help="the label of high-quality text")] = "hq",
    epochs: int = 20,
    seed: int = 0,
) -> None:
    """Train a fastText quality classifier from labelled JSONL; set filtered.quality_model.model_path to use it."""
    from textmill.filters.quality_model import QualityModelError, train_quality_classifier

    try:
        report = train_quality_classifier(train_jsonl=inputs, output=output, text_field=text_field,
                                          label_field=label_field, positive_label=positive_label, epochs=epochs,
                                          seed=seed)
    except (QualityModelError, OSError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    _print_train_report(report)


@quality_app.command("distill")
def quality_distill(
    output: Annotated[Path, typer.Option("--output", "-o", help="model file to write")],
    crawl: Annotated[str, typer.Option(help="crawl whose documents are graded")],
    stage: Annotated[str, typer.Option(help="dataset version to sample from")] = "deduped",
    sample: Annotated[int, typer.Option(help="documents graded by the LLM")] = 500,
    base_url: Annotated[Optional[str], typer.Option(help="OpenAI-compatible API root, e.g. http://127.0.0.1:8080/v1")] = None,
    model: Annotated[str, typer.Option(help="model name sent to the endpoint")] = "default",
    gguf: Annotated[Optional[Path], typer.Option(help="or: a GGUF file run in-process by llama-cpp-python")] = None,
    min_grade: Annotated[int, typer.Option(help="grades at or above this are high quality")] = 3,
    seed: int = 0,
    recipe: RecipeOption = None,
    root: RootOption = None,
) -> None:
    """Grade a sample with an LLM (educational value, 0-5), train the classifier on the grades."""
    from textmill.filters.quality_model import QualityModelError, distill
    from textmill.rewrite.backends import LlamaCppBackendConfig, OpenAIBackendConfig, make_backend
    from textmill.storage import Store

    if (base_url is None) == (gguf is None):
        console.print("[red]error:[/red] give exactly one of --base-url and --gguf")
        raise typer.Exit(2)
    _name(crawl, field="--crawl")
    _name(stage, field="--stage")
    settings = _configure(recipe, root)
    store = Store(settings.storage.root, storage_options=settings.storage.storage_options)
    manifest = store.latest(stage, crawl)
    if manifest is None:
        console.print(f"[red]error:[/red] no {stage} version of crawl {crawl}")
        raise typer.Exit(2)
    texts = store.scan(manifest).select("text").collect()["text"]
    config = OpenAIBackendConfig(base_url=base_url, model=model) if base_url else \
        LlamaCppBackendConfig(model_path=str(gguf))
    backend = make_backend(config)
    try:
        report = distill(texts, backend=backend, output=output, sample_size=sample, min_grade=min_grade, seed=seed)
    except QualityModelError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    finally:
        close = getattr(backend, "close", None)
        if close:
            close()
    console.print(f"graded {report.n_graded}/{report.n_sampled} documents with {report.grader_model} "
                  f"({report.grading_docs_per_second:.2f} docs/s); grades {report.grade_counts}; "
                  f"unparseable {report.unparseable}, failed {report.failed}")
    console.print(f"held-out agreement with the LLM labels: {report.heldout_agreement}, "
                  f"Spearman {report.heldout_spearman}")
    _print_train_report(report.train)


def main() -> None:  # pragma: no cover - entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
