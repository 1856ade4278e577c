"""Prefect adapters: flows give the core's versions, artifacts hold its numbers, the scheduler runs them.

The flows run against real Prefect servers on 127.0.0.1: `prefect_test_harness` (a temporary
server subprocess) for the flows themselves, and `prefect server start` plus `python -m
flows.serve` for a run that the server's scheduler creates. The rewrite stage uses the bundled
SmolLM2 in process with one 200-character document and a 16-token reply, so each run takes seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import psutil
import pytest
import yaml

from flows.pipeline import crawl_pipeline
from flows.stages import (BlockingCheckFailed, deduped_flow, filtered_flow, is_transient, mixed_flow, raw_flow,
                          rewritten_flow)
from textmill import stages
from textmill.config import load_recipe
from textmill.executor import make_executor
from textmill.storage import Store
from llm_server import free_port  # one helper for a free 127.0.0.1 port

pytestmark = pytest.mark.filterwarnings(  # the core called directly here, outside any flow run
    "ignore:Logger 'textmill:UserWarning")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "textmill" / "sample" / "warc"
CRAWL = "CC-T"
MIX = "tiny"
SERVER_START_S = 150.0
SCHEDULED_RUN_S = 150.0

# nothing leaves 127.0.0.1: no usage telemetry from the servers, no proxy for local addresses
NO_TELEMETRY = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
                "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}

# serial execution, the fast extractor, one rewrite of a 200-character document with a 16-token reply, a small mix
RECIPE = {
    "execution": {"backend": "serial"},
    "raw": {"extractor": "resiliparse"},
    "rewritten": {"max_documents": 1, "max_input_chars": 200,
                  "backend": {"kind": "llama_cpp", "max_tokens": 16, "n_ctx": 1024}},
    "mixed": [{"name": MIX, "components": [{"name": "web", "kind": "kept", "weight": 1.0},
                                           {"name": "rewritten", "kind": "rewritten", "weight": 1.0}],
               "total_tokens": 5000, "synthetic_cap": 0.3, "tolerance": 0.5}],
}


def _land(root: Path, crawl: str, *names: str) -> None:
    target = root / "landing" / crawl / "warc"
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(SAMPLE / name, target / name)


def _write_recipe(path: Path, *, mix_tokens: int | None = None, **changes: Any) -> Path:
    data = json.loads(json.dumps(RECIPE))
    for section, values in changes.items():
        data[section] = data.get(section, {}) | values
    if mix_tokens:
        data["mixed"][0]["total_tokens"] = mix_tokens
    path.write_text(yaml.safe_dump(data))
    return path


def _core_chain(recipe_path: Path, root: Path) -> dict[str, str]:
    """The four stages and the mix called directly, without Prefect, on another store."""
    recipe = load_recipe(recipe_path)
    store = Store(str(root))
    with closing(make_executor(recipe.execution)) as executor:
        raw = stages.raw(store=store, crawl=CRAWL, config=recipe.raw, executor=executor)
        deduped = stages.deduped(store=store, crawl=CRAWL, raw_version=raw.version, config=recipe.deduped,
                                 executor=executor)
        filtered = stages.filtered(store=store, crawl=CRAWL, deduped_version=deduped.version,
                                   config=recipe.filtered, executor=executor)
    rewritten = stages.rewritten(store=store, crawl=CRAWL, filtered_version=filtered.version,
                                 config=recipe.rewritten, filter_config=recipe.filtered)
    mixed = stages.mixed(store=store, config=recipe.mix(MIX),
                         versions={CRAWL: {"filtered": filtered.version, "rewritten": rewritten.version}})
    return {"raw": raw.version, "deduped": deduped.version, "filtered": filtered.version,
            "rewritten": rewritten.version, "mixed": mixed.version}


@pytest.fixture(scope="module")
def harness(request) -> Iterator[None]:
    """A temporary Prefect server (subprocess, SQLite in a temp folder) for this module's flows."""
    from prefect.testing.utilities import prefect_test_harness

    if any(item.originalname == "test_the_scheduler_runs_the_served_pipeline" for item in request.session.items):
        request.getfixturevalue("server_process")  # boots meanwhile; the scheduled-run test waits for it

    with pytest.MonkeyPatch.context() as patch:
        for key, value in NO_TELEMETRY.items():  # the harness's server inherits this environment
            patch.setenv(key, value)
        with prefect_test_harness(server_startup_timeout=int(SERVER_START_S)):
            yield


