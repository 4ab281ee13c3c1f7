"""``bismuth-logger`` as containerd's shim runs it: output on descriptors 3 and 4, readiness
told by closing descriptor 5 (the agent's wrapper closes it before Python starts)."""

from __future__ import annotations

import os
import subprocess

from bismuth_agent.logstore import LogStore


def run_as_the_shim(program: str, args: list[str], chunks: list[tuple[int, bytes]]) -> int:
    """Start ``program`` with pipes at 3 (stdout), 4 (stderr) and 5 (ready); wait until it
    is ready, write ``chunks`` (stream 3 or 4, bytes), close the streams; its exit status."""
    pipes = [os.pipe() for _ in range(3)]
    ends = {3: pipes[0][0], 4: pipes[1][0], 5: pipes[2][1]}

    def arrange() -> None:
        for target, fd in ends.items():
            os.dup2(fd, target)

    proc = subprocess.Popen([program, *args], preexec_fn=arrange, close_fds=False)
    for fd in ends.values():
        os.close(fd)
    ready = pipes[2][0]
    assert os.read(ready, 1) == b""  # EOF: every copy of the write end is closed
    os.close(ready)
    writers = {3: pipes[0][1], 4: pipes[1][1]}
    for stream, data in chunks:
        os.write(writers[stream], data)
    for fd in writers.values():
        os.close(fd)
    return proc.wait(timeout=30)


def test_the_logger_is_ready_at_once_and_keeps_both_streams_under_the_cap(tmp_path):
    store = LogStore(tmp_path / "logs", 1000)
    store.install_logger(tmp_path)
    log = tmp_path / "c.log"
    args = ["path", str(log), "max", "1000"]
    assert run_as_the_shim(str(store.logger), args, [(3, b"out one\n"), (4, b"err one\n")]) == 0
    assert sorted(log.read_bytes().splitlines()) == [b"err one", b"out one"]
    flood = [(3, b"x" * 99 + b"\n")] * 30
    assert run_as_the_shim(str(store.logger), args, flood) == 0
    kept, older = log.read_bytes(), log.with_suffix(".log.1").read_bytes()
    assert len(kept) + len(older) <= 1000 and kept.endswith(b"x" * 99 + b"\n")
