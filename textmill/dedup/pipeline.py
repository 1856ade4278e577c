"""The deduped stage's phases. Parallel phases run per raw part or per hash bucket.

    sign     (per part)    per document: doc key, id, fetch time → work/docs/part-*.parquet;
                            the same bucketed by normalized-URL hash (work/url/), by exact-text
                            hash (work/text/) and MinHash band keys by key (work/bands/)
    url      (per bucket)  URL groups: the newest fetch stays
    exact    (per bucket)  exact-text groups among URL survivors (earliest fetch, then id),
                            and matches against earlier crawls' kept texts
    edges    (per bucket)  documents sharing a band key (this crawl and the earlier index)
    cluster  (once)        optional exact-Jaccard verification, connected components,
                            the kept document per cluster
    write    (per part)    kept documents with dup_cluster / dup_cluster_size; removed rows
    index    (per bucket)  kept documents' band keys and text hashes → state/dedup/{scope}/...

Memory: workers hold one part or one bucket at a time (buckets are sized from the crawl).
The parent only holds documents that have a duplicate (group members, cluster nodes and
candidate pairs), never a table of every document, so it grows with the duplicates found,
not with the crawl.
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
REMOVED_SCHEMA = {"id": pl.String(), "url": pl.String(), "source": pl.String(), "kind": pl.String(),
                  "dup_cluster": pl.String(), "n_chars": pl.Int64()}
EDGES_SCHEMA = {"doc_key": pl.UInt64(), "other": pl.UInt64()}
MEMBER_SCHEMA = {"doc_key": pl.UInt64(), "id": pl.String(), "part": pl.Int32()}
_MASK64 = (1 << 64) - 1


def doc_key() -> pl.Expr:
    """64-bit key of a document: the first 16 hex digits of its id (ids are 128-bit hashes).

    Ordering by doc_key is ordering by id (up to a 64-bit prefix collision), so tie-breaks use it.
    """
    return pl.col("id").str.slice(0, 16).str.to_integer(base=16, dtype=pl.UInt64).alias("doc_key")


def top_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Bucket of each 64-bit hash: its top `bits` bits."""
    values = np.asarray(values, dtype=np.uint64)
    return values >> np.uint64(64 - bits) if bits else np.zeros(len(values), dtype=np.uint64)


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

    def work(self, *parts: str) -> str:
        return posixpath.join(self.work_dir, *parts)

    def docs_path(self, part: int) -> str:
        return self.work("docs", f"part-{part:05d}.parquet")

    def bucket_path(self, table: str, bucket: int, part: int) -> str:
        return self.work(table, dedup_index.bucket_name(bucket), f"part-{part:05d}.parquet")

    def bucket_files(self, table: str, bucket: int) -> list[str]:
        folder = self.work(table, dedup_index.bucket_name(bucket))
        return [posixpath.join(folder, name) for name in self.store.listdir(folder)]

    def decisions_path(self, part: int) -> str:
        return self.work("decisions", f"part-{part:05d}.parquet")

    def removed_keys_path(self, phase: str) -> str:
        """doc_keys removed up to a phase: `url`, `exact` (url + exact) or `all`."""
        return self.work(f"removed-{phase}.parquet")

    def without_removed(self, frame: pl.LazyFrame, phase: str) -> pl.LazyFrame:
        path = self.removed_keys_path(phase)
        if not self.store.exists(path):
            return frame
        return frame.join(self.store.scan_files([path]), on="doc_key", how="anti")


def write_bucketed(plan: Plan, table: str, part: int, frame: pl.DataFrame, hashes: np.ndarray) -> int:
    """Write one part's rows into the bucket folders of `table`, by the top bits of `hashes`."""
    if frame.height == 0:
        return 0
    buckets = pl.Series("_bucket", top_bits(hashes, plan.bucket_bits))
    for (bucket,), piece in frame.with_columns(buckets).partition_by(
            "_bucket", as_dict=True, include_key=False, maintain_order=True).items():
        plan.store.write_parquet(piece, plan.bucket_path(table, int(bucket), part))
    return frame.height


# --- sign ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class PartTask:
    plan: Plan
    part: int
    uri: str


def _text_hashes(texts: pl.Series, scopes: pl.Series | None) -> list[int]:
    # one C call per document: a stable 128-bit hash the cross-crawl index can keep.
    # NFC per document with unicodedata: its quick check returns at once on text already in NFC.
    texts = [unicodedata.normalize("NFC", text) for text in texts]
    if scopes is None:
        return [xxhash.xxh3_128_intdigest(text.encode()) for text in texts]
    return [xxhash.xxh3_128_intdigest(f"{scope}\x1f{text}".encode()) for scope, text in zip(scopes, texts)]