@pytest.fixture(scope="module")
def pipeline(harness, tmp_path_factory) -> dict[str, Any]:
    """The crawl flow and the mix flow on one store, the core called directly on another."""
    base = tmp_path_factory.mktemp("prefect-flows")
    flows_root, core_root = base / "flows", base / "core"
    for root in (flows_root, core_root):
        _land(root, CRAWL, "dolma-wget-2024-sample-0000.warc.gz")
    recipe = _write_recipe(base / "recipe.yaml")
    state = crawl_pipeline(CRAWL, recipe=str(recipe), root=str(flows_root), return_state=True)
    assert state.is_completed(), state.message
    versions = dict(state.result())
    mix_state = mixed_flow(MIX, versions={CRAWL: {"filtered": versions["filtered"], "rewritten": versions["rewritten"]}},
                           recipe=str(recipe), root=str(flows_root), return_state=True)
    assert mix_state.is_completed(), mix_state.message
    mix = mix_state.result()
    # the core's run reads the flow run's cached LLM replies (the version never depends on the cache)
    shutil.copytree(flows_root / "cache", core_root / "cache")
    return {"recipe": recipe, "root": flows_root, "store": Store(str(flows_root)), "versions": versions,
            "mix": mix, "flow_run_id": state.state_details.flow_run_id, "core": _core_chain(recipe, core_root)}


def _artifacts(key: str, *, flow_run_id: Any = None) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterKey, FlowRunFilter,
                                                FlowRunFilterId)

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])) if flow_run_id else None)


def _table(key: str, *, flow_run_id: Any = None) -> list[dict]:
    found = _artifacts(key, flow_run_id=flow_run_id)
    assert found, f"no artifact {key}"
    data = found[0].data
    return json.loads(data) if isinstance(data, str) else data


def _measures(key: str) -> dict[str, Any]:
    return {row["measure"]: row["value"] for row in _table(key)}


def test_flows_write_the_same_versions_as_the_core(pipeline):
    flows_versions = pipeline["versions"] | {"mixed": pipeline["mix"]["version"]}
    assert flows_versions == pipeline["core"], "a flow must not change what a stage writes"
    store = pipeline["store"]
    for stage in ("raw", "deduped", "filtered", "rewritten"):
        assert [m.version for m in store.versions(stage, CRAWL)] == [pipeline["versions"][stage]]
    assert store.manifest("mixed", MIX, pipeline["mix"]["version"]) is not None
    assert pipeline["mix"]["reused"] is False and pipeline["mix"]["crawls"][CRAWL]["filtered"] == pipeline[
        "versions"]["filtered"]


def test_stage_flows_on_their_own_reuse_the_versions(pipeline):
    """Each stage flow alone, with upstream defaulting to the store's latest version: a no-op."""
    options = {"recipe": str(pipeline["recipe"]), "root": str(pipeline["root"])}
    summaries = [raw_flow(CRAWL, **options), deduped_flow(CRAWL, **options), filtered_flow(CRAWL, **options),
                 rewritten_flow(CRAWL, **options), mixed_flow(MIX, **options)]
    assert [s["version"] for s in summaries] == [pipeline["core"][stage] for stage in
                                                  ("raw", "deduped", "filtered", "rewritten", "mixed")]
    assert all(s["reused"] for s in summaries)
    store = pipeline["store"]
    assert all(len(store.versions(stage, CRAWL)) == 1 for stage in ("raw", "deduped", "filtered", "rewritten"))


def test_artifacts_hold_the_stage_statistics(pipeline):
    store, versions = pipeline["store"], pipeline["versions"]
    manifests = {stage: store.manifest(stage, CRAWL, versions[stage]) for stage in versions}
    raw = _measures("textmill-raw-cc-t-summary")
    assert raw["version"] == versions["raw"] and raw["rows"] == manifests["raw"].rows == 22
    assert raw["input_files"] == 1 and raw["quarantined"] == manifests["raw"].quarantine["records"]
    languages = {row["lang"]: row["documents"] for row in _table("textmill-raw-cc-t-languages")}
    assert languages == manifests["raw"].statistics["languages"]

    deduped = {row["kind"]: row["documents"] for row in _table("textmill-deduped-cc-t-removed-by-kind")}
    assert deduped == manifests["deduped"].statistics["removed_by_kind"]
    assert _measures("textmill-deduped-cc-t-summary")["documents_in"] == 22

    filtered = manifests["filtered"].statistics
    waterfall = _table("textmill-filtered-cc-t-waterfall")
    assert [(r["rule_set"], r["removed"], r["left"]) for r in waterfall] == [
        (s["rule_set"], s["removed"], s["left"]) for s in filtered["waterfall"]]
    assert waterfall[-1]["left"] == manifests["filtered"].rows == 14
    summary = _measures("textmill-filtered-cc-t-summary")
    assert summary["rejected"] == 22 - 14 and summary["recyclable"] == filtered["recyclable"]
    report = _artifacts("textmill-filtered-cc-t")[0].data
    assert f"version `{versions['filtered']}`" in report and "## removal waterfall" in report
    assert f"| language | {filtered['removed_by_rule_set']['language']:,} |" in report

    rewritten = _measures("textmill-rewritten-cc-t-summary")
    assert rewritten["selected"] == 1 and rewritten["requests"] + rewritten["cache_hits"] == 1
    assert rewritten["rows"] + rewritten["dropped"] == 1 and "smollm2" in rewritten["model"].lower()

    mix = store.manifest("mixed", MIX, pipeline["mix"]["version"]).statistics
    components = {row["component"]: row["tokens"] for row in _table("textmill-mixed-tiny-components")}
    assert components == {name: item["tokens"] for name, item in mix["mix"]["phases"]["main"]["components"].items()}
    assert _measures("textmill-mixed-tiny-summary")["tokens"] == mix["tokens"] > 0
    assert "## data card" in _artifacts("textmill-mixed-tiny")[0].data

    for stage, partition in (("raw", "cc-t"), ("deduped", "cc-t"), ("filtered", "cc-t"), ("rewritten", "cc-t"),
                             ("mixed", "tiny")):
        checks = _table(f"textmill-{stage}-{partition}-checks")
        assert checks and all(row["passed"] for row in checks), (stage, checks)
    chain = _table("textmill-crawl-cc-t-versions", flow_run_id=pipeline["flow_run_id"])
    assert {row["stage"]: row["version"] for row in chain} == versions


