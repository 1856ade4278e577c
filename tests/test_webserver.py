"""The Dagster web UI as a person uses it: a backfill launched with the UI's own GraphQL mutation, run
by a real daemon, and the asset graph rendered by a real browser (headless Chromium).

One module-scoped instance (dagster-webserver + dagster-daemon on 127.0.0.1, a temp DAGSTER_HOME,
a temp store with two small crawls landed) serves every test here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import numpy as np
import pytest

from textmill.storage import Store
from llm_server import free_port  # one helper for a free 127.0.0.1 port

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "textmill" / "sample" / "warc"
LOCATION = "assets.definitions"
CRAWL_ASSETS = ("raw", "deduped", "filtered", "rewritten")
# Common Crawl names sort by time: the first is the earlier crawl. The second holds a copy of one of
# the first's files, so deduplicating it after the first removes that page as an earlier-crawl duplicate.
EARLY, LATE = "CC-MAIN-2024-10", "CC-MAIN-2024-18"
LANDED = {EARLY: ("dolma-wget-2024-sample-0000.warc.gz", "warcio-example.warc.gz"),
          LATE: ("warcio-example.warc.gz", "cc-main-2019-commoncrawl-org.warc.gz",
                 "ukwa-wikipedia-sopa-blackout-2012.warc.gz")}
# The policy each asset declares (assets/*.py say why); GraphQL reports maxPartitionsPerRun null for single_run.
POLICIES = {"raw": ("SINGLE_RUN", None), "deduped": ("SINGLE_RUN", None), "filtered": ("SINGLE_RUN", None),
            "rewritten": ("SINGLE_RUN", None), "mixed": ("MULTI_RUN", 1)}
# Small and quick: in-process stages; rewritten loads its model once for the run but selects no
# document (one SmolLM2 request takes ~20 s on 2 busy cores; tests/test_dagster.py makes real ones).
RECIPE = """\
execution:
  backend: serial
rewritten:
  min_input_chars: 100000000
"""
# The daemon's backfill loop sleeps DEFAULT_DAEMON_INTERVAL_SECONDS (30 s, not configurable) between
# iterations, and this backfill needs one iteration per level of the graph (raw, deduped, filtered,
# rewritten, then completion). The test shortens that sleep only; everything else is `dagster-daemon run`.
DAEMON = ("import sys; import dagster._daemon.controller as controller; "
          "controller.DEFAULT_DAEMON_INTERVAL_SECONDS = float(sys.argv.pop(1)); "
          "from dagster._daemon.cli import main; sys.argv[0] = 'dagster-daemon'; sys.exit(main())")
DAEMON_INTERVAL = "2"
INSTANCE = """\
telemetry:
  enabled: false
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    dequeue_interval_seconds: 1
    max_concurrent_runs: 2
"""
WINDOW = (1600, 1000)
BACKFILL_DEADLINE = 240  # s; the backfill itself takes about a minute on 2 busy cores

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def _start(command: list[str], *, env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:  # a file, not a pipe: a chatty server never blocks on a full pipe
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def _stop(processes: list[subprocess.Popen]) -> None:
    """SIGTERM to each process group (server, its code server, run workers), SIGKILL to what is left."""
    for process in processes:
        _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + 8
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for process in processes:
        _signal_group(process, signal.SIGKILL)
        process.wait(timeout=10)


class GraphQL:
    """POSTs to the webserver's /graphql as the UI does; raises on GraphQL errors."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __call__(self, query: str, **variables: Any) -> dict:
        request = urllib.request.Request(f"{self.url}/graphql", method="POST",
                                         data=json.dumps({"query": query, "variables": variables}).encode(),
                                         headers={"Content-Type": "application/json"})
        with _NO_PROXY.open(request, timeout=60) as response:
            body = json.loads(response.read())
        assert not body.get("errors"), f"GraphQL errors: {body['errors']}"
        return body["data"]


def _wait_for(what: str, probe: Callable[[], Any], *, deadline: float, processes: dict[str, tuple]) -> Any:
    """Poll `probe` until it returns something truthy; fail with the servers' logs at the deadline or a crash."""
    while True:
        for name, (process, log) in processes.items():
            if process.poll() is not None:
                pytest.fail(f"{name} exited ({process.returncode}) while waiting for {what}:\n{_tail(log)}")
        try:
            found = probe()
        except (OSError, urllib.error.URLError, json.JSONDecodeError):
            found = None
        if found:
            return found
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {name}:\n{_tail(log)}" for name, (_, log) in processes.items())
            pytest.fail(f"timed out waiting for {what}\n{logs}")
        time.sleep(1)


