"""The deduped stage's phases. Parallel phases run per raw part or per hash bucket.

    sign     (per part)    per document: doc key, id, fetch time bucketed by doc key (work/keys/);
                            the same bucketed by normalized-URL hash (work/url/), by exact-text
                            hash (work/text/) and MinHash band keys by key (work/bands/)
    url      (per bucket)  URL groups: the newest fetch stays
    exact    (per bucket)  exact-text groups among URL survivors (earliest fetch, then id),
                            and matches against earlier crawls' kept texts
    edges    (per bucket)  documents sharing a band key (this crawl and the earlier index)
    cluster  (per bucket,  optional exact-Jaccard verification, connected components by star
              rounds)       rounds, the kept document per cluster, parent chains resolved
    write    (per part)    kept documents with dup_cluster / dup_cluster_size; removed rows
    index    (per bucket)  kept documents' band keys and text hashes → state/dedup/{scope}/...

Memory: workers hold one part or one bucket at a time (buckets are sized from the crawl).
Every phase's result stays on disk in the work folder, bucketed by the key the next phase
joins on (group members and graph edges by doc key, cluster members by component), so the
parent only passes file names and counts: its memory does not grow with the crawl nor with
the duplicates found. Connected components are disk-based: alternating large-star and
small-star rounds (Kiveris et al. 2014), one bucket per task, until the graph stops changing;
about log n rounds whatever a component's diameter.
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
from textmill.executor import Executor
from textmill.storage import PartInfo, Store

log = logging.getLogger(__name__)

SIGN_BATCH = 2000  # documents shingled and signed at once (bounds the shingle matrix)
KINDS = ("url", "exact", "exact_earlier_crawl", "near", "near_earlier_crawl")
REMOVED_SCHEMA = {"id": pl.String(), "url": pl.String(), "source": pl.String(), "kind": pl.String(),
                  "dup_cluster": pl.String(), "n_chars": pl.Int64()}
EDGES_SCHEMA = {"doc_key": pl.UInt64(), "other": pl.UInt64()}
MEMBER_SCHEMA = {"doc_key": pl.UInt64(), "id": pl.String(), "part": pl.Int32()}
DOCS_SCHEMA = {"doc_key": pl.UInt64(), "id": pl.String(), "fetched_at": pl.Datetime("us", "UTC"), "part": pl.Int32()}
URL_SCHEMA = MEMBER_SCHEMA | {"url_parent": pl.UInt64()}
EXACT_SCHEMA = MEMBER_SCHEMA | {"exact_parent": pl.UInt64(), "exact_kind": pl.String(), "parent_id": pl.String()}
NEAR_SCHEMA = MEMBER_SCHEMA | {"near_parent": pl.UInt64(), "near_kind": pl.String()}
GRAPH_SCHEMA = {"src": pl.UInt64(), "dst": pl.UInt64()}
LABEL_SCHEMA = {"node": pl.UInt64(), "label": pl.UInt64()}
ASK_SCHEMA = {"target": pl.UInt64(), "asker": pl.UInt64()}
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
    raw_parts: tuple[str, ...] = ()  # the raw version's part URIs (texts for Jaccard verification)

    @property
    def minhasher(self) -> MinHasher:
        return MinHasher(bands=self.bands, rows=self.rows, seed=self.config.minhash.seed)

    def work(self, *parts: str) -> str:
        return posixpath.join(self.work_dir, *parts)

    def bucket_path(self, table: str, bucket: int, name: int | str) -> str:
        """One writer's file in a bucket folder: raw parts write `part-*`, bucket tasks `from-*`."""
        name = f"part-{name:05d}" if isinstance(name, int) else name
        return self.work(table, dedup_index.bucket_name(bucket), f"{name}.parquet")

    def bucket_files(self, table: str, bucket: int) -> list[str]:
        folder = self.work(table, dedup_index.bucket_name(bucket))
        return [posixpath.join(folder, name) for name in self.store.listdir(folder)]

    def read_bucket(self, table: str, bucket: int, schema: dict[str, pl.DataType]) -> pl.DataFrame:
        """All rows written to one bucket of a work table (empty with `schema` if none)."""
        files = self.bucket_files(table, bucket)
        return self.store.scan_files(files).collect() if files else pl.DataFrame(schema=schema)

    def decisions_dir(self, part: int) -> str:
        """Decision rows of one raw part: one file per cluster bucket that has some."""
        return self.work("decisions", f"part-{part:05d}")

    def removed_keys_dir(self, phase: str) -> str:
        """doc_keys removed by a phase (`url`, `exact`) or by all of them (`all`), one file per bucket."""
        return self.work("removed", phase)

    def without_removed(self, frame: pl.LazyFrame, phase: str) -> pl.LazyFrame:
        """Rows of documents that survive up to `phase`: `url`, `exact` (url + exact) or `all`."""
        phases = {"url": ["url"], "exact": ["url", "exact"], "all": ["all"]}[phase]
        files = [posixpath.join(self.removed_keys_dir(name), file) for name in phases
                 for file in self.store.listdir(self.removed_keys_dir(name))]
        if not files:
            return frame
        return frame.join(self.store.scan_files(files), on="doc_key", how="anti")

    def write_removed(self, phase: str, bucket: int, keys: pl.DataFrame) -> None:
        if keys.height:
            self.store.write_parquet(keys.select("doc_key"),
                                     posixpath.join(self.removed_keys_dir(phase), f"{dedup_index.bucket_name(bucket)}.parquet"))


