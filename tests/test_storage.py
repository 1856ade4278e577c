"""The storage contract, on local disk and on a real S3 API (moto server on 127.0.0.1).

Tests taking the `store` fixture run once per backend. Dataset versions are content
addressed, immutable, and only exist once `_manifest.json` is written: anything else is an
unfinished write that readers ignore and a rerun replaces.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import posixpath
import signal
import subprocess
import sys

import polars as pl
import pytest

from textmill.config import RawChecks, RawConfig
from textmill.executor import LocalProcessExecutor, SerialExecutor
from textmill.schema import DOCUMENT_SCHEMA, check_schema
from textmill.stages import CODE_VERSIONS, crawls, raw
from textmill.storage import MANIFEST, Manifest, Store, _s3_to_object_store, content_version

FILES = {  # landing name -> bundled sample
    "cc-2019.warc.gz": "cc-main-2019-commoncrawl-org.warc.gz",
    "whirlwind.warc.wet.gz": "cc-main-2024-22-whirlwind.warc.wet.gz",
    "head-0091.jsonl.gz": "cc_en_head-0091.jsonl.gz",
}
BAD_LINES = b'{"id": "a", "text": "kept words"}\n{broken json\n{"id": "b"}\n'  # 1 document, 2 quarantined


@pytest.fixture
def land(sample, landing_put):
    """`land(store)`: the bundled files (and, unless bad=False, a JSONL file with two bad lines) in landing/c1/."""

    def put(store: Store, crawl: str = "c1", *, bad: bool = True) -> None:
        files: dict = {name: sample(original) for name, original in FILES.items()}
        if bad:
            files["bad.jsonl"] = BAD_LINES
        landing_put(store, crawl, files)

    return put


def run(store: Store, crawl: str = "c1", **config):
    return raw(store=store, crawl=crawl, config=RawConfig(**config), executor=SerialExecutor())


def file_table(files: list[dict]) -> list[tuple]:
    return sorted((f["path"], f["rows"], f["bytes"], f["sha256"]) for f in files)


# --- content addressing ------------------------------------------------------------------------


def test_content_version_is_a_deterministic_hash_of_everything_that_shapes_the_output():
    base = dict(stage="raw", code_version="1", config={"a": 1, "b": [1, 2]}, inputs=[{"name": "x", "size": 3}])
    version = content_version(**base)
    assert len(version) == 16 and int(version, 16) >= 0
    assert content_version(**base) == version
    assert content_version(**{**base, "config": {"b": [1, 2], "a": 1}}) == version  # key order is irrelevant
    changed = [
        {**base, "config": {"a": 2, "b": [1, 2]}},
        {**base, "config": {"a": 1, "b": [2, 1]}},
        {**base, "inputs": [{"name": "x", "size": 4}]},
        {**base, "code_version": "2"},
        {**base, "stage": "deduped"},
    ]
    assert len({content_version(**c) for c in changed} | {version}) == len(changed) + 1


def test_raw_version_changes_with_config_and_inputs_only(store, land, landing_put):
    land(store)
    first = run(store)
    assert not first.reused
    again = run(store)
    assert again.reused and again.version == first.version
    assert again.manifest.created_at == first.manifest.created_at  # the stored manifest, not a new one

    # check thresholds do not change the data, so they do not change the version
    same = raw(store=store, crawl="c1", config=RawConfig(checks=RawChecks(min_documents=5)), executor=SerialExecutor())
    assert same.reused and same.version == first.version

    other_config = run(store, extractor="resiliparse")
    assert not other_config.reused and other_config.version != first.version

    landing_put(store, "c1", {"more.jsonl": b'{"id": "m", "text": "one more document"}\n'})
    more_input = run(store)
    assert not more_input.reused and more_input.version not in (first.version, other_config.version)
    assert more_input.manifest.rows == first.manifest.rows + 1

    landing_put(store, "c1", {"more.jsonl": b'{"id": "m", "text": "one more document!"}\n'})  # edited bytes
    edited = run(store)
    assert edited.version not in (first.version, other_config.version, more_input.version)

    versions = store.versions("raw", "c1")
    assert [m.version for m in versions] == [first.version, other_config.version, more_input.version, edited.version]
    assert store.latest("raw", "c1").version == edited.version
    assert store.partitions("raw") == ["c1"]


# --- finished and unfinished versions -------------------------------------------------------


def test_a_version_folder_without_manifest_is_ignored(store, land):
    land(store, bad=False)
    done = run(store)
    part = store.read_bytes(posixpath.join(store.version_dir("raw", "c1", done.version), done.manifest.files[0]["path"]))
    # an unfinished write: a real part, no manifest; in the same partition and in a partition of its own
    store.write_bytes(posixpath.join(store.version_dir("raw", "c1", "ffffffffffffffff"), "part-00000-0000.parquet"), part)
    store.write_bytes(posixpath.join(store.version_dir("raw", "c9", "0000000000000000"), "part-00000-0000.parquet"), part)

    assert [m.version for m in store.versions("raw", "c1")] == [done.version]
    assert store.latest("raw", "c1").version == done.version
    assert store.manifest("raw", "c1", "ffffffffffffffff") is None
    assert store.versions("raw", "c9") == [] and store.latest("raw", "c9") is None
    assert store.versions("raw", "nowhere") == []


def test_version_writer_clears_an_unfinished_attempt(store):
    frame = pl.DataFrame({"x": [1, 2, 3]})
    attempt = store.begin("raw", "c1", "v1")
    store.write_parquet(frame, attempt.part_path("part-stale.parquet"))
    store.write_parquet(frame, attempt.quarantine_path("part-stale.parquet"))
    assert store.listdir(attempt.folder) == ["part-stale.parquet"]
    # the attempt dies here: no commit

    writer = store.begin("raw", "c1", "v1")
    assert store.listdir(writer.folder) == []
    assert store.listdir(writer.quarantine_folder) == []
    part = store.write_parquet(frame, writer.part_path("part-00000.parquet"))
    manifest = writer.commit(code_version="1", files=[part], inputs=[], config={}, statistics={}, timings={},
                             quarantine={})
    assert manifest.rows == 3
    assert store.listdir(writer.folder) == [MANIFEST, "part-00000.parquet"]
    assert store.latest("raw", "c1").files == [part.as_dict()]
    with pytest.raises(FileExistsError):
        store.begin("raw", "c1", "v1")  # a finished version is immutable


def test_manifest_lists_every_file_with_rows_and_checksums(store, land):
    land(store)
    manifest = run(store).manifest
    folder = store.version_dir("raw", "c1", manifest.version)

    assert store.listdir(folder) == sorted([MANIFEST] + [f["path"] for f in manifest.files])
    for entry in manifest.files:
        data = store.read_bytes(posixpath.join(folder, entry["path"]))
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["bytes"] == len(data)
        assert entry["rows"] == pl.read_parquet(io.BytesIO(data)).height
    assert manifest.rows == sum(f["rows"] for f in manifest.files) == manifest.statistics["documents"] == 13

    quarantine = store.quarantine_dir("raw", "c1", manifest.version)
    assert store.listdir(quarantine) == sorted(f["path"] for f in manifest.quarantine["files"])
    for entry in manifest.quarantine["files"]:
        data = store.read_bytes(posixpath.join(quarantine, entry["path"]))
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest.quarantine["by_reason"] == {"bad_json": 1, "missing_text": 1}
    assert manifest.quarantine["path"] == store.uri(quarantine)

    stored = json.loads(store.read_bytes(posixpath.join(folder, MANIFEST)))
    assert stored["rows"] == manifest.rows and stored["version"] == manifest.version
    assert stored["inputs"][0]["files"][0]["path"] == "bad.jsonl"
    assert Manifest.from_json(json.dumps(stored)) == manifest


def test_scan_reads_the_parts_back(store, land):
    land(store)
    manifest = run(store).manifest
    frame = store.scan(manifest).collect()

    assert frame.height == manifest.rows
    assert check_schema(frame.schema) == []
    assert frame["id"].n_unique() == frame.height
    assert set(frame["crawl"]) == {"c1"}
    # the same rows as reading each part's bytes directly
    folder = store.version_dir("raw", "c1", manifest.version)
    direct = pl.concat([pl.read_parquet(io.BytesIO(store.read_bytes(posixpath.join(folder, f["path"]))))
                        for f in manifest.files])
    assert frame.sort("id").equals(direct.sort("id"))
    # lazy: a filter is pushed into the scan
    assert store.scan(manifest).filter(pl.col("source") == "jsonl").collect().height == 1

    empty = Manifest(stage="raw", partition="c1", version="x", code_version="1", files=[], inputs=[], config={})
    assert store.scan(empty).collect().schema == pl.Schema(DOCUMENT_SCHEMA)


def test_s3_options_translate_for_polars():
    options = {"endpoint_url": "http://127.0.0.1:9000", "key": "k", "secret": "s", "token": "t",
               "client_kwargs": {"region_name": "eu-west-1"}}
    assert _s3_to_object_store(options) == {
        "aws_endpoint_url": "http://127.0.0.1:9000", "aws_allow_http": "true", "aws_access_key_id": "k",
        "aws_secret_access_key": "s", "aws_session_token": "t", "aws_region": "eu-west-1"}
    assert _s3_to_object_store({"client_kwargs": {"endpoint_url": "https://s3.example"}}) == {
        "aws_endpoint_url": "https://s3.example"}


def test_store_pickles_for_worker_processes(store):
    clone = pickle.loads(pickle.dumps(store))
    assert (clone.url, clone.storage_options, clone.base, clone.protocol) == (
        store.url, store.storage_options, store.base, store.protocol)
    store.write_bytes(store.path("state", "probe"), b"hello")
    assert clone.read_bytes(clone.path("state", "probe")) == b"hello"


# --- reruns, reproducibility, crashes ---------------------------------------------------------


def test_rerun_is_a_no_op_and_a_rewrite_is_byte_identical(store, land):
    land(store)
    first = run(store)
    assert run(store).reused

    store.remove_tree(store.path("datasets"))
    store.remove_tree(store.path("quarantine"))
    assert store.latest("raw", "c1") is None
    rewritten = run(store)

    assert not rewritten.reused and rewritten.version == first.version
    assert file_table(rewritten.manifest.files) == file_table(first.manifest.files)
    assert file_table(rewritten.manifest.quarantine["files"]) == file_table(first.manifest.quarantine["files"])
    assert rewritten.manifest.statistics["languages"] == first.manifest.statistics["languages"]


KILL_AFTER_FIRST_FILE = """
import json, os, posixpath, signal, sys
from textmill.config import RawConfig
from textmill.executor import SerialExecutor
from textmill.stages import raw
from textmill.storage import Store