@pytest.fixture(scope="module")
def ui(tmp_path_factory) -> Iterator[SimpleNamespace]:
    """dagster-webserver and dagster-daemon over `-m assets.definitions`, a temp instance and store."""
    work = tmp_path_factory.mktemp("webui")
    root, home = work / "data", work / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text(INSTANCE)
    (work / "recipe.yaml").write_text(RECIPE)
    inherited = {key: value for key, value in os.environ.items() if not key.startswith("TEXTMILL_")}
    env = inherited | {"DAGSTER_HOME": str(home), "TEXTMILL_ROOT": str(root),
                        "TEXTMILL_RECIPE": str(work / "recipe.yaml"), "NO_PROXY": "127.0.0.1,localhost",
                        "no_proxy": "127.0.0.1,localhost"}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    processes: dict[str, tuple[subprocess.Popen, Path]] = {}
    try:
        for name, command in (
                ("webserver", [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-m", LOCATION]),
                ("daemon", [sys.executable, "-c", DAEMON, DAEMON_INTERVAL, "run", "-m", LOCATION])):
            processes[name] = (_start(command, env=env, log=work / f"{name}.log"), work / f"{name}.log")
        graphql = GraphQL(url)
        repositories = "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"
        nodes = _wait_for("the webserver to load the code location",
                          lambda: graphql(repositories)["repositoriesOrError"].get("nodes"),
                          deadline=time.monotonic() + 180, processes=processes)
        selector = {"repositoryLocationName": nodes[0]["location"]["name"], "repositoryName": nodes[0]["name"]}
        # The partitions exist before their folders land, so landing_sensor (running by default) never
        # finds a new crawl to launch; they are added latest-first: Dagster's order is not the crawl order.
        for crawl in (LATE, EARLY):
            added = graphql("""mutation($selector: RepositorySelector!, $key: String!) {
                addDynamicPartition(repositorySelector: $selector, partitionsDefName: "crawls", partitionKey: $key) {
                  __typename ... on PythonError { message } } }""", selector=selector, key=crawl)
            assert added["addDynamicPartition"]["__typename"] == "AddDynamicPartitionSuccess", added
        for crawl, names in LANDED.items():
            folder = root / "landing" / crawl / "warc"
            folder.mkdir(parents=True)
            for name in names:
                shutil.copy(SAMPLE / name, folder / name)
        yield SimpleNamespace(url=url, graphql=graphql, root=root, home=home, work=work, processes=processes,
                              selector=selector)
    finally:
        _stop([process for process, _ in processes.values()])


BACKFILL_STATUS = """query($id: String!) { partitionBackfillOrError(backfillId: $id) {
  __typename
  ... on PartitionBackfill { status numPartitions partitionNames assetSelection { path }
                             error { message } runs(limit: 50) { runId status tags { key value } } }
  ... on Error { message } } }"""


@pytest.fixture(scope="module")
def backfill(ui: SimpleNamespace) -> dict:
    """One backfill of both crawls for the four crawl assets, launched as the UI launches it; waits for its end."""
    launched = ui.graphql("""mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
        __typename ... on LaunchBackfillSuccess { backfillId } ... on Error { message } ... on PythonError { stack } } }""",
                          params={"partitionNames": [EARLY, LATE], "fromFailure": False,
                                  "assetSelection": [{"path": [name]} for name in CRAWL_ASSETS],
                                  "tags": [{"key": "test", "value": "webserver"}]})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]
    started = time.monotonic()

    def finished() -> dict | None:
        found = ui.graphql(BACKFILL_STATUS, id=backfill_id)["partitionBackfillOrError"]
        return found if found.get("status") not in (None, "REQUESTED", "CANCELING", "FAILING") else None

    result = _wait_for(f"backfill {backfill_id}", finished, deadline=started + BACKFILL_DEADLINE,
                       processes=ui.processes)
    result["id"], result["seconds"] = backfill_id, round(time.monotonic() - started, 1)
    return result


def _materializations(ui: SimpleNamespace, asset: str) -> dict[str, dict]:
    """The latest materialization of each partition of an asset, with its metadata by label."""
    data = ui.graphql("""query($key: AssetKeyInput!, $partitions: [String!]) { assetOrError(assetKey: $key) {
        ... on Asset { assetMaterializations(partitions: $partitions) { partition runId tags { key value }
          metadataEntries { label __typename ... on TextMetadataEntry { text } ... on IntMetadataEntry { intValue }
                            ... on JsonMetadataEntry { jsonString } } } } } }""",
                      key={"path": [asset]}, partitions=[EARLY, LATE])
    latest: dict[str, dict] = {}
    for event in data["assetOrError"]["assetMaterializations"]:  # newest first
        if event["partition"] not in latest:
            meta = {}
            for entry in event["metadataEntries"]:
                value = entry.get("text", entry.get("intValue", entry.get("jsonString")))
                meta[entry["label"]] = json.loads(value) if "jsonString" in entry else value
            latest[event["partition"]] = {"run": event["runId"], "meta": meta,
                                          "tags": {t["key"]: t["value"] for t in event["tags"]}}
    return latest


def test_each_asset_reports_its_backfill_policy_through_graphql(ui):
    nodes = ui.graphql("{ assetNodes { assetKey { path } backfillPolicy { policyType maxPartitionsPerRun "
                       "description } } }")["assetNodes"]
    reported = {node["assetKey"]["path"][0]: node["backfillPolicy"] for node in nodes}
    assert {name: (p["policyType"], p["maxPartitionsPerRun"]) for name, p in reported.items()} == POLICIES
    assert reported["deduped"]["description"] == "Backfills all partitions in a single run"


def test_backfill_through_the_webserver_materializes_every_crawl_in_crawl_order(ui, backfill):
    runs = backfill["runs"]
    assert backfill["status"] == "COMPLETED_SUCCESS", (
        f"backfill ended {backfill['status']}: {backfill['error']}; runs: "
        f"{[(r['runId'][:8], r['status']) for r in runs]}\n{_tail(ui.processes['daemon'][1])}")
    assert sorted(backfill["partitionNames"]) == [EARLY, LATE]
    assert all(run["status"] == "SUCCESS" for run in runs)

    # the single-run policies shaped the backfill: one run over both crawls (a range, from the first
    # to the last partition in Dagster's order, the order they were added) for all four assets
    assert len(runs) == 1, [(r["runId"][:8], r["status"]) for r in runs]
    tags = {tag["key"]: tag["value"] for tag in runs[0]["tags"]}
    assert (tags["dagster/asset_partition_range_start"], tags["dagster/asset_partition_range_end"]) == (LATE, EARLY)
    assert tags["dagster/backfill"] == backfill["id"]
    store = Store(str(ui.root))
    materialized = {asset: _materializations(ui, asset) for asset in CRAWL_ASSETS}
    for asset in CRAWL_ASSETS:
        by_partition = materialized[asset]
        assert set(by_partition) == {EARLY, LATE}, f"{asset}: materialized {sorted(by_partition)}"
        for crawl, event in by_partition.items():
            assert event["run"] == runs[0]["runId"]
            assert event["meta"]["partitions_in_run"] == [EARLY, LATE]  # processed in crawl order
            # each partition's own version, and the store holds exactly that finished version
            version = event["meta"]["version"]
            manifest = store.manifest(asset, crawl, version)
            assert manifest is not None, f"{asset}/{crawl}: no finished version {version} in the store"
            assert [m.version for m in store.versions(asset, crawl)] == [version]
            assert event["meta"]["dagster/row_count"] == manifest.rows

    # lineage per partition: each version was built from the version Dagster recorded upstream
    for child, parent in zip(CRAWL_ASSETS[1:], CRAWL_ASSETS):
        for crawl in (EARLY, LATE):
            inputs = store.manifest(child, crawl, materialized[child][crawl]["meta"]["version"]).inputs
            assert inputs[0]["version"] == materialized[parent][crawl]["meta"]["version"]

    # crawl order inside the single deduped run, though the partitions were added latest-first: the
    # later crawl was deduplicated against the earlier one's index and lost the page they share
    early, late = materialized["deduped"][EARLY]["meta"], materialized["deduped"][LATE]["meta"]
    assert early["earlier_crawls"] == [] and late["earlier_crawls"] == [EARLY]
    assert late["removed_by_kind"]["exact_earlier_crawl"] == 1

    # the blocking checks ran in every run and passed for every partition
    checks = ui.graphql("""{ assetNodes { assetKey { path } assetChecksOrError { ... on AssetChecks { checks {
        name executionForLatestMaterialization { status } } } } } }""")["assetNodes"]
    statuses = {(node["assetKey"]["path"][0], check["name"]): (check["executionForLatestMaterialization"] or {})
                .get("status") for node in checks if node["assetKey"]["path"][0] in CRAWL_ASSETS
                for check in node["assetChecksOrError"]["checks"]}
    assert statuses and set(statuses.values()) == {"SUCCEEDED"}, statuses


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found and Path("/usr/bin/chromium").exists():
        found = "/usr/bin/chromium"
    if not found:
        pytest.fail("chromium is not installed: the asset-graph screenshot test needs Debian's `chromium` "
                    "package (apt-get install chromium; .ci/run installs it)")
    return found


def _browser(url: str, *args: str, profile: Path, budget_ms: int = 20000) -> subprocess.CompletedProcess:
    """Headless Chromium on one page; the background-networking flags keep it from calling anywhere else."""
    command = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
               f"--virtual-time-budget={budget_ms}", *args, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=120,
                          env=os.environ | {"NO_PROXY": "127.0.0.1,localhost"})