def test_core_logging_reaches_the_run_logs(pipeline):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterName
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:
            logs = client.read_logs(log_filter=LogFilter(name=LogFilterName(any_=["textmill.stages"])))
            messages = {log.message for log in logs if log.flow_run_id is not None}
            if f"raw {CRAWL}: 1/1 files ingested" in messages or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    assert f"raw {CRAWL}: 1/1 files ingested" in messages, sorted(messages)[:10]
    assert any(m.startswith(f"deduped {CRAWL}: index") for m in messages)


def test_a_failed_blocking_check_fails_the_flow_after_publishing(pipeline, tmp_path):
    recipe = _write_recipe(tmp_path / "strict.yaml", raw={"checks": {"min_documents": 1000}})
    state = raw_flow(CRAWL, recipe=str(recipe), root=str(pipeline["root"]), return_state=True)
    assert state.is_failed()
    with pytest.raises(BlockingCheckFailed, match="raw_min_documents"):
        state.result()
    checks = {row["check"]: row["passed"] for row in
              _table("textmill-raw-cc-t-checks", flow_run_id=state.state_details.flow_run_id)}
    assert checks["raw_min_documents"] is False and checks["raw_schema"] is True


def test_only_transient_errors_are_retried(pipeline, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.states import Failed

    assert is_transient(None, None, Failed(data=ConnectionResetError("reset by peer")))
    assert is_transient(None, None, Failed(data=TimeoutError("read timed out")))
    assert not is_transient(None, None, Failed(data=FileNotFoundError("no input files")))
    assert not is_transient(None, None, Failed(data=ValueError("bad config")))

    (tmp_path / "landing" / "EMPTY").mkdir(parents=True)  # a crawl folder without input files: permanent
    state = raw_flow("EMPTY", recipe=str(pipeline["recipe"]), root=str(tmp_path), return_state=True)
    assert state.is_failed()
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(
            any_=[state.state_details.flow_run_id])))
    raw_runs = [run for run in runs if run.name == "raw-EMPTY"]
    assert len(raw_runs) == 1 and raw_runs[0].run_count == 1, "a permanent error must not be retried"
    assert raw_runs[0].state.is_failed()


def test_prefect_yaml_entrypoints_parameters_and_schedule():
    from prefect import Flow
    from prefect.flows import load_flow_from_entrypoint
    from prefect.server.schemas.schedules import CronSchedule

    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in config["deployments"]}
    assert set(deployments) == {"nightly", "crawl"}
    for deployment in deployments.values():
        flow = load_flow_from_entrypoint(str(REPO / deployment["entrypoint"]))
        assert isinstance(flow, Flow)
        flow.validate_parameters(deployment["parameters"])  # every parameter exists, with the right type
        assert deployment["work_pool"]["name"] == "textmill"
        assert deployment["work_pool"]["job_variables"]["env"]["PREFECT_LOGGING_EXTRA_LOGGERS"] == "textmill"
    assert load_flow_from_entrypoint(str(REPO / deployments["nightly"]["entrypoint"])).name == "textmill-pipeline"
    assert load_flow_from_entrypoint(str(REPO / deployments["crawl"]["entrypoint"])).name == "textmill-crawl"
    [schedule] = deployments["nightly"]["schedules"]
    cron = CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])  # the server's own schedule model
    start = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)
    dates = asyncio.run(cron.get_dates(n=2, start=start))
    assert [(d.day, d.hour, d.minute) for d in dates] == [(2, 2, 0), (3, 2, 0)]
    assert "schedules" not in deployments["crawl"]


