"""What the sandbox costs, each figure next to a baseline measured in the same run.

1. Container start, create to exit of ``python3 -c pass`` in the base image, through
   containerd and runc as the agent makes it (the agent's OCI spec), three variants in
   turn, run for run: *baseline* (no filter, a writable root, output to a plain file),
   *filtered* (the seccomp profile and a read-only root, plain file) and *sandboxed*
   (filtered, output through ``bismuth-logger``).
2. A new host id range: the base image's top layer remapped with ``metacopy=on`` (what the
   agent does) against the full copy it replaced: seconds and bytes written.
3. Memory: a ``bismuth-logger`` process (per container) and an idle provider (per
   container), as VmRSS.

It starts its own containerd (a private one, as the tests do) and prints figures only; it
never passes or fails. ``python bench/sandbox_costs.py [--runs 30]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bismuth_agent import seccomp  # noqa: E402
from bismuth_agent.containerd import remap  # noqa: E402
from bismuth_agent.containerd.client import ContainerdClient  # noqa: E402
from bismuth_agent.containerd.oci import import_oci_archive  # noqa: E402
from bismuth_agent.containerd.snapshots import SnapshotService  # noqa: E402
from bismuth_agent.containerd.types import Stdio  # noqa: E402
from bismuth_agent.logstore import LogStore  # noqa: E402
from bismuth_agent.spec import ContainerPlan, IdMapping, container_spec  # noqa: E402
from bismuth_core.definition import parse_definition  # noqa: E402
from tests.support.containerd import ContainerdServer, sweep  # noqa: E402

ARCHIVE = ROOT / "var" / "images" / "python-3.11.oci.tar"
IMAGE = "bismuth.local/python:3.11"
IDS = IdMapping(1_000_000)


VARIANTS = ("baseline", "filtered", "sandboxed")


def spec_of(cid: uuid.UUID, cgroup_parent: str, filtered: bool) -> dict[str, Any]:
    definition = parse_definition(
        {
            "image": IMAGE,
            "cpu": 1.0,
            "memory": 128 << 20,
            "invoke_mode": {"Server": [["/usr/bin/python3", "-c", "pass"], 8000]},
        }
    )
    plan = ContainerPlan(
        container_id=cid,
        function_id=uuid.uuid4(),
        definition=definition,
        auth_token="bench",
        ids=IDS,
        cgroup_parent=cgroup_parent,
        seccomp=seccomp.profile() if filtered else None,
    )
    spec = container_spec(plan)
    spec["root"]["readonly"] = filtered
    return spec


async def one_start(
    ctrd: ContainerdClient, parent: str, logs: LogStore, cgroup: str, variant: str
) -> float:
    cid = uuid.uuid4()
    began = time.perf_counter()
    spec = spec_of(cid, cgroup, variant != "baseline")
    mounts = await ctrd.create_container(str(cid), spec=spec, parent=parent, image=IMAGE)
    uri = logs.uri(cid) if variant == "sandboxed" else f"file://{logs.path(cid)}"
    await ctrd.tasks.create(
        str(cid), rootfs=remap.with_metacopy(mounts), stdio=Stdio(stdout=uri, stderr=uri)
    )
    await ctrd.tasks.start(str(cid))
    status = await ctrd.tasks.wait(str(cid))
    took = time.perf_counter() - began
    assert status.code == 0, f"the container exited {status.code}"
    await ctrd.tasks.delete(str(cid))
    await ctrd.delete_container(str(cid))
    logs.remove(cid)
    return took


def quantiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def starts(ctrd: ContainerdClient, server: ContainerdServer, work: Path, runs: int) -> None:
    parent = await remap.remapped_snapshot(ctrd, IMAGE, IDS.host_start, IDS.host_start)
    logs = LogStore(work / "logs", 10 << 20)
    logs.dir.mkdir(parents=True)
    logs.install_logger(work)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cgroup = f"{server.cgroup_parent}/bench"
    for i in range(len(VARIANTS) * (runs + 1)):
        variant = VARIANTS[i % len(VARIANTS)]
        took = await one_start(ctrd, parent, logs, cgroup, variant)
        if i >= len(VARIANTS):  # one warm-up each
            times[variant].append(took)
    base = quantiles(times["baseline"])
    print(f"\ncontainer start to exit of python3 -c pass, {runs} runs each, in turn (s)")
    names = {
        "baseline": "baseline (no filter, writable root, plain file)",
        "filtered": "filtered (seccomp, read-only root, plain file)",
        "sandboxed": "sandboxed (filtered, output via bismuth-logger)",
    }
    for variant in VARIANTS:
        p50, p99 = quantiles(times[variant])
        ratio = f"x{p50 / base[0]:.2f} / x{p99 / base[1]:.2f}"
        print(f"  {names[variant]:<50} p50 {p50:.3f}  p99 {p99:.3f}   vs baseline {ratio}")


def disk_usage(path: Path) -> int:
    out = subprocess.run(["du", "-sB1", str(path)], capture_output=True, text=True, check=False)
    return int(out.stdout.split()[0])


async def remaps(ctrd: ContainerdClient, server: ContainerdServer) -> None:
    snapshots = server.dir / "root" / "io.containerd.snapshotter.v1.overlayfs"
    rows = []
    original = remap.with_metacopy
    for metacopy in (True, False, True, False):
        remap.with_metacopy = original if metacopy else (lambda mounts: list(mounts))
        offset = IDS.host_start + (len(rows) + 1) * IDS.size
        before, began = disk_usage(snapshots), time.perf_counter()
        await remap.remapped_snapshot(ctrd, IMAGE, offset, offset)
        rows.append((metacopy, time.perf_counter() - began, disk_usage(snapshots) - before))
    remap.with_metacopy = original
    print("\na new host id range: the base image's top layer remapped (2 runs each)")
    for metacopy in (True, False):
        took = [t for m, t, _ in rows if m == metacopy]
        wrote = [b for m, _, b in rows if m == metacopy]
        name = "metacopy=on (the agent)" if metacopy else "full copy (before)     "
        print(
            f"  {name}  {statistics.mean(took):.2f} s, "
            f"{statistics.mean(wrote) / (1 << 20):.0f} MiB written"
        )


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def memory(work: Path) -> None:
    logger = str(work / "bismuth-logger")
    path = work / "rss.log"
    script = f"exec 3</dev/zero 4</dev/zero 5>/dev/null; exec {logger} path {path} max 1048576"
    proc = subprocess.Popen(["/bin/sh", "-c", script])
    time.sleep(0.5)  # it copies /dev/zero into a capped file: let it settle, then look
    logger_rss = rss(proc.pid)
    proc.kill()
    proc.wait()
    baseline = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    time.sleep(0.5)
    python_rss = rss(baseline.pid)
    baseline.kill()
    baseline.wait()
    print("\nmemory per container (VmRSS)")
    print(f"  bismuth-logger   {logger_rss / (1 << 20):.1f} MiB")
    print(f"  a bare python3   {python_rss / (1 << 20):.1f} MiB (the floor of any Python process)")


async def bench(runs: int) -> None:
    if not ARCHIVE.exists():
        subprocess.run([sys.executable, "-m", "bismuth_images.build", "--output", str(ARCHIVE)])
    server = ContainerdServer()
    server.start()
    work = Path(tempfile.mkdtemp(prefix="bismuth-sandbox-bench-"))
    try:
        async with ContainerdClient(server.address, "bismuth") as ctrd:
            await ctrd.ensure_namespace()
            await import_oci_archive(ctrd, ARCHIVE)
            await starts(ctrd, server, work, runs)
            await remaps(ctrd, server)
            await sweep(ctrd)
            assert not await SnapshotService(ctrd.conn).list()
        memory(work)
    finally:
        server.cleanup()
        subprocess.run(["rm", "-rf", str(work)], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    asyncio.run(bench(parser.parse_args().runs))


if __name__ == "__main__":
    main()
