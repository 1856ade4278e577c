"""Process-tree monitor shared by the benchmarks: CPU time and peak memory of a child and its workers."""

from __future__ import annotations

import threading


class TreeMonitor(threading.Thread):
    """Polls a process and all its descendants; keeps the peak of summed RSS and PSS."""

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        import psutil

        self.psutil = psutil
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak_rss = self.peak_pss = self.peak_single_rss = 0
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
