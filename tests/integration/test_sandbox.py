"""The sandbox seen from inside real containers: syscall filter, filesystem, host ids.

Python programs run in the toolkit's base image (Executable mode: the request body is the
program) on an in-process agent with a real ZooKeeper, containerd, runc and namespaces.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from bismuth_agent.cgroups import Cgroup
from bismuth_core import cluster, operations
from bismuth_core.definition import parse_definition
from tests.support.agenthost import get, run_in, running_backend, shell_container, start_agent
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

PYTHON = {"Executable": ["/usr/bin/python3", "-"]}  # runs the request body

SYSCALLS = r"""
import ctypes, errno, json, os
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER, CLONE_NEWNS, SIGCHLD = 0x10000000, 0x20000, 17
NR = {"io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "keyctl": 250,
      "add_key": 248, "request_key": 249, "bpf": 321, "perf_event_open": 298,
      "userfaultfd": 323, "clone3": 435}

def errname(result):
    return "ok" if result >= 0 else errno.errorcode[ctypes.get_errno()]

got = {name: errname(libc.syscall(nr, 0, 0, 0, 0, 0)) for name, nr in NR.items()}
got["unshare_user"] = errname(libc.unshare(CLONE_NEWUSER))
got["unshare_mount"] = errname(libc.unshare(CLONE_NEWNS))
got["clone_user"] = errname(libc.syscall(56, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0))
got["seccomp"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("Seccomp:")][0]
print(json.dumps(got))
"""

COMPAT_SYSCALL = r"""
import ctypes, json, mmap, os, signal
# i386's getpid (20) through the 32-bit entry, int 0x80, from this 64-bit process; in a child
code = bytes([0xB8, 20, 0, 0, 0, 0xCD, 0x80, 0xC3])  # mov eax, 20; int 0x80; ret
page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
page.write(code)
call = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    os.write(write, str(call() == os.getpid()).encode())
    os._exit(0)
os.close(write)
answer = os.read(read, 100).decode()
status = os.waitpid(pid, 0)[1]
signalled = signal.Signals(os.WTERMSIG(status)).name if os.WIFSIGNALED(status) else None
print(json.dumps({"answer": answer, "signal": signalled}))
"""

ORDINARY = r"""
import json, os, socket, subprocess, tempfile, threading
out = {}
results = []
threads = [threading.Thread(target=lambda i=i: results.append(i * i)) for i in range(8)]
for t in threads: t.start()
for t in threads: t.join()
out["threads"] = sorted(results)
server = socket.create_server(("127.0.0.1", 0))
def serve():
    conn, _ = server.accept()
    conn.sendall(conn.recv(100).upper())
    conn.close()
threading.Thread(target=serve).start()
with socket.create_connection(server.getsockname()) as client:
    client.sendall(b"ping")
    out["socket"] = client.recv(100).decode()
out["subprocess"] = subprocess.run(["/usr/bin/python3", "-c", "print(6 * 7)"],
                                   capture_output=True, text=True, check=True).stdout.strip()
pid = os.fork()
if pid == 0:
    os._exit(3)
