"""Shard-parallel execution behind one interface: a local process pool, or in-process.

A stage hands the executor a pure function and a list of shard tasks; results come back
in task order, so outputs do not depend on scheduling. `RayExecutor` implements the
same interface on a local Ray or an existing cluster.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
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


def _exit_with_parent() -> None:
    """Pool worker initializer: end this worker as soon as the process that owns the pool dies.

    A parent killed outright (SIGKILL, the OOM killer, a cancelled orchestrator run) never shuts
    its pool down: the workers would wait on the task queue forever, and one in the middle of a
    task would go on writing into a version folder that the rerun is clearing and rewriting. A
    daemon thread waits on the parent's sentinel (a pipe that closes when the parent dies).
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="textmill-exit-with-parent", daemon=True).start()


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
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=context,
                                             initializer=_exit_with_parent)
        log.debug("running %d shards on %d processes", len(tasks), self.workers)
        futures = [self._pool.submit(fn, task) for task in tasks]
        try:
            for future in futures:
                yield self._result(future)
        finally:
            for future in futures:
                future.cancel()

    def _result(self, future: Future[R]) -> R:
        """The task's result; a pool worker that died (killed, out of memory) fails the run at once.

        The pool notices a dead worker by itself, but if that happens while its manager thread is
        busy it can leave futures pending forever (seen once in a kill drill on CPython 3.11), so
        the wait also checks the workers' exit codes every second.
        """
        while True:
            try:
                return future.result(timeout=1.0)
            except FutureTimeout:
                pool = self._pool
                processes = list((getattr(pool, "_processes", None) or {}).values())
                if any(process.exitcode is not None for process in processes):
                    self._abandon()
                    raise BrokenProcessPool("a pool worker died (killed, or out of memory): the run stops") from None

    def _abandon(self) -> None:
        """Kill a broken pool's remaining workers and drop it without waiting on its threads."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            if process.exitcode is None:
                process.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        if self._pool is not None:
            if getattr(self._pool, "_broken", False):  # joining a broken pool's threads can block
                self._abandon()
                return
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


class RayExecutor:
    """Runs shard tasks as Ray tasks: a local Ray, or an existing cluster by address.

    The stage code is the same as with the process pool: each task is a picklable dataclass
    and a module-level function, results come back in task order, and at most
    `2 × workers` tasks are in flight so a huge stage does not flood the cluster's object store.
    """

    def __init__(self, *, workers: int | None = None, address: str | None = None) -> None:
        import ray

        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            if address:
                ray.init(address=address, logging_level=logging.WARNING)
            else:
                ray.init(num_cpus=workers or os.cpu_count() or 1, include_dashboard=False,
                         logging_level=logging.WARNING)
            self._started = True
        self.workers = workers or int(ray.cluster_resources().get("CPU", 1))
        self._remote: dict[Callable, object] = {}

    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Iterator[R]:
        if not tasks:
            return
        remote = self._remote.get(fn)
        if remote is None:
            remote = self._remote[fn] = self._ray.remote(num_cpus=1)(fn)
        window = max(1, 2 * self.workers)
        pending = [remote.remote(task) for task in tasks[:window]]  # type: ignore[attr-defined]
        submitted = len(pending)
        log.debug("running %d shards as Ray tasks, %d in flight", len(tasks), window)
        for _ in range(len(tasks)):
            result = self._ray.get(pending.pop(0))
            if submitted < len(tasks):
                pending.append(remote.remote(tasks[submitted]))  # type: ignore[attr-defined]
                submitted += 1
            yield result

    def close(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started = False

    def __enter__(self) -> "RayExecutor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_executor(config: ExecutionConfig) -> Executor:
    if config.backend == "serial":
        return SerialExecutor()
    if config.backend == "ray":
        return RayExecutor(workers=config.workers, address=config.ray_address)
    return LocalProcessExecutor(workers=config.workers)
