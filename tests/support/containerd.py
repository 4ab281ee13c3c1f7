"""A private containerd for tests, tiny busybox OCI images, a loopback registry, OCI specs.

``ContainerdServer`` runs Debian's containerd with its own root, state, socket and config
(CRI and the other plugins tests do not need are disabled; tasks use the runc v2 shim). It
runs in a mount namespace of its own with a tmpfs over /run/containerd, where the shims put
their sockets and runc its state, so the machine's /run/containerd (and any containerd
using it) is never touched. Mounts made on the machine under ``shared`` (a shared mount the
server makes before it starts; agents keep their state there) reach containerd's namespace,
as they do where containerd and the agent share the host's: the agent mounts each repo's
tmpfs there for runc to bind. Containers the tests make get cgroups under a parent of their
own, which ``stop()`` removes. Only the PID this module started is ever signalled.

Fixtures (import them into a test module): ``containerd_server`` (session), ``ctrd`` (a
client in a fresh namespace per test, swept afterwards), ``busybox_image`` (an OCI archive
of a static busybox in two layers, built once per session from Debian's busybox-static).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bismuth_agent.containerd.client import ContainerdClient
from bismuth_agent.containerd.errors import ContainerdError, NotFound
from bismuth_agent.containerd.snapshots import SnapshotService
from tests.support.zkserver import free_port

CONTAINERD = "/usr/bin/containerd"
BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static
REGISTRY = "/usr/bin/docker-registry"
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
_DISABLED_PLUGINS = (
    "io.containerd.grpc.v1.cri",
    "io.containerd.internal.v1.opt",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.tracing.processor.v1.otlp",
)


def _wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready within {timeout}s")
        time.sleep(0.02)


def _connectable(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
        return True


class ContainerdServer:
    """One private containerd; ``address`` is its socket, ``cgroup_parent`` for specs."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bismuth-ctrd-"))
        self.dir.chmod(0o711)  # a user-namespaced container's root must reach its bundle
        self.address = str(self.dir / "containerd.sock")
        self.shared = self.dir / "shared"
        self.cgroup_parent = f"/bismuth-test-{uuid.uuid4().hex[:8]}"
        self.config = self.dir / "config.toml"
        self.config.write_text(self._config_text())
        self.proc: subprocess.Popen[bytes] | None = None

    def _config_text(self) -> str:
        disabled = ", ".join(f'"{p}"' for p in _DISABLED_PLUGINS)
        return (
            "version = 2\n"
            f'root = "{self.dir}/root"\n'
            f'state = "{self.dir}/state"\n'
            f"disabled_plugins = [{disabled}]\n"
            "[grpc]\n"
            f'  address = "{self.address}"\n'
            "[ttrpc]\n"
            f'  address = "{self.address}.ttrpc"\n'
        )

    def start(self, timeout: float = 20.0) -> None:
        self.shared.mkdir(mode=0o711, exist_ok=True)
        subprocess.run(["mount", "--bind", str(self.shared), str(self.shared)], check=True)
        subprocess.run(["mount", "--make-shared", str(self.shared)], check=True)
        script = (
            "mkdir -p /run/containerd && "
            "mount -t tmpfs -o mode=0711 bismuth-test /run/containerd && "
            f'exec {CONTAINERD} --config "$1"'
        )
        self.proc = subprocess.Popen(
            [
                "unshare",
                "--mount",
                "--propagation",
                "slave",
                "--",
                "sh",
                "-c",
                script,
                "sh",
                str(self.config),
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "containerd.log", "ab"),  # noqa: SIM115
            start_new_session=True,
        )
        try:
            _wait_for(self._ready, timeout, f"containerd ({self.address})")
        except TimeoutError:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            log = (self.dir / "containerd.log").read_text()[-2000:]
            raise RuntimeError(f"containerd exited with {self.proc.returncode}: {log}")
        return _connectable(Path(self.address))

    def client(self, namespace: str) -> ContainerdClient:
        return ContainerdClient(self.address, namespace)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            # in a thread of its own: stop() may be called from a running event loop
            sweeping = threading.Thread(target=self._sweep_quietly, name="containerd-sweep")
            sweeping.start()
            sweeping.join()
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        self._remove_cgroups()
        subprocess.run(["umount", "--recursive", str(self.shared)], check=False)

    def _sweep_quietly(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.run(self._sweep_all())

    async def _sweep_all(self) -> None:
        async with ContainerdClient(self.address, "default") as client:
            for namespace in await client.list_namespaces():
                await sweep(client.derive(namespace=namespace))

    def _remove_cgroups(self) -> None:
        """rmdir the (empty) cgroups under our parent, in every hierarchy (v1 and v2)."""
        root = Path("/sys/fs/cgroup")
        for hierarchy in [root, *(p for p in root.iterdir() if p.is_dir())]:
            parent = hierarchy / self.cgroup_parent.lstrip("/")
            if parent.is_dir():
                for child in sorted(parent.glob("**/"), key=lambda p: -len(p.parts)):
                    with contextlib.suppress(OSError):
                        child.rmdir()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


async def sweep(client: ContainerdClient) -> None:
    """Remove everything in the client's namespace: tasks, containers, images, snapshots."""
    for task in await client.tasks.list():
        with contextlib.suppress(NotFound):
            await client.tasks.kill(task.container_id, signal.SIGKILL, all=True)
        with contextlib.suppress(ContainerdError):
            await asyncio.wait_for(client.tasks.wait(task.container_id), 10)
        with contextlib.suppress(NotFound):
            await client.tasks.delete(task.container_id)
    for container in await client.containers.list():
        with contextlib.suppress(NotFound):
            await client.containers.delete(container.id)
    for image in await client.images.list():
        with contextlib.suppress(NotFound):
            await client.images.delete(image.name, sync=True)
    snapshots = SnapshotService(client.conn)
    deadline = time.monotonic() + 30
    while remaining := await snapshots.list():  # children first: parents wait for them
        parents = {s.parent for s in remaining}
        for leaf in (s for s in remaining if s.name not in parents):
            # containerd's collector may still be removing a child we did not list: the
            # parent then waits for the next round
            try:
                await snapshots.discard(leaf.name)
            except ContainerdError as exc:
                if exc.code != "FAILED_PRECONDITION":
                    raise
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    with contextlib.suppress(ContainerdError):
        await client.delete_namespace()


# ---- tiny OCI images -------------------------------------------------------------------


@dataclass(frozen=True)
class BusyboxImage:
    path: Path
    name: str
    manifest_digest: str
    diff_ids: tuple[str, ...]
    layer_count: int


def _tar(entries: Sequence[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _entry(
    name: str, kind: bytes, mode: int, data: bytes | None = None, link: str = ""
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname = kind, mode, link
    if data is not None:
        info.size = len(data)
    return info, data


def busybox_layer() -> bytes:
    """Layer 1: /bin/busybox (static), a symlink per applet, the usual empty directories."""
    entries = [
        _entry(d, tarfile.DIRTYPE, 0o755)
        for d in ("bin", "dev", "etc", "proc", "sys", "root", "home")
    ]
    entries.append(_entry("tmp", tarfile.DIRTYPE, 0o1777))
    entries.append(_entry("bin/busybox", tarfile.REGTYPE, 0o755, BUSYBOX.read_bytes()))
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, check=True, text=True)
    for applet in sorted(set(applets.stdout.split()) - {"busybox"}):
        entries.append(_entry(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox"))
    return _tar(entries)


def config_layer() -> bytes:
    """Layer 2: /etc/passwd and group (user 1000), a marker file, a set-uid file."""
    passwd = b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n"
    group = b"root:x:0:\nuser:x:1000:\n"
    return _tar(
        [
            _entry("etc/passwd", tarfile.REGTYPE, 0o644, passwd),
            _entry("etc/group", tarfile.REGTYPE, 0o644, group),
            _entry("etc/hello", tarfile.REGTYPE, 0o644, b"hello from layer 2\n"),
            _entry("etc/setuid-marker", tarfile.REGTYPE, 0o4755, b"#!/bin/sh\n"),
        ]
    )


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


MEDIA = {
    "oci": {
        "manifest": "application/vnd.oci.image.manifest.v1+json",
        "index": "application/vnd.oci.image.index.v1+json",
        "config": "application/vnd.oci.image.config.v1+json",
        "layer": "application/vnd.oci.image.layer.v1.tar+gzip",
    },
    "docker": {
        "manifest": "application/vnd.docker.distribution.manifest.v2+json",
        "index": "application/vnd.docker.distribution.manifest.list.v2+json",
        "config": "application/vnd.docker.container.image.v1+json",
        "layer": "application/vnd.docker.image.rootfs.diff.tar.gzip",
    },
}


@dataclass(frozen=True)
class ImageBlobs:
    """An image as blobs: ``target`` is the top descriptor (a manifest, or an index)."""

    blobs: dict[str, bytes]
    documents: dict[str, str]  # digest -> media type of each manifest and index, index last
    target: dict[str, Any]
    manifest_digest: str  # the host platform's manifest
    diff_ids: tuple[str, ...]


def image_blobs(media: str = "oci", platforms: Sequence[str] = ("amd64",)) -> ImageBlobs:
    """The busybox image: two gzip layers, a config, a manifest per platform (an index if >1)."""
    types = MEDIA[media]
    raw = [busybox_layer(), config_layer()]
    layers = [gzip.compress(layer, compresslevel=1, mtime=0) for layer in raw]
    diff_ids = tuple(_digest(layer) for layer in raw)
    blobs = {_digest(layer): layer for layer in layers}
    documents: dict[str, str] = {}
    manifests: list[dict[str, Any]] = []
    for arch in platforms:
        config = json.dumps(
            {
                "architecture": arch,
                "os": "linux",
                "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
                "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
            }
        ).encode()
        blobs[_digest(config)] = config
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": types["manifest"],
                "config": {
                    "mediaType": types["config"],
                    "digest": _digest(config),
                    "size": len(config),
                },
                "layers": [
                    {"mediaType": types["layer"], "digest": _digest(layer), "size": len(layer)}
                    for layer in layers
                ],
            }
        ).encode()
        blobs[_digest(manifest)] = manifest
        documents[_digest(manifest)] = types["manifest"]
        manifests.append(
            {
                "mediaType": types["manifest"],
                "digest": _digest(manifest),
                "size": len(manifest),
                "platform": {"architecture": arch, "os": "linux"},
            }
        )
    host = next(m for m in manifests if m["platform"]["architecture"] == "amd64")
    if len(manifests) == 1:
        return ImageBlobs(blobs, documents, dict(host), host["digest"], diff_ids)
    index = json.dumps(
        {"schemaVersion": 2, "mediaType": types["index"], "manifests": manifests}
    ).encode()
    blobs[_digest(index)] = index
    documents[_digest(index)] = types["index"]
    target = {"mediaType": types["index"], "digest": _digest(index), "size": len(index)}
    return ImageBlobs(blobs, documents, target, host["digest"], diff_ids)


def write_oci_archive(path: Path, name: str, image: ImageBlobs) -> BusyboxImage:
    """An OCI image-layout tar of these blobs, naming the image in index.json."""
    target = dict(image.target)
    target["annotations"] = {
        "io.containerd.image.name": name,
        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1],
    }
    files = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps({"schemaVersion": 2, "manifests": [target]}).encode(),
    }
    for digest, data in image.blobs.items():
        files[f"blobs/sha256/{digest.removeprefix('sha256:')}"] = data
    entries = [
        _entry("blobs", tarfile.DIRTYPE, 0o755),
        _entry("blobs/sha256", tarfile.DIRTYPE, 0o755),
    ]
    entries += [_entry(n, tarfile.REGTYPE, 0o644, d) for n, d in files.items()]
    path.write_bytes(_tar(entries))
    return BusyboxImage(path, name, image.manifest_digest, image.diff_ids, 2)


# ---- a loopback registry ----------------------------------------------------------------


class Registry:
    """Debian's docker-registry (distribution v2) on a free loopback port, plain HTTP."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bismuth-registry-"))
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        (self.dir / "config.yml").write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.dir}/data\n"
            f"http:\n  addr: {self.host}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        self.proc = subprocess.Popen(
            [REGISTRY, "serve", str(self.dir / "config.yml")],
            stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "registry.log", "ab"),  # noqa: SIM115
            start_new_session=True,
        )
        try:
            _wait_for(self._answers, timeout, f"docker-registry on {self.host}")
        except TimeoutError:
            self.stop()
            raise

    def _answers(self) -> bool:
        try:
            with _DIRECT.open(f"http://{self.host}/v2/", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def push(self, repository: str, tag: str, image: ImageBlobs) -> None:
        """Upload blobs, then manifests (the target under ``tag``), through the registry API."""
        base = f"http://{self.host}/v2/{repository}"
        for digest, data in image.blobs.items():
            if digest not in image.documents:
                self._upload(base, digest, data)
        for digest, kind in image.documents.items():
            reference = tag if digest == image.target["digest"] else digest
            put = urllib.request.Request(
                f"{base}/manifests/{reference}",
                data=image.blobs[digest],
                method="PUT",
                headers={"Content-Type": kind},
            )
            _DIRECT.open(put, timeout=10).close()

    def _upload(self, base: str, digest: str, data: bytes) -> None:
        start = urllib.request.Request(f"{base}/blobs/uploads/", method="POST")
        with _DIRECT.open(start, timeout=10) as response:
            location = response.headers["Location"]
        url = location if location.startswith("http") else f"http://{self.host}{location}"
        separator = "&" if "?" in url else "?"
        put = urllib.request.Request(
            f"{url}{separator}digest={digest}",
            data=data,
            method="PUT",
            headers={"Content-Type": "application/octet-stream"},
        )
        _DIRECT.open(put, timeout=10).close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


# ---- OCI runtime specs for test containers ----------------------------------------------


def container_spec(
    container_id: str,
    args: Sequence[str],
    cgroup_parent: str,
    *,
    uid_map: tuple[int, int, int] | None = None,
) -> dict[str, Any]:
    """A minimal runnable OCI spec (pid/ipc/uts/mount/network namespaces, optional userns)."""
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")]
    linux: dict[str, Any] = {
        "namespaces": namespaces,
        "cgroupsPath": f"{cgroup_parent}/{container_id}",
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list"],
        "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"],
    }
    mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]},
    ]
    if uid_map is not None:
        inside, outside, size = uid_map
        namespaces.append({"type": "user"})
        linux["uidMappings"] = [{"containerID": inside, "hostID": outside, "size": size}]
        linux["gidMappings"] = [{"containerID": inside, "hostID": outside, "size": size}]
    caps = ["CAP_KILL", "CAP_CHOWN", "CAP_SETUID", "CAP_SETGID"]
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": list(args),
            "env": ["PATH=/bin"],
            "cwd": "/",
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": container_id[:12],
        "mounts": mounts,
        "linux": linux,
    }


# ---- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def containerd_server() -> Iterator[ContainerdServer]:
    server = ContainerdServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
async def ctrd(containerd_server: ContainerdServer) -> AsyncIterator[ContainerdClient]:
    """A client in a namespace of its own; everything in it is removed afterwards."""
    client = containerd_server.client(f"t{uuid.uuid4().hex[:12]}")
    await client.ensure_namespace()
    yield client
    with contextlib.suppress(ContainerdError):
        await sweep(client)
    await client.close()


@pytest.fixture(scope="session")
def busybox_image(tmp_path_factory: pytest.TempPathFactory) -> BusyboxImage:
    path = tmp_path_factory.mktemp("images") / "busybox.tar"
    return write_oci_archive(path, "bismuth.test/busybox:1", image_blobs())


@pytest.fixture(scope="session")
def python_image() -> Path:
    """The toolkit's base image archive, built once (kept between runs under var/images)."""
    from bismuth_images.build import BuildOptions, build_image

    output = Path(__file__).resolve().parents[2] / "var" / "images" / "python-3.11.oci.tar"
    return build_image(BuildOptions(output=output)).path


@pytest.fixture
def registry() -> Iterator[Registry]:
    server = Registry()
    server.start()
    yield server
    server.stop()
