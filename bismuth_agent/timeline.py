"""Cold-start timelines: when each stage of making a container was reached.

The agent and its runtime stamp stages as they happen, in wall-clock seconds, so that the
commit's own stamp (the container znode's ``ctime``, set by ZooKeeper when the API's multi-op
was applied), the frontend's route push and a client's first byte line up with them. A
timeline costs a dict per container: the agent keeps those of its last :data:`KEPT`
containers in memory, serves them at ``GET /timeline`` (cluster credential) and logs each
one as one line once its container is ``Running``.

Stages, in order (the runtime may skip those its container does not need):

======================  ==========================================================
``committed``           the container znode was created (the API's multi-op)
``seen``                the agent's reconcile pass planned its creation
``image``               the image's snapshot, remapped to the container's id range
``container``           the containerd container and its rootfs snapshot
``task``                the task created in its namespaces, not yet started
``network``             veth, address, firewall (wired alongside, awaited here)
``provider``            its provider answers (started first, waited for here)
``started``             the task's process started
``listening``           the entrypoint accepts connections (Server mode)
``running``             status ``Running`` written to ZooKeeper
======================  ==========================================================
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections import OrderedDict

COMMITTED = "committed"
SEEN = "seen"
IMAGE = "image"
CONTAINER = "container"
TASK = "task"
NETWORK = "network"
PROVIDER = "provider"
STARTED = "started"
LISTENING = "listening"
RUNNING = "running"
STAGES = (COMMITTED, SEEN, IMAGE, CONTAINER, TASK, NETWORK, PROVIDER, STARTED, LISTENING, RUNNING)

KEPT = 256  # containers whose timelines are kept (the most recently begun)


class Timelines:
    """The stage stamps of this agent's recent container starts (latest start of each)."""

    def __init__(self, kept: int = KEPT) -> None:
        self.kept = kept
        self._lines: OrderedDict[uuid.UUID, dict[str, float]] = OrderedDict()

    def begin(self, cid: uuid.UUID, committed: float | None = None) -> None:
        """A (re)start of ``cid`` begins now: its earlier stamps are dropped."""
        line: dict[str, float] = {}
        if committed is not None:
            line[COMMITTED] = committed
        line[SEEN] = time.time()
        self._lines.pop(cid, None)
        self._lines[cid] = line
        while len(self._lines) > self.kept:
            self._lines.popitem(last=False)

    def stamp(self, cid: uuid.UUID, stage: str) -> None:
        """``stage`` of ``cid``'s current start was reached now (kept only once begun, and
        only the first time: a restart begins again)."""
        line = self._lines.get(cid)
        if line is not None and stage not in line:
            line[stage] = time.time()

    def get(self, cid: uuid.UUID) -> dict[str, float] | None:
        line = self._lines.get(cid)
        return dict(line) if line is not None else None

    def all(self) -> dict[str, dict[str, float]]:
        return {str(cid): dict(line) for cid, line in self._lines.items()}


def durations(line: dict[str, float]) -> dict[str, float]:
    """Milliseconds from each stage reached to the next one in ``line`` (for logging)."""
    reached = sorted((at, stage) for stage, at in line.items())
    return {
        stage: round((at - earlier) * 1000, 1)
        for (earlier, _), (at, stage) in itertools.pairwise(reached)
    }
