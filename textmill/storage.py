"""Dataset versions on any fsspec store: a local folder by default, or s3://bucket/prefix.

Layout under the root:

    datasets/{stage}/{partition}/{version}/part-*.parquet + _manifest.json (written last)
    quarantine/{stage}/{partition}/{version}/part-*.parquet
    landing/{crawl}/...

A version folder without `_manifest.json` is an unfinished write: readers ignore it and a
rerun replaces it. Parts are written under a temporary name and renamed on local disk;
on object stores every PUT is atomic, and the manifest commits the version.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import os
import posixpath
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

import fsspec
import polars as pl
import xxhash

from textmill import __version__
from textmill.names import InvalidNameError, check_name, is_valid_name

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
PARQUET_COMPRESSION = "zstd"


def content_version(*, stage: str, code_version: str, config: Any, inputs: Any) -> str:
    """Content address of a version: a hash of code version, resolved config and inputs."""
    payload = json.dumps(
        {"stage": stage, "code_version": code_version, "config": config, "inputs": inputs},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PartInfo:
    """One written Parquet part: path relative to the version folder, rows, bytes, checksum."""

    path: str
    rows: int
    bytes: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "rows": self.rows, "bytes": self.bytes, "sha256": self.sha256}


@dataclass
class Manifest:
    """What a finished version holds and how it was made."""

    stage: str
    partition: str
    version: str
    code_version: str
    files: list[dict[str, Any]]
    inputs: list[dict[str, Any]]
    config: dict[str, Any]
    statistics: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    quarantine: dict[str, Any] = field(default_factory=dict)
    extra_files: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # side tables, e.g. removed rows
    textmill_version: str = __version__
    created_at: str = ""

    @property
    def rows(self) -> int:
        return sum(int(f["rows"]) for f in self.files)

    @property
    def bytes(self) -> int:
        return sum(int(f["bytes"]) for f in self.files)

    def to_json(self) -> str:
        data = self.__dict__ | {"rows": self.rows, "bytes": self.bytes}
        return json.dumps(data, indent=2, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        data = json.loads(text)
        data.pop("rows", None)
        data.pop("bytes", None)
        return cls(**data)


_SECRET_OPTION = re.compile(r"secret|key|token|passw|credential|auth|signature|sas", re.I)
REDACTED = "<redacted>"


def redact_options(options: Any) -> Any:
    """Storage options with every credential-like value (key, secret, token, password, ...)
    replaced, at any depth, so they can be shown or logged; endpoints and regions stay visible."""
    if isinstance(options, dict):
        return {k: REDACTED if _SECRET_OPTION.search(str(k)) and v not in (None, "", {}) else redact_options(v)
                for k, v in options.items()}
    if isinstance(options, (list, tuple)):
        return type(options)(redact_options(v) for v in options)
    return options


# Retries and timeouts on S3, unless the recipe's storage_options set their own (merged key by key;
# botocore's `max_attempts` counts retries after the first attempt).
# Two clients talk to the store: s3fs/botocore writes, lists, deletes and reads small files
# (`config_kwargs`: standard retry mode retries 5xx, SlowDown/throttling, resets and timeouts with
# jittered exponential backoff; s3fs itself retries timeouts, broken replies and SlowDown up to 5
# times on top), and Polars' object_store reads the Parquet parts of scans (`polars`: its retry
# and timeout keys). Writes are whole-object PUTs, so a retried write is harmless.
S3FS_RETRY_DEFAULTS: dict[str, Any] = {
    "config_kwargs": {"retries": {"max_attempts": 3, "mode": "standard"}, "connect_timeout": 10, "read_timeout": 30},
}
POLARS_RETRY_DEFAULTS: dict[str, Any] = {
    "max_retries": 8, "retry_timeout_ms": 120_000, "retry_init_backoff_ms": 100, "retry_max_backoff_ms": 15_000,
    "timeout": "120s", "connect_timeout": "10s",
}
POLARS_OPTIONS_KEY = "polars"  # storage_options[...]: options for Polars scans, not given to fsspec


class StoreError(OSError):
    """A storage operation that still failed after the configured retries; the message names the
    store, the operation and the path, and the client's own error is chained."""