def _png_pixels(data: bytes) -> np.ndarray:
    """Decode an 8-bit, non-interlaced RGB/RGBA PNG (what Chromium writes) into a (height, width, channels) array."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    position, chunks = 8, {}
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        chunks.setdefault(kind, []).append(data[position + 8:position + 8 + length])
        position += 12 + length
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"][0])
    assert depth == 8 and color in (2, 6) and interlace == 0, f"unexpected PNG format {depth=} {color=} {interlace=}"
    channels = 3 if color == 2 else 4
    raw = np.frombuffer(zlib.decompress(b"".join(chunks[b"IDAT"])), dtype=np.uint8)
    stride = width * channels
    assert raw.size == height * (stride + 1), "PNG data does not match its header's size"
    rows = raw.reshape(height, stride + 1)
    out = np.zeros((height, stride), dtype=np.uint8)
    previous = np.zeros(stride, dtype=np.int32)
    for y in range(height):
        kind, line = rows[y, 0], rows[y, 1:].astype(np.int32)
        if kind == 0:
            current = line
        elif kind == 1:  # Sub: a running sum per channel
            current = np.cumsum(line.reshape(width, channels), axis=0).reshape(stride) & 0xFF
        elif kind == 2:  # Up
            current = (line + previous) & 0xFF
        else:  # Average (3), Paeth (4): each byte depends on the one just decoded, so byte by byte
            decoded, above = line.tolist(), previous.tolist()
            for x in range(stride):
                left = decoded[x - channels] if x >= channels else 0
                up = above[x]
                if kind == 3:
                    decoded[x] = (decoded[x] + (left + up) // 2) & 0xFF
                else:
                    corner = above[x - channels] if x >= channels else 0
                    pa, pb, pc = abs(up - corner), abs(left - corner), abs(left + up - 2 * corner)
                    decoded[x] = (decoded[x] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
            current = np.array(decoded, dtype=np.int32)
        out[y] = current
        previous = current
    return out.reshape(height, width, channels).astype(np.uint8)


def _artifact(name: str) -> Path:
    """Where a person finds the picture: $TEXTMILL_ARTIFACTS, else <repo>/.artifacts/."""
    folder = Path(os.environ.get("TEXTMILL_ARTIFACTS") or REPO / ".artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def test_asset_graph_renders_in_headless_chromium(ui, backfill, tmp_path):
    # the asset graph of the `textmill` group (every asset), with each node's partitions and checks;
    # the global lineage page (/asset-groups) draws the same graph smaller beside an asset list
    url = f"{ui.url}/locations/{ui.selector['repositoryLocationName']}/asset-groups/textmill"
    # what a person does once per instance: skip the "join the community" dialog that covers the page
    assert ui.graphql("mutation { setNuxSeen }")["setNuxSeen"] is True
    png = _artifact("asset-graph.png")
    png.unlink(missing_ok=True)
    page = _browser(url, f"--screenshot={png}", "--dump-dom", profile=tmp_path / "profile")
    assert page.returncode == 0 and png.exists(), page.stderr[-2000:]
    dom = page.stdout
    for name in ("raw", "deduped", "filtered", "rewritten", "mixed"):
        assert f">{name}<" in dom, f"asset {name} is not in the rendered graph:\n{dom[-3000:]}"
    # the run data rendered too: the four crawl assets show both partitions materialized
    assert dom.count("100% filled") == len(CRAWL_ASSETS), "the graph does not show the backfilled partitions"

    pixels = _png_pixels(png.read_bytes())
    assert pixels.shape[:2] == (WINDOW[1], WINDOW[0]), f"{png} is {pixels.shape[1]}x{pixels.shape[0]}"
    colours, counts = np.unique(pixels[:, :, :3].reshape(-1, 3), axis=0, return_counts=True)
    assert len(colours) > 50, f"the page looks blank: {len(colours)} colours in {png}"
    # nor one colour with a few specks: the background covers less than 97% of the window
    assert counts.max() < 0.97 * WINDOW[0] * WINDOW[1], f"the page is almost one colour: {png}"
