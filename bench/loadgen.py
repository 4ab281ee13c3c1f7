"""Load generation shared by the benchmarks: ``wrk`` (Debian package ``wrk``) at a given
concurrency, and starting and stopping the processes under test.

``measure`` runs wrk with one thread for a fixed time and returns requests/s, p50 and p99
latency and the errors it saw; without wrk it falls back to an aiohttp client in a process
of its own (slower: it is the bottleneck well before nginx is).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp


@dataclass(frozen=True)
class Cell:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


def in_work_dir(bench: Callable[[Path], Coroutine[Any, Any, None]]) -> None:
    """Run ``bench(work)`` in a fresh directory containers can traverse (0711), removed
    afterwards unless ``BENCH_KEEP`` is set."""
    work = Path(tempfile.mkdtemp(prefix="bismuth-bench-"))
    work.chmod(0o711)
    try:
        asyncio.run(bench(work))
    finally:
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)


def spawn(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=open(os.environ.get("BENCH_STDERR", os.devnull), "ab"),
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def wait_for(url: str, headers: dict[str, str], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(headers=headers) as http:
        while True:
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not answer 200 within {timeout}s")
            await asyncio.sleep(0.1)


def generator() -> str:
    return "wrk (1 thread)" if shutil.which("wrk") else "aiohttp client subprocess (no wrk)"


def measure(url: str, headers: dict[str, str], concurrency: int, seconds: float) -> Cell:
    """One cell: ``url`` with ``headers`` (``Host`` among them, if any) at ``concurrency``."""
    if shutil.which("wrk"):
        return measure_wrk(url, headers, concurrency, seconds)
    return measure_python(url, headers, concurrency, seconds)


def measure_wrk(url: str, headers: dict[str, str], concurrency: int, seconds: float) -> Cell:
    args = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--latency", "--timeout", "10s"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run(
        [*args, url], capture_output=True, text=True, check=True, timeout=seconds + 30
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    errors = (int(non_2xx.group(1)) if non_2xx else 0) + (
        sum(map(int, sockets.groups())) if sockets else 0
    )
    return Cell(rps, _wrk_percentile(out, "50%"), _wrk_percentile(out, "99%"), errors)


def _wrk_percentile(out: str, label: str) -> float:
    match = re.search(rf"^\s+{re.escape(label)}\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    if match is None:
        raise ValueError(f"no {label} latency in wrk output:\n{out}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]
    return float(match.group(1)) * scale


def measure_python(url: str, headers: dict[str, str], concurrency: int, seconds: float) -> Cell:
    """The fallback generator: this module again, in another process (its own event loop)."""
    args = [sys.executable, __file__, url, str(concurrency), str(seconds), json.dumps(headers)]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=seconds + 60)
    return Cell(**json.loads(out.stdout))


async def python_load(url: str, headers: dict[str, str], concurrency: int, seconds: float) -> Cell:
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:

        async def worker() -> None:
            nonlocal errors
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    async with http.get(url) as resp:
                        await resp.read()
                        errors += resp.status != 200
                except aiohttp.ClientError:
                    errors += 1
                latencies.append(time.perf_counter() - started)

        began = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - began
    cuts = statistics.quantiles(latencies, n=100)
    return Cell(len(latencies) / elapsed, cuts[49] * 1000, cuts[98] * 1000, errors)


if __name__ == "__main__":
    url, level, secs, sent = sys.argv[1:5]
    cell = asyncio.run(python_load(url, json.loads(sent), int(level), float(secs)))
    print(json.dumps(cell.__dict__))
