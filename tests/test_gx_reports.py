"""Great Expectations reports: suites describe real versions, name what a broken copy breaks, build Data Docs.

The versions are real: raw → deduped → filtered of the bundled JSONL samples (no HTML
extraction, so the chain takes seconds). A broken version is a copy of a real one with a
defect written into its Parquet part and a manifest of its own, as a faulty stage would leave it.
"""

from __future__ import annotations

import dataclasses
import html
import posixpath
import re
import shutil
from pathlib import Path

import polars as pl
import pytest

from textmill import stages
from textmill.config import resolve_recipe
from textmill.executor import SerialExecutor
from textmill.report.expectations import run_expectation_report, sample_frame
from textmill.storage import Manifest, Store

SAMPLE = Path(__file__).resolve().parents[1] / "textmill" / "sample" / "jsonl"
CRAWL = "CC-GX"


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict:
    """A local store with raw, deduped and filtered versions of two bundled JSONL samples."""
    root = tmp_path_factory.mktemp("gx")
    for name in ("cc_en_head-0091.jsonl.gz", "dolma-documents-000.json.gz"):
        (root / "landing" / CRAWL / "jsonl").mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLE / name, root / "landing" / CRAWL / "jsonl" / name)
    store, recipe, executor = Store(str(root)), resolve_recipe(None), SerialExecutor()
    raw = stages.raw(store=store, crawl=CRAWL, config=recipe.raw, executor=executor)
    deduped = stages.deduped(store=store, crawl=CRAWL, raw_version=raw.version, config=recipe.deduped,
                             executor=executor)
    filtered = stages.filtered(store=store, crawl=CRAWL, deduped_version=deduped.version, config=recipe.filtered,
                               executor=executor)
    assert filtered.manifest.statistics["rejected"] > 0  # the filtered test needs rejected rows
    return {"root": root, "store": store, "raw": raw.manifest, "filtered": filtered.manifest}


def _broken_copy(store: Store, manifest: Manifest, version: str, damage, *, extra: str | None = None) -> Manifest:
    """A new version of the same stage and partition whose first part (or first `extra` file) is `damage(frame)`."""
    source = store.version_dir(manifest.stage, manifest.partition, manifest.version)
    target = store.version_dir(manifest.stage, manifest.partition, version)
    shutil.copytree(source, target)
    files = manifest.extra_files[extra] if extra else manifest.files
    first = files[0]["path"]
    frame = damage(pl.read_parquet(posixpath.join(target, first)))
    info = store.write_parquet(frame, posixpath.join(target, first)).as_dict()
    files = [info] + files[1:]
    broken = dataclasses.replace(manifest, version=version, **(
        {"extra_files": manifest.extra_files | {extra: files}} if extra else {"files": files}))
    store.write_bytes(posixpath.join(target, "_manifest.json"), broken.to_json().encode())
    assert store.manifest(manifest.stage, manifest.partition, version) is not None
    return broken


def _text(page: Path) -> str:
    """What a browser shows of a Data Docs page: tags, scripts and styles removed, whitespace collapsed."""
    markup = re.sub(r"<(script|style).*?</\1>", " ", page.read_text(), flags=re.DOTALL)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", markup)))


def test_sample_is_seeded_bounded_and_keeps_duplicated_ids_together():
    ids = [f"{i:032x}" for i in range(5_000)]
    frame = pl.DataFrame({"id": ids + ids[:50], "n": list(range(5_050))})  # 50 ids appear twice
    lazy = frame.lazy()
    first = sample_frame(lazy, rows_total=frame.height, max_rows=400, seed=7)
    assert first.height == 400
    assert first.equals(sample_frame(lazy, rows_total=frame.height, max_rows=400, seed=7))
    assert not first["id"].equals(sample_frame(lazy, rows_total=frame.height, max_rows=400, seed=8)["id"])
    counts = dict(first.group_by("id").len().iter_rows())
    twins = [i for i in ids[:50] if i in counts]
    assert twins and all(counts[i] == 2 for i in twins), "a sampled duplicated id must bring its twin"
    whole = sample_frame(lazy, rows_total=frame.height, max_rows=10_000)
    assert whole.height == frame.height


def test_raw_suite_passes_on_a_real_version_and_builds_data_docs(chain):
    report = run_expectation_report(chain["store"], chain["raw"])
    assert report.success, report.failed
    assert report.evaluated >= 20
    assert report.tables[0].rows_sampled == report.tables[0].rows_total == chain["raw"].rows
    index = Path(report.index_path)
    assert index == chain["root"] / "reports" / "gx" / "raw" / CRAWL / chain["raw"].version / "index.html"
    page = index.read_text()
    suite = f"textmill.raw.{CRAWL}.{chain['raw'].version}"
    assert suite in page and "ge-success-icon" in page and "ge-failed-icon" not in page
    validations = list((index.parent / "validations").rglob("*.html"))
    assert len(validations) == 1
    shown = _text(validations[0])
    assert "Status: Succeeded" in shown and f"Evaluated Expectations {report.evaluated}" in shown
    assert "values must be unique" in shown and "Values in n_chars and _text_chars must always be equal" in shown
    assert report.docs_url.startswith("file://") and report.docs_url.endswith("/index.html")
    assert sum(f.stat().st_size for f in index.parent.rglob("*") if f.is_file()) < 1_500_000  # static pruned
    again = run_expectation_report(chain["store"], chain["raw"])  # a version never changes: its report neither
    assert again.reused and not report.reused and again.failed == [] and again.evaluated == report.evaluated
    assert again.tables == report.tables and again.index_path == report.index_path
    rebuilt = run_expectation_report(chain["store"], chain["raw"], reuse=False, max_rows=7)
    assert not rebuilt.reused and rebuilt.tables[0].rows_sampled == 7 and rebuilt.success


