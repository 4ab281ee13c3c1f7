"""``bismuth-logger``: one container's stdout and stderr into its size-capped log file.

containerd's shim runs it for a task whose stdio is
``binary://<this program>?path=<log file>&max=<bytes>`` (it passes the query as name/value
argument pairs, in any order): the task's stdout and stderr arrive on file descriptors 3
and 4, and closing descriptor 5 tells the shim it is ready (the agent's wrapper closes it
before Python starts, and passes ``ready closed``: the shim goes on making the task while
this starts; the pipes hold the output until it reads them). Output is appended to ``path``;
before the file would grow past half of ``max`` it becomes ``<path>.1`` (replacing the
older half) and a new file starts, so the two together never hold more than ``max`` bytes,
however fast the container writes. It runs under the shim, not the agent: output keeps
flowing (and the cap holds) while the agent restarts. It ends when both streams end.
Only the standard library, so each one stays small.
"""

from __future__ import annotations

import os
import select
import sys

CHUNK = 64 << 10
STDOUT, STDERR, READY = 3, 4, 5


def main(argv: list[str] | None = None) -> int:
    pairs = sys.argv[1:] if argv is None else argv
    options = dict(zip(pairs[::2], pairs[1::2], strict=False))
    try:
        path, limit = options["path"], int(options["max"])
    except (KeyError, ValueError):
        print("bismuth-logger: usage: path <file> max <bytes>", file=sys.stderr)
        return 2
    if options.get("ready") != "closed":
        os.close(READY)
    log = CappedLog(path, max(limit // 2, 1))
    streams = [STDOUT, STDERR]
    while streams:
        readable, _, _ = select.select(streams, [], [])
        for fd in readable:
            data = os.read(fd, CHUNK)
            if data:
                log.write(data)
            else:
                streams.remove(fd)
    log.close()
    return 0


class CappedLog:
    """Appends to ``path``, rotating to ``<path>.1`` before it would pass ``half`` bytes."""

    def __init__(self, path: str, half: int) -> None:
        self.path, self.half = path, half
        self.fd = self._open()

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def write(self, data: bytes) -> None:
        data = data[-self.half :]  # a single chunk never holds more than half
        size = os.fstat(self.fd).st_size  # the agent appends its own lines too
        if size + len(data) > self.half and size > 0:
            os.replace(self.path, f"{self.path}.1")
            os.close(self.fd)
            self.fd = self._open()
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def close(self) -> None:
        os.close(self.fd)


if __name__ == "__main__":
    sys.exit(main())