def write_bucketed(plan: Plan, table: str, name: int | str, frame: pl.DataFrame, hashes: np.ndarray | pl.Series) -> int:
    """Write one writer's rows into the bucket folders of `table`, by the top bits of `hashes`."""
    if frame.height == 0:
        return 0
    buckets = pl.Series("_bucket", top_bits(np.asarray(hashes), plan.bucket_bits))
    for (bucket,), piece in frame.with_columns(buckets).partition_by(
            "_bucket", as_dict=True, include_key=False, maintain_order=True).items():
        plan.store.write_parquet(piece, plan.bucket_path(table, int(bucket), name))
    return frame.height


def from_name(bucket: int) -> str:
    return f"from-{bucket:04d}"


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
    write_bucketed(plan, "keys", task.part, documents, documents["doc_key"])
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


def url_groups(task: BucketTask) -> int:
    """Members of one bucket's URL groups with more than one fetch, each with the newest fetch.

    Written to work/url-members/ by doc key; the removed ones to work/removed/url/.
    """
    plan = task.plan
    files = plan.bucket_files("url", task.bucket)
    if not files:
        return 0
    frame = plan.store.scan_files(files).collect()
    members = frame.filter(pl.len().over("url_norm") > 1).select(
        *MEMBER_SCHEMA, url_parent=_first_by(["fetched_at", "doc_key"], [True, False], ["url_norm"]))
    write_bucketed(plan, "url-members", from_name(task.bucket), members, members["doc_key"])
    plan.write_removed("url", task.bucket, members.filter(pl.col("url_parent") != pl.col("doc_key")))
    return members.height


def exact_groups(task: BucketTask) -> int:
    """Members of one bucket's exact-text groups (URL survivors only), and earlier crawls' matches.

    A group's earliest fetch stays unless an earlier crawl kept the same text; the others
    yield to it (`exact`), it yields to the earlier crawl's document (`exact_earlier_crawl`).
    Written to work/exact-members/ by doc key; the removed ones to work/removed/exact/.
    """
    plan, store = task.plan, task.plan.store
    files = plan.bucket_files("text", task.bucket)
    if not files:
        return 0
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
    members = frame.filter((pl.col("group_size") > 1) | pl.col("earlier_key").is_not_null()).select(
        *MEMBER_SCHEMA,
        exact_parent=pl.when(yields).then("keeper").when(to_earlier).then("earlier_key").otherwise("doc_key"),
        exact_kind=pl.when(yields).then(pl.lit("exact")).when(to_earlier).then(pl.lit("exact_earlier_crawl")),
        parent_id=pl.when(to_earlier).then("earlier_id"),
    )
    write_bucketed(plan, "exact-members", from_name(task.bucket), members, members["doc_key"])
    plan.write_removed("exact", task.bucket, members.filter(pl.col("exact_kind").is_not_null()))
    return members.height


# --- edges --------------------------------------------------------------------------------