def die(done, total):  # after the first file's parts: leave a stale part no rerun writes, then die hard
    partition = store.path("datasets", "raw", "c1")
    (unfinished,) = [v for v in store.listdir(partition) if store.manifest("raw", "c1", v) is None]
    store.write_bytes(posixpath.join(partition, unfinished, "part-99999-0000.parquet"), b"junk")
    os.kill(os.getpid(), signal.SIGKILL)

store = Store(sys.argv[1], storage_options=json.loads(sys.argv[2]))
raw(store=store, crawl="c1", config=RawConfig(), executor=SerialExecutor(), progress=die)
"""


def test_a_killed_write_leaves_nothing_a_reader_takes_and_a_rerun_completes(store, land):
    land(store)
    earlier = run(store, extractor="resiliparse")  # another version of the partition ...
    assert [m.version for m in store.versions("raw", "c1")] == [earlier.version]  # ... that this process listed

    child = subprocess.run([sys.executable, "-c", KILL_AFTER_FIRST_FILE, store.url, json.dumps(store.storage_options)],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr

    # look with a fresh client (no listing cached by this process)
    observer = Store(store.url, storage_options={**store.storage_options, "skip_instance_cache": True})
    (version,) = set(observer.listdir(observer.path("datasets", "raw", "c1"))) - {earlier.version}
    left = observer.listdir(observer.version_dir("raw", "c1", version))
    assert "part-99999-0000.parquet" in left and len(left) >= 2 and MANIFEST not in left
    assert [m.version for m in observer.versions("raw", "c1")] == [earlier.version]
    assert observer.latest("raw", "c1").version == earlier.version

    done = run(store)  # this process still holds its earlier listing of the partition

    assert not done.reused and done.version == version
    assert observer.listdir(observer.version_dir("raw", "c1", version)) == sorted(
        [MANIFEST] + [f["path"] for f in done.manifest.files])
    assert store.scan(done.manifest).collect().height == done.manifest.rows == 13
    assert observer.latest("raw", "c1").version == version


def test_a_crawl_landed_by_another_process_is_found(store, land, landing_put):
    land(store, bad=False)
    assert crawls(store) == ["c1"]  # this process has listed landing/
    other = Store(store.url, storage_options={**store.storage_options, "skip_instance_cache": True})
    landing_put(other, "c2", {"doc.jsonl": b'{"id": "x", "text": "a document of a new crawl"}\n'})

    result = run(store, crawl="c2")

    assert result.manifest.rows == 1
    assert crawls(store) == ["c1", "c2"]


# --- S3 end to end ---------------------------------------------------------------------------


def test_raw_stage_end_to_end_on_s3_matches_local(s3_store, moto_s3, land, tmp_path):
    import boto3

    land(s3_store)
    local = Store(str(tmp_path / "local"))
    land(local)

    on_s3 = run(s3_store)
    on_disk = run(local)

    assert on_s3.uri == f"{s3_store.url}/datasets/raw/c1/{on_s3.version}"
    assert on_s3.version == on_disk.version  # same inputs and config: same content address
    assert file_table(on_s3.manifest.files) == file_table(on_disk.manifest.files)
    assert on_s3.manifest.quarantine["by_reason"] == on_disk.manifest.quarantine["by_reason"]
    assert store_frame(s3_store, on_s3).equals(store_frame(local, on_disk))

    # what a plain S3 client sees in the bucket
    client = boto3.client("s3", endpoint_url=moto_s3["endpoint_url"], region_name="us-east-1")
    prefix = s3_store.url.split("/", 3)[3] + f"/datasets/raw/c1/{on_s3.version}/"
    listed = client.list_objects_v2(Bucket=moto_s3["bucket"], Prefix=prefix)
    assert sorted(o["Key"][len(prefix):] for o in listed["Contents"]) == sorted(
        [MANIFEST] + [f["path"] for f in on_s3.manifest.files])


def store_frame(store: Store, result) -> pl.DataFrame:
    return store.scan(result.manifest).collect().sort("id")


def test_process_pool_workers_write_the_same_parts_on_s3(s3_store, land):
    land(s3_store)
    serial = run(s3_store)
    s3_store.remove_tree(s3_store.path("datasets"))
    s3_store.remove_tree(s3_store.path("quarantine"))

    pooled = raw(store=s3_store, crawl="c1", config=RawConfig(), executor=LocalProcessExecutor(workers=2))

    assert pooled.version == serial.version and not pooled.reused
    assert file_table(pooled.manifest.files) == file_table(serial.manifest.files)
    assert pooled.manifest.timings["workers"] == 2
    assert CODE_VERSIONS["raw"] == pooled.manifest.code_version