def sign_part(task: PartTask) -> dict[str, int]:
    """Keys, URL and text hashes and band keys of one raw part, computed batch by batch."""
    plan, config = task.plan, task.plan.config
    frame = (
        plan.store.scan_files([task.uri])
        .select("id", "url", "source", "fetched_at", "text")
        .with_columns(doc_key(), url_norm=normalized_url(), part=pl.lit(task.part, dtype=pl.Int32))
        .collect()
    )
    scopes = frame["source"].fill_null("") if config.scope == "source" else None
    hasher = plan.minhasher
    text_hashes: list[int] = []
    keys_parts, docs_parts = [], []
    for start in range(0, frame.height, SIGN_BATCH):  # bounded working set whatever the part size
        batch = frame.slice(start, SIGN_BATCH)
        batch_scopes = scopes.slice(start, SIGN_BATCH) if scopes is not None else None
        normalized = batch.select(normalized_text(case_fold=config.case_fold, nfc=False))["text"]  # NFC below
        text_hashes += _text_hashes(normalized, batch_scopes)
        if not config.near:
            continue
        shingles = shingle_hashes(batch["text"], ngram=config.minhash.ngram, tokens=config.minhash.tokens)
        has = shingles.counts > 0
        scope_hash = None
        if batch_scopes is not None:
            scope_hash = np.array([xxhash.xxh3_64_intdigest(s.encode()) for s in batch_scopes], dtype=np.uint64)[has]
        keys_parts.append(hasher.band_keys(hasher.signatures(shingles)[has], scope=scope_hash).ravel())
        docs_parts.append(np.repeat(batch["doc_key"].to_numpy()[has], plan.bands))

    documents = frame.select("doc_key", "id", "fetched_at", "part")
    plan.store.write_parquet(documents, plan.docs_path(task.part))
    if config.url:
        with_url = frame.filter(pl.col("url_norm") != "").select("doc_key", "id", "fetched_at", "part", "url_norm")
        url_hashes = np.array([xxhash.xxh3_64_intdigest(u.encode()) for u in with_url["url_norm"]], dtype=np.uint64)
        write_bucketed(plan, "url", task.part, with_url, url_hashes)
    # text hashes are written even without exact dedup: the index lists every kept document by them
    high = np.array([h >> 64 for h in text_hashes], dtype=np.uint64)
    low = np.array([h & _MASK64 for h in text_hashes], dtype=np.uint64)
    write_bucketed(plan, "text", task.part, documents.with_columns(text_hi=high, text_lo=low), high)
    band_rows = 0
    if keys_parts:
        flat_keys, flat_docs = np.concatenate(keys_parts), np.concatenate(docs_parts)
        band_rows = write_bucketed(plan, "bands", task.part, pl.DataFrame({"key": flat_keys, "doc_key": flat_docs}),
                                   flat_keys)
    return {"documents": frame.height, "band_rows": band_rows}


# --- url and exact ------------------------------------------------------------------------

@dataclass(frozen=True)
class BucketTask:
    plan: Plan
    bucket: int


def _first_by(order: list[str], descending: list[bool], group: list[str]) -> pl.Expr:
    return pl.col("doc_key").sort_by(order, descending=descending, nulls_last=True).first().over(group)


def url_groups(task: BucketTask) -> pl.DataFrame:
    """Members of one bucket's URL groups with more than one fetch, each with the newest fetch."""
    plan = task.plan
    files = plan.bucket_files("url", task.bucket)
    if not files:
        return pl.DataFrame(schema=MEMBER_SCHEMA | {"url_parent": pl.UInt64()})
    frame = plan.store.scan_files(files).collect()
    return frame.filter(pl.len().over("url_norm") > 1).select(
        *MEMBER_SCHEMA, url_parent=_first_by(["fetched_at", "doc_key"], [True, False], ["url_norm"]))


