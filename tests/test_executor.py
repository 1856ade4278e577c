"""Shard execution: a process pool gives the same version and the same bytes as in-process runs."""

import os
import shutil
from pathlib import Path

import pytest

from textmill import stages
from textmill.config import RawConfig
from textmill.executor import LocalProcessExecutor, SerialExecutor
from textmill.storage import Store

SAMPLE = Path(__file__).resolve().parents[1] / "textmill" / "sample"


def _landing(root: Path) -> None:
    for folder in ("warc", "jsonl"):
        shutil.copytree(SAMPLE / folder, root / "landing" / "c1" / folder)


def test_process_pool_matches_serial_bit_for_bit(tmp_path):
    serial_root, pool_root = tmp_path / "serial", tmp_path / "pool"
    _landing(serial_root)
    _landing(pool_root)
    config = RawConfig(rows_per_part=7)  # several parts per shard
    serial = stages.raw(store=Store(str(serial_root)), crawl="c1", config=config, executor=SerialExecutor())
    pool = stages.raw(store=Store(str(pool_root)), crawl="c1", config=config,
                      executor=LocalProcessExecutor(workers=2))
    assert serial.version == pool.version
    assert serial.manifest.files == pool.manifest.files  # names, rows and sha256 of every part
    assert len(serial.manifest.files) > len(serial.manifest.statistics["per_file"])
    assert serial.manifest.statistics["languages"] == pool.manifest.statistics["languages"]
    assert max(f["rows"] for f in serial.manifest.files) <= 7


def test_progress_is_reported_per_file(tmp_path):
    _landing(tmp_path)
    seen = []
    stages.raw(store=Store(str(tmp_path)), crawl="c1", config=RawConfig(), executor=SerialExecutor(),
               progress=lambda done, total: seen.append((done, total)))
    total = len(list((tmp_path / "landing" / "c1").rglob("*.gz")))
    assert seen == [(i, total) for i in range(1, total + 1)]


def test_a_dead_pool_worker_fails_the_map_at_once_and_close_leaves_no_worker():
    """A worker that dies mid-task (here it exits abruptly, as a SIGKILL or the OOM killer would end
    it) raises BrokenProcessPool in the caller; closing the pool then returns and no worker is left."""
    import time
    from concurrent.futures.process import BrokenProcessPool

    executor = LocalProcessExecutor(workers=2)
    assert list(executor.map(abs, [-1, -2, -3])) == [1, 2, 3]  # the pool is up
    workers = list(executor._pool._processes.values())
    began = time.monotonic()
    with pytest.raises(BrokenProcessPool):
        list(executor.map(os._exit, [3, 3, 3, 3]))
    executor.close()
    assert time.monotonic() - began < 30
    for worker in workers:
        worker.join(timeout=10)
        assert worker.exitcode is not None
    assert list(executor.map(abs, [-4, -5])) == [4, 5]  # a new pool after a broken one
    executor.close()
