"""Fixtures: a running `baimo serve` on a free loopback port with the tiny quantized Qwen2 fixture.

The binary is $BAIMO_BIN, else target/debug/baimo (tools/test_server.sh builds it). Raw HTTP goes through the
standard library's http.client so the hostile-request table controls every byte (methods, headers, bodies).
"""
import http.client
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("BAIMO_BIN", ROOT / "target" / "debug" / "baimo"))
MODEL_PATH = ROOT / "fixtures" / "tiny" / "qwen2-q" / "qwen2-q-Q4_K_M.gguf"
MODEL = "tiny"
API_KEY = "test-key"
CTX = 256
MAX_BODY = 65536


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One `baimo serve` process."""

    def __init__(self, *extra, ctx=CTX, api_key=API_KEY):
        if not BIN.exists():
            pytest.fail(f"{BIN} is missing: build it with `cargo build -p baimo` (tools/test_server.sh does)")
        self.port = free_port()
        self.api_key = api_key
        args = [str(BIN), "serve", "--model", f"{MODEL}={MODEL_PATH}", "--host", "127.0.0.1",
                "--port", str(self.port), "--ctx", str(ctx), "--max-body-bytes", str(MAX_BODY),
                "--threads", "1", *extra]
        if api_key:
            args += ["--api-key", api_key]
        self.log = open(ROOT / "target" / f"serve-{self.port}.log", "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"baimo serve exited with {self.proc.returncode}: {self.read_log()}")
            try:
                if self.request("GET", "/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("baimo serve did not come up: " + self.read_log())

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.port}/v1"

    def read_log(self):
        self.log.flush()
        return Path(self.log.name).read_text()[-4000:]

    def conn(self, timeout=120):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def auth(self):
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def request(self, method, path, body=None, headers=None, auth=True):
        """(status, headers, text) of one request. `body` may be bytes, str or a JSON-able object."""
        h = dict(self.auth() if auth else {})
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            h.setdefault("Content-Type", "application/json")
        h.update(headers or {})
        c = self.conn()
        try:
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            return r.status, dict(r.getheaders()), r.read().decode("utf-8", "replace")
        finally:
            c.close()

    def post(self, path, body, **kw):
        status, headers, text = self.request("POST", path, body, **kw)
        return status, headers, (json.loads(text) if text else None)

    def metrics(self):
        """{metric name with labels: value} of /metrics."""
        status, _, text = self.request("GET", "/metrics")
        assert status == 200
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                k, _, v = line.rpartition(" ")
                out[k] = float(v)
        return out

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.log.close()


@pytest.fixture(scope="session")
def server():
    s = Server()
    yield s
    rc = s.stop()
    assert rc == 0, f"baimo serve exited with {rc} on SIGTERM: {s.read_log()}"


@pytest.fixture(scope="session")
def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=120)


def sse_events(resp):
    """Yields the `data:` payloads of an http.client SSE response as they arrive."""
    while True:
        line = resp.readline()
        if not line:
            return
        line = line.decode().rstrip("\r\n")
        if line.startswith("data:"):
            yield line[5:].strip()
