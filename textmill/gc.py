"""Garbage collection of what killed runs leave behind.

A run that is killed (OOM killer, cancelled Dagster run, lost node) leaves, by design, only
things no reader takes (docs/reliability.md): version folders without `_manifest.json`, their
quarantine folders, stage work folders under `tmp/`, dedup index entries that are not
complete, and, on local disk, `*.tmp-<uuid>` files of interrupted `Store.write_bytes` calls.
The next attempt of the *same* version clears them, but a version that is never rerun (the
recipe changed) keeps them forever. This module finds and removes them.

Safety rules:

- Leftovers are grouped by what produced them: the unfinished version folder, quarantine
  folder, work folder and index entry of one (stage, partition, version) form one group, and
  the group's age is that of the newest file in any of them. A run in progress writes into
  at least one of them, so with a grace period longer than a run's quietest stretch it is
  never touched. Each group is checked again just before it is deleted.
- A committed version (its `_manifest.json` exists) is never touched, nor its quarantine
  folder, nor the dedup index entry it names (`statistics.index`).
- Only the layout textmill writes is looked at; folders whose names are not textmill names
  are left alone.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from textmill.dedup import index as dedup_index
from textmill.names import is_valid_name
from textmill.storage import MANIFEST, Store

log = logging.getLogger(__name__)

DEFAULT_GRACE = timedelta(hours=24)
TEMP_FILE = re.compile(r"\.tmp-[0-9a-f]{32}$")  # Store.write_bytes: f"{path}.tmp-{uuid4().hex}"

KINDS = ("unfinished_version", "orphan_quarantine", "work_folder", "unfinished_index_entry", "temp_file")


@dataclass(frozen=True)
class Garbage:
    """One leftover: what it is, where (a store path), how many bytes it holds and how old it is."""

    kind: str
    path: str
    bytes: int
    files: int
    newest: datetime  # mtime of the newest file in its group (see module docstring)
    age: timedelta
    group: tuple[str, ...]  # (stage, partition, version), or ("temp", path) for a temp file

    def as_dict(self, store: Store | None = None) -> dict[str, Any]:
        return {"kind": self.kind, "path": store.uri(self.path) if store else self.path, "bytes": self.bytes,
                "files": self.files, "newest": self.newest.isoformat(), "age_seconds": int(self.age.total_seconds())}


@dataclass(frozen=True)
class _Found:
    kind: str
    path: str
    bytes: int
    files: int
    newest: datetime
    group: tuple[str, ...]


def parse_duration(text: str) -> timedelta:
    """'6h', '30m', '2d', '90s', '1h30m', '1w' (a bare number is hours) → timedelta."""
    value = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return timedelta(hours=float(value))
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([wdhms])", value)
    if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([wdhms])", "", value).strip():
        raise ValueError(f"not a duration: {text!r} (use e.g. 24h, 6h, 30m, 2d, 1h30m)")
    unit = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
    total = timedelta()
    for number, letter in parts:
        total += timedelta(**{unit[letter]: float(number)})
    return total


def _mtime(info: dict[str, Any]) -> datetime | None:
    """Modification time from an fsspec info dict (local: float `mtime`; s3fs: `LastModified`)."""
    for key in ("LastModified", "last_modified", "mtime", "modified", "updated"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        if isinstance(value, (int, float)):
            return datetime.fromtimestamp(float(value), tz=timezone.utc)
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    return None


_EPOCH = datetime.fromtimestamp(0, tz=timezone.utc)


def _tree(store: Store, path: str) -> tuple[int, int, datetime] | None:
    """(bytes, files, newest mtime) of everything under `path`; None if it does not exist. A local
    folder's own mtime counts too (an empty folder made by a run that was killed at once)."""
    store.fs.invalidate_cache(path)
    try:
        found = store.fs.find(path, withdirs=False, detail=True)
    except FileNotFoundError:
        return None
    newest: datetime | None = None
    size = 0
    for info in found.values():
        size += int(info.get("size") or 0)
        stamp = _mtime(info)
        if stamp is not None and (newest is None or stamp > newest):
            newest = stamp
    if store.is_local:
        if not os.path.isdir(path):
            return None
        for folder, _, _ in os.walk(path):  # folders too: a file being created changes its folder's mtime
            stamp = datetime.fromtimestamp(os.stat(folder).st_mtime, tz=timezone.utc)
            newest = stamp if newest is None or stamp > newest else newest
    elif not found:
        return None
    return size, len(found), newest or _EPOCH


def _names(store: Store, *parts: str) -> list[str]:
    """Valid textmill names directly under a store folder (others are not ours to judge)."""
    return [name for name in store.listdir(store.path(*parts)) if is_valid_name(name)]


def _committed(store: Store, stage: str, partition: str, version: str) -> bool:
    return store.exists(posixpath.join(store.version_dir(stage, partition, version), MANIFEST))


def _referenced_index_entries(store: Store) -> set[str]:
    """Index entry folders named by committed deduped versions (never collected, complete or not)."""
    referenced = set()
    for crawl in store.partitions("deduped"):
        for manifest in store.versions("deduped", crawl):
            uri = (manifest.statistics or {}).get("index")
            if isinstance(uri, str):
                path = uri.split("://", 1)[1] if "://" in uri else uri
                referenced.add(path.rstrip("/"))
    return referenced