def exact_groups(task: BucketTask) -> pl.DataFrame:
    """Members of one bucket's exact-text groups (URL survivors only), and earlier crawls' matches.

    A group's earliest fetch stays unless an earlier crawl kept the same text; the others
    yield to it (`exact`), it yields to the earlier crawl's document (`exact_earlier_crawl`).
    """
    plan, store = task.plan, task.plan.store
    empty = pl.DataFrame(schema=MEMBER_SCHEMA | {"exact_parent": pl.UInt64(), "exact_kind": pl.String(),
                                                 "parent_id": pl.String()})
    files = plan.bucket_files("text", task.bucket)
    if not files:
        return empty
    frame = plan.without_removed(store.scan_files(files), "url").collect()
    text = ["text_hi", "text_lo"]
    frame = frame.with_columns(keeper=_first_by(["fetched_at", "doc_key"], [False, False], text),
                               group_size=pl.len().over(text))
    earlier = None
    if plan.config.cross_crawl and plan.index_entries:
        earlier = dedup_index.earlier_exact(store, list(plan.index_entries), task.bucket, plan.bucket_bits)
    if earlier is not None:
        found = (earlier.join(frame.select(text).unique().lazy(), on=text, how="semi")
                 .sort("doc_key").group_by(text).agg(earlier_key=pl.col("doc_key").first(),
                                                     earlier_id=pl.col("id").first())
                 .collect())
        frame = frame.join(found, on=text, how="left")
    else:
        frame = frame.with_columns(earlier_key=pl.lit(None, dtype=pl.UInt64), earlier_id=pl.lit(None, dtype=pl.String))
    yields = pl.col("keeper") != pl.col("doc_key")
    to_earlier = ~yields & pl.col("earlier_key").is_not_null()
    return frame.filter((pl.col("group_size") > 1) | pl.col("earlier_key").is_not_null()).select(
        *MEMBER_SCHEMA,
        exact_parent=pl.when(yields).then("keeper").when(to_earlier).then("earlier_key").otherwise("doc_key"),
        exact_kind=pl.when(yields).then(pl.lit("exact")).when(to_earlier).then(pl.lit("exact_earlier_crawl")),
        parent_id=pl.when(to_earlier).then("earlier_id"),
    )


# --- edges --------------------------------------------------------------------------------

def bucket_edges(task: BucketTask) -> pl.DataFrame:
    """Pairs (doc_key, other) of documents sharing a band key, each group as a star."""
    plan, store = task.plan, task.plan.store
    frames = []
    files = plan.bucket_files("bands", task.bucket)
    if files:
        frames.append(plan.without_removed(store.scan_files(files), "exact").with_columns(earlier=pl.lit(False)))
    if plan.config.cross_crawl and plan.index_entries:
        earlier = dedup_index.earlier_band_keys(store, list(plan.index_entries), task.bucket, plan.bucket_bits)
        if earlier is not None:
            frames.append(earlier.select("key", "doc_key").with_columns(earlier=pl.lit(True)))
    empty = pl.DataFrame(schema=EDGES_SCHEMA)
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
    shingles = shingle_hashes(texts["text"], ngram=plan.config.minhash.ngram,
                              tokens=plan.config.minhash.tokens)
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


def documents_by_key(plan: Plan, parts: int, keys: pl.Series) -> pl.DataFrame:
    """doc_key, id, fetched_at, part of this crawl's documents among `keys` (streamed, not loaded whole)."""
    wanted = pl.DataFrame({"doc_key": keys.unique()}).lazy()
    files = [plan.docs_path(p) for p in range(parts)]
    return plan.store.scan_files(files).join(wanted, on="doc_key", how="semi").collect(engine="streaming")


def near_clusters(plan: Plan, edges: pl.DataFrame, nodes: pl.DataFrame, texts: pl.DataFrame | None) -> pl.DataFrame:
    """This crawl's cluster members with the document each yields to (`near_parent`, `near_kind`).

    `nodes` holds this crawl's documents among the edges' ends; the other ends are earlier
    crawls' kept documents. A cluster touching an earlier crawl yields to it entirely.
    """
    empty = pl.DataFrame(schema=MEMBER_SCHEMA | {"near_parent": pl.UInt64(), "near_kind": pl.String()})
    if plan.config.minhash.verify_jaccard and edges.height:
        current = nodes.select("doc_key")
        both_current = edges.join(current, on="doc_key", how="semi").join(
            current.rename({"doc_key": "other"}), on="other", how="semi")
        cross = edges.join(both_current, on=["doc_key", "other"], how="anti")
        edges = pl.concat([verify_pairs(plan, both_current, texts, plan.config.minhash.verify_jaccard), cross])
    if edges.height == 0:
        return empty
    labelled = components(edges).join(nodes, on="doc_key", how="left")
    current = labelled.filter(pl.col("id").is_not_null())
    keeper = (current.sort(["fetched_at", "doc_key"], nulls_last=True).group_by("component", maintain_order=True)
              .first().select("component", keeper="doc_key"))
    earlier = labelled.filter(pl.col("id").is_null()).group_by("component").agg(earlier=pl.col("doc_key").min())
    return current.join(keeper, on="component").join(earlier, on="component", how="left").select(
        *MEMBER_SCHEMA,
        near_parent=pl.coalesce("earlier", "keeper"),
        near_kind=pl.when(pl.col("earlier").is_not_null()).then(pl.lit("near_earlier_crawl"))
        .when(pl.col("keeper") != pl.col("doc_key")).then(pl.lit("near")),
    )


