"""The rewrite stage's HTTP backend when the LLM server or the network misbehaves.

A real llama.cpp server (SmolLM2-135M, `llm_server`) sits behind `FaultProxy`, which resets
connections, answers 500/503/429 (with Retry-After), holds replies past the client's timeout,
cuts replies short, and sends 200s that are not chat completions (bad JSON, missing fields).

- Transient faults are retried: the stage completes with every document answered, and the
  retries are counted by kind in the manifest (one retry per injected fault).
- Requests that still fail are never cached and never become rewrites: with more failures
  than `checks.max_failed_request_share` no version is written; when the recipe tolerates
  them, each failed document is listed in `dropped-*.parquet` (`request_failed`, with the
  error) and counted in the manifest; a later version fills them in with new requests only
  for what failed.
- Nothing a fault produced reaches the cache or the output: every cached reply is one the
  server delivered whole.

Budgets are tiny (6 documents of 160 characters, 8-token replies): on a loaded 2-core machine
SmolLM2 still takes up to several seconds a reply.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import polars as pl
import pytest

from fault_proxy import OPENAI_MODES, FaultProxy  # noqa: E402
from llm_server import ScriptedServer  # noqa: E402
from textmill import stages  # noqa: E402
from textmill.config import DedupConfig, FilteredConfig, RawConfig  # noqa: E402
from textmill.executor import SerialExecutor  # noqa: E402
from textmill.rewrite.backends import BackendError, OpenAIBackend, OpenAIBackendConfig  # noqa: E402
from textmill.rewrite.cache import RewriteCache  # noqa: E402
from textmill.rewrite.config import PostprocessConfig, RewriteChecks, RewriteConfig  # noqa: E402
from textmill.stages import RewriteIncomplete  # noqa: E402
from textmill.storage import Manifest, Store  # noqa: E402

pytest_plugins = ["llm_server"]

SAMPLE = Path(__file__).resolve().parents[1] / "textmill" / "sample"
LANDING = {"a.jsonl.gz": SAMPLE / "jsonl" / "cc_en_head-0091.jsonl.gz",
           "b.jsonl.gz": SAMPLE / "jsonl" / "cc_en_head-0174.jsonl.gz",
           "c.warc.gz": SAMPLE / "warc" / "cc-main-2019-commoncrawl-org.warc.gz"}
# SmolLM2 with 24 tokens writes short, cut-off text: these tests are about transport, not quality
LENIENT = PostprocessConfig(min_chars=10, min_length_ratio=0.01, drop_truncated=False, same_language=False,
                            max_copied_share=None, min_parent_word_share=None)
# which `Completion.failures` kind each proxy mode shows up as
TIMEOUT_S = 8.0  # a real reply takes ~0.3-6 s on a loaded machine; a `stall` fault is held past this
# the faults the stage meets on the real server (the rest of OPENAI_MODES: each fault test below)
STAGE_MODES = ("reset_after_forward", "http_500", "http_429", "stall", "truncated", "malformed_json",
               "missing_fields")
KIND = {"reset_before": "connection", "reset_after_forward": "connection", "http_500": "http_500",
        "http_503": "http_503", "http_429": "http_429", "stall": "timeout", "slow": "timeout",
        "truncated": "incomplete_reply",
        "malformed_json": "malformed_reply", "missing_fields": "malformed_reply"}


def _backend(url: str, **kw) -> OpenAIBackend:
    base = dict(base_url=url, model="smollm2-135m", max_tokens=8, timeout_s=60.0, max_retries=3, backoff_s=0.05,
                backoff_max_s=2.0, concurrency=2)
    return OpenAIBackend(OpenAIBackendConfig(**(base | kw)))


def _config(**kw) -> RewriteConfig:
    """6 documents cut to 160 characters, the short WRAP prompt: llama.cpp reuses the shared prompt
    prefix, so a request costs well under a second even on a loaded machine."""
    return RewriteConfig(**({"max_documents": 6, "prompts": ("wrap_wikipedia",), "max_input_chars": 160,
                             "rescore": False, "batch_size": 2, "postprocess": LENIENT} | kw))


@pytest.fixture(scope="module")
def filtered_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A local root with raw → deduped → filtered of the sample crawl (6 recyclable rejects)."""
    root = tmp_path_factory.mktemp("llm-faults") / "root"
    store = Store(str(root))
    for name, path in LANDING.items():
        store.write_bytes(store.path("landing", "c1", name), path.read_bytes())
    executor = SerialExecutor()
    raw = stages.raw(store=store, crawl="c1", config=RawConfig(), executor=executor)
    deduped = stages.deduped(store=store, crawl="c1", raw_version=raw.version, config=DedupConfig(), executor=executor)
    filtered = stages.filtered(store=store, crawl="c1", deduped_version=deduped.version, config=FilteredConfig(),
                               executor=executor)
    assert filtered.manifest.statistics["recyclable"] >= 5
    return root, filtered.version


