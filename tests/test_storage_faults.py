"""The pipeline on S3 when the network misbehaves: a real moto server behind `FaultProxy`.

- A share of requests fails (resets before, during and after the request, 500, 503 SlowDown,
  replies slower than the client's timeout, truncated replies): the clients' retries carry the
  run through, and it writes the same versions, byte for byte, as a run without faults.
- Failures that retries cannot get through (every write answered 503 SlowDown; the endpoint
  going away mid-version; every read of a part failing): the run stops with an error that
  names the store, the operation and the path; the last good version stays listed and
  readable; the unfinished one is invisible and the next healthy run replaces it.

Retries are the Store's defaults (botocore standard mode, Polars' object_store retries) with
short timeouts, so a held reply costs seconds, not minutes.
"""

from __future__ import annotations

import hashlib
import http.client
import posixpath
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import polars as pl
import pytest

pytest.register_assert_rewrite("llm_server")  # also a plugin of other test modules
from fault_proxy import S3_MODES, FaultProxy  # noqa: E402
from llm_server import ScriptedServer  # noqa: E402
from textmill import stages  # noqa: E402
from textmill.config import DedupConfig, FilteredConfig, RawConfig  # noqa: E402
from textmill.executor import SerialExecutor  # noqa: E402
from textmill.filters.config import GopherQualityRules  # noqa: E402
from textmill.mix.config import ExportConfig, MixComponent, MixConfig  # noqa: E402
from textmill.rewrite.backends import OpenAIBackend, OpenAIBackendConfig  # noqa: E402
from textmill.rewrite.config import PostprocessConfig, RewriteConfig  # noqa: E402
from textmill.storage import POLARS_RETRY_DEFAULTS, S3FS_RETRY_DEFAULTS, Manifest, Store, StoreError  # noqa: E402

pytestmark = pytest.mark.slow

SAMPLE = Path(__file__).resolve().parents[1] / "textmill" / "sample"
LANDING = {"a.jsonl.gz": SAMPLE / "jsonl" / "cc_en_head-0091.jsonl.gz",
           "b.jsonl.gz": SAMPLE / "jsonl" / "cc_en_head-0174.jsonl.gz",
           "c.warc.gz": SAMPLE / "warc" / "cc-main-2019-commoncrawl-org.warc.gz"}
# short timeouts so that a `slow` fault costs ~2 s; retry counts stay the Store's defaults
FAST = {"config_kwargs": {"connect_timeout": 1.5, "read_timeout": 1.5},
        "polars": {"timeout": "2s", "connect_timeout": "1500ms"}}
SLOW_S = 3.0  # longer than both clients' timeouts
FAULT_RATE = 0.1
STAGES = ("raw", "deduped", "filtered", "rewritten", "mixed")


def _store(endpoint: str, url: str, **extra: dict) -> Store:
    options = {"endpoint_url": endpoint, "key": "testing", "secret": "testing"} | FAST
    for key, value in extra.items():
        options[key] = options.get(key, {}) | value
    return Store(url, storage_options=options)


def _reply(prompt: str) -> str:
    """A deterministic 'rewrite': the document's first 60 words."""
    body = prompt.split("<document>")[-1].split("</document>")[0]
    return " ".join(body.split()[:60])


def _run(store: Store, llm_url: str, *, mixed: bool = True,
         filtered: FilteredConfig | None = None) -> dict[str, stages.StageResult]:
    """raw → deduped → filtered → rewritten (4 documents) → mixed, serially."""
    executor = SerialExecutor()
    out: dict[str, stages.StageResult] = {}
    out["raw"] = stages.raw(store=store, crawl="c1", config=RawConfig(rows_per_part=150), executor=executor)
    out["deduped"] = stages.deduped(store=store, crawl="c1", raw_version=out["raw"].version, config=DedupConfig(),
                                    executor=executor)
    out["filtered"] = stages.filtered(store=store, crawl="c1", deduped_version=out["deduped"].version,
                                      config=filtered or FilteredConfig(), executor=executor)
    backend = OpenAIBackend(OpenAIBackendConfig(base_url=llm_url, model="scripted", max_tokens=64))
    rewrite = RewriteConfig(max_documents=4, rescore=False, batch_size=2,
                            postprocess=PostprocessConfig(min_parent_word_share=None, max_copied_share=None))
    out["rewritten"] = stages.rewritten(store=store, crawl="c1", filtered_version=out["filtered"].version,
                                        config=rewrite, backend=backend)
    if mixed:
        mix = MixConfig(name="m", total_tokens=20_000, export=ExportConfig(sequence_length=128), components=[
            MixComponent(name="kept", kind="kept", token_share=0.8),
            MixComponent(name="rw", kind="rewritten", token_share=0.2)])
        out["mixed"] = stages.mixed(store=store, config=mix, versions={
            "c1": {"filtered": out["filtered"].version, "rewritten": out["rewritten"].version}})
    return out


