"""Shared by the benchmarks: run a child under a process-tree monitor (CPU time, peak memory), machine facts."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import threading
import time
from pathlib import Path
from typing import IO


class TreeMonitor(threading.Thread):
    """Polls a process and all its descendants; keeps the peak of summed RSS and PSS.

    Also the peak RSS of the root alone (a coordinating parent) and of the largest descendant
    (a worker), which tell apart memory that grows with the input from bounded per-task memory.
    """

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        import psutil

        self.psutil = psutil
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak_rss = self.peak_pss = self.peak_single_rss = self.peak_root_rss = self.peak_child_rss = 0
        self.peak_processes = self.samples = 0
        self.cpu: dict[tuple[int, float], float] = {}
        self.done = threading.Event()

    def run(self) -> None:
        psutil = self.psutil
        while not self.done.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                break
            rss = pss = alive = 0
            for proc in procs:
                try:
                    with proc.oneshot():
                        info = proc.memory_full_info()
                        times = proc.cpu_times()
                        key = (proc.pid, proc.create_time())
                except psutil.Error:
                    continue
                rss += info.rss
                pss += getattr(info, "pss", info.rss)
                self.peak_single_rss = max(self.peak_single_rss, info.rss)
                if proc.pid == self.root.pid:
                    self.peak_root_rss = max(self.peak_root_rss, info.rss)
                else:
                    self.peak_child_rss = max(self.peak_child_rss, info.rss)
                self.cpu[key] = times.user + times.system
                alive += 1
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.peak_processes = max(self.peak_processes, alive)
            self.samples += 1
            self.done.wait(self.interval)


def kill_tree(pid: int) -> None:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.Error:
        return
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)


def run_monitored(command: list, *, stderr: IO[bytes], log: Path, interval: float, timeout: float,
                  cwd: Path, env: dict[str, str] | None = None) -> tuple[bytes, float, TreeMonitor]:
    """Run a child to completion while polling its process tree; returns (stdout, wall seconds, monitor).

    A child over `timeout` is killed with its whole tree; a failing child raises with its log's tail.
    """
    started = time.perf_counter()
    child = subprocess.Popen([str(c) for c in command], stdout=subprocess.PIPE, stderr=stderr, cwd=cwd, env=env)
    monitor = TreeMonitor(child.pid, interval)
    monitor.start()
    try:
        stdout, _ = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        monitor.done.set()
        kill_tree(child.pid)
        child.communicate()
        raise RuntimeError(f"{command[1]} did not finish within {timeout:.0f}s; killed (log: {log})") from None
    wall = time.perf_counter() - started
    monitor.done.set()
    monitor.join()
    if child.returncode != 0:
        stderr.flush()
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{command[1]} failed with exit code {child.returncode}:\n{tail}")
    return stdout, wall, monitor


def child_env() -> dict[str, str]:
    """The environment of a measured child: nothing may download (Hugging Face offline)."""
    env = dict(os.environ)
    env |= {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return env


def measure_child(command: list, *, cwd: Path, log: Path, interval: float, timeout: float) -> dict:
    """Run one benchmark child offline under the monitor; its wall, CPU, memory and last JSON line."""
    load = os.getloadavg()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log, "ab") as stderr:
        stderr.write(f"\n$ {' '.join(map(str, command))}\n".encode())
        stderr.flush()
        stdout, wall, monitor = run_monitored(command, stderr=stderr, log=log, interval=interval, timeout=timeout,
                                              cwd=cwd, env=child_env())
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [line for line in stdout.decode().splitlines() if line.startswith("{")]
    rusage_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    tree_cpu = sum(monitor.cpu.values())
    return {
        "wall_seconds": round(wall, 3),
        "cpu_seconds": round(max(rusage_cpu, tree_cpu), 3),
        "cpu_seconds_rusage": round(rusage_cpu, 3),
        "cpu_seconds_polled": round(tree_cpu, 3),
        "peak_rss_sum_mib": round(monitor.peak_rss / 2**20, 1),
        "peak_pss_sum_mib": round(monitor.peak_pss / 2**20, 1),
        "peak_single_rss_mib": round(monitor.peak_single_rss / 2**20, 1),
        "peak_parent_rss_mib": round(monitor.peak_root_rss / 2**20, 1),
        "peak_worker_rss_mib": round(monitor.peak_child_rss / 2**20, 1),
        "peak_processes": monitor.peak_processes,
        "monitor_samples": monitor.samples,
        "load_average_before": [round(x, 2) for x in load],
        "child": json.loads(lines[-1]) if lines else None,
    }


def machine() -> dict:
    """The machine a benchmark ran on."""
    import psutil

    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu_model": next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                           if line.startswith("model name")), platform.processor()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": os.getloadavg(),
    }