def bucket_edges(task: BucketTask) -> int:
    """Pairs (doc_key, other) of documents sharing a band key, each group as a star.

    Written to work/edges/ by the star's centre (its lowest doc key), so a pair found in
    several band buckets lands in one edge bucket, where it is made unique.
    """
    plan, store = task.plan, task.plan.store
    frames = []
    files = plan.bucket_files("bands", task.bucket)
    if files:
        frames.append(plan.without_removed(store.scan_files(files), "exact").with_columns(earlier=pl.lit(False)))
    if plan.config.cross_crawl and plan.index_entries:
        earlier = dedup_index.earlier_band_keys(store, list(plan.index_entries), task.bucket, plan.bucket_bits)
        if earlier is not None:
            frames.append(earlier.select("key", "doc_key").with_columns(earlier=pl.lit(True)))
    if not frames:
        return 0
    groups = (
        pl.concat(frames)
        .group_by("key")
        .agg(pl.col("doc_key").sort(), (~pl.col("earlier")).any().alias("has_current"))
        .filter(pl.col("has_current") & (pl.col("doc_key").list.len() > 1))
        .collect()
    )
    if groups.height == 0:
        return 0
    edges = (
        groups.select(pl.col("doc_key").list.first().alias("doc_key"), pl.col("doc_key").list.slice(1).alias("other"))
        .explode("other")
        .unique()
    )
    return write_bucketed(plan, "edges", from_name(task.bucket), edges, edges["doc_key"])


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


@dataclass(frozen=True)
class StepTask:
    """One bucket's share of a cluster step; `step` numbers star rounds."""

    plan: Plan
    bucket: int
    step: int = 0


def graph_bucket(task: BucketTask) -> int:
    """One edge bucket's unique pairs, optionally verified, as directed graph edges by source bucket.

    Returns the number of unique candidate pairs (before verification). With verification,
    pairs of two documents of this crawl keep only if their exact Jaccard similarity reaches
    the threshold; pairs with an earlier crawl's document are kept as they are.
    """
    plan = task.plan
    edges = plan.read_bucket("edges", task.bucket, EDGES_SCHEMA).unique()
    candidates = edges.height
    threshold = plan.config.minhash.verify_jaccard
    if threshold and edges.height:
        ends = pl.concat([edges["doc_key"], edges["other"]]).unique().to_frame("doc_key")
        texts = (plan.store.scan_files(list(plan.raw_parts)).select(doc_key(), "text")
                 .join(ends.lazy(), on="doc_key", how="semi").collect(engine="streaming"))
        current = texts.select("doc_key")
        both_current = edges.join(current, on="doc_key", how="semi").join(
            current.rename({"doc_key": "other"}), on="other", how="semi")
        cross = edges.join(both_current, on=["doc_key", "other"], how="anti")
        verified = verify_pairs(plan, both_current, texts, threshold) if both_current.height else both_current
        edges = pl.concat([verified, cross])
    both_ways = pl.concat([edges.select(src="doc_key", dst="other"), edges.select(src="other", dst="doc_key")])
    write_bucketed(plan, "graph", from_name(task.bucket), both_ways, both_ways["src"])
    return candidates


def _labels_path(plan: Plan, step: int, bucket: int) -> str:
    return plan.work("labels", f"step-{step:03d}", f"{dedup_index.bucket_name(bucket)}.parquet")


def _star_input(step: int) -> str:
    return "graph" if step == 0 else f"star-{step - 1:03d}"


