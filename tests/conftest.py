"""Shared fixtures: the bundled real samples, a landing folder, and a real S3 API (moto server on 127.0.0.1).

Sections (keep them in this order; append new fixtures to the section they belong to):
  samples        paths of the bundled crawl files
  synthetic WARC builders for hand-made records and a splitter for real .warc.gz members
  landing / raw  a storage root with landing/{crawl}/, a file dropper and a helper that runs the raw stage
  s3             one moto server per session, a fresh bucket prefix per test
"""

from __future__ import annotations

import gzip
import hashlib
import uuid
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterator

import pytest

# helper modules with asserts and fixtures that test modules import: rewritten before any of them loads
pytest.register_assert_rewrite("llm_server", "processes")

from textmill.config import RawConfig  # noqa: E402
from textmill.executor import SerialExecutor  # noqa: E402
from textmill.stages import StageResult, raw  # noqa: E402
from textmill.storage import Store  # noqa: E402

SAMPLE_ROOT = Path(__file__).resolve().parents[1] / "textmill" / "sample"


# samples ---------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def sample() -> Callable[[str], Path]:
    """`sample("cc-main-2020-34-sample.warc.gz")`: path of a bundled sample file (warc/ or jsonl/)."""

    def find(name: str) -> Path:
        for folder in ("warc", "jsonl"):
            path = SAMPLE_ROOT / folder / name
            if path.exists():
                return path
        raise FileNotFoundError(f"no bundled sample named {name}")

    return find


# synthetic WARC ----------------------------------------------------------------------------
def _warc_record(block: bytes, *, rtype: str = "response", url: str = "http://example.com/",
                 date: str = "2024-01-02T03:04:05Z", content_type: str | None = None,
                 record_id: str | None = None) -> bytes:
    """One WARC/1.0 record (uncompressed) around `block`; the record id is derived from url and block."""
    if content_type is None:
        content_type = {"response": "application/http; msgtype=response", "conversion": "text/plain"}.get(
            rtype, "text/html")
    rid = record_id or str(uuid.uuid5(uuid.NAMESPACE_URL, url + hashlib.sha1(block).hexdigest()))
    head = (f"WARC/1.0\r\nWARC-Type: {rtype}\r\nWARC-Target-URI: {url}\r\nWARC-Date: {date}\r\n"
            f"WARC-Record-ID: <urn:uuid:{rid}>\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(block)}\r\n\r\n")
    return head.encode() + block + b"\r\n\r\n"


def _http_response(body: bytes, *, status: str = "200 OK", headers: tuple[str, ...] = ("Content-Type: text/html",)
                   ) -> bytes:
    return (f"HTTP/1.1 {status}\r\n" + "".join(f"{h}\r\n" for h in headers) + "\r\n").encode() + body


def _gzip_records(records: list[bytes]) -> bytes:
    """A .warc.gz: one gzip member per record, as crawlers write them."""
    return b"".join(gzip.compress(record, mtime=0) for record in records)


def _split_members(data: bytes) -> list[bytes]:
    """The gzip members of a .gz file, as compressed byte strings (independent of any WARC library)."""
    members, position = [], 0
    while position < len(data):
        inflater = zlib.decompressobj(wbits=31)
        inflater.decompress(data[position:])
        size = len(data) - position - len(inflater.unused_data)
        members.append(data[position : position + size])
        position += size
    return members


@pytest.fixture(scope="session")
def warc() -> SimpleNamespace:
    """Builders for synthetic WARC data: `warc.record(block, ...)`, `warc.http(body, ...)`,
    `warc.gz([records])`, and `warc.members(gz_bytes)` to split a real .warc.gz into gzip members."""
    return SimpleNamespace(record=_warc_record, http=_http_response, gz=_gzip_records, members=_split_members)


# landing / raw -----------------------------------------------------------------------------
@pytest.fixture
def landing(tmp_path: Path) -> Path:
    """`{tmp_path}/landing/c1/`, the landing folder of crawl `c1` under the storage root `tmp_path`."""
    folder = tmp_path / "landing" / "c1"
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def run_raw(tmp_path: Path) -> Callable[..., StageResult]:
    """Run the raw stage of crawl `c1` on the local root `tmp_path`, serially: `run_raw(max_document_bytes=...)`."""

    def run(store: Store | None = None, **config) -> StageResult:
        return raw(store=store or Store(str(tmp_path)), crawl="c1", config=RawConfig(**config),
                   executor=SerialExecutor())

    return run


def put_landing(store: Store, crawl: str, files: dict[str, bytes | Path]) -> None:
    """Write landing files (bytes, or a local file to copy) under `{root}/landing/{crawl}/`."""
    for name, content in files.items():
        data = content.read_bytes() if isinstance(content, Path) else content
        store.write_bytes(store.path("landing", crawl, name), data)


@pytest.fixture(scope="session")
def landing_put() -> Callable[[Store, str, dict[str, bytes | Path]], None]:
    """`landing_put(store, "c1", {"a.warc.gz": data})`: drop files into a store's landing folder."""
    return put_landing


# s3 -------------------------------------------------------------------------------------------
S3_BUCKET = "textmill-test"

# Fake credentials and no metadata lookups: nothing may leave 127.0.0.1.
_S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[dict[str, str]]:
    """A moto S3 server on 127.0.0.1 (free port) with bucket `textmill-test`; yields endpoint_url and bucket.

    From first use to the end of the session, fake AWS_* variables (and AWS_ENDPOINT_URL) are
    set, so child processes and clients without an explicit endpoint also stay on 127.0.0.1.
    """
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as patch:
        for key, value in _S3_ENV.items():
            patch.setenv(key, value)
        patch.delenv("AWS_PROFILE", raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        patch.setenv("AWS_ENDPOINT_URL", endpoint)  # a client that forgets endpoint_url still stays local
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=S3_BUCKET)
        try:
            yield {"endpoint_url": endpoint, "bucket": S3_BUCKET}
        finally:
            server.stop()


@pytest.fixture
def s3_store(moto_s3: dict[str, str]) -> Store:
    """A Store on a fresh prefix of the moto bucket."""
    options = {"endpoint_url": moto_s3["endpoint_url"], "key": "testing", "secret": "testing"}
    return Store(f"s3://{moto_s3['bucket']}/{uuid.uuid4().hex[:12]}", storage_options=options)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """The same storage contract on local disk and on S3 (moto): tests using it run once per backend."""
    if request.param == "local":
        return Store(str(tmp_path / "root"))
    return request.getfixturevalue("s3_store")