def test_a_broken_raw_copy_fails_exactly_the_broken_expectations(chain):
    def damage(frame: pl.DataFrame) -> pl.DataFrame:
        twin = frame.head(1)  # the same document twice
        frame = frame.with_columns(lang_score=pl.when(pl.int_range(pl.len()) == 1).then(pl.lit(1.5, pl.Float32))
                                   .otherwise(pl.col("lang_score")))
        return pl.concat([frame, twin])

    broken = _broken_copy(chain["store"], chain["raw"], "0badc0ffee000001", damage)
    report = run_expectation_report(chain["store"], broken)
    assert not report.success
    assert sorted(report.failed) == ["raw: expect_column_values_to_be_between(lang_score)",
                                     "raw: expect_column_values_to_be_unique(id)"]
    page = Path(report.index_path).read_text()
    assert "ge-failed-icon" in page and broken.version in page
    shown = _text(next((Path(report.docs_dir) / "validations").rglob("*.html")))
    assert "Status: Failed" in shown and "Unsuccessful Expectations 2" in shown


def test_filtered_suite_ties_recyclable_to_the_reason_on_rejected_rows(chain):
    filtered = chain["filtered"]
    rejected = pl.read_parquet(posixpath.join(chain["store"].version_dir("filtered", CRAWL, filtered.version),
                                              filtered.extra_files["rejected"][0]["path"]))
    rule_set = rejected["reject_reason"][0].split(":", 1)[0]

    def damage(frame: pl.DataFrame) -> pl.DataFrame:  # the first reject claims the opposite recyclability
        return frame.with_columns(recyclable=pl.when(pl.int_range(pl.len()) == 0).then(~pl.col("recyclable"))
                                  .otherwise(pl.col("recyclable")))

    broken = _broken_copy(chain["store"], filtered, "0badc0ffee000002", damage, extra="rejected")
    report = run_expectation_report(chain["store"], broken, max_rows=5_000)
    assert {t.suite.rsplit(".", 2)[0] for t in report.tables} == {"textmill.filtered", "textmill.filtered.rejected"}
    # everything else holds on the real version: kept and rejected sides, signal ranges, reasons
    assert report.failed == [(f"filtered.rejected: expect_column_values_to_be_in_set(recyclable) "
                              f"where reject_reason.str.startswith(\"{rule_set}:\")")]
    assert report.evaluated > 60


def test_dagster_runs_the_non_blocking_report_check_after_the_asset(tmp_path):
    from dagster import AssetCheckSeverity, DagsterInstance, materialize

    from assets.definitions import defs
    from assets.raw import raw
    from assets.resources import TextmillResource
    from checks.gx_reports import GX_REPORT_CHECKS

    specs = {spec.key.name: spec for check in GX_REPORT_CHECKS for spec in check.check_specs}
    assert set(specs) == {f"{a}_gx_report" for a in ("raw", "deduped", "filtered", "rewritten", "mixed")}
    assert not any(spec.blocking for spec in specs.values())
    assert set(specs) <= {key.name for key in defs.resolve_asset_graph().asset_check_keys}

    (tmp_path / "landing" / CRAWL / "jsonl").mkdir(parents=True)
    shutil.copy(SAMPLE / "cc_en_head-0091.jsonl.gz", tmp_path / "landing" / CRAWL / "jsonl")
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("crawls", [CRAWL])
    result = materialize([raw, *GX_REPORT_CHECKS[:1]], partition_key=CRAWL, instance=instance,
                         resources={"textmill": TextmillResource(root=str(tmp_path))})
    assert result.success
    evaluation = {e.check_name: e for e in result.get_asset_check_evaluations()}["raw_gx_report"]
    meta = {key: value.value for key, value in evaluation.metadata.items()}
    assert evaluation.passed and evaluation.severity == AssetCheckSeverity.WARN
    version = Store(str(tmp_path)).latest("raw", CRAWL).version
    assert meta["version"] == version and meta["expectations_failed"] == 0 and meta["expectations_evaluated"] >= 20
    assert meta["data_docs"] == (tmp_path / "reports" / "gx" / "raw" / CRAWL / version / "index.html").as_uri()
    assert Path(meta["data_docs_path"]).is_file()


@pytest.mark.slow
def test_a_version_on_s3_is_read_lazily_and_its_data_docs_go_to_a_local_folder(s3_store, tmp_path, monkeypatch):
    s3_store.write_bytes(s3_store.path("landing", CRAWL, "jsonl", "cc_en_head-0091.jsonl.gz"),
                         (SAMPLE / "cc_en_head-0091.jsonl.gz").read_bytes())
    raw = stages.raw(store=s3_store, crawl=CRAWL, config=resolve_recipe(None).raw, executor=SerialExecutor())
    monkeypatch.setenv("TEXTMILL_REPORTS_DIR", str(tmp_path / "reports"))
    report = run_expectation_report(s3_store, raw.manifest, max_rows=4)
    assert report.success, report.failed
    assert report.tables[0].rows_sampled == 4 < report.tables[0].rows_total == raw.manifest.rows
    assert Path(report.index_path) == tmp_path / "reports" / "raw" / CRAWL / raw.version / "index.html"
    assert Path(report.index_path).is_file()
    assert not s3_store.exists(s3_store.path("reports"))  # nothing written next to the data on the bucket
