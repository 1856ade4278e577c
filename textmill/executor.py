"""Shard-parallel execution behind one interface: a local process pool, or in-process.

A stage hands the executor a pure function and a list of shard tasks; results come back
in task order, so outputs do not depend on scheduling. A Ray executor implements the
same interface for clusters.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterator, Protocol, Sequence, TypeVar

from textmill.config import ExecutionConfig

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)


class Executor(Protocol):
    """Runs `fn` over shard tasks and yields results in task order."""

    workers: int

    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Iterator[R]: ...


class SerialExecutor:
    """Runs shards one after another in this process (debugging, tiny inputs)."""

    workers = 1

    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Iterator[R]:
        for task in tasks:
            yield fn(task)


class LocalProcessExecutor:
    """A pool of worker processes (spawned, so no state leaks from the parent)."""

    def __init__(self, *, workers: int | None = None, max_tasks_per_child: int | None = 8) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.max_tasks_per_child = max_tasks_per_child

    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Iterator[R]:
        if not tasks:
            return
        workers = min(self.workers, len(tasks))
        if workers == 1:
            yield from SerialExecutor().map(fn, tasks)
            return
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=workers, mp_context=context, max_tasks_per_child=self.max_tasks_per_child
        ) as pool:
            log.debug("running %d shards on %d processes", len(tasks), workers)
            yield from pool.map(fn, tasks)


def make_executor(config: ExecutionConfig) -> Executor:
    if config.backend == "serial":
        return SerialExecutor()
    return LocalProcessExecutor(workers=config.workers)