@pytest.fixture(scope="module")
def warm_llm(llm_server: str) -> str:
    """The llama.cpp server with the WRAP prompt's prefix already evaluated (it reuses it)."""
    from textmill.rewrite.prompts import get_prompt

    prompt = get_prompt("wrap_wikipedia")
    _backend(llm_server).generate(prompt.render("The mill opens at seven."), system=prompt.system)
    return llm_server


@pytest.fixture
def fresh(filtered_root: tuple[Path, str], tmp_path: Path) -> tuple[Store, str]:
    """A copy of that root for one test (its own cache and rewritten versions)."""
    root, version = filtered_root
    shutil.copytree(root, tmp_path / "root")
    return Store(str(tmp_path / "root")), version


def _delivered_texts(proxy: FaultProxy) -> set[str]:
    """The reply texts the server got through to the client whole."""
    texts = set()
    for body in proxy.delivered:
        reply = json.loads(body)
        texts.add(reply["choices"][0]["message"]["content"])
    return texts


def _assert_only_whole_replies(store: Store, proxy_texts: set[str], manifest: Manifest | None = None) -> pl.DataFrame:
    """Every cached reply is one the server delivered whole; every kept rewrite comes from one."""
    cache = RewriteCache(store)
    scan = cache._scan()
    cached = scan.collect() if scan is not None else pl.DataFrame({"key": [], "reply": []})
    assert set(cached["reply"].to_list()) <= proxy_texts
    assert cached["key"].is_unique().all()
    if manifest is not None:
        rows = store.scan(manifest).collect()
        by_key = dict(zip(cached["key"].to_list(), cached["reply"].to_list()))
        for key, text in zip(rows["rewrite_key"].to_list(), rows["text"].to_list()):
            assert key in by_key and text.strip()
            assert set(re.findall(r"\w+", text)) <= set(re.findall(r"\w+", by_key[key]))  # cleaned, not changed
    return cached


def _dropped(store: Store, manifest: Manifest) -> pl.DataFrame:
    frame = store.scan_extra(manifest, "dropped")
    return frame.collect() if frame is not None else pl.DataFrame(schema={"parent_id": pl.String})