def star_step(task: StepTask) -> tuple[int, int]:
    """One round of alternating large-star / small-star (Kiveris et al. 2014) on one bucket's nodes.

    The graph is kept as directed pairs both ways, filed by `src`. Large-star (even rounds) links
    every neighbour larger than a node to the lowest key around it; small-star (odd rounds) links
    the node and its smaller neighbours to the lowest of them. Both keep the components, and
    together they turn each component into a star around its lowest key in O(log² n) rounds
    (about log n in practice), whatever its diameter. Returns (rows, digest) of this round's
    input, so the caller sees when a round changed nothing.
    """
    plan, step, bucket = task.plan, task.step, task.bucket
    edges = plan.read_bucket(_star_input(step), bucket, GRAPH_SCHEMA).unique()
    if edges.height == 0:
        return 0, 0
    digest = int(np.bitwise_xor.reduce(edges.hash_rows(seed=0x57A2).to_numpy()))  # pairs are unique
    if step % 2 == 0:  # large star
        lowest = pl.min_horizontal("src", pl.col("dst").min().over("src"))  # over all of a node's neighbours
        links = edges.with_columns(b=lowest).filter(pl.col("dst") > pl.col("src")).select(a="dst", b="b")
    else:  # small star
        smaller = edges.filter(pl.col("dst") < pl.col("src"))
        lowest = smaller.group_by("src").agg(b=pl.col("dst").min())
        links = pl.concat([smaller.join(lowest, on="src").select(a="dst", b="b"), lowest.select(a="src", b="b")])
    links = links.filter(pl.col("a") != pl.col("b"))
    both = pl.concat([links.select(src="a", dst="b"), links.select(src="b", dst="a")])
    write_bucketed(plan, f"star-{step:03d}", from_name(bucket), both, both["src"])
    return edges.height, digest


def star_labels(task: StepTask) -> int:
    """(node, label) of one bucket from the final star graph: a star's centre is its lowest key."""
    plan = task.plan
    edges = plan.read_bucket(_star_input(task.step), task.bucket, GRAPH_SCHEMA)
    if edges.height == 0:
        return 0
    labels = edges.group_by("src").agg(label=pl.min_horizontal(pl.col("src").first(), pl.col("dst").min())).rename(
        {"src": "node"}).sort("node")
    plan.store.write_parquet(labels, _labels_path(plan, task.step, task.bucket))
    return labels.height


def label_components(plan: Plan, executor: Executor) -> int:
    """Star rounds over the graph's buckets until a large-star and a small-star round both change
    nothing; writes each node's label (its component's lowest doc key) and returns the final round.
    """
    buckets = range(1 << plan.bucket_bits)
    step, inputs = 0, []
    while True:
        inputs.append(list(executor.map(star_step, [StepTask(plan, b, step) for b in buckets])))
        if step >= 2:
            plan.store.remove_tree(plan.work(f"star-{step - 2:03d}"))  # no round reads it again
        if not any(rows for rows, _ in inputs[-1]) or (len(inputs) >= 3 and inputs[-1] == inputs[-2] == inputs[-3]):
            break
        step += 1
    for _ in executor.map(star_labels, [StepTask(plan, b, step) for b in buckets]):
        pass
    log.info("deduped %s: connected components in %d star rounds", plan.crawl, step + 1)
    return step


def final_labels(plan: Plan, step: int, bucket: int) -> pl.DataFrame:
    """One bucket's (node, label) after round `step` (empty if the bucket has no node)."""
    path = _labels_path(plan, step, bucket)
    return plan.store.scan_files([path]).collect() if plan.store.exists(path) else pl.DataFrame(schema=LABEL_SCHEMA)


def component_members(task: StepTask) -> int:
    """Final labels of one bucket's nodes with this crawl's document data, sent to the component's bucket.

    Nodes without a document of this crawl are earlier crawls' kept documents.
    """
    plan = task.plan
    path = _labels_path(plan, task.step, task.bucket)
    if not plan.store.exists(path):
        return 0
    labels = plan.store.scan_files([path]).select(doc_key="node", component="label")
    docs = plan.read_bucket("keys", task.bucket, DOCS_SCHEMA).lazy()
    labelled = labels.join(docs, on="doc_key", how="left").collect()
    return write_bucketed(plan, "components", from_name(task.bucket), labelled, labelled["component"])


