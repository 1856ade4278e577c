"""Garbage collection of killed runs' leftovers (`textmill.gc`, `textmill gc`).

On a local store two stage runs are really SIGKILLed mid-write (`tests/crash_driver.py`, as in
the crash drills): raw with another recipe than the committed raw version, and deduped once its
first part is in the version folder. On the moto S3 server the leftovers are written by hand in
the layout a killed run leaves. Both check: committed versions keep every byte (sha256 as their
manifests list), leftovers older than the grace period go, young ones and a group with one young
file stay, and a dry run deletes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from textmill.cli import install_sample
from textmill.config import RawConfig, Recipe
from textmill.executor import LocalProcessExecutor, SerialExecutor
from textmill.gc import DEFAULT_GRACE, collect_garbage, find_garbage, parse_duration
from textmill.stages import raw
from textmill.storage import MANIFEST, Store

sys.path.insert(0, str(Path(__file__).parent))
from crash_driver import CRAWL, run_stage  # noqa: E402
from test_crash_resume import drill_recipe, kill_tree, manifest_problems, start_driver  # noqa: E402

BIN = Path(sys.executable).parent
OLD = timedelta(days=3)


def age(path: Path, by: timedelta) -> None:
    """Set the mtime of a file or of a folder and everything in it `by` into the past."""
    stamp = time.time() - by.total_seconds()
    for folder, _, files in os.walk(path) if path.is_dir() else [(str(path.parent), [], [path.name])]:
        for name in files:
            os.utime(os.path.join(folder, name), (stamp, stamp))
        if path.is_dir():
            os.utime(folder, (stamp, stamp))


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def committed_files(store: Store) -> dict[tuple[str, str, str], list[str]]:
    """Every committed version, with the problems of its listed files (none when every byte is whole)."""
    out = {}
    for stage in ("raw", "deduped", "filtered", "rewritten", "mixed"):
        for partition in store.partitions(stage):
            for manifest in store.versions(stage, partition):
                out[(stage, partition, manifest.version)] = manifest_problems(store, manifest)
    return out


def kill_when(stage: str, root: Path, recipe: Recipe, upstream: list[str], ready, *, timeout: float = 120.0) -> None:
    """Run the stage in the crash driver and SIGKILL its whole tree once `ready()` is true."""
    proc = start_driver(stage, root, recipe, upstream)
    try:
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline and not ready():
            time.sleep(0.01)
        assert proc.poll() is None, f"the {stage} run ended before the kill point: {proc.communicate()[1][-2000:]}"
        assert ready(), f"the {stage} run did not reach the kill point in {timeout} s"
    finally:
        kill_tree(proc)
        proc.communicate(timeout=30)


def gc_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"DAGSTER_HOME": str(cwd / "dagster"), "COLUMNS": "200"}
    env.pop("TEXTMILL_RECIPE", None)
    env.pop("TEXTMILL_ROOT", None)
    return subprocess.run([str(BIN / "textmill"), "gc", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def test_durations_parse_as_an_operator_writes_them() -> None:
    assert parse_duration("6h") == timedelta(hours=6)
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_duration("2d") == timedelta(days=2) and parse_duration("1w") == timedelta(days=7)
    assert parse_duration("90s") == timedelta(seconds=90) and parse_duration("12") == timedelta(hours=12)
    for bad in ("", "h", "6x", "6h and more", "-1h"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert DEFAULT_GRACE == timedelta(hours=24)


@pytest.mark.slow
def test_gc_removes_what_killed_runs_left_and_nothing_else(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = Store(str(root))
    install_sample(store, CRAWL)
    recipe = drill_recipe("http://127.0.0.1:9/v1")
    with LocalProcessExecutor(workers=2) as executor:
        raw_version = run_stage("raw", store, recipe, [], executor)["version"]

        # 1. raw with another recipe, killed once it has written parts (quarantine too, if any)
        other = recipe.model_copy(update={"raw": recipe.raw.model_copy(update={"rows_per_part": 25})})
        raw_folder = root / "datasets" / "raw" / CRAWL
        kill_when("raw", root, other, [], lambda: any(
            p.name.startswith("part-") for d in raw_folder.iterdir() if d.name != raw_version for p in d.iterdir()))
        killed_raw = [d.name for d in raw_folder.iterdir() if d.name != raw_version]
        assert len(killed_raw) == 1 and not (raw_folder / killed_raw[0] / MANIFEST).exists()

        # 2. deduped killed once its first part is in the version folder (its work folder is full by then)
        dedup_folder = root / "datasets" / "deduped" / CRAWL
        kill_when("deduped", root, recipe, [raw_version], lambda: dedup_folder.exists() and any(
            p.name.startswith("part-") for d in dedup_folder.iterdir() for p in d.iterdir()))
        (killed_dedup,) = [d.name for d in dedup_folder.iterdir()]
        assert not (dedup_folder / killed_dedup / MANIFEST).exists()
        assert any((root / "tmp" / "deduped" / CRAWL / killed_dedup).rglob("*.parquet"))

        # 3. a committed deduped version beside it (another config): its index entry is complete
        committed_dedup = run_stage("deduped", store, recipe.model_copy(update={"deduped": recipe.deduped.model_copy(
            update={"exact": False})}), [raw_version], executor)["version"]
    assert committed_dedup != killed_dedup

    # 4. what a kill leaves at moments too short to hit reliably, written the way the code writes it:
    # a temp file of an interrupted write_bytes (old), and a young unfinished group (a run in progress)
    old_temp = root / "cache" / "rewrite" / f"shard-1-x.parquet.tmp-{'a' * 32}"
    old_temp.parent.mkdir(parents=True)
    old_temp.write_bytes(b"half a shard")
    young = "0123456789abcdef"
    scope = next((root / "state" / "dedup").iterdir()).name
    (root / "state" / "dedup" / scope / CRAWL / young / "bands").mkdir(parents=True)
    (root / "state" / "dedup" / scope / CRAWL / young / "bands" / "bucket=0000.parquet").write_bytes(b"young")
    (root / "quarantine" / "filtered" / CRAWL / young).mkdir(parents=True)
    (root / "quarantine" / "filtered" / CRAWL / young / "part-00000.parquet").write_bytes(b"young too")

    versions_before = committed_files(store)
    assert versions_before and all(problems == [] for problems in versions_before.values())
    assert set(versions_before) == {("raw", CRAWL, raw_version), ("deduped", CRAWL, committed_dedup)}

    # everything of the kills is as young as a run in progress: nothing qualifies
    assert find_garbage(store) == []
    # age it all (committed versions too: age alone never makes a committed version garbage), but keep
    # one file of the killed deduped run's work folder fresh: its whole group must stay
    for top in ("datasets", "quarantine", "tmp", "state"):
        age(root / top, OLD)
    age(old_temp, OLD)
    for young_path in (root / "state" / "dedup" / scope / CRAWL / young, root / "quarantine" / "filtered" / CRAWL / young):
        age(young_path, timedelta(hours=1))
    fresh = next((root / "tmp" / "deduped" / CRAWL / killed_dedup).rglob("*.parquet"))
    os.utime(fresh)
    found = find_garbage(store)
    assert {(g.kind, tuple(g.group)) for g in found} >= {("unfinished_version", ("raw", CRAWL, killed_raw[0])),
                                                         ("temp_file", ("temp", str(old_temp)))}
    assert all(g.group[-1] != killed_dedup for g in found), "a group with a fresh file was taken"
    age(fresh, OLD)

    found = find_garbage(store)
    expected = {str(raw_folder / killed_raw[0]), str(dedup_folder / killed_dedup),
                str(root / "tmp" / "deduped" / CRAWL / killed_dedup), str(old_temp)}
    if (root / "quarantine" / "raw" / CRAWL / killed_raw[0]).exists():
        expected.add(str(root / "quarantine" / "raw" / CRAWL / killed_raw[0]))
    for index_entry in (root / "state" / "dedup" / scope / CRAWL).iterdir():
        if index_entry.name == killed_dedup:  # the kill landed after the index phase had begun
            expected.add(str(index_entry))
    assert {g.path for g in found} == expected
    assert all(g.age >= OLD - timedelta(minutes=5) and g.bytes > 0 for g in found)
    kinds = {g.kind for g in found}
    assert {"unfinished_version", "work_folder", "temp_file"} <= kinds

    # the CLI's dry run lists the same paths with their bytes and deletes nothing
    before = tree_digest(root)
    shown = gc_cli("--root", str(root), "--json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    listed = [json.loads(line) for line in shown.stdout.splitlines() if line.startswith("{")]
    assert {item["path"] for item in listed} == expected
    assert sum(item["bytes"] for item in listed) == sum(g.bytes for g in found)
    assert not any(item["deleted"] for item in listed)
    assert "nothing was deleted" in shown.stdout
    assert tree_digest(root) == before
    assert collect_garbage(store).deleted == []  # the core's dry run too
    assert tree_digest(root) == before

    shown = gc_cli("--root", str(root), "--older-than", "48h", "--apply", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert f"deleted {len(expected)} of {len(expected)} leftover(s)" in shown.stdout
    for path in expected:
        assert not os.path.exists(path), path
    after = tree_digest(root)
    gone = {k for k in before if k not in after}
    assert all(any(str(root / k).startswith(p) for p in expected) for k in gone), "deleted more than it listed"
    assert committed_files(store) == versions_before  # every committed byte as its manifest lists it
    assert (root / "state" / "dedup" / scope / CRAWL / committed_dedup / "_complete.json").exists()
    assert (root / "state" / "dedup" / scope / CRAWL / young).exists()  # young: kept
    assert (root / "quarantine" / "filtered" / CRAWL / young).exists()
    assert {g.group[-1] for g in find_garbage(store, older_than=timedelta(0))} == {young}

    # the killed version can still be written after its leftovers are gone
    resumed = raw(store=store, crawl=CRAWL, config=other.raw, executor=SerialExecutor())
    assert resumed.version == killed_raw[0] and manifest_problems(store, resumed.manifest) == []


@pytest.mark.slow
def test_gc_on_s3_removes_leftovers_after_the_grace_period_only(s3_store: Store, tmp_path: Path) -> None:
    store = s3_store
    lines = "".join(json.dumps({"id": str(i), "url": f"https://s{i}.example/", "text": f"River {i} runs to the sea."})
                    + "\n" for i in range(30))
    store.write_bytes(store.path("landing", "c1", "docs.jsonl"), lines.encode())
    store.write_bytes(store.path("landing", "c1", "broken.jsonl"), b"{not json\n")  # one quarantine row
    committed = raw(store=store, crawl="c1", config=RawConfig(rows_per_part=10), executor=SerialExecutor())
    assert committed.manifest.quarantine.get("files"), "the committed version should have a quarantine part"
    # a killed run's layout: parts without manifest, its quarantine, a work folder, an index entry
    version = "fedcba9876543210"
    leftovers = {
        store.path("datasets", "raw", "c1", version, "part-00000.parquet"): b"p" * 100,
        store.path("quarantine", "raw", "c1", version, "part-00000.parquet"): b"q" * 10,
        store.path("tmp", "deduped", "c1", version, "signatures", "part-00000.parquet"): b"s" * 1000,
        store.path("state", "dedup", "global-abc", "c1", version, "bands", "bucket=0000.parquet"): b"b" * 7,
    }
    for path, data in leftovers.items():
        store.write_bytes(path, data)

    def objects() -> dict[str, str]:
        store.fs.invalidate_cache()
        return {path: info["ETag"] for path, info in store.fs.find(store.base, detail=True).items()}

    before = objects()
    now = datetime.now(timezone.utc)
    assert find_garbage(store, older_than=timedelta(hours=1), now=now + timedelta(minutes=30)) == []
    found = find_garbage(store, older_than=timedelta(hours=1), now=now + timedelta(hours=2))
    folders = {store.path("datasets", "raw", "c1", version), store.path("quarantine", "raw", "c1", version),
               store.path("tmp", "deduped", "c1", version), store.path("state", "dedup", "global-abc", "c1", version)}
    assert {g.path for g in found} == folders
    assert {g.kind for g in found} == {"unfinished_version", "orphan_quarantine", "work_folder",
                                       "unfinished_index_entry"}
    assert sum(g.bytes for g in found) == sum(len(d) for d in leftovers.values())

    report = collect_garbage(store, older_than=timedelta(hours=1), now=now + timedelta(hours=2))  # dry run
    assert report.deleted == [] and objects() == before
    report = collect_garbage(store, older_than=timedelta(hours=1), now=now + timedelta(hours=2), apply=True)
    assert {g.path for g in report.deleted} == folders and report.bytes_deleted == report.bytes_found
    after = objects()
    assert {p for p in before if p not in after} == set(leftovers)
    assert [m.version for m in store.versions("raw", "c1")] == [committed.version]
    assert manifest_problems(store, store.manifest("raw", "c1", committed.version)) == []