out["fork"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
with tempfile.NamedTemporaryFile(dir="/tmp", delete=False) as f:
    f.write(b"x" * 100000)
out["tmp"] = os.path.getsize(f.name)
os.unlink(f.name)
print(json.dumps(out))
"""


@pytest.fixture
async def pyagent(pynode):
    running = await start_agent(pynode)
    yield running
    await running.stop()


async def python_container(zk, agent, **changes):
    raw = {
        "image": "bismuth.local/python:3.11",
        "cpu": 0.5,
        "memory": 128 << 20,
        "invoke_mode": PYTHON,
        "routes": [],
        **changes,
    }
    fid = await operations.create_function(zk, parse_definition(raw))
    return await eventually(lambda: running_backend(zk, fid), timeout=60, what="Running")


async def run_python(agent, backend, program: str) -> dict:
    status, out = await run_in(agent, backend, program)
    assert status == 200, out
    return json.loads(out)


async def test_the_syscall_filter_denies_user_namespaces_io_uring_keys_bpf(zk, pyagent):
    backend = await python_container(zk, pyagent)
    got = await run_python(pyagent, backend, SYSCALLS)
    assert got.pop("seccomp") == "2"  # a filter is installed
    assert got.pop("clone3") == "ENOSYS"  # libc falls back to clone, whose flags are checked
    assert got == {
        "io_uring_setup": "EPERM",
        "io_uring_enter": "EPERM",
        "io_uring_register": "EPERM",
        "keyctl": "EPERM",
        "add_key": "EPERM",
        "request_key": "EPERM",
        "bpf": "EPERM",
        "perf_event_open": "EPERM",
        "userfaultfd": "EPERM",
        "unshare_user": "EPERM",
        "unshare_mount": "EPERM",
        "clone_user": "EPERM",
    }


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the 32-bit entry is x86's")
async def test_the_32_bit_syscall_entry_kills_the_caller(zk, pyagent):
    # The same program on this host, without the filter, gets its pid the 32-bit way
    # (so the kernel has that entry, and the program is right) ...
    host = subprocess.run(
        ["/usr/bin/python3", "-c", COMPAT_SYSCALL], capture_output=True, text=True, check=True
    )
    assert json.loads(host.stdout) == {"answer": "True", "signal": None}
    # ... and inside a container the filter kills it before the call is made.
    backend = await python_container(zk, pyagent)
    got = await run_python(pyagent, backend, COMPAT_SYSCALL)
    assert got == {"answer": "", "signal": "SIGSYS"}


async def test_ordinary_python_keeps_working_under_the_filter(zk, pyagent):
    backend = await python_container(zk, pyagent)
    got = await run_python(pyagent, backend, ORDINARY)
    assert got == {
        "threads": [i * i for i in range(8)],
        "socket": "PING",
        "subprocess": "42",
        "fork": 3,
        "tmp": 100000,
    }


WRITES = r"""
import errno, json, os
out = {}
for path in ("/probe", "/etc/probe", "/usr/probe", "/var/probe", "/home/bismuth/probe"):
    try:
        with open(path, "ab") as f:
            f.write(b"x")
        out[path] = "written"
    except OSError as exc:
        out[path] = errno.errorcode[exc.errno]
print(json.dumps(out))
"""


async def test_writing_outside_tmp_is_erofs(zk, pyagent):
    backend = await python_container(zk, pyagent)
    got = await run_python(pyagent, backend, WRITES)
    assert got == dict.fromkeys(
        ["/probe", "/etc/probe", "/usr/probe", "/var/probe", "/home/bismuth/probe"], "EROFS"
    )


async def test_tmp_is_a_tmpfs_bounded_by_the_memory_limit(zk, pyagent):
    memory = 48 << 20
    backend = await python_container(
        zk, pyagent, memory=memory, invoke_mode={"Executable": ["/bin/sh"]}
    )
    fill = "exec 2>&1; stat -f -c %T /tmp; dd if=/dev/zero of=/tmp/fill bs=1M count=200; echo end"
    _status, out = await run_in(pyagent, backend, fill)
    assert out.splitlines()[0] == "tmpfs", out
    assert "200+0 records out" not in out  # the writer was stopped (OOM-killed, or no space)
    task = await pyagent.ctrd.tasks.get(str(backend.container_id))
    size = os.stat(f"/proc/{task.pid}/root/tmp/fill").st_size  # seen from the host
    assert 0 < size <= memory


async def host_ranges(agent, backend) -> tuple[int, int]:
    """(uid, gid) host range starts the container maps, as seen from inside it."""
    status, out = await run_in(agent, backend, "cat /proc/self/uid_map /proc/self/gid_map")
    assert status == 200, out
    (uid_inside, uid_host, uid_size), (gid_inside, gid_host, gid_size) = (
        tuple(int(v) for v in line.split()) for line in out.splitlines()
    )
    assert uid_inside == gid_inside == 0 and uid_size == gid_size == agent.config.id_map_size
    return uid_host, gid_host


def pool_file(agent) -> dict[str, int]:
    return json.loads((Path(agent.config.state_dir) / "idranges.json").read_text())


async def test_containers_have_disjoint_host_id_ranges_released_with_them(zk, agent):
    size, start = agent.config.id_map_size, agent.config.id_map_start
    a = await shell_container(zk, agent)
    b = await shell_container(zk, agent)
    (a_uid, a_gid), (b_uid, b_gid) = await host_ranges(agent, a), await host_ranges(agent, b)
    assert (a_uid, b_uid) == (a_gid, b_gid)
    assert {a_uid, b_uid} == {start, start + size}  # the two lowest ranges, one each
    for backend, host in ((a, a_uid), (b, b_uid)):
        task = await agent.ctrd.tasks.get(str(backend.container_id))
        assert os.stat(f"/proc/{task.pid}").st_uid == host + 1000  # its own host uid
    assert pool_file(agent) == {str(a.container_id): a_uid, str(b.container_id): b_uid}
    # removed: its range is free again, and the next container takes it
    (a_function,) = [f for f in await cluster.function_ids(zk) if await _runs(zk, f, a)]
    await operations.delete_function(zk, a_function)
    await eventually(lambda: str(a.container_id) not in pool_file(agent), what="range released")
    c = await shell_container(zk, agent)
    assert (await host_ranges(agent, c))[0] == a_uid


async def _runs(zk, fid, backend) -> bool:
    return backend in (await cluster.read_function(zk, fid)).backends


async def test_an_agent_restart_keeps_every_containers_range(zk, node):
    first = await start_agent(node)
    try:
        a = await shell_container(zk, first)
        b = await shell_container(zk, first)
        before = pool_file(first)
        pids = {(await first.ctrd.tasks.get(str(x.container_id))).pid for x in (a, b)}
    finally:
        await first.stop()
    second = await start_agent(node)
    try:
        await eventually(
            lambda: all(second.agent.containers[x.container_id].made for x in (a, b)),
            what="both adopted",
        )
        assert pool_file(second) == before
        assert {(await second.ctrd.tasks.get(str(x.container_id))).pid for x in (a, b)} == pids
        c = await shell_container(zk, second)
        assert (await host_ranges(second, c))[0] not in before.values()
    finally:
        await second.stop()


BURN = r"""
import http.server, json, time
def fraction(seconds):
    wall, cpu = time.monotonic(), time.process_time()
    while time.monotonic() - wall < seconds:
        pass
    return (time.process_time() - cpu) / (time.monotonic() - wall)
class Burn(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"fraction": fraction(1.0)}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("0.0.0.0", 8080), Burn).serve_forever()
"""


async def test_a_container_starts_with_start_cpu_and_serves_held_to_its_own(zk, pyagent):
    """Until its entrypoint listens a container may use ``start_cpu`` cores (1 by default);
    from Running on, a process burning CPU gets no more than its function's 0.2 of a core."""
    fid = await operations.create_function(
        zk,
        parse_definition(
            {
                "image": "bismuth.local/python:3.11",
                "cpu": 0.2,
                "memory": 128 << 20,
                "invoke_mode": {"Server": [["/usr/bin/python3", "-c", BURN], 8080]},
                "routes": [],
            }
        ),
    )
    backend = await eventually(lambda: running_backend(zk, fid), timeout=60, what="Running")
    cid = str(backend.container_id)
    made = (await pyagent.ctrd.containers.get(cid)).spec["linux"]["resources"]["cpu"]
    assert (made["quota"], made["period"]) == (100_000, 100_000)
    cgroup = Cgroup(f"{pyagent.config.cgroup_root}/{cid}")
    assert cgroup.cpu_quota() == (20_000, 100_000)
    status, body, _ = await get(f"{pyagent.url}/invoke/{cid}")
    assert status == 200, body
    assert json.loads(body)["fraction"] <= 0.3  # 0.2, and a period's rounding
