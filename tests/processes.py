"""Stopping the servers, clusters and drivers that tests start in their own process groups."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def signal_group(process: subprocess.Popen, sig: int) -> None:
    """Send `sig` to the process's group (started with start_new_session=True); a gone group is fine."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def stop_group(process: subprocess.Popen, *, grace: float = 15.0) -> None:
    """SIGTERM the group, give it `grace` seconds to shut down cleanly, then SIGKILL whatever of the
    group is left (a server's helpers that outlive it, too) and reap the process."""
    signal_group(process, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    signal_group(process, signal.SIGKILL)
    process.wait(timeout=15)


#: every port a Ray head opens, each given explicitly so parallel heads and other servers never collide
RAY_HEAD_PORTS = ("port", "ray-client-server-port", "dashboard-port", "dashboard-agent-listen-port",
                  "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port",
                  "node-manager-port", "object-manager-port")


def ray_head_command(temp_dir: str, ports: dict[str, int]) -> list[str]:
    """`ray start --head --block` on 127.0.0.1: 2 CPUs, no dashboard, a small object store, the given ports."""
    return [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--num-cpus=2",
            "--node-ip-address=127.0.0.1", "--include-dashboard=false", f"--temp-dir={temp_dir}",
            "--disable-usage-stats", "--object-store-memory=200000000",
            *(f"--{name}={port}" for name, port in ports.items())]
