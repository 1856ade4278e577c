"""Stopping the servers, clusters and drivers that tests start in their own process groups."""

from __future__ import annotations

import os
import signal
import subprocess


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