def _files(manifest: Manifest) -> list[tuple]:
    listed = [("files", f["path"], f["rows"], f["bytes"], f["sha256"]) for f in manifest.files]
    for name, files in manifest.extra_files.items():
        listed += [(name, f["path"], f["rows"], f["bytes"], f["sha256"]) for f in files]
    return sorted(listed)


def _assert_stored_as_listed(store: Store, manifest: Manifest) -> None:
    """Every file the manifest lists is stored whole: the bytes read back have its size and sha256."""
    folder = store.version_dir(manifest.stage, manifest.partition, manifest.version)
    for _, path, _, size, sha in _files(manifest):
        data = store.read_bytes(posixpath.join(folder, path))
        assert (len(data), hashlib.sha256(data).hexdigest()) == (size, sha), f"{manifest.stage}/{path}"


@pytest.fixture(scope="module")
def llm() -> Iterator[str]:
    with ScriptedServer(reply=_reply) as server:
        yield server.base_url


@pytest.fixture(scope="module")
def landed(moto_s3: dict[str, str]) -> str:
    """A bucket prefix holding landing/c1/ (copied to each test's own prefix by `_fresh`)."""
    url = f"s3://{moto_s3['bucket']}/faults-landing-{uuid.uuid4().hex[:8]}"
    store = _store(moto_s3["endpoint_url"], url)
    for name, path in LANDING.items():
        store.write_bytes(store.path("landing", "c1", name), path.read_bytes())
    return url


def _fresh(moto_s3: dict[str, str], landed: str) -> str:
    """A new prefix with the sample crawl landed (copied server-side, through no proxy)."""
    url = f"s3://{moto_s3['bucket']}/faults-{uuid.uuid4().hex[:10]}"
    direct = _store(moto_s3["endpoint_url"], url)
    source = _store(moto_s3["endpoint_url"], landed)
    for name in LANDING:
        direct.fs.copy(source.path("landing", "c1", name), direct.path("landing", "c1", name))
    return url


@pytest.fixture(scope="module")
def baseline(moto_s3: dict[str, str], landed: str, llm: str) -> tuple[str, dict[str, Manifest]]:
    """The pipeline without any proxy: what every faulty run must reproduce. (prefix, manifests);
    the failure tests add versions of their own next to these."""
    url = _fresh(moto_s3, landed)
    store = _store(moto_s3["endpoint_url"], url)
    return url, {stage: result.manifest for stage, result in _run(store, llm).items()}


