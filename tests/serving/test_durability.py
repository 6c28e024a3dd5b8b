"""`recsys serve` processes: a 201 survives `kill -9`, replicas converge through the store, SIGTERM loses no request.

Each server is a real ``python -m recsys serve`` process on 127.0.0.1; requests stay on this machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

TOKEN = "durability-admin-token-0123"
POLL_S = 0.2
#: The bound on replica lag asserted here: the configured poll plus generous room for a loaded shared CPU.
CONVERGE_S = POLL_S + 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """One `recsys serve` process."""

    def __init__(self, bundle: Path, catalogue: str, token_file: Path, log: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        command = [
            sys.executable, "-m", "recsys", "serve", "--bundle", str(bundle), "--port", str(self.port), "--threads", "1",
            "--catalogue", catalogue, "--catalogue-poll-s", str(POLL_S), "--admin-token-file", str(token_file), *extra,
        ]
        self.process = subprocess.Popen(command, stdout=open(log, "w"), stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})

    def wait_ready(self, timeout: float = 180) -> "Server":
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"not ready in {timeout} s: {self.log.read_text()}"
            time.sleep(0.2)

    def post(self, path: str, body: dict, admin: bool = False) -> httpx.Response:
        headers = {"Authorization": f"Bearer {TOKEN}"} if admin else None
        return httpx.post(self.url + path, json=body, headers=headers, timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def token_file(tmp_path) -> Path:
    path = tmp_path / "admin.token"
    path.write_text(TOKEN)
    path.chmod(0o600)
    return path


@pytest.fixture
def servers():
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


def start(servers, *args, **kwargs) -> Server:
    server = Server(*args, **kwargs)
    servers.append(server)
    return server


def until(check, timeout: float) -> float:
    """Seconds until ``check()`` is true (fails after ``timeout``)."""
    begin = time.monotonic()
    while not check():
        assert time.monotonic() - begin < timeout, f"not true within {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - begin


def recommends(server: Server, item: str) -> bool:
    body = server.post("/v1/recommend", {"history": ["1", "2"], "k": 5, "candidates": [item, "3"]}).json()
    return item in [i["id"] for i in body["items"]]


def test_a_201_survives_kill_9_and_replicas_converge(qwen_bundle, tmp_path, token_file, servers):
    store = f"sqlite:///{tmp_path / 'catalogue.db'}"
    a = start(servers, qwen_bundle, store, token_file, tmp_path / "a.log")
    b = start(servers, qwen_bundle, store, token_file, tmp_path / "b.log")
    a.wait_ready()
    b.wait_ready()
    created = a.post("/v1/items", {"id": "durable-1", "text": "A heist comedy in 1920s Chicago", "title": "The Sting II"}, admin=True)
    assert created.status_code == 201, created.text
    a.process.send_signal(signal.SIGKILL)  # right after the 201
    a.process.wait(timeout=10)
    lag = until(lambda: b.post("/v1/recommend", {"history": ["1"], "k": 1, "candidates": ["durable-1"]}).json()["unknown_items"] == [], CONVERGE_S)
    assert recommends(b, "durable-1") and httpx.get(f"{b.url}/v1/items/durable-1").json()["title"] == "The Sting II"
    print(f"replica b saw the item {lag:.2f} s after the 201 (poll {POLL_S} s)")
    restarted = start(servers, qwen_bundle, store, token_file, tmp_path / "a2.log").wait_ready()
    assert httpx.get(f"{restarted.url}/v1/items/durable-1").json()["added"] is True  # replayed at start
    assert recommends(restarted, "durable-1")
    assert restarted.post("/v1/items", {"id": "durable-1", "text": "again"}, admin=True).status_code == 409
    # a removal through one replica reaches the other
    assert httpx.delete(f"{restarted.url}/v1/items/durable-1", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).status_code == 200
    until(lambda: not recommends(b, "durable-1"), CONVERGE_S)
    assert httpx.get(f"{b.url}/v1/items/durable-1").json()["available"] is False


def test_replicas_on_postgresql_converge(qwen_bundle, tmp_path, token_file, servers, postgres_url):
    a = start(servers, qwen_bundle, postgres_url, token_file, tmp_path / "a.log")
    b = start(servers, qwen_bundle, postgres_url, token_file, tmp_path / "b.log")
    a.wait_ready()
    b.wait_ready()
    item = f"pg-{time.time_ns()}"
    assert a.post("/v1/items", {"id": item, "text": "A quiet drama about a lighthouse keeper"}, admin=True).status_code == 201
    until(lambda: recommends(b, item), CONVERGE_S)
    assert httpx.delete(f"{b.url}/v1/items/{item}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).status_code == 200
    until(lambda: not recommends(a, item), CONVERGE_S)


async def _client(port: int, body: bytes, outcomes: list[str], stop: asyncio.Event) -> None:
    """Closed loop on a keep-alive connection; records 'ok', 'status <n>', 'refused' (nothing sent) or 'lost' (sent, no answer)."""
    reader = writer = None
    while not stop.is_set():
        if writer is None:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                outcomes.append("refused")
                return
        writer.write(b"POST /v1/recommend HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        try:
            await writer.drain()
            status = await reader.readline()
            if not status:
                raise ConnectionError("closed")
            length, close = 0, False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                length = int(value) if name.lower() == "content-length" else length
                close = close or (name.lower() == "connection" and value.strip().lower() == "close")
            await reader.readexactly(length)
        except (OSError, ConnectionError, asyncio.IncompleteReadError):
            outcomes.append("lost")
            writer.close()
            return
        code = int(status.split()[1])
        outcomes.append("ok" if code == 200 else f"status {code}")
        if close:
            writer.close()
            reader = writer = None


def test_sigterm_answers_every_request_it_received(qwen_bundle, tmp_path, token_file, servers):
    server = start(servers, qwen_bundle, f"sqlite:///{tmp_path / 'c.db'}", token_file, tmp_path / "s.log", "--drain-s", "5").wait_ready()
    body = json.dumps({"history": ["1", "2", "3"], "k": 10}).encode()

    async def scenario():
        stop = asyncio.Event()
        outcomes: list[list[str]] = [[] for _ in range(8)]
        clients = [asyncio.create_task(_client(server.port, body, out, stop)) for out in outcomes]
        await asyncio.sleep(1.5)
        before = sum(len(o) for o in outcomes)
        server.process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*clients), timeout=60)
        return outcomes, before

    outcomes, before = asyncio.run(scenario())
    flat = [o for out in outcomes for o in out]
    print({o: flat.count(o) for o in set(flat)}, "before SIGTERM:", before)
    assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
    assert before > 8 and "lost" not in flat, {o: flat.count(o) for o in set(flat)}
    assert all(out[-1] == "refused" for out in outcomes)  # each client ended on a refused connect, nothing half-sent
    assert set(flat) <= {"ok", "refused"}, {o: flat.count(o) for o in set(flat)}