def _scan(store: Store) -> list[_Found]:
    """Every leftover, whatever its age."""
    found: list[_Found] = []
    committed: dict[tuple[str, str, str], bool] = {}

    def is_committed(stage: str, partition: str, version: str) -> bool:
        key = (stage, partition, version)
        if key not in committed:
            committed[key] = _committed(store, *key)
        return committed[key]

    def add(kind: str, path: str, group: tuple[str, ...]) -> None:
        tree = _tree(store, path)
        if tree is not None:
            found.append(_Found(kind, path, tree[0], tree[1], tree[2], group))

    for top, kind in (("datasets", "unfinished_version"), ("quarantine", "orphan_quarantine"),
                      ("tmp", "work_folder")):
        for stage in _names(store, top):
            for partition in _names(store, top, stage):
                for version in _names(store, top, stage, partition):
                    path = store.path(top, stage, partition, version)
                    if top == "tmp":  # a work folder is scratch space: no committed version reads it
                        add(kind, path, (stage, partition, version))
                    elif not is_committed(stage, partition, version):
                        add(kind, path, (stage, partition, version))

    referenced = _referenced_index_entries(store)
    top = dedup_index.INDEX_FOLDER
    for scope in _names(store, *top):
        for crawl in _names(store, *top, scope):
            for version in _names(store, *top, scope, crawl):
                path = dedup_index.entry_dir(store, scope, crawl, version)
                if path in referenced or is_committed("deduped", crawl, version):
                    continue
                # readers take an entry only when it is complete and its deduped version committed
                add("unfinished_index_entry", path, ("deduped", crawl, version))

    if store.is_local:  # object stores write each object in one PUT: no temp files there
        taken = [item.path + "/" for item in found]
        for folder, _, files in os.walk(store.base):
            for name in files:
                if not TEMP_FILE.search(name):
                    continue
                path = os.path.join(folder, name)
                if any(path.startswith(prefix) for prefix in taken):
                    continue  # goes with its folder
                try:
                    stat = os.stat(path)
                except FileNotFoundError:
                    continue
                found.append(_Found("temp_file", path, stat.st_size, 1,
                                    datetime.fromtimestamp(stat.st_mtime, tz=timezone.utc), ("temp", path)))
    return found


def find_garbage(store: Store, *, older_than: timedelta = DEFAULT_GRACE, now: datetime | None = None) -> list[Garbage]:
    """Leftovers of killed runs whose whole group is older than `older_than`, sorted by path.

    `now` (default: the current time) is there for clock skew between this machine and the store."""
    now = now or datetime.now(timezone.utc)
    found = _scan(store)
    newest: dict[tuple[str, ...], datetime] = {}
    for item in found:
        newest[item.group] = max(newest.get(item.group, _EPOCH), item.newest)
    out = [Garbage(kind=item.kind, path=item.path, bytes=item.bytes, files=item.files, newest=newest[item.group],
                   age=now - newest[item.group], group=item.group)
           for item in found if now - newest[item.group] >= older_than]
    young = len({item.group for item in found}) - len({item.group for item in out})
    if young:
        log.info("gc: %d leftover group(s) younger than %s kept (a run may still be writing them)", young, older_than)
    return sorted(out, key=lambda g: g.path)


@dataclass(frozen=True)
class GcReport:
    """What a collection found and what it deleted."""

    found: list[Garbage]
    deleted: list[Garbage]
    skipped: list[Garbage]  # found, but changed (or committed) before it could be deleted

    @property
    def bytes_found(self) -> int:
        return sum(g.bytes for g in self.found)

    @property
    def bytes_deleted(self) -> int:
        return sum(g.bytes for g in self.deleted)


def collect_garbage(store: Store, *, older_than: timedelta = DEFAULT_GRACE, apply: bool = False,
                    now: datetime | None = None) -> GcReport:
    """Find leftovers (see `find_garbage`) and, with `apply=True`, delete them; a dry run deletes nothing.

    Before each group is deleted it is looked at again: if its version was committed meanwhile or
    something in it was written since it was found (a rerun started), the group is skipped."""
    found = find_garbage(store, older_than=older_than, now=now)
    if not apply:
        return GcReport(found=found, deleted=[], skipped=[])
    deleted: list[Garbage] = []
    skipped: list[Garbage] = []
    by_group: dict[tuple[str, ...], list[Garbage]] = {}
    for item in found:
        by_group.setdefault(item.group, []).append(item)
    for group, items in by_group.items():
        if not _still_garbage(store, items):
            log.warning("gc: %s changed since it was found; left alone", "/".join(group))
            skipped += items
            continue
        for item in items:
            log.info("gc: deleting %s %s (%d bytes)", item.kind, store.uri(item.path), item.bytes)
            if item.kind == "temp_file":
                try:
                    os.remove(item.path)
                except FileNotFoundError:
                    pass
            else:
                store.remove_tree(item.path)
            deleted.append(item)
    return GcReport(found=found, deleted=deleted, skipped=skipped)


def _still_garbage(store: Store, items: Iterable[Garbage]) -> bool:
    """True if no version of the group was committed and nothing in it is newer than when it was found."""
    for item in items:
        if item.kind == "temp_file":
            try:
                stamp = datetime.fromtimestamp(os.stat(item.path).st_mtime, tz=timezone.utc)
            except FileNotFoundError:
                continue
            if stamp > item.newest:
                return False
            continue
        stage, partition, version = item.group
        if item.kind != "work_folder" and _committed(store, stage, partition, version):
            return False
        tree = _tree(store, item.path)
        if tree is not None and tree[2] > item.newest:
            return False
    return True
