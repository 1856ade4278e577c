"""Structured logs: JSON lines with the stage fields, and textmill's records in Dagster's run log."""

from __future__ import annotations

import io
import json
import logging
import shutil
import sys
from pathlib import Path

import pytest

from textmill import stages
from textmill.config import RawConfig
from textmill.executor import SerialExecutor
from textmill.logs import JsonFormatter, configure_logging
from textmill.storage import Store

SAMPLE = Path(__file__).resolve().parents[1] / "textmill" / "sample" / "jsonl" / "cc_en_head-0091.jsonl.gz"
CRAWL = "CC-LOG"


def _land(root: Path) -> None:
    (root / "landing" / CRAWL / "jsonl").mkdir(parents=True, exist_ok=True)
    shutil.copy(SAMPLE, root / "landing" / CRAWL / "jsonl" / SAMPLE.name)


@pytest.fixture
def json_lines():
    """The `textmill` logger writing JSON lines into a buffer; restored afterwards."""
    logger = logging.getLogger("textmill")
    handlers, level = list(logger.handlers), logger.level
    buffer = io.StringIO()
    configure_logging(json=True, stream=buffer)
    yield lambda: [json.loads(line) for line in buffer.getvalue().splitlines()]
    logger.handlers[:] = handlers
    logger.setLevel(level)


def test_stage_logs_start_and_finish_as_json_with_timings_and_counts(tmp_path, json_lines):
    _land(tmp_path)
    store = Store(str(tmp_path))
    first = stages.raw(store=store, crawl=CRAWL, config=RawConfig(), executor=SerialExecutor())
    again = stages.raw(store=store, crawl=CRAWL, config=RawConfig(), executor=SerialExecutor())
    records = json_lines()
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert all(r["time"].endswith("+00:00") for r in records)
    started = [r for r in records if r.get("event") == "stage_started"]
    finished = [r for r in records if r.get("event") == "stage_finished"]
    assert [(r["stage"], r["partition"]) for r in started] == [("raw", CRAWL)] * 2
    assert [r["reused"] for r in finished] == [False, True]
    built = finished[0]
    assert built["logger"] == "textmill.stages" and built["level"] == "INFO"
    assert built["version"] == first.version == again.version
    assert built["rows_out"] == first.manifest.rows > 0
    assert built["rows_in"] == first.manifest.statistics["records_read"]
    assert built["code_version"] == stages.CODE_VERSIONS["raw"]
    assert 0 < built["seconds"] == first.seconds and again.seconds < first.seconds
    assert built["message"].startswith(f"stage finished: raw {CRAWL} {first.version}")
    progress = [r for r in records if "progress" in r]
    assert progress and progress[0]["progress"][0] == "raw"  # extra tuples become JSON lists


def test_a_failing_stage_logs_stage_failed_with_the_error(tmp_path, json_lines):
    with pytest.raises(FileNotFoundError):
        stages.raw(store=Store(str(tmp_path)), crawl="CC-EMPTY", config=RawConfig(), executor=SerialExecutor())
    failed = [r for r in json_lines() if r.get("event") == "stage_failed"]
    assert len(failed) == 1 and failed[0]["level"] == "ERROR" and "FileNotFoundError" in failed[0]["error"]
    assert failed[0]["partition"] == "CC-EMPTY" and failed[0]["seconds"] >= 0


def test_formatter_keeps_extras_exceptions_and_odd_values():
    record = logging.LogRecord("textmill.x", logging.WARNING, __file__, 1, "%d rows left", (3,), None)
    record.path = Path("/tmp/a")
    record.rows = 3
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    payload = json.loads(JsonFormatter().format(record))
    assert payload["message"] == "3 rows left" and payload["level"] == "WARNING" and payload["logger"] == "textmill.x"
    assert payload["rows"] == 3 and payload["path"] == "/tmp/a" and "ValueError: boom" in payload["exception"]
    assert "args" not in payload and "msg" not in payload


def test_configure_logging_replaces_its_own_handler():
    logger = logging.getLogger("textmill")
    handlers, level = list(logger.handlers), logger.level
    try:
        configure_logging(json=True, stream=io.StringIO())
        configure_logging(json=False, stream=io.StringIO())
        ours = [h for h in logger.handlers if h not in handlers]
        assert len(ours) == 1 and not isinstance(ours[0].formatter, JsonFormatter)
    finally:
        logger.handlers[:] = handlers
        logger.setLevel(level)


def test_dagster_run_log_holds_textmill_stage_records(tmp_path, monkeypatch):
    """The DAGSTER_HOME the CLI prepares makes Dagster capture the `textmill` logger in each run's event log."""
    from dagster import DagsterInstance, materialize

    from assets.raw import raw
    from assets.resources import TextmillResource
    from textmill import cli

    for name in ("TEXTMILL_RECIPE", "TEXTMILL_ROOT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    root = tmp_path / "data"
    _land(root)
    cli._configure(None, str(root))
    assert "managed_python_loggers: [textmill]" in (tmp_path / "dagster" / "dagster.yaml").read_text()
    with DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("crawls", [CRAWL])
        result = materialize([raw], partition_key=CRAWL, instance=instance,
                             resources={"textmill": TextmillResource(root=str(root))})
        assert result.success
        messages = [(entry.step_key, entry.user_message) for entry in instance.all_logs(result.run_id)
                    if entry.dagster_event is None]
    version = Store(str(root)).latest("raw", CRAWL).version
    finished = [m for m in messages if m[1].startswith(f"stage finished: raw {CRAWL} {version}")]
    assert finished and finished[0][0] == "raw", messages
    materialization = result.asset_materializations_for_node("raw")[0]
    meta = {key: value.value for key, value in materialization.metadata.items()}
    assert meta["code_version"] == stages.CODE_VERSIONS["raw"] and meta["stage_seconds"] > 0
