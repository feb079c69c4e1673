"""Fixtures: the real switchyard binary (mock upstream + proxy) on loopback ports."""
import itertools
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def binary() -> str:
    explicit = os.environ.get("SWITCHYARD_BIN")
    if explicit:
        return explicit
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    return str(Path(target) / "ci" / "switchyard")


def _reserved_range() -> tuple[int, int]:
    """The ports tests may use: the larger gap outside the kernel's ephemeral range, where no
    outgoing connection can take a port handed to a child that has not bound it yet."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(n) for n in f.read().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    below = (10_000, max(low, 10_000))
    above = (max(high + 1, 10_000), 65_535)
    return max(below, above, key=lambda r: r[1] - r[0])


_next = itertools.count((os.getpid() * 7919) % 1_000_000)


def free_port() -> int:
    """A free loopback port below the ephemeral range, never the same one twice (see
    tests/common/mod.rs for why)."""
    low, high = _reserved_range()
    for _ in range(high - low):
        port = low + next(_next) % (high - low)
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}..{high}")


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} never answered 200")


class Stack:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs = []
        self.mock_port = free_port()
        self.proxy_port = free_port()
        self.admin_port = free_port()

    def spawn(self, name, *args):
        log = open(self.tmp / f"{name}.log", "wb")
        p = subprocess.Popen([binary(), *args], stdout=subprocess.DEVNULL, stderr=log)
        self.procs.append(p)
        return p

    def start(self):
        self.spawn("mock", "mock-upstream", "--port", str(self.mock_port), "--record",
                   "--chunks", "6")
        wait_http(f"http://127.0.0.1:{self.mock_port}/mock/config")
        cfg = self.tmp / "policy.yaml"
        cfg.write_text(f"""
listen: {{ proxy: "127.0.0.1:{self.proxy_port}", admin: "127.0.0.1:{self.admin_port}" }}
providers:
  openai:
    format: openai
    base_url: "http://127.0.0.1:{self.mock_port}/v1"
    api_key: sk-injected-by-switchyard
    intercept: [api.openai.com]
  claude:
    format: anthropic
    base_url: "http://127.0.0.1:{self.mock_port}"
    api_key: sk-ant-injected-by-switchyard
    intercept: [api.anthropic.com]
  gem:
    format: gemini
    base_url: "http://127.0.0.1:{self.mock_port}"
    api_key: gk-injected-by-switchyard
prices: "{ROOT / 'conf' / 'prices.yaml'}"
models:
  gpt-4o-mini: {{ provider: openai, name: gpt-4o-mini-2024-07-18 }}
  claude-haiku: {{ provider: claude, name: claude-3-5-haiku-20241022, max_tokens: 1024 }}
  gemini-flash: {{ provider: gem, name: gemini-2.5-flash }}
routes:
  - name: chat
    match: {{ model: "gpt-4o*" }}
    strategy: priority
    targets: [gpt-4o-mini]
""")
        self.spawn("proxy", "proxy", "--config", str(cfg))
        wait_http(f"http://127.0.0.1:{self.admin_port}/readyz")
        return self

    def upstream_requests(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.mock_port}/mock/requests") as r:
            return json.load(r)

    def mock_post(self, path, body, headers=None):
        req = urllib.request.Request(f"http://127.0.0.1:{self.mock_port}{path}",
                                     data=json.dumps(body).encode(), method="POST",
                                     headers={"content-type": "application/json", **(headers or {})})
        with urllib.request.urlopen(req) as r:
            return json.load(r)

    def metric(self, series):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics") as r:
            for line in r.read().decode().splitlines():
                name, _, value = line.rpartition(" ")
                if name == series:
                    return float(value)
        return 0.0

    def stop(self):
        for p in self.procs:
            p.kill()
            p.wait()


@pytest.fixture
def stack():
    with tempfile.TemporaryDirectory() as d:
        s = Stack(Path(d)).start()
        try:
            yield s
        finally:
            s.stop()


INGEST_TOKEN = "py-ingest-token"
ADMIN_TOKEN = "py-admin-token"
RESEARCH_TOKEN = "py-research-token"


def sha256_line(token: str) -> str:
    import hashlib
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


class CollectorStack(Stack):
    """Mock upstream, a collector on SQLite, and a sidecar shipping usage events to it."""

    def start(self):
        self.spawn("mock", "mock-upstream", "--port", str(self.mock_port), "--record",
                   "--chunks", "6")
        wait_http(f"http://127.0.0.1:{self.mock_port}/mock/config")
        self.collector_port = free_port()
        ccfg = self.tmp / "collector.yaml"
        ccfg.write_text(f"""
listen: 127.0.0.1:{self.collector_port}
database: "sqlite://{self.tmp / 'usage.db'}"
policy: policy.yaml
tokens:
  ingest: ["{sha256_line(INGEST_TOKEN)}"]
  readers:
    - {{ hash: "{sha256_line(ADMIN_TOKEN)}", role: admin }}
    - {{ hash: "{sha256_line(RESEARCH_TOKEN)}", role: team, team: research }}
""")
        self.spawn("collector", "collector", "--config", str(ccfg))
        wait_http(f"http://127.0.0.1:{self.collector_port}/readyz")
        cfg = self.tmp / "policy.yaml"
        cfg.write_text(f"""
listen: {{ proxy: "127.0.0.1:{self.proxy_port}", admin: "127.0.0.1:{self.admin_port}" }}
identity: {{ team: research, service: notebook }}
providers:
  openai:
    format: openai
    base_url: "http://127.0.0.1:{self.mock_port}/v1"
    api_key: sk-injected-by-switchyard
models:
  gpt-4o-mini: {{ provider: openai, price: {{ input: 0.15, output: 0.60 }} }}
  gpt-4o: {{ provider: openai, price: {{ input: 2.50, output: 10.00 }} }}
  text-embedding-3-small: {{ provider: openai, price: {{ input: 0.02, output: 0 }} }}
teams:
  research: {{ budget: {{ usd: 50, per: month }} }}
telemetry:
  collector: "http://127.0.0.1:{self.collector_port}"
  token: "{INGEST_TOKEN}"
  spool_dir: "{self.tmp / 'spool'}"
  batch: {{ max_events: 100, max_wait: 100ms }}
""")
        self.spawn("proxy", "proxy", "--config", str(cfg))
        wait_http(f"http://127.0.0.1:{self.admin_port}/readyz")
        return self

    @property
    def collector_url(self):
        return f"http://127.0.0.1:{self.collector_port}"

    def collector_get(self, path, token=ADMIN_TOKEN):
        req = urllib.request.Request(self.collector_url + path,
                                     headers={"authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req) as r:
            return r.read().decode()

    def wait_requests(self, n, timeout=20.0):
        deadline = time.time() + timeout
        got = 0
        while time.time() < deadline:
            rows = json.loads(self.collector_get("/v1/usage?from=1d"))["rows"]
            got = rows[0]["requests"] if rows else 0
            if got >= n:
                assert got == n, f"{got} stored, {n} sent"
                return
            time.sleep(0.05)
        raise AssertionError(f"{got} of {n} events stored")


@pytest.fixture
def collector_stack():
    with tempfile.TemporaryDirectory() as d:
        s = CollectorStack(Path(d)).start()
        try:
            yield s
        finally:
            s.stop()
