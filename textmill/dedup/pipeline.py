"""The deduped stage's phases. Parallel phases run per raw part or per band-key bucket.

    sign     (per part)    doc keys, normalized URL, exact-text hash, MinHash band keys
                            → work/meta/part-*.parquet, work/bands/bucket=B/part-*.parquet
    resolve  (once)        URL dedup (newest fetch), exact dedup (earliest fetch, then id),
                            exact matches against earlier crawls → work/survivors.parquet
    edges    (per bucket)  documents sharing a band key (this crawl and the earlier index)
    cluster  (once)        optional exact-Jaccard verification, connected components,
                            the kept document per cluster → work/decisions.parquet
    write    (per part)    kept documents with dup_cluster / dup_cluster_size; removed rows
    index    (per bucket)  kept documents' band keys → state/dedup/{scope}/{crawl}/{version}/

Only the per-document metadata (a few dozen bytes a document) is ever held whole; texts
and band keys are read part by part and bucket by bucket.
"""

from __future__ import annotations

import logging
import posixpath
import unicodedata
from dataclasses import dataclass

import numpy as np
import polars as pl
import xxhash

from textmill.config import DedupConfig
from textmill.dedup import index as dedup_index
from textmill.dedup.minhash import MinHasher, shingle_hashes
from textmill.dedup.normalize import normalized_text, normalized_url
from textmill.storage import PartInfo, Store

log = logging.getLogger(__name__)

SIGN_BATCH = 2000  # documents shingled and signed at once (bounds the shingle matrix)
KINDS = ("url", "exact", "exact_earlier_crawl", "near", "near_earlier_crawl")
DEDUP_COLUMNS = {"dup_cluster": pl.String(), "dup_cluster_size": pl.Int64()}
REMOVED_SCHEMA = {"id": pl.String(), "url": pl.String(), "source": pl.String(), "kind": pl.String(),
                  "dup_cluster": pl.String(), "n_chars": pl.Int64()}


def doc_key() -> pl.Expr:
    """64-bit key of a document: the first 16 hex digits of its id (ids are 128-bit hashes)."""
    return pl.col("id").str.slice(0, 16).str.to_integer(base=16, dtype=pl.UInt64).alias("doc_key")


@dataclass(frozen=True)
class Plan:
    """What every worker of one deduped run needs to know."""

    store: Store
    crawl: str
    config: DedupConfig
    work_dir: str
    version_dir: str
    bands: int
    rows: int
    bucket_bits: int
    index_entries: tuple[dedup_index.IndexEntry, ...]
    index_dir: str

    @property
    def minhasher(self) -> MinHasher:
        return MinHasher(bands=self.bands, rows=self.rows, seed=self.config.minhash.seed)

    def meta_path(self, part: int) -> str:
        return posixpath.join(self.work_dir, "meta", f"part-{part:05d}.parquet")

    def band_path(self, bucket: int, part: int) -> str:
        return posixpath.join(self.work_dir, "bands", dedup_index.bucket_name(bucket), f"part-{part:05d}.parquet")

    def bucket_files(self, bucket: int) -> list[str]:
        folder = posixpath.join(self.work_dir, "bands", dedup_index.bucket_name(bucket))
        return [posixpath.join(folder, name) for name in self.store.listdir(folder)]

    @property
    def survivors_path(self) -> str:
        return posixpath.join(self.work_dir, "survivors.parquet")

    @property
    def decisions_path(self) -> str:
        return posixpath.join(self.work_dir, "decisions.parquet")


# --- sign ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class PartTask:
    plan: Plan
    part: int
    uri: str


def _text_hashes(texts: pl.Series, scopes: pl.Series | None) -> list[str]:
    # one C call per document: a stable 128-bit hash the cross-crawl index can keep.
    # NFC per document with unicodedata: its quick check returns at once on text already in NFC.
    texts = [unicodedata.normalize("NFC", text) for text in texts]
    if scopes is None:
        return [xxhash.xxh3_128_hexdigest(text.encode()) for text in texts]
    return [xxhash.xxh3_128_hexdigest(f"{scope}\x1f{text}".encode()) for scope, text in zip(scopes, texts)]


