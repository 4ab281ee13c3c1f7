"""The real base image: built with mmdebstrap once per session, read back, run by containerd.

Needs root, ``mmdebstrap``, ``containerd``/``runc`` (Debian packages) and the Debian archive
named in the machine's apt sources. The archive is checked with ``tar`` and Python's
``tarfile``/``json`` directly (not through ``images``), then imported into a private containerd
(own root, state, socket and cgroup parent in a temporary directory, started here and stopped by
its PID) where ``ctr run`` executes Python as the image's user.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import signal
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bismuth_images.build import BuildOptions, BuildResult, build_image

pytestmark = pytest.mark.integration

log = logging.getLogger(__name__)

REFERENCE = "bismuth.local/python:3.11"
NAMESPACE = "bismuth"


@pytest.fixture(scope="session")
def base_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuildResult]:
    """The image built once for the session, removed at its end (it is ~50 MB)."""
    directory = tmp_path_factory.mktemp("images")
    result = build_image(BuildOptions(output=directory / "python-3.11.oci.tar"))
    log.info("base image built in %.1f s, %d bytes", result.seconds, result.size)
    yield result
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def archive(base_image: BuildResult) -> Path:
    return base_image.path


def layer_contents(archive: Path) -> tuple[dict[str, tarfile.TarInfo], dict[str, bytes]]:
    """Members of the image's only layer, and the bytes of a few small files in it."""
    wanted = {"etc/passwd", "etc/group", "etc/resolv.conf", "etc/hostname"}
    with tarfile.open(archive) as outer:
        index = json.load(outer.extractfile("index.json"))  # type: ignore[arg-type]
        digest = index["manifests"][0]["digest"].removeprefix("sha256:")
        manifest = json.load(outer.extractfile(f"blobs/sha256/{digest}"))  # type: ignore[arg-type]
        (layer,) = manifest["layers"]
        blob = outer.extractfile("blobs/sha256/" + layer["digest"].removeprefix("sha256:"))
        members, files = {}, {}
        with tarfile.open(fileobj=blob, mode="r|gz") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                members[name] = member
                if name in wanted:
                    files[name] = tar.extractfile(member).read()  # type: ignore[union-attr]
    return members, files


def test_archive_is_an_image_layout_that_tar_reads(archive: Path):
    listing = subprocess.run(["tar", "-tf", archive], capture_output=True, text=True, check=True)
    names = listing.stdout.split()
    assert {"oci-layout", "index.json", "blobs/sha256/"} <= set(names)
    assert len([n for n in names if n.startswith("blobs/sha256/") and n[-1] != "/"]) == 3
    index = json.loads(
        subprocess.run(
            ["tar", "-xOf", archive, "index.json"], capture_output=True, check=True
        ).stdout
    )
    assert index["manifests"][0]["annotations"]["io.containerd.image.name"] == REFERENCE


def test_layer_has_python_with_its_standard_library_and_the_function_user(archive: Path):
    members, files = layer_contents(archive)
    python = members["usr/bin/python3"]
    assert python.issym() or python.isfile()
    for module in ("http/server.py", "json/__init__.py", "asyncio/__init__.py"):
        assert f"usr/lib/python3.11/{module}" in members
    users = [line.split(":") for line in files["etc/passwd"].decode().splitlines()]
    assert ["bismuth", "x", "1000", "1000"] in [u[:4] for u in users]
    assert [u[5] for u in users if u[0] == "bismuth"] == ["/home/bismuth"]
    assert "bismuth:x:1000:" in files["etc/group"].decode().splitlines()
    for directory in ("home/bismuth", "repo"):
        assert members[directory].isdir()
        assert (members[directory].uid, members[directory].gid) == (1000, 1000)


def test_layer_leaves_out_apt_lists_docs_devices_and_host_settings(archive: Path):
    members, files = layer_contents(archive)
    names = set(members)
    assert not [n for n in names if n.startswith(("var/lib/apt/lists/", "var/cache/apt/"))]
    assert not [n for n in names if n.startswith("dev/")]
    assert not [n for n in names if n.startswith(("usr/share/man/", "usr/share/locale/"))]
    docs = [n for n in names if n.startswith("usr/share/doc/") and members[n].isfile()]
    assert docs and all(n.endswith("/copyright") for n in docs)
    assert files["etc/resolv.conf"] == b""
    assert files["etc/hostname"] == b"bismuth\n"


