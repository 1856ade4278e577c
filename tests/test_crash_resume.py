"""Crash-and-resume drills: every stage is SIGKILLed mid-run, then rerun to completion.

Each stage runs as its own process (`tests/crash_driver.py`: the stage and its 2-process pool)
on the bundled sample crawl in a temporary store. A seeded random kill point is drawn from the
uninterrupted run: k of the n files it wrote (0 < k < n; parts, quarantine and work files, or
the rewritten stage's cache shards). When the killed run has written k, the whole process tree
is SIGKILLed (variants: one pool worker only; the run's process alone). Then the stage is rerun
and must give the uninterrupted run's version id and byte-identical files, with nothing else
left in the version folder. While the killed run and the rerun are in progress a reader polls
the store and reads whatever versions it lists: it must never see an incomplete one.

The rewritten stage talks to the real llama.cpp server through a counting relay on
127.0.0.1, so the drill counts the requests that reach the server: after the rerun, none is
for a reply that was cached before the kill.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import polars as pl
import psutil
import pytest

from textmill.cli import install_sample
from textmill.config import Recipe
from textmill.executor import LocalProcessExecutor
from textmill.rewrite.cache import RewriteCache
from textmill.stages import RewriteIncomplete
from textmill.storage import MANIFEST, Manifest, Store

sys.path.insert(0, str(Path(__file__).parent))
from crash_driver import CRAWL, run_stage  # noqa: E402

pytest_plugins = ["llm_server"]

DRIVER = Path(__file__).parent / "crash_driver.py"
MIX = "drill"
UPSTREAM = {"raw": [], "deduped": ["raw"], "filtered": ["deduped"], "rewritten": ["filtered"],
            "mixed": ["filtered", "rewritten"]}
SEEDS = (0, 1, 2)
RUN_TIMEOUT_S = 180.0


def drill_recipe(base_url: str) -> Recipe:
    """Small parts (many files, so kills land between writes); a 4-document LLM budget of short requests."""
    return Recipe.model_validate({
        "execution": {"workers": 2},
        "raw": {"rows_per_part": 40},
        "rewritten": {"max_documents": 4, "max_input_chars": 100, "batch_size": 1, "rescore": False,
                      "backend": {"kind": "openai", "base_url": base_url, "model": "smollm2-135m", "max_tokens": 8,
                                  "concurrency": 1, "max_retries": 1, "timeout_s": 300}},
        "mixed": [{"name": MIX, "total_tokens": 20000, "synthetic_cap": 0.3,
                   "components": [{"name": "web", "kind": "kept", "weight": 1.0},
                                  {"name": "rewritten", "kind": "rewritten", "weight": 1.0}]}],
    })


def partition(stage: str) -> str:
    return MIX if stage == "mixed" else CRAWL


# the LLM relay ------------------------------------------------------------------------------------------
class CountingRelay:
    """Forwards chat-completions requests to the llama.cpp server and records each request's user message.

    `down_after = n`: after n forwarded requests the server is out of reach (HTTP 503 from here on)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.messages: list[str] = []
        self.forwarded = 0
        self.down_after: int | None = None
        self.in_flight = 0
        self._lock = threading.Lock()
        relay = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _forward(self, body: bytes | None) -> None:
                path = self.path[len("/v1"):] if self.path.startswith("/v1") else self.path
                request = urllib.request.Request(relay.upstream + path, data=body, method=self.command,
                                                 headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(request, timeout=300) as response:
                        status, data = response.status, response.read()
                except urllib.error.HTTPError as exc:
                    status, data = exc.code, exc.read()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client was killed while the server was generating

            def do_GET(self) -> None:
                self._forward(None)

            def do_POST(self) -> None:
                with relay._lock:
                    relay.in_flight += 1
                try:
                    self._post()
                finally:
                    with relay._lock:
                        relay.in_flight -= 1

            def _post(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                user = [m["content"] for m in json.loads(body)["messages"] if m["role"] == "user"][-1]
                with relay._lock:
                    relay.messages.append(user)
                    down = relay.down_after is not None and relay.forwarded >= relay.down_after
                    relay.forwarded += not down
                if down:
                    data = b'{"error": {"message": "upstream unavailable"}}'
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self._forward(body)

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def count(self) -> int:
        with self._lock:
            return len(self.messages)

    def settle(self, *, quiet: float = 1.0, timeout: float = 120.0) -> None:
        """Wait until no request is being handled and none arrived for `quiet` seconds: a killed
        client's last request may still be in the socket buffers when the kill returns."""
        deadline = time.monotonic() + timeout
        last, since = self.count(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            with self._lock:
                count, busy = len(self.messages), self.in_flight
            if count != last or busy:
                last, since = count, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return
        raise TimeoutError("the relay did not settle")

    def since(self, start: int) -> list[str]:
        with self._lock:
            return list(self.messages[start:])

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


# what a stage has written so far -------------------------------------------------------------------------
def marker_count(root: Path, stage: str) -> int:
    """Files this stage's run has written so far: its version and quarantine folders and its work
    folder (rewritten: the reply cache). Temporary names count: they are writes in progress. (A drill's
    store holds no other version of the stage.)"""
    folders = [root / "datasets" / stage / partition(stage), root / "quarantine" / stage / CRAWL,
               root / "tmp" / stage / CRAWL]
    if stage == "rewritten":  # its version is written at once at the end; the cache shards are its progress
        folders = [root / "cache" / "rewrite"]
    total = 0
    for folder in folders:
        for _, _, files in os.walk(folder):
            total += sum(1 for name in files if name != MANIFEST)
    return total


def landed_mid_write(root: Path, stage: str, version: str) -> bool:
    """The kill left files of the run but no manifest: it interrupted the writing."""
    manifest = root / "datasets" / stage / partition(stage) / version / MANIFEST
    return not manifest.exists() and marker_count(root, stage) > 0


# a reader polling the store while a run is in progress -------------------------------------------------------
def file_rows(data: bytes) -> int:
    return pl.read_parquet(io.BytesIO(data)).height


def manifest_problems(store: Store, manifest: Manifest) -> list[str]:
    """Why a listed version is not whole: a listed file missing, or with other bytes or rows."""
    problems = []
    folder = store.version_dir(manifest.stage, manifest.partition, manifest.version)
    quarantine = store.quarantine_dir(manifest.stage, manifest.partition, manifest.version)
    listed = [(folder, f) for f in manifest.files]
    listed += [(folder, f) for group in manifest.extra_files.values() for f in group]
    listed += [(quarantine, f) for f in manifest.quarantine.get("files", [])]
    for base, entry in listed:
        path = f"{base}/{entry['path']}"
        try:
            data = store.read_bytes(path)
        except FileNotFoundError:
            problems.append(f"{manifest.version}: {entry['path']} listed but missing")
            continue
        if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            problems.append(f"{manifest.version}: {entry['path']} has other bytes than its manifest says")
        elif entry["path"].endswith(".parquet") and entry["rows"] and file_rows(data) != entry["rows"]:
            problems.append(f"{manifest.version}: {entry['path']} has other rows than its manifest says")
    return problems


class Reader(threading.Thread):
    """Polls `versions()` and `latest()` of one partition and reads every version they list."""

    def __init__(self, root: Path, stage: str, *, store: Store | None = None) -> None:
        super().__init__(daemon=True)
        self.root, self.stage, self.store = root, stage, store  # `store`: another root (S3) than the folder
        self.stop = threading.Event()
        self.polls = self.unfinished_seen = self.versions_read = 0
        self.problems: list[str] = []

    def run(self) -> None:
        store = self.store or Store(str(self.root))
        part = partition(self.stage)
        while not self.stop.is_set():
            self.polls += 1
            folder = store.path("datasets", self.stage, part)
            for name in store.listdir(folder):
                if not store.exists(f"{folder}/{name}/{MANIFEST}"):
                    self.unfinished_seen += 1
            listed = store.versions(self.stage, part)
            latest = store.latest(self.stage, part)
            for manifest in listed + ([latest] if latest else []):
                self.problems += manifest_problems(store, manifest)
                self.versions_read += 1
            if latest is not None and store.scan(latest).select(pl.len()).collect().item() != latest.rows:
                self.problems.append(f"{latest.version}: scan rows differ from the manifest")
            self.stop.wait(0.05)

    def saw_a_version(self, *, timeout: float = 30.0) -> bool:
        """Wait until the reader has read at least one listed version (after a commit)."""
        deadline = time.monotonic() + timeout
        while self.versions_read == 0 and self.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.versions_read > 0

    def __enter__(self) -> "Reader":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(timeout=30)


# running and killing the driver ---------------------------------------------------------------------------------
@dataclass
class Run:
    """One driver run: its exit, what it printed, and how far it had got when it was killed."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    killed: str | None = None  # "tree", "worker" or "parent", when the drill killed something
    markers_at_kill: int = 0  # files the run had written by then

    def result(self) -> dict[str, Any]:
        assert self.returncode == 0, self.stderr[-3000:]
        return json.loads(self.stdout.strip().splitlines()[-1])


def start_driver(stage: str, root: Path | str, recipe: Recipe, upstream: list[str], *,
                 env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """The crash driver in its own process group; `env` adds variables (a Ray cluster's token)."""
    path = os.pathsep.join(filter(None, [str(DRIVER.parent), os.environ.get("PYTHONPATH")]))
    return subprocess.Popen([sys.executable, str(DRIVER), stage, str(root), recipe.model_dump_json(), *upstream],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=os.environ | (env or {}) | {"PYTHONPATH": path})


def pool_workers(proc: subprocess.Popen[str]) -> list[psutil.Process]:
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        return []
    out = []
    for child in children:
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                out.append(child)
        except psutil.Error:
            pass
    return out


def kill_tree(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the driver's process group (the run, its pool workers, the resource tracker) and wait
    until every one of them is gone, so nothing of the killed run writes during the rerun."""
    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.Error:
        tree = []
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    psutil.wait_procs(tree, timeout=30)
    proc.wait(timeout=30)


def run_driver(stage: str, root: Path, recipe: Recipe, upstream: list[str], *,
               kill_at_markers: int | None = None, kill: str = "tree", rng: random.Random | None = None,
               orphans: list[psutil.Process] | None = None) -> Run:
    """Run the stage; with a kill point, SIGKILL the tree (or one pool worker, or the run alone: then its
    workers are appended to `orphans` and left alone) when it is reached."""
    orphans = orphans if orphans is not None else []
    began = time.monotonic()
    proc = start_driver(stage, root, recipe, upstream)
    killed, at_kill = None, 0
    try:
        deadline = began + RUN_TIMEOUT_S
        while proc.poll() is None and time.monotonic() < deadline:
            markers = marker_count(root, stage)
            if kill_at_markers is not None and markers >= kill_at_markers and killed is None:
                if kill == "tree":
                    kill_tree(proc)
                    killed, at_kill = "tree", markers
                    break
                if kill == "parent":  # the run alone, as the OOM killer would: its workers are left behind
                    workers = pool_workers(proc)
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=30)
                    killed, at_kill = "parent", markers
                    orphans.extend(workers)
                    break
                workers = pool_workers(proc)
                if workers:
                    victim = (rng or random.Random(0)).choice(workers)
                    victim.kill()
                    killed, at_kill = "worker", markers
            time.sleep(0.02)
        if proc.poll() is None and killed != "tree":
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if killed != "parent":  # also after an exit: the group may still hold a worker of a broken pool
            kill_tree(proc)
    out, err = proc.communicate(timeout=30)
    return Run(proc.returncode, out, err, time.monotonic() - began, killed, at_kill)


# the uninterrupted chain ------------------------------------------------------------------------------------
class Watcher(threading.Thread):
    """Counts a stage's written files while an uninterrupted run is in progress (where kill points come from)."""

    def __init__(self, root: Path, stage: str, *, store: Store | None = None) -> None:
        super().__init__(daemon=True)
        self.root, self.stage, self.store = root, stage, store  # `store`: another root (S3) than the folder
        self.stop = threading.Event()
        self.peak = 0

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, marker_count(self.root, self.stage))
            self.stop.wait(0.01)


@dataclass
class Reference:
    """The uninterrupted chain, stage by stage as drills need it, in this process with a shared pool."""

    root: Path
    recipe: Recipe
    executor: LocalProcessExecutor
    versions: dict[str, str] = field(default_factory=dict)
    peak_markers: dict[str, int] = field(default_factory=dict)

    def manifest(self, stage: str) -> Manifest:
        manifest = Store(str(self.root)).manifest(stage, partition(stage), self.versions[stage])
        assert manifest is not None
        return manifest

    def upstream(self, stage: str) -> list[str]:
        return [self.versions[s] for s in UPSTREAM[stage]]

    def ensure(self, stage: str) -> None:
        for needed in UPSTREAM[stage]:
            self.ensure(needed)
        if stage not in self.versions:
            watcher = Watcher(self.root, stage)
            watcher.start()
            try:
                self.versions[stage] = self.run(stage, self.root)["version"]
            finally:
                watcher.stop.set()
                watcher.join()
            self.peak_markers[stage] = max(watcher.peak, marker_count(self.root, stage))

    def run(self, stage: str, root: Path) -> dict[str, Any]:
        """The stage in this process, on the shared pool (the reference run and every rerun)."""
        return run_stage(stage, Store(str(root)), self.recipe, self.upstream(stage), self.executor)


def fresh_store(reference: Reference, root: Path, stage: str) -> Path:
    """A store holding the landing folder and the stage's upstream versions, but not the stage's own
    output, its dedup index entry or the reply cache."""
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(reference.root / "landing", root / "landing")
    needed: set[str] = set()
    todo = list(UPSTREAM[stage])
    while todo:
        upstream = todo.pop()
        needed.add(upstream)
        todo += UPSTREAM[upstream]
    for upstream in needed:
        for kind in ("datasets", "quarantine"):
            source = reference.root / kind / upstream
            if source.exists():
                shutil.copytree(source, root / kind / upstream)
    return root


@pytest.fixture(scope="module")
def relay(llm_server: str) -> Iterator[CountingRelay]:
    relay = CountingRelay(llm_server)
    yield relay
    relay.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reference]:
    """The uninterrupted chain on the sample crawl (the LLM relay is started only when a drill needs it)."""
    root = tmp_path_factory.mktemp("crash") / "reference"
    install_sample(Store(str(root)), CRAWL)
    url = "http://127.0.0.1:9/v1"  # replaced by the relay's address before the rewritten stage runs
    with LocalProcessExecutor(workers=2) as executor:
        yield Reference(root=root, recipe=drill_recipe(url), executor=executor)


@pytest.fixture
def llm_reference(reference: Reference, relay: CountingRelay) -> Reference:
    backend = reference.recipe.rewritten.backend
    if backend.base_url != relay.base_url:
        rewritten = reference.recipe.rewritten.model_copy(
            update={"backend": backend.model_copy(update={"base_url": relay.base_url})})
        reference.recipe = reference.recipe.model_copy(update={"rewritten": rewritten})
    return reference


# checks after the rerun ------------------------------------------------------------------------------------
def file_table(manifest: Manifest) -> list[tuple]:
    """Every file a version lists (parts, extra files, quarantine) with rows, bytes and sha256."""
    groups = {"files": manifest.files, **{f"extra:{k}": v for k, v in manifest.extra_files.items()},
              "quarantine": manifest.quarantine.get("files", [])}
    return sorted((group, f["path"], f["rows"], f["bytes"], f["sha256"]) for group, files in groups.items()
                  for f in files)


def assert_same_as_reference(reference: Reference, root: Path, stage: str, resumed: dict[str, Any]) -> None:
    expected = reference.manifest(stage)
    assert resumed["version"] == expected.version
    store = Store(str(root))
    got = store.manifest(stage, partition(stage), expected.version)
    assert got is not None
    assert file_table(got) == file_table(expected)
    assert manifest_problems(store, got) == []  # on disk: the bytes the manifest lists
    # nothing of the killed attempt is left beside the version (temp files, parts it never listed)
    folder = root / "datasets" / stage / partition(stage) / expected.version
    listed = {f[1] for f in file_table(got) if f[0] != "quarantine"}
    assert sorted(os.listdir(folder)) == sorted(listed | {MANIFEST})
    quarantine = root / "quarantine" / stage / partition(stage) / expected.version
    if quarantine.exists():
        assert sorted(os.listdir(quarantine)) == sorted(f[1] for f in file_table(got) if f[0] == "quarantine")
    assert [m.version for m in store.versions(stage, partition(stage))] == [expected.version]
    if stage == "deduped":  # the cross-crawl index entry is whole and the work folder is gone
        assert not (root / "tmp" / "deduped" / CRAWL / expected.version).exists()
        assert tree_digest(root / "state") == tree_digest(reference.root / "state")


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def kill_point(reference: Reference, stage: str, seed: int, *, kill: str = "tree") -> dict[str, Any]:
    """Seeded: kill when the run has written k of the files the uninterrupted run wrote (0 < k < all).

    A pool worker is killed in the first 60% of the files: one killed after the last task has
    nothing left to fail, and the run rightly commits (seen in 2 of 130 late kill points).
    """
    rng = random.Random(f"{stage}:{seed}")
    peak = reference.peak_markers[stage]
    high = max(1, (peak * 3) // 5) if kill == "worker" else max(1, peak - 1)
    return {"kill_at_markers": rng.randint(1, high), "rng": rng}


def drill(reference: Reference, stage: str, tmp_path: Path, *, seed: int, kill: str = "tree") -> tuple[Run, bool, Path]:
    """Kill one run of `stage` at the seed's point with a reader polling, then rerun it; returns the killed
    run, whether the kill interrupted the writing, and the store."""
    root = fresh_store(reference, tmp_path / f"{stage}-{kill}-{seed}", stage)
    with Reader(root, stage) as reader:
        killed = run_driver(stage, root, reference.recipe, reference.upstream(stage), kill=kill,
                            **kill_point(reference, stage, seed, kill=kill))
        mid_write = landed_mid_write(root, stage, reference.versions[stage])
        resumed = reference.run(stage, root)
        assert reader.saw_a_version()  # the reader reads the version once it is committed
    assert reader.problems == [], reader.problems
    assert_same_as_reference(reference, root, stage, resumed)
    return killed, mid_write, root


# the drills --------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("stage", ["raw", "deduped", "filtered"])
def test_killed_pool_stage_resumes_to_the_same_version_and_bytes(reference: Reference, stage: str,
                                                                  tmp_path: Path) -> None:
    """SIGKILL of the whole tree at 3 seeded points, then one pool worker alone: the rerun gives the
    uninterrupted run's version and bytes, and no reader ever lists a half-written version."""
    reference.ensure(stage)
    outcomes = []
    for seed in SEEDS[:2]:
        killed, mid_write, _ = drill(reference, stage, tmp_path, seed=seed)
        outcomes.append((seed, killed.killed, killed.markers_at_kill, mid_write))
    assert any(mid for *_, mid in outcomes), f"no kill landed mid-write: {outcomes}"

    worker, mid_write, _ = drill(reference, stage, tmp_path, seed=SEEDS[2], kill="worker")
    assert worker.killed == "worker", "no pool worker was running at the kill point"
    assert mid_write, f"the worker kill did not interrupt the run: {worker.stderr[-2000:]}"
    # a dead worker fails the run at once (it does not hang, and it does not commit)
    assert worker.returncode not in (0, None) and "BrokenProcessPool" in worker.stderr, worker.stderr[-2000:]


@pytest.mark.slow
def test_pool_workers_die_with_a_run_killed_alone(reference: Reference, tmp_path: Path) -> None:
    """Only the run's process is SIGKILLed (as by the OOM killer): its pool workers exit at once instead
    of waiting forever on the task queue and going on writing into the folder the rerun rewrites."""
    reference.ensure("raw")
    root = fresh_store(reference, tmp_path / "parent", "raw")
    orphans: list[psutil.Process] = []
    try:
        killed = run_driver("raw", root, reference.recipe, [], kill="parent", orphans=orphans,
                            kill_at_markers=2)
        assert killed.killed == "parent" and len(orphans) == 2
        gone, alive = psutil.wait_procs(orphans, timeout=15)  # without a watch on the parent: forever
        assert alive == [], "pool workers outlived the run that owned them"
        assert landed_mid_write(root, "raw", reference.versions["raw"])
    finally:
        for proc in orphans:
            try:
                proc.kill()
            except psutil.Error:
                pass
    assert_same_as_reference(reference, root, "raw", reference.run("raw", root))


@pytest.mark.slow
def test_killed_rewritten_stage_resumes_without_asking_for_cached_replies(llm_reference: Reference,
                                                                         relay: CountingRelay,
                                                                         tmp_path: Path) -> None:
    """Killed after k cached replies: the rerun's requests at the server are exactly the missing ones,
    its cache-hit statistic is k, and the version and bytes equal the uninterrupted run's."""
    reference = llm_reference
    reference.ensure("rewritten")
    expected = reference.manifest("rewritten").statistics["rewrites"]
    assert expected["requests"] == expected["unique_requests"] >= 4  # real replies, enough to kill between
    landed = 0
    for seed in SEEDS:
        root = fresh_store(reference, tmp_path / f"rewritten-{seed}", "rewritten")
        with Reader(root, "rewritten") as reader:
            killed = run_driver("rewritten", root, reference.recipe, reference.upstream("rewritten"),
                                **kill_point(reference, "rewritten", seed))
            cache = RewriteCache(Store(str(root)))
            cached_keys = cache.keys()
            landed += killed.killed is not None and landed_mid_write(root, "rewritten", reference.versions["rewritten"])
            relay.settle()  # the killed run's last request must not be counted as the rerun's
            before = relay.count()
            resumed = reference.run("rewritten", root)
            assert reader.saw_a_version()
        assert reader.problems == [], reader.problems
        assert_same_as_reference(reference, root, "rewritten", resumed)

        stats = resumed["statistics"]["rewrites"]
        sent = relay.since(before)
        assert stats["cache_hits"] == len(cached_keys)
        assert stats["requests"] == len(sent) == expected["unique_requests"] - len(cached_keys)
        asked = {request_key(reference, message) for message in sent}
        assert not asked & cached_keys, "the rerun asked the server again for replies it had cached"
        every = pl.concat([pl.read_parquet(p) for p in cache.shard_paths()])["key"]
        assert every.len() == every.n_unique() == expected["unique_requests"]  # no reply cached twice
    assert landed >= 2, "kills did not land between cached replies"


@pytest.mark.slow
def test_killed_mixed_stage_resumes_to_the_same_version_and_bytes(llm_reference: Reference, tmp_path: Path) -> None:
    reference = llm_reference
    reference.ensure("mixed")
    outcomes = []
    for seed in SEEDS:
        killed, mid_write, _ = drill(reference, "mixed", tmp_path, seed=seed)
        outcomes.append((seed, killed.killed, killed.markers_at_kill, mid_write))
    assert sum(1 for *_, mid in outcomes if mid) >= 1, f"kills did not land mid-write: {outcomes}"


def request_key(reference: Reference, message: str) -> str:
    """The cache key of the document a request's user message was rendered from."""
    keys = _rendered_keys(reference)
    assert message in keys, "a request for a document outside the selection"
    return keys[message]


_KEYS: dict[str, dict[str, str]] = {}


def _rendered_keys(reference: Reference) -> dict[str, str]:
    """User message → cache key for every (selected document, prompt) of the rewritten stage."""
    cached = _KEYS.get(reference.versions["filtered"])
    if cached is not None:
        return cached
    from textmill.rewrite.cache import cache_key, params_json, text_sha256
    from textmill.rewrite.engine import cut_text
    from textmill.rewrite.prompts import get_prompt
    from textmill.rewrite.select import select_inputs

    store = Store(str(reference.root))
    config = reference.recipe.rewritten
    filtered = reference.manifest("filtered")
    selection = select_inputs(store.scan_extra(filtered, "rejected"), store.scan(filtered), config=config)
    identity = reference.manifest("rewritten").config["backend"]
    params = params_json(identity["params"])
    keys = {}
    for row in selection.iter_rows(named=True):
        sent = cut_text(row["text"] or "", config.max_input_chars)
        for pid in row.get("prompt_ids") or config.prompts:
            prompt = get_prompt(pid)
            keys[prompt.render(sent)] = cache_key(text_hash=text_sha256(sent), prompt=prompt.key,
                                                  model=identity["model"], params=params)
    _KEYS[reference.versions["filtered"]] = keys
    return keys


@pytest.mark.slow
def test_llm_outage_commits_no_version_and_the_rerun_asks_only_for_what_failed(llm_reference: Reference,
                                                                              relay: CountingRelay,
                                                                              tmp_path: Path) -> None:
    """The server goes away after 2 replies: the stage fails without a version (a committed one would
    freeze the failures: every rerun would reuse it); the 2 replies stay cached, and once the server
    is back the rerun asks only for the rest and gives the uninterrupted run's version and bytes."""
    reference = llm_reference
    reference.ensure("rewritten")
    expected = reference.manifest("rewritten").statistics["rewrites"]
    root = fresh_store(reference, tmp_path / "outage", "rewritten")
    relay.down_after = relay.forwarded + 2
    try:
        with pytest.raises(RewriteIncomplete, match="failed"):
            reference.run("rewritten", root)
    finally:
        relay.down_after = None
    store = Store(str(root))
    assert store.versions("rewritten", CRAWL) == []
    cached = RewriteCache(store).keys()
    assert len(cached) == 2

    before = relay.count()
    resumed = reference.run("rewritten", root)
    assert_same_as_reference(reference, root, "rewritten", resumed)
    stats = resumed["statistics"]["rewrites"]
    assert stats["cache_hits"] == 2 and stats["failed"] == 0
    sent = relay.since(before)
    assert len(sent) == expected["unique_requests"] - 2
    assert not {request_key(reference, m) for m in sent} & cached
