"""Disk-based connected components of deduped: label rounds over bucketed files agree with scipy."""

import numpy as np
import polars as pl
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from textmill.config import DedupConfig
from textmill.dedup import pipeline
from textmill.executor import SerialExecutor
from textmill.storage import Store


def plan_for(tmp_path, bucket_bits: int) -> pipeline.Plan:
    return pipeline.Plan(store=Store(str(tmp_path)), crawl="c", config=DedupConfig(), work_dir=str(tmp_path / "work"),
                         version_dir=str(tmp_path / "version"), bands=14, rows=8, bucket_bits=bucket_bits,
                         index_entries=(), index_dir=str(tmp_path / "index"))


def disk_components(plan: pipeline.Plan, edges: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Write edges as the edges phase does (by star centre), run the cluster steps, read the labels."""
    pipeline.write_bucketed(plan, "edges", "from-0000", edges, edges["doc_key"])
    buckets = [pipeline.BucketTask(plan, b) for b in range(1 << plan.bucket_bits)]
    executor = SerialExecutor()
    assert sum(executor.map(pipeline.graph_bucket, buckets)) == edges.unique().height
    step = pipeline.label_components(plan, executor)
    labels = pl.concat([pipeline.final_labels(plan, step, b.bucket) for b in buckets])
    return labels.rename({"node": "doc_key", "label": "component"}), step


def scipy_components(edges: pl.DataFrame) -> pl.DataFrame:
    """Reference: scipy's components, labelled by their lowest key."""
    left, right = edges["doc_key"].to_numpy(), edges["other"].to_numpy()
    nodes, inverse = np.unique(np.concatenate((left, right)), return_inverse=True)
    graph = coo_matrix((np.ones(len(left), dtype=np.int8), (inverse[: len(left)], inverse[len(left):])),
                       shape=(len(nodes), len(nodes)))
    _, labels = connected_components(graph, directed=False)
    frame = pl.DataFrame({"doc_key": nodes, "scipy": labels})
    return frame.with_columns(component=pl.col("doc_key").min().over("scipy")).select("doc_key", "component")


def random_keys(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.unique(rng.integers(0, np.iinfo(np.uint64).max, size=n * 2, dtype=np.uint64))[:n]


@pytest.mark.parametrize("bucket_bits", [0, 1, 3])
def test_long_path_stars_and_isolated_pairs_match_scipy(tmp_path, bucket_bits):
    rng = np.random.default_rng(1)
    keys = rng.permutation(random_keys(rng, 1200))
    path = keys[:400]  # a chain of 400 nodes in random key order: the worst case for label propagation
    chain = pl.DataFrame({"doc_key": path[:-1], "other": path[1:]})
    stars = [pl.DataFrame({"doc_key": np.repeat(keys[400 + 50 * s], 49), "other": keys[401 + 50 * s: 450 + 50 * s]})
             for s in range(10)]  # band groups: a centre and its members
    bridge = pl.DataFrame({"doc_key": [keys[450], keys[899]], "other": [keys[500], keys[100]]})  # stars joined, and to the chain
    pairs = pl.DataFrame({"doc_key": keys[900:1200:2], "other": keys[901:1200:2]})
    edges = pl.concat([chain, *stars, bridge, pairs, chain.head(30)])  # some pairs twice, as from several bands
    edges = edges.with_columns(pl.col("doc_key").cast(pl.UInt64), pl.col("other").cast(pl.UInt64))

    labels, step = disk_components(plan_for(tmp_path, bucket_bits), edges)
    expected = scipy_components(edges)
    assert labels.height == expected.height
    assert labels.sort("doc_key").equals(expected.sort("doc_key"))
    assert step <= 30  # star rounds: about log² n at worst, not the 400-node diameter


def test_random_graph_matches_scipy(tmp_path):
    rng = np.random.default_rng(2)
    keys = random_keys(rng, 3000)
    left, right = rng.integers(0, len(keys), 2500), rng.integers(0, len(keys), 2500)
    edges = pl.DataFrame({"doc_key": keys[np.minimum(left, right)], "other": keys[np.maximum(left, right)]})
    edges = edges.filter(pl.col("doc_key") != pl.col("other"))
    labels, _ = disk_components(plan_for(tmp_path, 2), edges)
    assert labels.sort("doc_key").equals(scipy_components(edges).sort("doc_key"))