# a scheduled run on a real server -------------------------------------------------------------------


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group (and any descendant that left it), then SIGKILL what is left."""
    if proc.poll() is not None:
        return
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.fixture(scope="module")
def server_process(tmp_path_factory) -> Iterator[dict[str, Any]]:
    """`prefect server start` on 127.0.0.1 with its own PREFECT_HOME and SQLite file and a fast
    scheduler, started without waiting (the harness fixture starts it early, so both boot at once)."""
    port = free_port()
    home = tmp_path_factory.mktemp("prefect-home")
    env = os.environ | {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
        "PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS": "1",
        "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_RUNS": "1",
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
    } | NO_TELEMETRY
    log_path = home / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host",
                                 "127.0.0.1", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        yield {"proc": proc, "port": port, "log": log_path, "env": {
            key: value for key, value in env.items() if key.startswith("PREFECT_") or key in NO_TELEMETRY}}
    finally:
        _stop(proc)


@pytest.fixture
def prefect_server(server_process) -> dict[str, str]:
    """The server's client environment (PREFECT_API_URL, PREFECT_HOME, ...), once /api/health answers."""
    import urllib.request

    proc, log_path = server_process["proc"], server_process["log"]
    deadline = time.monotonic() + SERVER_START_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"prefect server exited {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server_process['port']}/api/health",
                                        timeout=2) as response:
                if response.status == 200:
                    return dict(server_process["env"])
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"prefect server not ready in {SERVER_START_S}s:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.3)


@pytest.mark.slow
def test_the_scheduler_runs_the_served_pipeline(prefect_server, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId, LogFilter, LogFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    root = tmp_path / "store"
    _land(root, "CC-S", "cc-main-2019-commoncrawl-org.warc.gz")
    # one kept document and nothing to rewrite (the model loads, generates nothing): a run takes seconds
    recipe = _write_recipe(tmp_path / "recipe.yaml", raw={"extractor": "trafilatura"}, mix_tokens=500)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | prefect_server | {
        "PREFECT_RUNNER_POLL_FREQUENCY": "1", "TEXTMILL_RECIPE": "", "TEXTMILL_ROOT": ""}
    serve_log = tmp_path / "serve.log"
    with open(serve_log, "wb") as log:
        serve = subprocess.Popen([sys.executable, "-m", "flows.serve", "--interval", "5", "--name", "every-5s",
                                  "--recipe", str(recipe), "--root", str(root)], cwd=REPO, env=env, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with temporary_settings(updates={PREFECT_API_URL: prefect_server["PREFECT_API_URL"]}), \
                get_client(sync_client=True) as client:
            deadline = time.monotonic() + SCHEDULED_RUN_S
            deployment, done = None, None
            while done is None:
                assert serve.poll() is None, f"flows.serve exited:\n{serve_log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, (
                    f"no scheduled run completed in {SCHEDULED_RUN_S}s:\n{serve_log.read_text()[-3000:]}")
                if deployment is None:
                    try:
                        deployment = client.read_deployment_by_name("textmill-pipeline/every-5s")
                    except Exception:  # noqa: BLE001 - not served yet
                        time.sleep(0.5)
                        continue
                runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                    deployment_id=FlowRunFilterDeploymentId(any_=[deployment.id])))
                bad = [r for r in runs if r.state and r.state.type.value in ("FAILED", "CRASHED")]
                assert not bad, f"{bad[0].state}\n{serve_log.read_text()[-3000:]}"
                done = next((r for r in runs if r.auto_scheduled and r.state and r.state.is_completed()), None)
                if done is None:
                    time.sleep(1)
            assert deployment.schedules and deployment.schedules[0].schedule.interval.total_seconds() == 5
            assert done.parameters == {"recipe": str(recipe), "root": str(root)}
            # the run's own table of the versions it produced; each one is in the store
            [artifact] = [a for a in _artifacts_of(client, done.id) if a.key == "textmill-pipeline-versions"]
            rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
            assert {(r["partition"], r["stage"]) for r in rows} == {
                ("CC-S", "raw"), ("CC-S", "deduped"), ("CC-S", "filtered"), ("CC-S", "rewritten"), (MIX, "mixed")}
            store = Store(str(root))
            for row in rows:
                assert store.manifest(row["stage"], row["partition"], row["version"]) is not None, row
            # the core's log lines reached the server from the engine process that ran the flow
            logs = client.read_logs(log_filter=LogFilter(name=LogFilterName(any_=["textmill.stages"])))
            assert any(log.message == "raw CC-S: 1/1 files ingested" for log in logs), [l.message for l in logs]
    finally:
        _stop(serve)


def _artifacts_of(client, flow_run_id) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
