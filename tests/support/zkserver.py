"""A real ZooKeeper server (Debian's package) started on a free loopback port for tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

CLASSPATH = "/usr/share/java/*:/usr/share/zookeeper/*"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5) as sock:
                sock.sendall(b"ruok")
                if sock.recv(4) == b"imok":
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"ZooKeeper did not answer on {host}:{port} within {timeout}s")
        time.sleep(0.05)


class ZooKeeperServer:
    """One ZooKeeper process; ``stop``/``start`` keep its data directory.

    By default a standalone server on ``127.0.0.1``; ``config(data_dir)``, if given, writes
    its ``zoo.cfg`` instead (a member of an ensemble: ``myid`` goes into the data directory,
    ``address:port`` is where it serves clients)."""

    def __init__(
        self,
        port: int | None = None,
        tick_ms: int = 500,
        heap: str = "256m",
        *,
        address: str = "127.0.0.1",
        config: Callable[[Path], str] | None = None,
        myid: int | None = None,
    ) -> None:
        self.address = address
        self.port = port or free_port(address)
        self.heap = heap
        self.dir = Path(tempfile.mkdtemp(prefix="bismuth-zk-"))
        (self.dir / "data").mkdir()
        if myid is not None:
            (self.dir / "data" / "myid").write_text(f"{myid}\n")
        (self.dir / "zoo.cfg").write_text(
            config(self.dir / "data")
            if config is not None
            else f"tickTime={tick_ms}\n"
            f"dataDir={self.dir / 'data'}\n"
            f"clientPort={self.port}\n"
            "clientPortAddress=127.0.0.1\n"
            "maxClientCnxns=0\n"
            "minSessionTimeout=1000\n"
            "admin.enableServer=false\n"
            "4lw.commands.whitelist=ruok,stat,mntr,wchs\n"
            "forceSync=no\n"
        )
        (self.dir / "log4j.properties").write_text(
            "log4j.rootLogger=WARN, FILE\n"
            "log4j.appender.FILE=org.apache.log4j.FileAppender\n"
            f"log4j.appender.FILE.File={self.dir / 'zookeeper.log'}\n"
            "log4j.appender.FILE.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.FILE.layout.ConversionPattern=%d %p %c: %m%n\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def hosts(self) -> str:
        return f"{self.address}:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        java = shutil.which("java") or "/usr/bin/java"
        self.proc = subprocess.Popen(
            [
                java,
                f"-Xmx{self.heap}",
                f"-Dlog4j.configuration=file:{self.dir / 'log4j.properties'}",
                "-Dzookeeper.jmx.log4j.disable=true",
                "-cp",
                f"{CLASSPATH}:{self.dir}",
                "org.apache.zookeeper.server.quorum.QuorumPeerMain",
                str(self.dir / "zoo.cfg"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "stderr.log", "ab"),  # noqa: SIM115
            start_new_session=True,
        )
        try:
            wait_for_port(self.address, self.port, timeout)
        except TimeoutError:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
