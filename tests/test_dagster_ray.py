"""Dagster on a Ray cluster chosen by the resource: the deployment path of docs/deploy.md.

A Ray head is started as its own process (`ray start --head`, 2 CPUs, loopback only, token
auth as in infra/compose.yaml) and the resource points at it with a `ray://` address, the
way the compose and Kubernetes deployments do; the versions must equal a local-process run's.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
from dagster import DagsterInstance, materialize

from assets.deduped import deduped
from assets.raw import raw
from assets.resources import TextmillResource, resource_from_env
from textmill.storage import Store
from llm_server import free_port  # one helper for a free 127.0.0.1 port
from processes import RAY_HEAD_PORTS, ray_head_command, stop_group

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "textmill" / "sample"
CRAWL = "CC-A"
LANDED_WARCS = ("cc-main-2020-34-sample.warc.gz", "cc-main-2019-commoncrawl-org.warc.gz")
# small parts and four dedup buckets, so every phase is split into several Ray tasks
RECIPE = """\
execution: {backend: local, workers: 1}
raw: {rows_per_part: 8}
deduped: {minhash: {buckets: 4}}
"""


def _refresh_ray_auth() -> None:
    """Ray caches its auth mode and token per process; make it read the environment again."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@pytest.fixture
def ray_head(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A Ray head (2 CPUs) in its own process group on 127.0.0.1; yields its `ray://` client address."""
    token = secrets.token_hex(32)
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: the node advertises 127.0.0.1, so nothing leaves loopback
    # RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S: a loaded 2-core machine needs more than 30 s to start
    # the per-client server process
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S="120")
    temp_dir = tempfile.mkdtemp(prefix="tmray", dir="/tmp")  # short: Unix socket paths are limited to 107 bytes
    ports = {name: free_port() for name in RAY_HEAD_PORTS}
    client_port = ports["ray-client-server-port"]
    command = ray_head_command(temp_dir, ports)
    log = open(Path(temp_dir) / "head.log", "wb")
    head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            if head.poll() is not None:
                raise RuntimeError(f"ray head exited: {(Path(temp_dir) / 'head.log').read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", client_port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError("ray head did not open its client port in 180 s")
                time.sleep(0.3)
        monkeypatch.setenv("RAY_AUTH_MODE", "token")
        monkeypatch.setenv("RAY_AUTH_TOKEN", token)
        _refresh_ray_auth()
        yield f"ray://127.0.0.1:{client_port}"
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        stop_group(head, grace=30)  # `ray start --block` stops the processes it started on SIGTERM
        log.close()
        # the Ray Client server's own logs, shown by pytest when the test failed
        for path in sorted(Path(temp_dir).glob("session_*/logs/ray_client_server*.err")):
            text = path.read_text(errors="replace").strip()
            if text:
                print(f"--- {path.name}\n{text[-3000:]}")
        monkeypatch.undo()
        _refresh_ray_auth()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _land(root: Path) -> None:
    """Five real sample files (about 60 documents): one raw task each, several parts each."""
    target = root / "landing" / CRAWL
    shutil.copytree(SAMPLE / "jsonl", target / "jsonl")
    (target / "warc").mkdir()
    for name in LANDED_WARCS:
        shutil.copy(SAMPLE / "warc" / name, target / "warc" / name)


def _materialize(resource: TextmillResource) -> dict[str, str]:
    """raw + deduped of the crawl through Dagster; returns the version each asset recorded."""
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("crawls", [CRAWL])
    result = materialize([raw, deduped], partition_key=CRAWL, instance=instance,
                         resources={"textmill": resource})
    assert result.success
    return {node: result.asset_materializations_for_node(node)[0].metadata["version"].value
            for node in ("raw", "deduped")}


def _files(store: Store, stage: str, version: str) -> list[tuple[str, int, str]]:
    """(name, bytes, sha256) of every file of a version, read back from storage."""
    folder = Path(store.path("datasets", stage, CRAWL, version))
    return [(path.name, path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())
            for path in sorted(folder.iterdir()) if path.name != "_manifest.json"]


def test_resource_env_selects_ray(monkeypatch):
    monkeypatch.setenv("TEXTMILL_RAY_ADDRESS", "ray://head:10001")
    monkeypatch.setenv("TEXTMILL_WORKERS", "8")
    monkeypatch.delenv("TEXTMILL_EXECUTION_BACKEND", raising=False)
    execution = resource_from_env().recipe().execution
    assert (execution.backend, execution.ray_address, execution.workers) == ("ray", "ray://head:10001", 8)
    monkeypatch.setenv("TEXTMILL_EXECUTION_BACKEND", "serial")  # an explicit backend wins over the address
    assert resource_from_env().recipe().execution.backend == "serial"
    monkeypatch.setenv("TEXTMILL_EXECUTION_BACKEND", "spark")
    with pytest.raises(ValueError, match="backend"):
        resource_from_env().recipe()
    monkeypatch.setenv("TEXTMILL_WORKERS", "many")
    with pytest.raises(ValueError, match="TEXTMILL_WORKERS"):
        resource_from_env()


@pytest.mark.slow
def test_dagster_on_ray_through_the_resource_matches_the_process_pool(tmp_path, ray_head):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    for name in ("pool", "ray"):
        _land(tmp_path / name)
    # the recipe's local backend with one worker (in-process: cheapest on a loaded machine)
    pool = _materialize(TextmillResource(recipe_path=str(recipe), root=str(tmp_path / "pool")))
    on_ray = TextmillResource(recipe_path=str(recipe), root=str(tmp_path / "ray"), ray_address=ray_head, workers=2)
    assert on_ray.recipe().execution.backend == "ray"  # the recipe says local: the resource overrides it
    ray_versions = _materialize(on_ray)

    import ray

    # the run's one connection (kept by this process) is to the head started above
    assert ray.is_initialized() and ray.cluster_resources().get("CPU") == 2
    assert ray_versions == pool
    pool_store, ray_store = Store(str(tmp_path / "pool")), Store(str(tmp_path / "ray"))
    for stage, version in pool.items():
        # every data file byte for byte (the manifest itself differs: it records timings)
        pool_files, ray_files = _files(pool_store, stage, version), _files(ray_store, stage, version)
        assert ray_files == pool_files
        assert sum(name.startswith("part-") for name, _, _ in ray_files) > 1  # the work really was split
        ray_manifest, pool_manifest = ray_store.manifest(stage, CRAWL, version), pool_store.manifest(stage, CRAWL, version)
        assert [(f["path"], f["sha256"]) for f in ray_manifest.files] == \
               [(f["path"], f["sha256"]) for f in pool_manifest.files]
        assert ray_manifest.statistics.get("documents") == pool_manifest.statistics.get("documents")