def combine(url: pl.DataFrame, exact: pl.DataFrame, near: pl.DataFrame) -> pl.DataFrame:
    """One row per document with a duplicate: `parent` (the document it yields to) and `kind`.

    Phases see only the previous phases' survivors, so a document has at most one kind;
    a group's kept document has none and is its own parent.
    """
    members = pl.concat([url.select(*MEMBER_SCHEMA), exact.select(*MEMBER_SCHEMA), near.select(*MEMBER_SCHEMA)])
    url_removed = pl.col("url_parent").is_not_null() & (pl.col("url_parent") != pl.col("doc_key"))
    return (
        members.unique("doc_key", keep="first", maintain_order=True)
        .join(url.select("doc_key", "url_parent"), on="doc_key", how="left")
        .join(exact.select("doc_key", "exact_parent", "exact_kind", "parent_id"), on="doc_key", how="left")
        .join(near.select("doc_key", "near_parent", "near_kind"), on="doc_key", how="left")
        .select(
            *MEMBER_SCHEMA, "parent_id",
            parent=pl.when(url_removed).then("url_parent").when(pl.col("exact_kind").is_not_null())
            .then("exact_parent").when(pl.col("near_kind").is_not_null()).then("near_parent")
            .otherwise("doc_key"),
            kind=pl.when(url_removed).then(pl.lit("url")).otherwise(pl.coalesce("exact_kind", "near_kind")),
        )
    )


def earlier_ids(store: Store, entries: list[dedup_index.IndexEntry], keys: pl.Series) -> pl.DataFrame:
    """ids of earlier-crawl documents by doc_key (from the index's exact tables, which list every kept doc)."""
    exact = dedup_index.earlier_exact(store, entries)
    if exact is None or keys.len() == 0:
        return pl.DataFrame(schema={"doc_key": pl.UInt64, "earlier_id": pl.String})
    wanted = pl.DataFrame({"doc_key": keys}).lazy()
    return (exact.join(wanted, on="doc_key", how="semi").group_by("doc_key")
            .agg(pl.col("id").first().alias("earlier_id")).collect(engine="streaming"))


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
    """Kept documents of one raw part with their cluster columns, and its removed rows.

    Only documents with a duplicate have a decision row; the rest are kept in a cluster of one.
    """
    plan, store = task.plan, task.plan.store
    frame = store.scan_files([task.uri]).with_columns(doc_key()).collect()
    decisions_path = plan.decisions_path(task.part)
    if store.exists(decisions_path):
        decisions = store.scan_files([decisions_path]).select("doc_key", "kind", "dup_cluster", "dup_cluster_size")
        frame = frame.join(decisions.collect(), on="doc_key", how="left", maintain_order="left")
    else:
        frame = frame.with_columns(kind=pl.lit(None, dtype=pl.String), dup_cluster=pl.lit(None, dtype=pl.String),
                                   dup_cluster_size=pl.lit(None, dtype=pl.Int64))
    frame = frame.with_columns(dup_cluster=pl.coalesce("dup_cluster", "id"),
                               dup_cluster_size=pl.col("dup_cluster_size").fill_null(1))
    kept = frame.filter(pl.col("kind").is_null()).drop("doc_key", "kind")
    removed = frame.filter(pl.col("kind").is_not_null()).select(list(REMOVED_SCHEMA))
    kept_part = store.write_parquet(kept, posixpath.join(plan.version_dir, f"part-{task.part:05d}.parquet")) \
        if kept.height else None
    removed_part = store.write_parquet(removed, posixpath.join(plan.version_dir, f"removed-{task.part:05d}.parquet")) \
        if removed.height else None
    return kept_part, removed_part, kept.height


# --- index --------------------------------------------------------------------------------

def write_index_bucket(task: BucketTask) -> int:
    """This crawl's kept documents' band keys and text hashes for one bucket, into the persistent index."""
    plan, store = task.plan, task.plan.store
    written = 0
    for table, folder, columns, order in (("bands", "bands", ["key", "doc_key"], ["key", "doc_key"]),
                                          ("text", "exact", ["text_hi", "text_lo", "doc_key", "id"],
                                           ["text_hi", "text_lo", "doc_key"])):
        files = plan.bucket_files(table, task.bucket)
        if not files:
            continue
        kept = plan.without_removed(store.scan_files(files), "all").select(columns).sort(order).collect()
        if kept.height:
            store.write_parquet(kept, posixpath.join(plan.index_dir, folder,
                                                     f"{dedup_index.bucket_name(task.bucket)}.parquet"))
        written += kept.height
    return written