def near_members(task: BucketTask) -> int:
    """This crawl's members of one bucket's components with the document each yields to.

    The kept document is the earliest fetch, then lowest doc key, of this crawl's members;
    a component touching an earlier crawl yields entirely to its lowest earlier doc key.
    """
    plan = task.plan
    labelled = plan.read_bucket("components", task.bucket,
                                DOCS_SCHEMA | {"component": pl.UInt64()})
    if labelled.height == 0:
        return 0
    current = labelled.filter(pl.col("id").is_not_null())
    keeper = (current.sort(["fetched_at", "doc_key"], nulls_last=True).group_by("component", maintain_order=True)
              .first().select("component", keeper="doc_key"))
    earlier = labelled.filter(pl.col("id").is_null()).group_by("component").agg(earlier=pl.col("doc_key").min())
    near = current.join(keeper, on="component").join(earlier, on="component", how="left").select(
        *MEMBER_SCHEMA,
        near_parent=pl.coalesce("earlier", "keeper"),
        near_kind=pl.when(pl.col("earlier").is_not_null()).then(pl.lit("near_earlier_crawl"))
        .when(pl.col("keeper") != pl.col("doc_key")).then(pl.lit("near")),
    )
    return write_bucketed(plan, "near-members", from_name(task.bucket), near, near["doc_key"])


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


def _bucket_file(plan: Plan, table: str, bucket: int) -> str:
    return plan.work(table, f"{dedup_index.bucket_name(bucket)}.parquet")


def _read_bucket_file(plan: Plan, table: str, bucket: int) -> pl.DataFrame | None:
    path = _bucket_file(plan, table, bucket)
    return plan.store.scan_files([path]).collect() if plan.store.exists(path) else None


def combine_bucket(task: BucketTask) -> int:
    """One doc-key bucket's decision table (see `combine`); asks each parent's bucket for the parent's parent.

    Parent chains (url → exact → near) are at most three links long: two rounds of pointer
    jumping (`resolve_round`) take every member to its chain's root.
    """
    plan, bucket = task.plan, task.bucket
    table = combine(plan.read_bucket("url-members", bucket, URL_SCHEMA),
                    plan.read_bucket("exact-members", bucket, EXACT_SCHEMA),
                    plan.read_bucket("near-members", bucket, NEAR_SCHEMA))
    if table.height == 0:
        return 0
    plan.store.write_parquet(table, _bucket_file(plan, "table", bucket))
    plan.store.write_parquet(table.select("doc_key", pointer="parent"), _bucket_file(plan, "pointer-0", bucket))
    asks = table.select(target="parent", asker="doc_key")
    return write_bucketed(plan, "root-ask-0", from_name(bucket), asks, asks["target"])


def answer_bucket(task: StepTask) -> int:
    """Answer the asks sent to one bucket in round `step`: the target's pointer (itself if it has none)."""
    plan, bucket = task.plan, task.bucket
    asks = plan.read_bucket(f"root-ask-{task.step}", bucket, ASK_SCHEMA)
    if asks.height == 0:
        return 0
    pointers = _read_bucket_file(plan, f"pointer-{task.step}", bucket)
    if pointers is None:
        pointers = pl.DataFrame(schema={"doc_key": pl.UInt64(), "pointer": pl.UInt64()})
    answers = asks.join(pointers, left_on="target", right_on="doc_key", how="left").select(
        doc_key="asker", pointer=pl.coalesce("pointer", "target"))
    return write_bucketed(plan, f"root-reply-{task.step}", from_name(bucket), answers, answers["doc_key"])


def jump_bucket(task: StepTask) -> int:
    """Collect round `step`'s answers as the bucket's new pointers; ask their buckets again (next round)."""
    plan, bucket = task.plan, task.bucket
    pointers = plan.read_bucket(f"root-reply-{task.step}", bucket, {"doc_key": pl.UInt64(), "pointer": pl.UInt64()})
    if pointers.height == 0:
        return 0
    plan.store.write_parquet(pointers, _bucket_file(plan, f"pointer-{task.step + 1}", bucket))
    asks = pointers.select(target="pointer", asker="doc_key")
    return write_bucketed(plan, f"root-ask-{task.step + 1}", from_name(bucket), asks, asks["target"])


def rooted_bucket(task: StepTask) -> int:
    """One bucket's members with their root (the final round's answers), sent to the root's bucket."""
    plan, bucket = task.plan, task.bucket
    table = _read_bucket_file(plan, "table", bucket)
    if table is None:
        return 0
    roots = plan.read_bucket(f"root-reply-{task.step}", bucket, {"doc_key": pl.UInt64(), "pointer": pl.UInt64()})
    rooted = table.join(roots.rename({"pointer": "root"}), on="doc_key")
    return write_bucketed(plan, "rooted", from_name(bucket), rooted, rooted["root"])


