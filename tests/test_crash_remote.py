"""Crash drills beyond the local store and pool: a raw run SIGKILLed mid-write on the moto S3 server,
and raw runs on a Ray cluster whose driver, or one of whose workers, is SIGKILLed mid-stage.

Same driver (`tests/crash_driver.py`) and checks as `tests/test_crash_resume.py`: the rerun gives
the uninterrupted run's version id and byte-identical files, nothing else is left in the version
folder, and a reader polling `versions()` / `latest()` never lists the half-written version.

The Ray cluster is a `ray start --head` process (2 CPUs, 127.0.0.1 only, token auth as in
tests/test_dagster_ray.py); drivers connect to it by GCS address, as a job on a deployed cluster
does, so killing the driver leaves the cluster (and, for a moment, the job's workers) running.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterator

import psutil
import pytest

from textmill.cli import install_sample
from textmill.config import Recipe
from textmill.executor import LocalProcessExecutor
from textmill.gc import find_garbage
from textmill.storage import MANIFEST, Store

sys.path.insert(0, str(Path(__file__).parent))
from crash_driver import CRAWL, run_stage  # noqa: E402
from llm_server import free_port  # noqa: E402
from processes import RAY_HEAD_PORTS, ray_head_command, stop_group  # noqa: E402
from test_crash_resume import (  # noqa: E402
    Reader, Reference, assert_same_as_reference, drill_recipe, file_table, fresh_store, kill_tree,
    landed_mid_write, manifest_problems, marker_count, reference, start_driver,
)

pytestmark = pytest.mark.slow
__all__ = ["reference"]  # the module-scoped uninterrupted chain of the local drills, used here as a fixture


def wait_for(proc: subprocess.Popen[str], ready: Callable[[], bool], *, timeout: float = 180.0) -> bool:
    """Poll until `ready()` (True) or the process ends (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    raise TimeoutError(f"neither the kill point nor the end of the run within {timeout} s")


# S3 --------------------------------------------------------------------------------------------------
def s3_markers(store: Store) -> int:
    """Files the raw run has written so far under the store (parts, quarantine; not the manifest)."""
    total = 0
    for top in ("datasets", "quarantine"):
        folder = store.path(top, "raw", CRAWL)
        store.fs.invalidate_cache(folder)
        try:
            total += sum(1 for path in store.fs.find(folder) if not path.endswith("/" + MANIFEST))
        except FileNotFoundError:
            pass
    return total


def test_raw_killed_mid_write_on_s3_resumes_to_the_same_version_and_bytes(moto_s3: dict[str, str]) -> None:
    """SIGKILL of the driver's tree when half the files are in the bucket: no reader lists the version;
    the rerun gives the uninterrupted S3 run's version id and sha256s, and only those files."""
    options = {"endpoint_url": moto_s3["endpoint_url"], "key": "testing", "secret": "testing"}
    base = f"s3://{moto_s3['bucket']}/drill-{uuid.uuid4().hex[:8]}"
    recipe = drill_recipe("http://127.0.0.1:9/v1")
    stores = {name: Store(f"{base}/{name}", storage_options=options) for name in ("reference", "killed")}
    for store in stores.values():
        install_sample(store, CRAWL)
    recipe = recipe.model_copy(update={"storage": recipe.storage.model_copy(
        update={"root": stores["killed"].url, "storage_options": options})})

    with LocalProcessExecutor(workers=2) as executor:
        expected = run_stage("raw", stores["reference"], recipe, [], executor)["version"]
        manifest = stores["reference"].manifest("raw", CRAWL, expected)
        assert manifest is not None
        total = s3_markers(stores["reference"])
        assert total >= 4, "too few files to kill between"
        kill_at = random.Random("s3-raw").randint(1, total - 1)

        store = stores["killed"]
        with Reader(Path("unused"), "raw", store=store) as reader:
            proc = start_driver("raw", store.url, recipe, [])
            try:
                reached = wait_for(proc, lambda: s3_markers(store) >= kill_at)
            finally:
                kill_tree(proc)
                _, err = proc.communicate(timeout=30)
            assert reached, f"the run ended before {kill_at} files: {err[-2000:]}"
            written = s3_markers(store)
            assert 0 < written < total + 1 and store.manifest("raw", CRAWL, expected) is None, "not mid-write"
            assert store.versions("raw", CRAWL) == [] and store.latest("raw", CRAWL) is None
            # the leftover is what `textmill gc` would collect once it is old enough
            later = datetime.now(timezone.utc) + timedelta(days=2)
            assert store.version_dir("raw", CRAWL, expected) in {g.path for g in find_garbage(store, now=later)}

            resumed = run_stage("raw", store, recipe, [], executor)
            assert reader.saw_a_version()
        assert reader.problems == [], reader.problems
        assert reader.unfinished_seen > 0, "the reader never saw the unfinished folder it had to ignore"

    assert resumed["version"] == expected and not resumed["reused"]
    got = store.manifest("raw", CRAWL, expected)
    assert got is not None and file_table(got) == file_table(manifest)
    assert manifest_problems(store, got) == []
    folder = store.version_dir("raw", CRAWL, expected)
    store.fs.invalidate_cache(folder)
    listed = {f[1] for f in file_table(got) if f[0] != "quarantine"} | {MANIFEST}
    assert set(store.listdir(folder)) == listed, "files of the killed attempt left beside the version"
    assert [m.version for m in store.versions("raw", CRAWL)] == [expected]


# Ray -------------------------------------------------------------------------------------------------
def title(process: psutil.Process) -> str:
    try:
        return process.cmdline()[0]
    except (psutil.Error, IndexError):
        return "?"


class RayCluster:
    """A `ray start --head` process and what a driver needs to join it."""

    def __init__(self, head: subprocess.Popen[bytes], address: str, env: dict[str, str], temp_dir: str) -> None:
        self.head, self.address, self.env, self.temp_dir = head, address, env, temp_dir

    def workers(self) -> list[psutil.Process]:
        """Ray worker processes of the cluster (their title is `ray::<task>`, or `ray::IDLE`)."""
        out = []
        for child in psutil.Process(self.head.pid).children(recursive=True):
            try:
                if child.cmdline() and child.cmdline()[0].startswith("ray::"):
                    out.append(child)
            except psutil.Error:
                pass
        return out

    def busy_workers(self) -> list[psutil.Process]:
        """Workers running a task: titled `ray::<function>` (textmill's task functions are snake_case;
        Ray's own processes are `ray::IDLE`, `ray::RuntimeEnvAgent`, `ray::DashboardAgent`, ...)."""
        busy = []
        for worker in self.workers():
            if re.fullmatch(r"ray::[a-z_][a-z0-9_]*", title(worker)) and title(worker) != "ray::IDLE":
                busy.append(worker)
        return busy


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    token = secrets.token_hex(32)
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    temp_dir = tempfile.mkdtemp(prefix="tmray", dir="/tmp")  # Unix socket paths are limited to 107 bytes
    ports = {name: free_port() for name in RAY_HEAD_PORTS}
    gcs = ports["port"]
    command = ray_head_command(temp_dir, ports)
    log = open(Path(temp_dir) / "head.log", "wb")
    head = subprocess.Popen(command, env=os.environ | env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in (Path(temp_dir) / "head.log").read_text(errors="replace"):
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray head did not start: {(Path(temp_dir) / 'head.log').read_text()[-2000:]}")
            time.sleep(0.3)
        yield RayCluster(head, f"127.0.0.1:{gcs}", env, temp_dir)
    finally:
        stop_group(head, grace=30)  # `ray start --block` stops the processes it started on SIGTERM
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def ray_recipe(reference: Reference, cluster: RayCluster) -> Recipe:
    execution = reference.recipe.execution.model_copy(update={"backend": "ray", "workers": 2,
                                                             "ray_address": cluster.address})
    return reference.recipe.model_copy(update={"execution": execution})


def test_ray_run_killed_mid_stage_resumes_to_the_same_version_and_bytes(reference: Reference,
                                                                      ray_cluster: RayCluster,
                                                                      tmp_path: Path) -> None:
    """On a Ray cluster: (1) the driver SIGKILLed mid-write: the cluster stops the job's tasks, so nothing
    writes on behind the rerun, and the rerun gives the pool run's version and bytes (Ray and the pool
    give the same versions: tests/test_ray_executor.py); (2) one Ray worker SIGKILLed mid-task: Ray runs
    the task again, and the run commits that same version and bytes."""
    reference.ensure("raw")
    recipe = ray_recipe(reference, ray_cluster)
    total = reference.peak_markers["raw"]
    rng = random.Random("ray-raw")

    # (1) the driver
    root = fresh_store(reference, tmp_path / "driver", "raw")
    kill_at = rng.randint(1, total - 1)
    with Reader(root, "raw") as reader:
        proc = start_driver("raw", str(root), recipe, [], env=ray_cluster.env)
        try:
            reached = wait_for(proc, lambda: marker_count(root, "raw") >= kill_at)
            job_workers = ray_cluster.busy_workers()
            titles = {p.pid: title(p) for p in job_workers}
        finally:
            kill_tree(proc)
            _, err = proc.communicate(timeout=30)
        assert reached, f"the run ended before {kill_at} files: {err[-3000:]}"
        assert job_workers, "no Ray task was running at the kill point"
        gone, alive = psutil.wait_procs(job_workers, timeout=30)
        assert alive == [], f"the killed job's Ray workers kept running: {[titles[p.pid] for p in alive]}"
        assert landed_mid_write(root, "raw", reference.versions["raw"])
        rerun = start_driver("raw", str(root), recipe, [], env=ray_cluster.env)
        out, err = rerun.communicate(timeout=180)
        assert rerun.returncode == 0, err[-3000:]
        assert reader.saw_a_version()
    assert reader.problems == [], reader.problems
    assert_same_as_reference(reference, root, "raw", json.loads(out.strip().splitlines()[-1]))
    print(f"driver killed at {kill_at} files with tasks {sorted(titles.values())} running")

    # (2) one worker, mid-task
    root = fresh_store(reference, tmp_path / "worker", "raw")
    kill_at = rng.randint(1, total - 1)
    victims: list[str] = []
    with Reader(root, "raw") as reader:
        proc = start_driver("raw", str(root), recipe, [], env=ray_cluster.env)
        try:
            def busy_worker_past_kill_point() -> bool:
                if marker_count(root, "raw") < kill_at:
                    return False
                busy = ray_cluster.busy_workers()
                if busy and not (root / "datasets" / "raw" / CRAWL / reference.versions["raw"] / MANIFEST).exists():
                    victim = rng.choice(busy)
                    victims.append(title(victim))
                    victim.kill()
                    return True
                return False

            wait_for(proc, busy_worker_past_kill_point)
            out, err = proc.communicate(timeout=180)
        finally:
            kill_tree(proc)
        assert victims, "no Ray worker was busy past the kill point"
        assert reader.saw_a_version()
    assert reader.problems == [], reader.problems
    assert proc.returncode == 0, f"the run did not survive a lost worker: {err[-3000:]}"
    print(f"worker {victims} killed at {kill_at} files; the run went on: {err[-500:]}")
    assert_same_as_reference(reference, root, "raw", json.loads(out.strip().splitlines()[-1]))