def _causes(exc: BaseException) -> str:
    """`Type: message` of an error and of the errors it was raised from (s3fs turns botocore's
    'SlowDown ... reached max retries' into a bare errno: the cause says what happened)."""
    seen: list[str] = []
    current: BaseException | None = exc
    while current is not None and len(seen) < 4:
        text = f"{type(current).__name__}: {current}"
        if text not in seen:
            seen.append(text)
        current = current.__cause__ or current.__context__
    return " <- ".join(seen)


def _merged(defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """`given` over `defaults`, nested dicts merged key by key (the recipe wins). A deep copy:
    botocore writes into the `retries` dict it is given."""
    out = copy.deepcopy(defaults)
    for key, value in given.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else copy.deepcopy(value)
    return out


def _s3_to_object_store(options: dict[str, Any]) -> dict[str, str]:
    """Translate s3fs options into the object_store keys Polars' native reader takes."""
    out: dict[str, str] = {}
    client = options.get("client_kwargs", {}) or {}
    endpoint = options.get("endpoint_url") or client.get("endpoint_url")
    if endpoint:
        out["aws_endpoint_url"] = endpoint
        if endpoint.startswith("http://"):
            out["aws_allow_http"] = "true"
    if options.get("key"):
        out["aws_access_key_id"] = options["key"]
    if options.get("secret"):
        out["aws_secret_access_key"] = options["secret"]
    if options.get("token"):
        out["aws_session_token"] = options["token"]
    region = options.get("region_name") or client.get("region_name")
    if region:
        out["aws_region"] = region
    return out


class Store:
    """A storage root (local path or fsspec URL) holding dataset versions, landing and quarantine."""

    def __init__(self, root: str, *, storage_options: dict[str, Any] | None = None) -> None:
        self.url = root
        self.storage_options = dict(storage_options or {})
        fs_options = {k: v for k, v in self.storage_options.items() if k != POLARS_OPTIONS_KEY}
        if fsspec.utils.get_protocol(root) in ("s3", "s3a"):
            fs_options = _merged(S3FS_RETRY_DEFAULTS, fs_options)
        self.fs, base = fsspec.core.url_to_fs(root, **fs_options)
        self.protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        self.is_local = self.protocol in ("file", "local")
        if self.is_local:
            base = os.path.abspath(base)
        self.base = base.rstrip("/")

    def __repr__(self) -> str:  # storage_options hold credentials: show them redacted
        return f"Store({self.url!r}, storage_options={redact_options(self.storage_options)!r})"

    def __reduce__(self):  # picklable for worker processes: rebuild from the spec
        return (Store, (self.url,), {"storage_options": self.storage_options})

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(self.url, storage_options=state["storage_options"])

    # paths ---------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        """A path under the root. Parts may hold '/', but never climb out of the root: an absolute
        part, a '..' segment, a backslash or a control character is refused (names are checked
        where they enter; this is the second line)."""
        for part in parts:
            if part.startswith("/") or "\\" in part or any(ord(c) < 32 or ord(c) == 127 for c in part) \
                    or ".." in part.split("/"):
                raise InvalidNameError(f"path part {part!r} would leave the storage root {self.url!r}")
        return posixpath.join(self.base, *parts)

    def uri(self, path: str) -> str:
        """A full URL for a store path (what Polars and users see)."""
        return path if self.is_local else f"{self.protocol}://{path}"

    def version_dir(self, stage: str, partition: str, version: str) -> str:
        return self.path("datasets", check_name(stage, field="stage"), check_name(partition, field="partition"),
                         check_name(version, field="version"))

    def quarantine_dir(self, stage: str, partition: str, version: str) -> str:
        return self.path("quarantine", check_name(stage, field="stage"), check_name(partition, field="partition"),
                         check_name(version, field="version"))

    def landing_dir(self, crawl: str | None = None) -> str:
        return self.path("landing", check_name(crawl, field="crawl")) if crawl is not None else self.path("landing")

    # bytes ---------------------------------------------------------------------------
    def write_bytes(self, path: str, data: bytes) -> None:
        """Write a whole file so that no reader sees it half-written."""
        if self.is_local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        else:
            self._remote("write", path, self.fs.pipe_file, path, data)

    def _remote(self, operation: str, path: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        """`call(*args)` on the object store; a failure left after the client's retries becomes a
        StoreError naming store, operation and path (FileNotFoundError passes: callers expect it)."""
        if self.is_local:
            return call(*args, **kwargs)
        try:
            return call(*args, **kwargs)
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise StoreError(f"store {self.url}: {operation} {self.uri(path)} failed after retries: "
                             f"{_causes(exc)}") from exc

    def read_bytes(self, path: str) -> bytes:
        return self._remote("read", path, self.fs.cat_file, path)

    def exists(self, path: str) -> bool:
        # s3fs answers from listings this process cached earlier, which miss what other
        # processes wrote since (a new landing crawl, an unfinished version): look again
        self.fs.invalidate_cache(path)
        return self._remote("exists", path, self.fs.exists, path)

    def remove_tree(self, path: str) -> None:
        if self.exists(path):
            self._remote("delete", path, self.fs.rm, path, recursive=True)

    def listdir(self, path: str) -> list[str]:
        """Names (not paths) directly under a folder; empty if it does not exist."""
        try:
            entries = self._remote("list", path, self.fs.ls, path, detail=False, refresh=True)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(entry.rstrip("/")) for entry in entries)

    # parquet -------------------------------------------------------------------------
    def write_parquet(self, frame: pl.DataFrame, path: str) -> PartInfo:
        """Write one Parquet part atomically; returns its row count, size and checksum."""
        buffer = io.BytesIO()
        frame.write_parquet(buffer, compression=PARQUET_COMPRESSION, statistics=True)
        data = buffer.getvalue()
        self.write_bytes(path, data)
        return PartInfo(
            path=posixpath.basename(path), rows=frame.height, bytes=len(data), sha256=hashlib.sha256(data).hexdigest()
        )

    # versions ------------------------------------------------------------------------
    def manifest(self, stage: str, partition: str, version: str) -> Manifest | None:
        path = posixpath.join(self.version_dir(stage, partition, version), MANIFEST)
        try:
            return Manifest.from_json(self.read_bytes(path).decode())
        except FileNotFoundError:
            return None

    def versions(self, stage: str, partition: str) -> list[Manifest]:
        """Finished versions of a stage's partition, oldest first; unfinished folders are ignored."""
        found = []
        for name in self.listdir(self.path("datasets", check_name(stage, field="stage"),
                                           check_name(partition, field="partition"))):
            if not is_valid_name(name):
                log.warning("ignoring %r under datasets/%s/%s: not a version name", name, stage, partition)
                continue
            manifest = self.manifest(stage, partition, name)
            if manifest is not None:
                found.append(manifest)
        return sorted(found, key=lambda m: (m.created_at, m.version))

    def latest(self, stage: str, partition: str) -> Manifest | None:
        versions = self.versions(stage, partition)
        return versions[-1] if versions else None

    def partitions(self, stage: str) -> list[str]:
        """Partition folders of a stage; a folder whose name is not a safe name is skipped with a warning."""
        names = self.listdir(self.path("datasets", check_name(stage, field="stage")))
        for name in names:
            if not is_valid_name(name):
                log.warning("ignoring folder %r under datasets/%s: not a valid partition name", name, stage)
        return [name for name in names if is_valid_name(name)]

    def part_uris(self, manifest: Manifest) -> list[str]:
        folder = self.version_dir(manifest.stage, manifest.partition, manifest.version)
        return [self.uri(posixpath.join(folder, f["path"])) for f in manifest.files]

    def scan(self, manifest: Manifest) -> pl.LazyFrame:
        """A lazy frame over a finished version's parts (streaming, nothing loaded yet)."""
        uris = self.part_uris(manifest)
        if not uris:
            from textmill.schema import DOCUMENT_SCHEMA

            return pl.LazyFrame(schema=DOCUMENT_SCHEMA)
        return self.scan_files(uris)

    def scan_extra(self, manifest: Manifest, name: str) -> pl.LazyFrame | None:
        """A lazy frame over a version's extra files (e.g. deduped `removed`, filtered `rejected`); None if none."""
        folder = self.version_dir(manifest.stage, manifest.partition, manifest.version)
        files = [posixpath.join(folder, f["path"]) for f in manifest.extra_files.get(name, [])]
        return self.scan_files(files) if files else None

    def scan_files(self, paths: list[str]) -> pl.LazyFrame:
        """A lazy frame over Parquet files given as store paths or URIs."""
        uris = [path if "://" in path or self.is_local else self.uri(path) for path in paths]
        if self.is_local:
            return pl.scan_parquet(uris)
        return pl.scan_parquet(uris, storage_options=self.polars_options())

    def polars_options(self) -> dict[str, Any] | None:
        """Storage options for Polars' native reader: credentials and endpoint from the s3fs options,
        retries and timeouts from POLARS_RETRY_DEFAULTS overridden by `storage_options["polars"]`."""
        if self.is_local:
            return None
        given = dict(self.storage_options.get(POLARS_OPTIONS_KEY) or {})
        if self.protocol in ("s3", "s3a"):
            return _s3_to_object_store(self.storage_options) | _merged(POLARS_RETRY_DEFAULTS, given)
        return given or None

    def begin(self, stage: str, partition: str, version: str) -> "VersionWriter":
        return VersionWriter(self, stage, partition, version)


class VersionWriter:
    """Writes one version: clears any unfinished attempt, then parts, then the manifest last."""

    def __init__(self, store: Store, stage: str, partition: str, version: str) -> None:
        self.store = store
        self.stage = stage
        self.partition = partition
        self.version = version
        self.folder = store.version_dir(stage, partition, version)
        self.quarantine_folder = store.quarantine_dir(stage, partition, version)
        if store.manifest(stage, partition, version) is not None:
            raise FileExistsError(f"version {stage}/{partition}/{version} is already complete")
        # an unfinished earlier attempt: nothing reads it, so start clean
        store.remove_tree(self.folder)
        store.remove_tree(self.quarantine_folder)

    def part_path(self, name: str) -> str:
        return posixpath.join(self.folder, name)

    def quarantine_path(self, name: str) -> str:
        return posixpath.join(self.quarantine_folder, name)

    def commit(
        self,
        *,
        code_version: str,
        files: Iterable[PartInfo],
        inputs: list[dict[str, Any]],
        config: dict[str, Any],
        statistics: dict[str, Any],
        timings: dict[str, float],
        quarantine: dict[str, Any],
        extra_files: dict[str, list[PartInfo]] | None = None,
    ) -> Manifest:
        """Write `_manifest.json`: from this moment readers see the version."""
        manifest = Manifest(
            stage=self.stage,
            partition=self.partition,
            version=self.version,
            code_version=code_version,
            files=[part.as_dict() for part in sorted(files, key=lambda p: p.path)],
            inputs=inputs,
            config=config,
            statistics=statistics,
            timings=timings,
            quarantine=quarantine,
            extra_files={name: [p.as_dict() for p in parts] for name, parts in (extra_files or {}).items()},
            created_at=datetime.now(timezone.utc).isoformat(),
        )
        self.store.write_bytes(posixpath.join(self.folder, MANIFEST), manifest.to_json().encode())
        log.info("committed %s/%s/%s: %d rows", self.stage, self.partition, self.version, manifest.rows)
        return manifest


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a local file, read in 1 MiB blocks (model files can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_fingerprint(fs: fsspec.AbstractFileSystem, path: str, *, window: int = 1 << 20) -> dict[str, Any]:
    """A cheap content fingerprint of an input file: size plus a hash of its head and tail."""
    size = int(fs.size(path))
    digest = xxhash.xxh3_128()
    with fs.open(path, "rb") as handle:
        digest.update(handle.read(window))
        if size > window:
            handle.seek(max(window, size - window))
            digest.update(handle.read(window))
    return {"name": posixpath.basename(path), "size": size, "fingerprint": digest.hexdigest()}