@pytest.mark.slow
def test_transient_faults_are_retried_and_the_stage_completes(warm_llm: str, fresh) -> None:
    store, filtered_version = fresh
    # one request at a time, so the seeded faults fall on the same requests on every run: seed 22
    # at rate 0.5 faults 7 of 13 requests (.FF.FF.F.F.F.), each mode of STAGE_MODES once
    with FaultProxy(warm_llm, flavor="openai", seed=22, rate=0.5, modes=STAGE_MODES, slow_s=TIMEOUT_S + 1,
                    retry_after_s=1.0, keep_bodies=True) as proxy:
        backend = _backend(f"{proxy.url}/v1", concurrency=1, max_retries=8, timeout_s=TIMEOUT_S)
        result = stages.rewritten(store=store, crawl="c1", filtered_version=filtered_version, config=_config(),
                                  backend=backend)
    stats = result.manifest.statistics["rewrites"]
    # every mode was injected, and every fault cost exactly one retry of its kind
    assert set(proxy.injected) == set(STAGE_MODES), proxy.injected
    expected: dict[str, int] = {}
    for mode, count in proxy.injected.items():
        expected[KIND[mode]] = expected.get(KIND[mode], 0) + count
    # Faults made by the proxy alone are seen exactly as injected. A fault on a forwarded request
    # (reset after forward, truncated) waits for the model's reply first: when that reply takes
    # longer than TIMEOUT_S on a loaded machine, the client sees a timeout instead; the only slack.
    retried = dict(stats["retries_by_reason"])
    for kind in ("http_500", "http_429", "malformed_reply"):
        assert retried.get(kind, 0) == expected[kind], (kind, retried, expected)
    assert retried.get("connection", 0) <= expected["connection"], retried
    assert retried.get("incomplete_reply", 0) <= expected["incomplete_reply"], retried
    assert retried.get("timeout", 0) >= expected["timeout"], retried
    assert sum(retried.values()) == stats["retries"] >= proxy.total_injected
    assert stats["failed"] == 0 and stats["failed_by_reason"] == {}
    # every selected document was answered: nothing dropped for a failed request
    assert stats["unique_requests"] == result.manifest.statistics["selected"] >= 5
    assert "request_failed" not in result.manifest.statistics["dropped_by_reason"]
    assert result.manifest.rows + stats["dropped"] == stats["tasks"] and result.manifest.rows > 0
    cached = _assert_only_whole_replies(store, _delivered_texts(proxy), result.manifest)
    assert cached.height == stats["unique_requests"]
    # a 429 was followed by a wait of at least its Retry-After before the next attempt
    times = [entry[3] for entry in proxy.log]
    waits = [times[i + 1] - times[i] for i, entry in enumerate(proxy.log[:-1]) if entry[2] == "http_429"]
    assert waits and min(waits) >= 1.0


@pytest.mark.slow
def test_failed_requests_are_recorded_never_cached_and_filled_in_later(warm_llm: str, fresh) -> None:
    store, filtered_version = fresh
    broken = ["http_500", "reset_before", "malformed_json", "missing_fields", "http_503"]  # none reaches the model
    with FaultProxy(warm_llm, flavor="openai", seed=2, keep_bodies=True) as proxy:
        # the first three requests get through, then nothing does
        proxy.configure(rate=1.0, modes=broken, after=3)
        backend = _backend(f"{proxy.url}/v1", max_retries=1)
        with pytest.raises(RewriteIncomplete, match=r"rewritten c1: 3 of 6 requests failed after retries"):
            stages.rewritten(store=store, crawl="c1", filtered_version=filtered_version, config=_config(),
                             backend=backend)
        assert store.versions("rewritten", "c1") == []  # too many failures: no version at all
        assert len(RewriteCache(store)) == 3  # what arrived is kept for the next run

        # a recipe that tolerates failures gets a version that lists them; only the missing 3 are asked for
        tolerant = _config(checks=RewriteChecks(max_failed_request_share=1.0))
        result = stages.rewritten(store=store, crawl="c1", filtered_version=filtered_version, config=tolerant,
                                  backend=backend)
        texts = _delivered_texts(proxy)
    statistics = result.manifest.statistics
    assert statistics["rewrites"]["cache_hits"] == 3 and statistics["rewrites"]["failed"] == 3
    assert statistics["dropped_by_reason"]["request_failed"] == 3
    assert sum(statistics["rewrites"]["failed_by_reason"].values()) == 3
    assert set(statistics["rewrites"]["failed_by_reason"]) <= {KIND[m] for m in broken}
    dropped = _dropped(store, result.manifest)
    failed = dropped.filter(pl.col("drop_reason") == "request_failed")
    assert failed.height == 3 and failed["reply"].null_count() == 3
    assert all("failed after 2 attempt(s)" in detail for detail in failed["detail"].to_list())
    assert set(failed["parent_id"].to_list()).isdisjoint(store.scan(result.manifest).collect()["parent_id"].to_list())
    _assert_only_whole_replies(store, texts, result.manifest)
    assert len(RewriteCache(store)) == 3

    # a later version (another post-processing threshold) on a healthy link: exactly the 3 missing requests
    with FaultProxy(warm_llm, flavor="openai", keep_bodies=True) as clean:
        later = stages.rewritten(store=store, crawl="c1", filtered_version=filtered_version,
                                 config=_config(postprocess=LENIENT.model_copy(update={"min_chars": 11})),
                                 backend=_backend(f"{clean.url}/v1"))
    assert later.version != result.version
    assert later.manifest.statistics["rewrites"]["requests"] == 3 == clean.forwarded
    assert later.manifest.statistics["rewrites"]["cache_hits"] == 3
    assert "request_failed" not in later.manifest.statistics["dropped_by_reason"]
    _assert_only_whole_replies(store, texts | _delivered_texts(clean), later.manifest)
    assert len(RewriteCache(store)) == 6


