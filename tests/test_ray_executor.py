"""The Ray executor runs the same stage code on a local Ray (2 CPUs) with identical outputs."""

import shutil
from pathlib import Path

import pytest

from textmill import stages
from textmill.config import DedupConfig, ExecutionConfig, MinHashConfig, RawConfig
from textmill.dedup.index import bucket_name
from textmill.executor import LocalProcessExecutor, RayExecutor, make_executor
from textmill.storage import Store

SAMPLE = Path(__file__).resolve().parents[1] / "textmill" / "sample"


def _land(root: Path) -> Store:
    target = root / "landing" / "CC-A"
    shutil.copytree(SAMPLE / "warc", target / "warc")
    shutil.copytree(SAMPLE / "jsonl", target / "jsonl")
    return Store(str(root))


def _run(store: Store, executor) -> tuple:
    raw = stages.raw(store=store, crawl="CC-A", config=RawConfig(rows_per_part=25), executor=executor)
    # four buckets: dedup's url, exact, band-key and index phases run as several Ray tasks each
    deduped = stages.deduped(store=store, crawl="CC-A", raw_version=raw.version,
                             config=DedupConfig(minhash=MinHashConfig(buckets=4)), executor=executor)
    return raw, deduped


@pytest.mark.slow
def test_ray_executor_gives_the_same_versions_and_bytes_as_the_process_pool(tmp_path):
    with LocalProcessExecutor(workers=2) as pool:
        raw_pool, dedup_pool = _run(_land(tmp_path / "pool"), pool)
    executor = make_executor(ExecutionConfig(backend="ray", workers=2))
    assert isinstance(executor, RayExecutor)
    try:
        import ray

        assert ray.cluster_resources().get("CPU") == 2
        raw_ray, dedup_ray = _run(_land(tmp_path / "ray"), executor)
        # order kept past the in-flight window (a core function: Ray workers import it by name)
        assert list(executor.map(bucket_name, list(range(9)))) == [bucket_name(i) for i in range(9)]
    finally:
        executor.close()
    assert raw_ray.version == raw_pool.version and dedup_ray.version == dedup_pool.version
    assert len(raw_ray.manifest.files) > 1  # several parts: the work really was split
    for ray_manifest, pool_manifest in ((raw_ray.manifest, raw_pool.manifest), (dedup_ray.manifest, dedup_pool.manifest)):
        assert [(f["path"], f["sha256"]) for f in ray_manifest.files] == \
               [(f["path"], f["sha256"]) for f in pool_manifest.files]
    assert dedup_ray.manifest.statistics["removed_by_kind"] == dedup_pool.manifest.statistics["removed_by_kind"]