def sign_part(task: PartTask) -> dict[str, int]:
    """Metadata and band keys of one raw part, computed batch by batch to bound memory."""
    plan, config = task.plan, task.plan.config
    frame = (
        plan.store.scan_files([task.uri])
        .select("id", "url", "source", "fetched_at", "text", "n_chars")
        .with_columns(doc_key(), url_norm=normalized_url())
        .with_row_index("row")
        .collect()
    )
    scopes = frame["source"].fill_null("") if config.scope == "source" else None
    hasher = plan.minhasher
    text_hashes: list[str] = []
    keys_parts, docs_parts = [], []
    for start in range(0, frame.height, SIGN_BATCH):  # bounded working set whatever the part size
        batch = frame.slice(start, SIGN_BATCH)
        batch_scopes = scopes.slice(start, SIGN_BATCH) if scopes is not None else None
        normalized = batch.select(normalized_text(case_fold=config.case_fold, nfc=False))["text"]  # NFC below
        text_hashes += _text_hashes(normalized, batch_scopes)
        if not config.near:
            continue
        shingles = shingle_hashes(batch["text"], ngram=config.minhash.ngram)
        has = shingles.counts > 0
        scope_hash = None
        if batch_scopes is not None:
            scope_hash = np.array([xxhash.xxh3_64_intdigest(s.encode()) for s in batch_scopes], dtype=np.uint64)[has]
        keys_parts.append(hasher.band_keys(hasher.signatures(shingles)[has], scope=scope_hash).ravel())
        docs_parts.append(np.repeat(batch["doc_key"].to_numpy()[has], plan.bands))
    meta = frame.select(
        "doc_key", "id", "url_norm", "fetched_at", "source", "n_chars",
        pl.lit(task.part, dtype=pl.Int32).alias("part"), pl.col("row").cast(pl.Int32),
    ).with_columns(text_hash=pl.Series(text_hashes, dtype=pl.String))
    plan.store.write_parquet(meta, plan.meta_path(task.part))
    band_rows = 0
    if keys_parts:
        flat_keys, flat_docs = np.concatenate(keys_parts), np.concatenate(docs_parts)
        buckets = (flat_keys >> np.uint64(64 - plan.bucket_bits)) if plan.bucket_bits else np.zeros_like(flat_keys)
        order = np.argsort(buckets, kind="stable")
        buckets, flat_keys, flat_docs = buckets[order], flat_keys[order], flat_docs[order]
        starts = np.flatnonzero(np.diff(buckets)) + 1
        for lo, hi in zip(np.concatenate(([0], starts)), np.concatenate((starts, [len(buckets)]))):
            if hi > lo:
                piece = pl.DataFrame({"key": flat_keys[lo:hi], "doc_key": flat_docs[lo:hi]})
                plan.store.write_parquet(piece, plan.band_path(int(buckets[lo]), task.part))
        band_rows = len(flat_keys)
    return {"documents": frame.height, "band_rows": band_rows}


# --- resolve ------------------------------------------------------------------------------

def _first_by(order: list[str], descending: list[bool]) -> pl.Expr:
    return pl.col("doc_key").sort_by(order, descending=descending, nulls_last=True).first()