def _reply_for(prompt: str) -> str:
    return "A tidy rewrite of the document."


@pytest.mark.parametrize("mode", OPENAI_MODES + ("slow",))
def test_each_fault_is_retried_and_never_taken_for_a_reply(mode: str) -> None:
    """One fault of each kind in front of a scripted server: the backend retries it and returns
    the real reply, with the fault's kind recorded; without retries it fails, never returning
    an empty or partial text."""
    with ScriptedServer(reply=_reply_for) as server, \
            FaultProxy(server.base_url, flavor="openai", seed=1, slow_s=1.5, retry_after_s=0.6) as proxy:
        first = iter([True])
        proxy.configure(rate=1.0, modes=[mode], match=lambda method, path: next(first, False))
        backend = _backend(f"{proxy.url}/v1", timeout_s=0.5, max_retries=2)
        started = time.monotonic()
        reply = backend.generate("Rewrite: the mill opens at seven.")
        elapsed = time.monotonic() - started
        assert reply.text == "A tidy rewrite of the document." and reply.finish_reason == "stop"
        assert reply.attempts == 2 and reply.failures == (KIND[mode],) and proxy.injected == {mode: 1}
        if mode in ("reset_after_forward", "truncated"):  # the server answered; the client never got it whole
            assert server.requests == 2
        elif mode != "slow":
            assert server.requests == 1
        if mode == "http_429":
            assert elapsed >= 0.6  # Retry-After, not the 0.05 s backoff

        proxy.configure(rate=1.0, match=lambda method, path: True)  # every attempt now
        with pytest.raises(BackendError) as failure:
            _backend(f"{proxy.url}/v1", timeout_s=0.5, max_retries=1).generate("Rewrite: the mill.")
        assert failure.value.attempts == 2 and failure.value.failures == (KIND[mode],) * 2
        assert "failed after 2 attempt(s)" in str(failure.value) or "on 2 attempt(s)" in str(failure.value)


def test_fault_proxy_openai_payloads() -> None:
    """What the OpenAI-flavoured faults look like on the wire (so the tests above test something)."""
    import http.client

    def post(proxy: FaultProxy) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
        conn.request("POST", "/v1/chat/completions", body=b'{"model": "m", "messages": []}',
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        out = response.status, dict(response.getheaders()), response.read()
        conn.close()
        return out

    with ScriptedServer(reply=_reply_for) as server, FaultProxy(server.base_url, flavor="openai",
                                                                retry_after_s=2) as proxy:
        proxy.configure(rate=1.0, modes=["http_429", "malformed_json", "missing_fields", "missing_fields",
                                         "missing_fields"])
        status, headers, body = post(proxy)
        assert status == 429 and headers["Retry-After"] == "2" and json.loads(body)["error"]["code"] == 429
        status, _, body = post(proxy)
        assert status == 200
        with pytest.raises(ValueError):
            json.loads(body)
        shapes = [json.loads(post(proxy)[2]) for _ in range(3)]
        assert all(s.get("choices") in (None, []) or "content" not in s["choices"][0]["message"] for s in shapes)
        assert len({json.dumps(sorted(s)) + str(s.get("choices")) for s in shapes}) == 3  # three different shapes
        assert server.requests == 0 and proxy.forwarded == 0