def test_second_build_keeps_the_valid_archive(base_image: BuildResult, archive: Path):
    before = archive.stat()
    again = build_image(BuildOptions(output=archive))
    assert not again.built
    assert again.summary == base_image.summary
    assert archive.stat().st_mtime_ns == before.st_mtime_ns


# --- a private containerd -------------------------------------------------------------------


@dataclass
class PrivateContainerd:
    """A containerd of our own: its socket, and a cgroup parent no other containerd uses."""

    socket: Path
    cgroup_parent: str

    def ctr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "-a", str(self.socket), "-n", NAMESPACE, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )


def containerd_config(root: Path) -> str:
    return "\n".join(
        [
            "version = 2",
            f'root = "{root / "root"}"',
            f'state = "{root / "state"}"',
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
            "[grpc]",
            f'  address = "{root / "containerd.sock"}"',
            "[ttrpc]",
            f'  address = "{root / "containerd.sock.ttrpc"}"',
            '[plugins."io.containerd.internal.v1.opt"]',
            f'  path = "{root / "opt"}"',
            "",
        ]
    )


def wait_until_serving(ctd: PrivateContainerd, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while ctd.ctr("version", timeout=5).returncode != 0:
        if process.poll() is not None:
            raise RuntimeError(f"containerd exited with status {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"containerd did not answer on {ctd.socket} within {timeout}s")
        time.sleep(0.05)


def remove_leftovers(ctd: PrivateContainerd, root: Path) -> None:
    """Tasks, containers, mounts and cgroups a failed test may have left; each may be absent."""
    for task in ctd.ctr("tasks", "ls", "-q").stdout.split():
        ctd.ctr("tasks", "kill", "-s", "SIGKILL", task)
        ctd.ctr("tasks", "delete", "-f", task)
    for container in ctd.ctr("containers", "ls", "-q").stdout.split():
        ctd.ctr("containers", "delete", container)
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    for point in sorted((m.split()[4] for m in mounts), reverse=True):
        if point.startswith(str(root) + "/"):
            subprocess.run(["umount", "-l", point], check=False)
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        with contextlib.suppress(OSError):
            (hierarchy / ctd.cgroup_parent).rmdir()
    with contextlib.suppress(OSError):
        (Path("/sys/fs/cgroup") / ctd.cgroup_parent).rmdir()


@pytest.fixture(scope="module")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateContainerd]:
    root = tmp_path_factory.mktemp("containerd")
    (root / "config.toml").write_text(containerd_config(root))
    ctd = PrivateContainerd(root / "containerd.sock", f"bismuth-test-{uuid.uuid4().hex[:12]}")
    with (root / "containerd.log").open("wb") as log_file:
        process = subprocess.Popen(
            ["containerd", "--config", str(root / "config.toml")],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_serving(ctd, process, timeout=30)
        yield ctd
    finally:
        if process.poll() is None:
            remove_leftovers(ctd, root)
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(root / "root", ignore_errors=True)


def test_image_imports_and_runs_python_as_the_function_user(
    containerd: PrivateContainerd, archive: Path
):
    imported = containerd.ctr("images", "import", str(archive))
    assert imported.returncode == 0, imported.stderr
    listed = containerd.ctr("images", "ls", "-q")
    assert REFERENCE in listed.stdout.split()

    def run(*command: str) -> subprocess.CompletedProcess[str]:
        cid = f"t1-{uuid.uuid4().hex[:8]}"
        cgroup = f"/{containerd.cgroup_parent}/{cid}"
        return containerd.ctr("run", "--rm", "--cgroup", cgroup, REFERENCE, cid, *command)

    result = run("/usr/bin/python3", "-c", "print(1+1)")
    assert (result.returncode, result.stdout) == (0, "2\n"), result.stderr

    probe = (
        "import os, http.server; print(os.getuid(), os.getgid(), os.getcwd(), os.environ['HOME'])"
    )
    result = run("/usr/bin/python3", "-c", probe)
    assert (result.returncode, result.stdout) == (0, "1000 1000 / /home/bismuth\n"), result.stderr
    assert containerd.ctr("containers", "ls", "-q").stdout.split() == []