def resolve_exact_and_url(plan: Plan, parts: int) -> pl.DataFrame:
    """Every document with `parent` (the document it yields to, itself if kept so far) and `kind`."""
    config = plan.config
    meta = plan.store.scan_files([plan.meta_path(p) for p in range(parts)]).collect()
    meta = meta.with_columns(parent=pl.col("doc_key"), parent_id=pl.col("id"), kind=pl.lit(None, dtype=pl.String))
    if config.url:
        keeper = _first_by(["fetched_at", "id"], [True, False]).over("url_norm")
        meta = meta.with_columns(
            parent=pl.when(pl.col("url_norm") != "").then(keeper).otherwise(pl.col("doc_key"))
        ).with_columns(kind=pl.when(pl.col("parent") != pl.col("doc_key")).then(pl.lit("url")))
    if config.exact:
        alive = pl.col("kind").is_null()
        keeper = _first_by(["fetched_at", "id"], [False, False]).over("text_hash")
        survivors = meta.filter(alive).with_columns(exact_parent=keeper).select("doc_key", "exact_parent")
        meta = meta.join(survivors, on="doc_key", how="left").with_columns(
            parent=pl.coalesce("exact_parent", "parent"),
        ).with_columns(
            kind=pl.when(pl.col("kind").is_null() & (pl.col("parent") != pl.col("doc_key")))
            .then(pl.lit("exact")).otherwise(pl.col("kind"))
        ).drop("exact_parent")
        earlier = dedup_index.earlier_exact(plan.store, list(plan.index_entries)) if config.cross_crawl else None
        if earlier is not None:
            hashes = meta.filter(pl.col("kind").is_null()).select("text_hash").unique()
            found = (
                earlier.join(hashes.lazy(), on="text_hash", how="semi")
                .sort("doc_key").group_by("text_hash").agg(pl.col("doc_key").first().alias("earlier_key"),
                                                           pl.col("id").first().alias("earlier_id"))
                .collect()
            )
            meta = meta.join(found, on="text_hash", how="left").with_columns(
                hit=pl.col("kind").is_null() & pl.col("earlier_key").is_not_null()
            ).with_columns(
                parent=pl.when("hit").then(pl.col("earlier_key")).otherwise(pl.col("parent")),
                parent_id=pl.when("hit").then(pl.col("earlier_id")).otherwise(pl.lit(None, dtype=pl.String)),
                kind=pl.when("hit").then(pl.lit("exact_earlier_crawl")).otherwise(pl.col("kind")),
            ).drop("earlier_key", "earlier_id", "hit")
    return meta.with_columns(pl.when(pl.col("kind") != "exact_earlier_crawl").then(None)
                             .otherwise(pl.col("parent_id")).alias("parent_id"))


# --- edges --------------------------------------------------------------------------------

@dataclass(frozen=True)
class BucketTask:
    plan: Plan
    bucket: int


def bucket_edges(task: BucketTask) -> pl.DataFrame:
    """Pairs (doc_key, other) of documents sharing a band key, each group as a star."""
    plan, store = task.plan, task.plan.store
    frames = []
    files = plan.bucket_files(task.bucket)
    if files:
        survivors = store.scan_files([plan.survivors_path])
        frames.append(store.scan_files(files).join(survivors, on="doc_key", how="semi")
                      .with_columns(earlier=pl.lit(False)))
    if plan.config.cross_crawl and plan.index_entries:
        earlier = dedup_index.earlier_band_keys(store, list(plan.index_entries), task.bucket, plan.bucket_bits)
        if earlier is not None:
            frames.append(earlier.select("key", "doc_key").with_columns(earlier=pl.lit(True)))
    empty = pl.DataFrame(schema={"doc_key": pl.UInt64, "other": pl.UInt64})
    if not frames:
        return empty
    groups = (
        pl.concat(frames)
        .group_by("key")
        .agg(pl.col("doc_key").sort(), (~pl.col("earlier")).any().alias("has_current"))
        .filter(pl.col("has_current") & (pl.col("doc_key").list.len() > 1))
        .collect()
    )
    if groups.height == 0:
        return empty
    return (
        groups.select(pl.col("doc_key").list.first().alias("doc_key"), pl.col("doc_key").list.slice(1).alias("other"))
        .explode("other")
        .unique()
    )


# --- cluster ------------------------------------------------------------------------------

