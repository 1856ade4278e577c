"""Great Expectations reports of a dataset version: suites that describe it, and Data Docs.

The blocking checks (`checks/*.py`) decide whether a version may flow downstream; this module
*describes* a version for people: per table of the version (kept documents, rejected rows,
removed duplicates, dropped rewrites, the mix) an expectation suite states the contract
(columns and types, unique non-null ids, non-empty text, `n_chars` equal to the text's length,
language codes, ranges of signals and scores, reason/recyclable consistency, rewrite fields,
mix tokens and component shares) and Great Expectations renders the validation as a static
Data Docs site. It runs on a seeded sample (by id hash, at most `max_rows` rows, read lazily),
so its cost does not grow with the crawl, and duplicated ids are sampled together.

great_expectations (and pandas) are imported inside the functions: importing textmill stays fast.
Suites are written as plain `(expectation class, arguments)` pairs, so they can be read and
tested without GX.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from textmill.schema import DOCUMENT_SCHEMA
from textmill.storage import Manifest, Store

log = logging.getLogger(__name__)

DEFAULT_MAX_ROWS = 20_000
SUITES_VERSION = "2"  # bump when the suites change: finished reports of older suites are then rebuilt
SUMMARY = "textmill-report.json"  # beside index.html: what the report found, so a rerun can reuse it
TEXT_CHARS = "_text_chars"  # added to the sample: the text's length in characters, to compare with n_chars
ID_PATTERN = r"^[0-9a-f]{32}$"  # document_id(): xxh3-128 as hex
LANG_PATTERN = r"^(?:[a-z]{2,3}(?:_[A-Za-z]+)?|und)$"  # ISO 639 codes as fastText lid.176 writes them, or und
# signals that are shares of something (0..1); other float signals are ratios ≥ 0
SHARE_SIGNALS = ("gq_bullet_lines_ratio", "gq_ellipsis_lines_ratio", "gq_alpha_words_ratio", "fw_line_punct_ratio",
                 "fw_short_line_ratio", "fw_char_dup_ratio")
STATIC_MAX_BYTES = 64 << 10  # Data Docs copy ~4 MB of tutorial GIFs per site; pages use only the favicon

Spec = tuple[str, dict[str, Any]]  # (great_expectations.expectations class name, its arguments)


@dataclass(frozen=True)
class TableReport:
    """The validation of one table of a version (one suite)."""

    suite: str
    rows_sampled: int
    rows_total: int
    evaluated: int
    failed: list[str]

    @property
    def success(self) -> bool:
        return not self.failed


@dataclass(frozen=True)
class ExpectationReport:
    """What a report found and where its Data Docs are; small enough for orchestrator metadata."""

    stage: str
    partition: str
    version: str
    tables: list[TableReport]
    docs_dir: str
    index_path: str
    seconds: float
    seed: int
    max_rows: int
    failed: list[str] = field(default_factory=list)
    reused: bool = False  # an earlier report of this version, suites, sample size and seed

    @property
    def success(self) -> bool:
        return not self.failed

    @property
    def evaluated(self) -> int:
        return sum(t.evaluated for t in self.tables)

    @property
    def docs_url(self) -> str:
        return Path(self.index_path).resolve().as_uri()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"success": self.success, "evaluated": self.evaluated, "docs_url": self.docs_url}


# where ----------------------------------------------------------------------------------
def report_dir(store: Store, manifest: Manifest, *, reports_dir: str | None = None) -> str:
    """The local folder of a version's Data Docs.

    `reports_dir` wins; otherwise a local store keeps them beside its data
    (`{root}/reports/gx/`), and an object store's reports go to `$TEXTMILL_REPORTS_DIR` or
    `.textmill/reports/gx` (Data Docs are static files a browser opens from disk).
    """
    if reports_dir is None:
        if store.is_local:
            reports_dir = store.path("reports", "gx")
        else:
            reports_dir = os.environ.get("TEXTMILL_REPORTS_DIR") or os.path.join(".textmill", "reports", "gx")
    return os.path.join(os.path.abspath(reports_dir), manifest.stage, manifest.partition, manifest.version)


# what -------------------------------------------------------------------------------------
def version_tables(store: Store, manifest: Manifest) -> list[tuple[str, pl.LazyFrame, int]]:
    """(table name, lazy frame, rows) of every table a version holds that a report describes."""
    tables = [(manifest.stage, store.scan(manifest), manifest.rows)]
    extra = {"deduped": "removed", "filtered": "rejected", "rewritten": "dropped"}.get(manifest.stage)
    if extra and manifest.extra_files.get(extra):
        frame = store.scan_extra(manifest, extra)
        rows = sum(int(f.get("rows", 0)) for f in manifest.extra_files[extra])
        if frame is not None:
            tables.append((f"{manifest.stage}.{extra}", frame, rows))
    return tables


def sample_frame(lazy: pl.LazyFrame, *, rows_total: int, max_rows: int = DEFAULT_MAX_ROWS, seed: int = 0) -> pl.DataFrame:
    """A reproducible sample of at most `max_rows` rows, chosen by a seeded hash of the id.

    All rows of an id share one hash, so a duplicated id is sampled with its twin. Only the
    sampled rows are materialized (a streaming filter), then cut to `max_rows` by hash order.
    """
    names = lazy.collect_schema().names()
    key = next((c for c in ("id", "parent_id", "url") if c in names), None)
    if rows_total <= max_rows or key is None:
        frame = lazy.collect()
        return frame if frame.height <= max_rows else frame.head(max_rows)
    fraction = min(1.0, 1.2 * max_rows / rows_total)  # a little more than needed, then cut
    cut = int(fraction * float(2**64 - 1))
    hashed = pl.col(key).hash(seed=seed)
    picked = lazy.with_columns(_sample_hash=hashed).filter(pl.col("_sample_hash") <= cut).collect(engine="streaming")
    return picked.sort("_sample_hash", key, maintain_order=True).head(max_rows).drop("_sample_hash")


def gx_type(dtype: pl.DataType) -> str | None:
    """The type name Great Expectations observes for a column of this Polars type (see `to_pandas`)."""
    if dtype == pl.String:
        return "str"
    if dtype == pl.Boolean:
        return "bool"
    if isinstance(dtype, pl.Datetime):
        return "Timestamp"
    if dtype.is_numeric():
        return str(dtype).lower()
    return None  # lists, structs, binary: not described


def _stage_contract(stage: str, table: str) -> dict[str, pl.DataType]:
    """Columns (with types) a table must have by the storage contract."""
    if table == "deduped.removed":
        from textmill.dedup.pipeline import REMOVED_SCHEMA

        return dict(REMOVED_SCHEMA)
    if table == "rewritten.dropped":
        from textmill.rewrite.engine import DROPPED_SCHEMA

        return dict(DROPPED_SCHEMA)
    if stage == "mixed":
        return {"position": pl.UInt64(), "phase": pl.String(), "component": pl.String(), "id": pl.String(),
                "epoch": pl.UInt32(), "tokens": pl.UInt32(), "lang": pl.String(), "text": pl.String()}
    contract = dict(DOCUMENT_SCHEMA)
    if stage in ("deduped", "filtered"):
        contract |= {"dup_cluster": pl.String(), "dup_cluster_size": pl.Int64()}
    if stage == "filtered":
        contract |= {"decision": pl.String(), "reject_reason": pl.String(), "recyclable": pl.Boolean()}
    if stage == "rewritten":
        from textmill.rewrite.engine import REWRITE_COLUMNS

        contract |= REWRITE_COLUMNS
    return contract


def _described(title: str, spec: dict[str, Any]) -> dict[str, Any]:
    return spec | {"meta": {"textmill": title}}


def suite_specs(table: str, schema: pl.Schema, manifest: Manifest) -> list[Spec]:
    """The expectations describing one table of a version, as (class name, arguments) pairs."""
    stage = manifest.stage
    contract = _stage_contract(stage, table)
    names = list(schema.names())
    # the contract's columns with their types; the version's other columns (signals) by name only:
    # GX spends ~50 ms per expectation, so types of 50 signal columns would double a report's time
    specs: list[Spec] = [
        ("ExpectTableColumnsToMatchSet", {"column_set": list(contract), "exact_match": False}),
        ("ExpectTableColumnsToMatchSet", {"column_set": names, "exact_match": True}),
    ]
    for name in names:
        expected = gx_type(contract[name]) if name in contract else None
        if expected is not None:
            specs.append(("ExpectColumnValuesToBeOfType", {"column": name, "type_": expected}))

    def has(*columns: str) -> bool:
        return all(c in names for c in columns)

    def not_null(*columns: str) -> None:
        specs.extend(("ExpectColumnValuesToNotBeNull", {"column": c}) for c in columns if has(c))

    def between(column: str, low: float | None, high: float | None, **extra: Any) -> None:
        if has(column):
            specs.append(("ExpectColumnValuesToBeBetween", {"column": column, "min_value": low, "max_value": high} | extra))

    id_column = "parent_id" if table == "rewritten.dropped" else "id"
    not_null(id_column)
    if has("id") and id_column == "id" and stage != "mixed":
        specs.append(("ExpectColumnValuesToBeUnique", {"column": "id"}))
        specs.append(("ExpectColumnValuesToMatchRegex", {"column": "id", "regex": ID_PATTERN}))
    if has("text"):
        not_null("text")
        specs.append(("ExpectColumnValueLengthsToBeBetween", {"column": "text", "min_value": 1}))
    if has("n_chars"):
        between("n_chars", 1, None)
    if has("n_chars", "text"):
        pair = {"column_A": "n_chars", "column_B": TEXT_CHARS,
                "notes": f"{TEXT_CHARS} is the text's length in characters, computed for this report"}
        specs.append(("ExpectColumnPairValuesToBeEqual", pair))
    if has("lang"):
        not_null("lang")
        specs.append(("ExpectColumnValuesToMatchRegex", {"column": "lang", "regex": LANG_PATTERN}))
    between("lang_score", 0.0, 1.0)
    if stage in ("raw", "deduped", "filtered") and has("crawl") and table != "deduped.removed":
        specs.append(("ExpectColumnValuesToBeInSet", {"column": "crawl", "value_set": [manifest.partition]}))
    if table != "deduped.removed":
        not_null("url", "domain", "source")  # fetched_at may be null: JSONL records need not carry a time
    specs += _stage_specs(table, names, schema, manifest, has=has, not_null=not_null, between=between)
    return specs


def _stage_specs(table: str, names: list[str], schema: pl.Schema, manifest: Manifest, *, has, not_null,
                 between) -> list[Spec]:
    specs: list[Spec] = []
    config = manifest.config or {}
    if table == "deduped":
        not_null("dup_cluster")
        between("dup_cluster_size", 1, None)
    elif table == "deduped.removed":
        from textmill.dedup.pipeline import KINDS

        specs.append(("ExpectColumnValuesToBeInSet", {"column": "kind", "value_set": list(KINDS)}))
        not_null("kind", "dup_cluster")
    elif table in ("filtered", "filtered.rejected"):
        specs += _filtered_specs(table, names, schema, config, has=has, not_null=not_null, between=between)
    elif table == "rewritten":
        not_null("parent_id", "rewrite_model", "rewrite_prompt", "rewrite_params", "rewrite_key")
        specs.append(("ExpectColumnValuesToBeInSet", {"column": "is_synthetic", "value_set": [True]}))
        specs.append(("ExpectColumnValuesToBeInSet", {"column": "parent_origin", "value_set": ["rejected", "kept"]}))
        prompts = sorted(set(config.get("prompts") or []) | set(config.get("kept_prompts") or []))
        if prompts:
            specs.append(("ExpectColumnValuesToMatchRegex", {
                "column": "rewrite_prompt", "regex": "^(?:" + "|".join(prompts) + ")@[0-9A-Za-z_.-]+$"}))
        specs.append(("ExpectColumnValuesToNotBeNull", {
            "column": "parent_reject_reason", "row_condition": 'parent_origin == "rejected"',
            "condition_parser": "pandas"}))
        min_chars = (config.get("postprocess") or {}).get("min_chars")
        if min_chars:
            between("n_chars", int(min_chars), None)
        between("quality_score", 0.0, 1.0)
    elif table == "rewritten.dropped":
        not_null("rewrite_prompt", "drop_reason")
    elif table == "mixed":
        specs += _mixed_specs(manifest, has=has, not_null=not_null, between=between)
    return specs


def _filtered_specs(table: str, names: list[str], schema: pl.Schema, config: dict, *, has, not_null,
                    between) -> list[Spec]:
    from textmill.filters.decide import RECYCLABLE

    specs: list[Spec] = []
    order = list(config.get("order") or RECYCLABLE)
    kept = table == "filtered"
    specs.append(("ExpectColumnValuesToBeInSet", {"column": "decision", "value_set": ["kept" if kept else "rejected"]}))
    if kept:
        specs.append(("ExpectColumnValuesToBeNull", {"column": "reject_reason"}))
        specs.append(("ExpectColumnValuesToBeInSet", {"column": "recyclable", "value_set": [False]}))
        languages = (config.get("language") or {}).get("languages")
        if languages and (config.get("language") or {}).get("enabled", True) and "language" in order:
            specs.append(("ExpectColumnValuesToBeInSet", {"column": "lang", "value_set": list(languages)}))
            min_score = (config.get("language") or {}).get("min_score")
            if min_score is not None:
                between("lang_score", float(min_score), 1.0)
    else:
        not_null("reject_reason", "recyclable")
        specs.append(("ExpectColumnValuesToMatchRegex", {
            "column": "reject_reason", "regex": "^(?:" + "|".join(order) + "):[a-z0-9_]+$"}))
        for rule_set in order:  # the rule set of the reason decides whether the rewrite stage may use it
            specs.append(("ExpectColumnValuesToBeInSet", {
                "column": "recyclable", "value_set": [RECYCLABLE.get(rule_set, False)],
                "row_condition": f'reject_reason.str.startswith("{rule_set}:")', "condition_parser": "pandas"}))
    # signals that are shares lie in [0, 1]; counts and open ratios are ≥ 0 by construction and are
    # left out (GX spends ~50 ms per expectation: 30 of them would add seconds to every report)
    for name in names:
        if name.endswith("_frac") or name in SHARE_SIGNALS or name == "quality_score":
            between(name, 0.0, 1.0)
    return specs


def _mixed_specs(manifest: Manifest, *, has, not_null, between) -> list[Spec]:
    specs: list[Spec] = []
    config = manifest.config or {}
    rows = manifest.rows
    not_null("position", "phase", "component", "tokens", "epoch")
    specs.append(("ExpectColumnValuesToBeUnique", {"column": "position"}))
    between("position", 0, max(rows - 1, 0))
    specs.append(("ExpectCompoundColumnsToBeUnique", {"column_list": ["phase", "component", "id", "epoch"]}))
    between("tokens", 1, None)
    phases = manifest.statistics.get("mix", {}).get("phases", {})
    specs.append(("ExpectColumnValuesToBeInSet", {"column": "phase", "value_set": sorted(phases) or ["main"]}))
    components = [c["name"] for c in config.get("components", [])]
    components += [c["name"] for c in (config.get("anneal") or {}).get("components", [])]
    specs.append(("ExpectColumnValuesToBeInSet", {"column": "component", "value_set": sorted(set(components))}))
    caps = [float(c.get("max_epochs", 4.0)) for c in config.get("components", [])] or [4.0]
    between("epoch", 0, int(max(caps)) + 1)
    return specs


def share_specs(frame: pl.DataFrame, manifest: Manifest, *, sampled: bool) -> list[Spec]:
    """Token sums per (phase, component) of the sample against the shares the mix recorded."""
    if manifest.stage != "mixed" or frame.height == 0:
        return []
    tolerance = float((manifest.config or {}).get("tolerance", 0.02))
    specs: list[Spec] = []
    for phase, stats in manifest.statistics.get("mix", {}).get("phases", {}).items():
        total = int(frame.filter(pl.col("phase") == phase)["tokens"].sum() or 0)
        if not total:
            continue
        # a hash sample's shares wander a little: widen by ~3 standard errors of a share
        slack = tolerance + (3.0 * (0.25 / max(1, frame.height)) ** 0.5 if sampled else 0.0)
        for component, item in stats.get("components", {}).items():
            share = float(item.get("share", 0.0))
            specs.append(("ExpectColumnSumToBeBetween", {
                "column": "tokens", "min_value": int(max(0.0, share - slack) * total),
                "max_value": int(min(1.0, share + slack) * total + 0.5),
                "row_condition": f'phase == "{phase}" and component == "{component}"', "condition_parser": "pandas",
                "notes": f"{component} carries {share:.4f} of phase {phase}'s tokens in the manifest "
                         f"(tolerance {tolerance}); bounds are on the {total} tokens of this sample"}))
    return specs


# how ----------------------------------------------------------------------------------------
def _to_pandas(frame: pl.DataFrame):
    """pandas with nullable integer/boolean columns, so a null never turns an int column into floats."""
    import pandas as pd
    import pyarrow as pa

    def mapper(arrow_type: pa.DataType):
        if pa.types.is_integer(arrow_type):
            return pd.api.types.pandas_dtype(str(arrow_type).replace("int", "Int").replace("uInt", "UInt"))
        if pa.types.is_boolean(arrow_type):
            return pd.BooleanDtype()
        return None

    return frame.to_arrow().to_pandas(types_mapper=mapper)


def _context(docs_dir: str):
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        data_docs_sites={"textmill": {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": docs_dir},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }},
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _expectation_label(result) -> str:
    config = result.expectation_config
    kwargs = config.kwargs
    where = kwargs.get("column") or kwargs.get("column_A") or ",".join(kwargs.get("column_list") or [])
    row_condition = kwargs.get("row_condition")
    if isinstance(row_condition, dict):  # GX stores a pandas condition as {"type": ..., "pass_through_filter": ...}
        row_condition = row_condition.get("pass_through_filter") or row_condition
    condition = f" where {row_condition}" if row_condition else ""
    return f"{config.type}({where}){condition}"


def run_expectation_report(
    store: Store,
    manifest: Manifest,
    *,
    reports_dir: str | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    seed: int = 0,
    reuse: bool = True,
) -> ExpectationReport:
    """Validate a seeded sample of every table of a version against its suite; build Data Docs.

    A version never changes, so a finished report of it (same suites, sample size and seed) is
    returned as it is unless `reuse=False`. The site is built in a fresh folder and swapped into
    place, so a rebuild replaces it and a reader never sees half a site. Returns what failed (as
    `suite: expectation(column)`) and the path of the site's index.html.
    """
    started = time.perf_counter()
    target = report_dir(store, manifest, reports_dir=reports_dir)
    if reuse and (earlier := _finished_report(target, max_rows=max_rows, seed=seed)) is not None:
        log.info("gx report %s/%s/%s exists; reused: %s", manifest.stage, manifest.partition, manifest.version,
                 earlier.index_path)
        return earlier
    import great_expectations as gx
    import great_expectations.expectations as gxe

    building = f"{target}.building-{uuid.uuid4().hex[:8]}"
    os.makedirs(building)
    context = _context(building)
    source = context.data_sources.add_pandas("textmill")
    tables: list[TableReport] = []
    try:
        for table, lazy, rows_total in version_tables(store, manifest):
            frame = sample_frame(lazy, rows_total=rows_total, max_rows=max_rows, seed=seed)
            if "text" in frame.columns and "n_chars" in frame.columns:
                frame = frame.with_columns(pl.col("text").str.len_chars().cast(pl.Int64).alias(TEXT_CHARS))
            specs = suite_specs(table, frame.schema, manifest)
            specs += share_specs(frame, manifest, sampled=frame.height < rows_total)
            suite_name = f"textmill.{table}.{manifest.partition}.{manifest.version}"
            # the whole suite at once: add_expectation() re-serializes the suite on every call
            suite = context.suites.add(gx.ExpectationSuite(
                name=suite_name, expectations=[getattr(gxe, name)(**kwargs) for name, kwargs in specs],
                meta={"notes": {"format": "markdown", "content": [(
                    f"{manifest.stage} version `{manifest.version}` of `{manifest.partition}`: "
                    f"{frame.height} of {rows_total} rows, sampled by a hash of the id (seed {seed}).")]}}))
            batch = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe("sample")
            validation = context.validation_definitions.add(
                gx.ValidationDefinition(name=f"{table}-sample", data=batch, suite=suite))
            checkpoint = context.checkpoints.add(gx.Checkpoint(
                name=f"{table}-report", validation_definitions=[validation],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=["textmill"])],
                result_format={"result_format": "SUMMARY"}))
            outcome = checkpoint.run(batch_parameters={"dataframe": _to_pandas(frame)})
            results = [r for run in outcome.run_results.values() for r in run.results]
            failed = [f"{table}: {_expectation_label(r)}" for r in results if not r.success]
            tables.append(TableReport(suite=suite_name, rows_sampled=frame.height, rows_total=rows_total,
                                      evaluated=len(results), failed=failed))
        _prune_static(building)
        if not os.path.exists(os.path.join(building, "index.html")):
            raise RuntimeError(f"Great Expectations built no Data Docs index in {building}")
        report = ExpectationReport(
            stage=manifest.stage, partition=manifest.partition, version=manifest.version, tables=tables,
            docs_dir=target, index_path=os.path.join(target, "index.html"),
            seconds=round(time.perf_counter() - started, 3), seed=seed, max_rows=max_rows,
            failed=[f for t in tables for f in t.failed])
        with open(os.path.join(building, SUMMARY), "w") as handle:
            json.dump(asdict(report) | {"suites_version": SUITES_VERSION}, handle, indent=1)
        if os.path.exists(target):
            shutil.rmtree(target)
        os.replace(building, target)
    finally:
        if os.path.exists(building):
            shutil.rmtree(building, ignore_errors=True)
    log.info("gx report %s/%s/%s: %d expectations, %d failed (%.1f s): %s", manifest.stage, manifest.partition,
             manifest.version, report.evaluated, len(report.failed), report.seconds, report.index_path,
             extra={"stage": manifest.stage, "partition": manifest.partition, "version": manifest.version,
                    "expectations": report.evaluated, "failed": len(report.failed), "seconds": report.seconds})
    return report


def _finished_report(target: str, *, max_rows: int, seed: int) -> ExpectationReport | None:
    """The report already built in `target` with the current suites and the same sample, if any."""
    try:
        with open(os.path.join(target, SUMMARY)) as handle:
            saved = json.load(handle)
    except (FileNotFoundError, ValueError):
        return None
    if (saved.get("suites_version"), saved.get("max_rows"), saved.get("seed")) != (SUITES_VERSION, max_rows, seed) \
            or not os.path.exists(os.path.join(target, "index.html")):
        return None
    saved.pop("suites_version")
    saved |= {"tables": [TableReport(**t) for t in saved["tables"]], "docs_dir": target,
              "index_path": os.path.join(target, "index.html"), "reused": True}
    return ExpectationReport(**saved)


def _prune_static(site: str) -> None:
    """Drop what GX copies into every site but no page links (~4 MB: tutorial GIFs, fonts of an unlinked CSS).

    The pages link only `static/images/favicon.ico`; their styles come from CDNs.
    """
    static = os.path.join(site, "static")
    shutil.rmtree(os.path.join(static, "fonts"), ignore_errors=True)
    for folder, _, files in os.walk(static):
        for name in files:
            path = os.path.join(folder, name)
            if os.path.getsize(path) > STATIC_MAX_BYTES:
                os.remove(path)


__all__ = ["DEFAULT_MAX_ROWS", "ExpectationReport", "TableReport", "report_dir", "run_expectation_report",
           "sample_frame", "suite_specs"]