def _http(url: str, method: str, path: str, body: bytes | None = None, *,
          timeout: float = 10.0) -> tuple[int, bytes]:
    """One plain unsigned HTTP/1.1 request (moto takes them; objects are put public-read): (status, body)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"x-amz-acl": "public-read"} if method == "PUT" else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_fault_proxy_forwards_byte_for_byte_and_injects_each_mode(moto_s3):
    """FaultProxy itself, seen by a plain HTTP client: what each mode does, and the counters."""
    upstream, key = moto_s3["endpoint_url"], f"/{moto_s3['bucket']}/proxy-{uuid.uuid4().hex[:8]}"
    blob = bytes(range(256)) * 4096  # 1 MiB
    with FaultProxy(upstream, flavor="s3", seed=7, slow_s=2.0) as proxy:
        assert _http(proxy.url, "PUT", key, blob)[0] == 200
        assert _http(proxy.url, "GET", key) == (200, blob) == _http(upstream, "GET", key)
        assert proxy.total_injected == 0 and proxy.forwarded == 2

        def once(mode: str) -> None:
            proxy.configure(rate=1.0, modes=[mode])

        once("reset_before")  # never reaches moto
        with pytest.raises(ConnectionError):
            _http(proxy.url, "PUT", key + "-a", b"x")
        assert _http(upstream, "GET", key + "-a")[0] == 404
        once("reset_mid_request")
        with pytest.raises(ConnectionError):
            _http(proxy.url, "PUT", key + "-b", blob)
        assert _http(upstream, "GET", key + "-b")[0] == 404
        once("reset_after_forward")  # moto stored it, the client never hears
        with pytest.raises(ConnectionError):
            _http(proxy.url, "PUT", key + "-c", b"stored")
        assert _http(upstream, "GET", key + "-c") == (200, b"stored")
        once("http_500")
        status, body = _http(proxy.url, "GET", key)
        assert status == 500 and b"<Code>InternalError</Code>" in body
        once("http_503")
        status, body = _http(proxy.url, "GET", key)
        assert status == 503 and b"<Code>SlowDown</Code>" in body
        once("truncated")
        with pytest.raises(http.client.IncompleteRead):
            _http(proxy.url, "GET", key)
        once("slow")
        with pytest.raises(TimeoutError):
            _http(proxy.url, "GET", key, timeout=0.5)
        assert dict(proxy.injected) == {mode: 1 for mode in S3_MODES}

        # a share of the requests, modes in turn; `after` spares the first ones; `match` picks
        proxy.configure(rate=0.5, modes=["http_500", "http_503"], after=3, match=lambda m, p: m == "GET")
        statuses = [_http(proxy.url, "GET", key)[0] for _ in range(23)]
        assert statuses[:3] == [200] * 3 and 5 <= statuses.count(500) + statuses.count(503) <= 15
        assert abs(statuses.count(500) - statuses.count(503)) <= 1
        assert _http(proxy.url, "HEAD", key)[0] == 200  # not matched

        proxy.configure(rate=1.0, modes=["down"])
        with pytest.raises(ConnectionError):
            _http(proxy.url, "GET", key)
        with pytest.raises(ConnectionRefusedError):
            _http(proxy.url, "GET", key)


def test_retry_settings_default_and_a_recipe_overrides_them(moto_s3):
    """Both clients get the Store's retry and timeout defaults; a recipe's values win key by key."""
    url = f"s3://{moto_s3['bucket']}/settings-{uuid.uuid4().hex[:8]}"
    plain = Store(url, storage_options={"endpoint_url": moto_s3["endpoint_url"]})
    assert plain.fs.config_kwargs == S3FS_RETRY_DEFAULTS["config_kwargs"]
    assert plain.polars_options() == {"aws_endpoint_url": moto_s3["endpoint_url"], "aws_allow_http": "true"} \
        | POLARS_RETRY_DEFAULTS
    tuned = Store(url, storage_options={"endpoint_url": moto_s3["endpoint_url"], "polars": {"max_retries": 2},
                                        "config_kwargs": {"retries": {"max_attempts": 9},
                                                          "s3": {"addressing_style": "path"}}})
    assert tuned.fs.config_kwargs == {"retries": {"max_attempts": 9, "mode": "standard"}, "connect_timeout": 10,
                                      "read_timeout": 30, "s3": {"addressing_style": "path"}}
    assert tuned.polars_options()["max_retries"] == 2 and tuned.polars_options()["timeout"] == "120s"
    plain.write_bytes(plain.path("probe"), b"x")  # botocore now holds Configs made from those dicts...
    tuned.write_bytes(tuned.path("probe"), b"x")
    assert tuned.fs.s3.meta.config.retries == {"mode": "standard", "total_max_attempts": 10}
    assert S3FS_RETRY_DEFAULTS["config_kwargs"]["retries"] == {"max_attempts": 3, "mode": "standard"}  # ...not ours
    assert "polars" not in tuned.fs.storage_options  # Polars' keys never reach fsspec


def test_pipeline_completes_through_transient_faults_with_identical_versions(moto_s3, landed, llm, baseline):
    _, expected = baseline
    url = _fresh(moto_s3, landed)
    with FaultProxy(moto_s3["endpoint_url"], flavor="s3", seed=11, rate=FAULT_RATE, slow_s=SLOW_S) as proxy:
        results = _run(_store(proxy.url, url), llm)
    # the faults really happened, every mode of them, on a real share of the traffic
    assert set(proxy.injected) == set(S3_MODES), proxy.injected
    assert proxy.total_injected >= 0.05 * proxy.requests, (proxy.total_injected, proxy.requests)
    writes = [entry for entry in proxy.log if entry[0] == "PUT" and entry[2] != "forward"]
    reads = [entry for entry in proxy.log if entry[0] == "GET" and entry[2] != "forward"]
    assert writes and reads  # both clients (s3fs writes, Polars and s3fs reads) were hit

    direct = _store(moto_s3["endpoint_url"], url)
    for stage in STAGES:
        manifest = results[stage].manifest
        assert manifest.version == expected[stage].version, stage
        assert _files(manifest) == _files(expected[stage]), stage
        _assert_stored_as_listed(direct, manifest)
        assert [m.version for m in direct.versions(stage, manifest.partition)] == [manifest.version]
    # no work folders left behind by retried phases
    assert direct.listdir(direct.path("tmp", "deduped", "c1")) == []
    assert direct.listdir(direct.path("tmp", "filtered", "c1")) == []


def _filter(min_doc_words: int) -> FilteredConfig:
    """Another filtered version of the same crawl (a new version id, the same inputs)."""
    return FilteredConfig(gopher_quality=GopherQualityRules(min_doc_words=min_doc_words))


def _assert_good_intact(direct: Store, good: Manifest, failed_version: str) -> None:
    """The good version is listed, unchanged and readable; the failed attempt is not a version."""
    listed = {m.version: m for m in direct.versions(good.stage, good.partition)}
    assert good.version in listed and listed[good.version].created_at == good.created_at
    assert failed_version not in listed and direct.manifest(good.stage, good.partition, failed_version) is None
    _assert_stored_as_listed(direct, good)
    assert direct.scan(good).select(pl.len()).collect().item() == good.rows


def _version_in(message: str, stage: str) -> str:
    return message.split(f"/{stage}/c1/")[1].split("/")[0]


def test_writes_that_keep_failing_stop_the_run_with_a_clear_error(moto_s3, baseline):
    url, good = baseline
    direct = _store(moto_s3["endpoint_url"], url)
    with FaultProxy(moto_s3["endpoint_url"], flavor="s3", seed=5) as proxy:
        # from the third write on, every PUT gets 503 SlowDown: past every retry
        proxy.configure(rate=1.0, modes=["http_503"], after=2, match=lambda method, path: method == "PUT")
        store = _store(proxy.url, url, config_kwargs={"retries": {"max_attempts": 1}})
        started = time.monotonic()
        with pytest.raises(StoreError) as failure:
            stages.filtered(store=store, crawl="c1", deduped_version=good["deduped"].version, config=_filter(80),
                            executor=SerialExecutor())
        elapsed = time.monotonic() - started
    message = str(failure.value)
    assert message.startswith(f"store {url}: write s3://") and "/filtered/c1/" in message, message
    assert "failed after retries" in message and "SlowDown" in message, message
    assert proxy.injected["http_503"] >= 4 and elapsed < 60  # botocore's 2 attempts, s3fs's rounds on top
    failed = _version_in(message, "filtered")
    assert failed != good["filtered"].version
    _assert_good_intact(direct, good["filtered"], failed)

    # a healthy rerun clears the unfinished attempt and writes the version whole
    again = stages.filtered(store=direct, crawl="c1", deduped_version=good["deduped"].version, config=_filter(80),
                            executor=SerialExecutor())
    assert again.version == failed and not again.reused
    listed = {f[1] for f in _files(again.manifest)} | {"_manifest.json"}
    assert set(direct.listdir(direct.version_dir("filtered", "c1", failed))) == listed
    _assert_stored_as_listed(direct, again.manifest)
    _assert_good_intact(direct, good["filtered"], "0" * 16)


def test_the_endpoint_going_away_mid_version_leaves_the_last_good_version(moto_s3, baseline):
    url, good = baseline
    direct = _store(moto_s3["endpoint_url"], url)
    with FaultProxy(moto_s3["endpoint_url"], flavor="s3", seed=9) as proxy:
        # the second part written into the new deduped version takes the proxy down for good
        proxy.configure(rate=1.0, modes=["down"], after=1,
                        match=lambda method, path: method == "PUT" and "/datasets/deduped/" in path)
        store = _store(proxy.url, url, config_kwargs={"retries": {"max_attempts": 2}})
        with pytest.raises(StoreError) as failure:
            stages.deduped(store=store, crawl="c1", raw_version=good["raw"].version,
                           config=DedupConfig(case_fold=True), executor=SerialExecutor())
    message = str(failure.value)
    assert message.startswith(f"store {url}: write s3://") and "/datasets/deduped/c1/" in message, message
    assert "failed after retries" in message and "Could not connect" in message, message
    assert proxy.injected["down"] == 1
    failed = _version_in(message, "deduped")
    assert len(direct.listdir(direct.version_dir("deduped", "c1", failed))) == 1  # one part, no manifest
    _assert_good_intact(direct, good["deduped"], failed)
    # what was built on the good version is untouched and readable
    _assert_good_intact(direct, good["filtered"], failed)


def test_reads_that_keep_failing_name_the_part_and_the_retries(moto_s3, baseline):
    """Polars scans (object_store) retry too; when they give up, the error names the part's URL."""
    url, good = baseline
    direct = _store(moto_s3["endpoint_url"], url)
    versions_before = {m.version for m in direct.versions("filtered", "c1")}
    with FaultProxy(moto_s3["endpoint_url"], flavor="s3", seed=3) as proxy:
        proxy.configure(rate=1.0, modes=["http_500"], match=lambda method, path: method == "GET"
                        and "/datasets/deduped/" in path and path.endswith(".parquet"))
        store = _store(proxy.url, url, polars={"max_retries": 2, "retry_init_backoff_ms": 50})
        with pytest.raises(OSError) as failure:
            stages.filtered(store=store, crawl="c1", deduped_version=good["deduped"].version, config=_filter(60),
                            executor=SerialExecutor())
    message = str(failure.value)
    assert f"{url}/datasets/deduped/c1/{good['deduped'].version}/part-" in message, message
    assert "after 2 retries" in message and "500" in message, message
    assert proxy.injected["http_500"] >= 3  # the first try and two retries
    _assert_good_intact(direct, good["filtered"], "0" * 16)
    assert {m.version for m in direct.versions("filtered", "c1")} == versions_before  # no new version appeared