def verify_pairs(plan: Plan, edges: pl.DataFrame, texts: pl.DataFrame, threshold: float) -> pl.DataFrame:
    """Keep the pairs whose exact Jaccard similarity of shingle sets reaches the threshold."""
    shingles = shingle_hashes(texts["text"], ngram=plan.config.minhash.ngram)
    long = pl.DataFrame({
        "doc_key": np.repeat(texts["doc_key"].to_numpy(), shingles.counts),
        "shingle": shingles.values,
    }).unique()
    sizes = long.group_by("doc_key").len("size")
    intersections = (
        edges.join(long, on="doc_key")
        .join(long.rename({"doc_key": "other"}), on=["other", "shingle"])
        .group_by("doc_key", "other").len("common")
    )
    scored = (
        edges.join(intersections, on=["doc_key", "other"], how="left").fill_null(0)
        .join(sizes, on="doc_key", how="left")
        .join(sizes.rename({"doc_key": "other", "size": "other_size"}), on="other", how="left")
        .with_columns(jaccard=pl.col("common") / (pl.col("size") + pl.col("other_size") - pl.col("common")))
    )
    return scored.filter(pl.col("jaccard") >= threshold).select("doc_key", "other")


def components(edges: pl.DataFrame) -> pl.DataFrame:
    """Connected components of an undirected graph given as key pairs: (node, component)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    left, right = edges["doc_key"].to_numpy(), edges["other"].to_numpy()
    nodes, inverse = np.unique(np.concatenate((left, right)), return_inverse=True)
    n = len(nodes)
    graph = coo_matrix((np.ones(len(left), dtype=np.int8), (inverse[: len(left)], inverse[len(left):])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return pl.DataFrame({"doc_key": nodes, "component": labels.astype(np.int64)})


def cluster(plan: Plan, resolved: pl.DataFrame, edges: pl.DataFrame, texts: pl.DataFrame | None) -> pl.DataFrame:
    """Apply near-duplicate clusters to the resolved table; sets parent/kind of removed documents."""
    current = resolved.select("doc_key", "id", "fetched_at")
    if plan.config.minhash.verify_jaccard and edges.height:
        both_current = edges.join(current.select("doc_key"), on="doc_key", how="semi").join(
            current.select(pl.col("doc_key").alias("other")), on="other", how="semi")
        cross = edges.join(both_current, on=["doc_key", "other"], how="anti")
        edges = pl.concat([verify_pairs(plan, both_current, texts, plan.config.minhash.verify_jaccard), cross])
    if edges.height == 0:
        return resolved
    labelled = components(edges).join(current, on="doc_key", how="left")
    nodes = labelled.filter(pl.col("id").is_not_null())  # this crawl's documents; the rest are earlier crawls'
    keeper = (nodes.sort(["fetched_at", "id"], nulls_last=True).group_by("component", maintain_order=True)
              .first().select("component", keeper="doc_key"))
    earlier = labelled.filter(pl.col("id").is_null()).group_by("component").agg(earlier=pl.col("doc_key").min())
    keepers = nodes.join(keeper, on="component").join(earlier, on="component", how="left").select(
        "doc_key",
        near_parent=pl.coalesce("earlier", "keeper"),
        near_kind=pl.when(pl.col("earlier").is_not_null()).then(pl.lit("near_earlier_crawl"))
        .when(pl.col("keeper") != pl.col("doc_key")).then(pl.lit("near")),
    )
    out = resolved.join(keepers, on="doc_key", how="left").with_columns(
        hit=pl.col("kind").is_null() & pl.col("near_kind").is_not_null()
    ).with_columns(
        parent=pl.when("hit").then(pl.col("near_parent")).otherwise(pl.col("parent")),
        kind=pl.when("hit").then(pl.col("near_kind")).otherwise(pl.col("kind")),
    ).drop("near_parent", "near_kind", "hit")
    return out


def earlier_ids(store: Store, entries: list[dedup_index.IndexEntry], keys: pl.Series) -> pl.DataFrame:
    """ids of earlier-crawl documents by doc_key (from the index's exact table, which lists every kept doc)."""
    exact = dedup_index.earlier_exact(store, entries)
    if exact is None or keys.len() == 0:
        return pl.DataFrame(schema={"doc_key": pl.UInt64, "earlier_id": pl.String})
    wanted = pl.DataFrame({"doc_key": keys}).lazy()
    return (exact.join(wanted, on="doc_key", how="semi").group_by("doc_key")
            .agg(pl.col("id").first().alias("earlier_id")).collect())


def finalize(plan: Plan, table: pl.DataFrame) -> pl.DataFrame:
    """Resolve parent chains to the cluster's kept document; add dup_cluster and dup_cluster_size."""
    parents = table.select("doc_key", "parent")
    root = table.select("doc_key", root=pl.col("parent"))
    for _ in range(3):  # url → exact → near: chains are at most three links long
        root = root.join(parents.rename({"doc_key": "root", "parent": "next"}), on="root", how="left").select(
            "doc_key", root=pl.coalesce("next", "root"))
    table = table.join(root, on="doc_key")
    ids = table.select(pl.col("doc_key").alias("root"), pl.col("id").alias("root_id"))
    table = table.join(ids, on="root", how="left")
    missing = table.filter(pl.col("root_id").is_null())["root"].unique()
    if missing.len():
        found = earlier_ids(plan.store, list(plan.index_entries), missing).rename({"doc_key": "root"})
        table = table.join(found, on="root", how="left").with_columns(
            root_id=pl.coalesce("root_id", "earlier_id", "parent_id")).drop("earlier_id")
    sizes = table.group_by("root").len("dup_cluster_size").with_columns(pl.col("dup_cluster_size").cast(pl.Int64))
    return table.join(sizes, on="root", how="left").rename({"root_id": "dup_cluster"})


# --- write --------------------------------------------------------------------------------

@dataclass(frozen=True)
class WriteTask:
    plan: Plan
    part: int
    uri: str


def write_part(task: WriteTask) -> tuple[PartInfo | None, PartInfo | None, int]:
    """Kept documents of one raw part with their cluster columns, and its removed rows."""
    plan, store = task.plan, task.plan.store
    decisions = store.scan_files([plan.decisions_path]).filter(pl.col("part") == task.part).select(
        "row", "kind", "dup_cluster", "dup_cluster_size").collect()
    frame = store.scan_files([task.uri]).with_row_index("row").collect().with_columns(pl.col("row").cast(pl.Int32))
    frame = frame.join(decisions, on="row", how="left", maintain_order="left")
    kept = frame.filter(pl.col("kind").is_null()).drop("row", "kind")
    removed = frame.filter(pl.col("kind").is_not_null()).select(list(REMOVED_SCHEMA))
    kept_part = store.write_parquet(kept, posixpath.join(plan.version_dir, f"part-{task.part:05d}.parquet")) \
        if kept.height else None
    removed_part = store.write_parquet(removed, posixpath.join(plan.version_dir, f"removed-{task.part:05d}.parquet")) \
        if removed.height else None
    return kept_part, removed_part, kept.height


# --- index --------------------------------------------------------------------------------

def write_index_bucket(task: BucketTask) -> int:
    """This crawl's kept documents' band keys for one bucket, into the persistent index."""
    plan, store = task.plan, task.plan.store
    files = plan.bucket_files(task.bucket)
    if not files:
        return 0
    kept = store.scan_files([plan.decisions_path]).filter(pl.col("kind").is_null()).select("doc_key")
    keys = store.scan_files(files).join(kept, on="doc_key", how="semi").sort("key", "doc_key").collect()
    if keys.height:
        path = posixpath.join(plan.index_dir, "bands", f"{dedup_index.bucket_name(task.bucket)}.parquet")
        store.write_parquet(keys, path)
    return keys.height