def earlier_ids(store: Store, entries: list[dedup_index.IndexEntry], keys: pl.Series) -> pl.DataFrame:
    """ids of earlier-crawl documents by doc_key (from the index's exact tables, which list every kept doc)."""
    exact = dedup_index.earlier_exact(store, entries)
    if exact is None or keys.len() == 0:
        return pl.DataFrame(schema={"doc_key": pl.UInt64, "earlier_id": pl.String})
    wanted = pl.DataFrame({"doc_key": keys}).lazy()
    return (exact.join(wanted, on="doc_key", how="semi").group_by("doc_key")
            .agg(pl.col("id").first().alias("earlier_id")).collect(engine="streaming"))


HISTOGRAM_BINS = (("1", 1, 1), ("2", 2, 2), ("3-5", 3, 5), ("6-10", 6, 10), ("11-100", 11, 100), (">100", 101, 1 << 62))
LARGEST = 5  # clusters listed in the statistics


def size_histogram(sizes: pl.Series) -> dict[str, int]:
    return {label: int(((sizes >= low) & (sizes <= high)).sum()) for label, low, high in HISTOGRAM_BINS}


def largest_clusters(kept: pl.DataFrame) -> pl.DataFrame:
    """The largest clusters by their kept document (id, dup_cluster_size), ties by id."""
    return kept.filter(pl.col("dup_cluster_size") > 1).sort(
        ["dup_cluster_size", "id"], descending=[True, False]).head(LARGEST).select("id", "dup_cluster_size")


def finalize_bucket(task: BucketTask) -> dict:
    """Clusters whose root falls in one bucket: dup_cluster (the root's id, also an earlier crawl's)
    and dup_cluster_size; written as decision rows per raw part. Returns this bucket's statistics."""
    plan, bucket = task.plan, task.bucket
    stats = {"removed_by_kind": {}, "kept_with_duplicates": 0, "histogram": size_histogram(pl.Series([], dtype=pl.Int64)),
             "largest": []}
    schema = MEMBER_SCHEMA | {"parent_id": pl.String(), "parent": pl.UInt64(), "kind": pl.String(), "root": pl.UInt64()}
    table = plan.read_bucket("rooted", bucket, schema)
    if table.height == 0:
        return stats
    own = _read_bucket_file(plan, "table", bucket)
    if own is None:
        own = pl.DataFrame(schema=MEMBER_SCHEMA)
    ids = own.select(pl.col("doc_key").alias("root"), pl.col("id").alias("root_id"))
    table = table.join(ids, on="root", how="left")
    missing = table.filter(pl.col("root_id").is_null())["root"].unique()
    if missing.len():
        found = earlier_ids(plan.store, list(plan.index_entries), missing).rename({"doc_key": "root"})
        table = table.join(found, on="root", how="left").with_columns(
            root_id=pl.coalesce("root_id", "earlier_id", "parent_id")).drop("earlier_id")
    sizes = table.group_by("root").len("dup_cluster_size").with_columns(pl.col("dup_cluster_size").cast(pl.Int64))
    table = table.join(sizes, on="root", how="left").rename({"root_id": "dup_cluster"})

    for (part,), decisions in table.select("part", "doc_key", "kind", "dup_cluster", "dup_cluster_size").partition_by(
            "part", as_dict=True, include_key=False).items():
        plan.store.write_parquet(decisions, posixpath.join(plan.decisions_dir(part),
                                                           f"{dedup_index.bucket_name(bucket)}.parquet"))
    removed = table.filter(pl.col("kind").is_not_null())
    plan.write_removed("all", bucket, removed)
    kept = table.filter(pl.col("kind").is_null())  # kept documents that have duplicates
    return {
        "removed_by_kind": dict(removed.group_by("kind").len().iter_rows()),
        "kept_with_duplicates": kept.height,
        "histogram": size_histogram(kept["dup_cluster_size"]),
        "largest": largest_clusters(kept).to_dicts(),
    }


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
    folder = plan.decisions_dir(task.part)
    if files := [posixpath.join(folder, name) for name in store.listdir(folder)]:
        decisions = store.scan_files(files).select("doc_key", "kind", "dup_cluster", "dup_cluster_size")
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
