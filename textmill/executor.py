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

    def close(self) -> None: ...


class SerialExecutor:
    """Runs shards one after another in this process (debugging, tiny inputs)."""

    workers = 1

    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Iterator[R]:
        for task in tasks:
            yield fn(task)

    def close(self) -> None:
        pass


class LocalProcessExecutor:
    """A pool of worker processes (spawned, so no state leaks from the parent).

    The pool starts on first use and is reused by every later `map` until `close()`, so
    a stage with several parallel phases pays the worker start-up once.
    """

    def __init__(self, *, workers: int | None = None) -> None:
        # no max_tasks_per_child: on Python 3.11 it can deadlock the pool (CPython gh-115634)
        self.workers = workers or os.cpu_count() or 1
        self._pool: ProcessPoolExecutor | None = None

    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Iterator[R]:
        if not tasks:
            return
        if self.workers == 1 or (len(tasks) == 1 and self._pool is None):
            yield from SerialExecutor().map(fn, tasks)
            return
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=context)
        log.debug("running %d shards on %d processes", len(tasks), self.workers)
        yield from self._pool.map(fn, tasks)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "LocalProcessExecutor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort when the owner forgot close()
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def make_executor(config: ExecutionConfig) -> Executor:
    if config.backend == "serial":
        return SerialExecutor()
    return LocalProcessExecutor(workers=config.workers)
