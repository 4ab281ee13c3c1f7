"""The agent's reconcile loop and its supervision of containers.

Each pass reads the node's desired containers from ZooKeeper (its :class:`.model.Presence`)
and the actual ones from its :class:`.model.Runtime`, asks
:func:`~bismuth_agent.plan.plan_node` what to do and applies it. Watches,
task events and timers only wake the loop. Statuses go back to ZooKeeper as they change:
``Starting`` when a container is being made, ``Running`` once its entrypoint accepts
connections (an Executable one: once its task runs), ``Failed`` as soon as containerd reports
the task's exit (from the event stream, not by polling), after which it is restarted with
exponential backoff. Stopping the agent never stops a container: the next agent adopts the
running tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from bismuth_core.definition import ServerMode
from bismuth_core.errors import BismuthError, Unavailable
from bismuth_core.eventloop import reraise_if_cancelling
from bismuth_core.layout import ContainerStatus, ServingEndpoint

from .config import AgentConfig
from .http import AgentMetrics
from .logstore import LogStore
from .model import (
    DesiredContainer,
    Event,
    ExecResult,
    Exited,
    Made,
    Missed,
    OutOfMemory,
    Presence,
    Runtime,
    SetupFailed,
)
from .plan import (
    Adopt,
    Backoff,
    Create,
    Observed,
    Remove,
    Restart,
    TaskState,
    plan_node,
    unheard_of,
)
from .plan import next_wake as restart_due
from .timeline import LISTENING, RUNNING, Timelines, durations

log = logging.getLogger(__name__)

PASS_INTERVAL = 2.0  # seconds between passes when nothing wakes the loop
# Seconds between connection attempts to a starting entrypoint: every HEALTH_POLL for the
# first HEALTH_FAST seconds (a refused connect costs next to nothing, and most entrypoints
# listen within that), then doubling up to HEALTH_POLL_CAP.
HEALTH_POLL = 0.002
HEALTH_FAST = 2.0
HEALTH_POLL_CAP = 0.1
LOG_CAP_INTERVAL = 5.0
STOP_TIMEOUT = 5.0  # seconds stop() waits for its cancelled tasks


@dataclass
class Supervised:
    """What this agent process knows of one of its containers."""

    desired: DesiredContainer
    made: Made | None = None
    status: ContainerStatus = ContainerStatus.STARTING
    # Whether this process has decided a status yet: an adopted container keeps the one in
    # ZooKeeper (Running, for frontends that connect to it directly) until it is checked.
    decided: bool = False
    reported: ContainerStatus | None = None
    reported_endpoint: ServingEndpoint | None = None
    busy: bool = False  # being made, restarted or removed right now
    exited_at: float | None = None
    failures: int = 0
    seen_at: float = field(default_factory=time.monotonic)
    # Status writes one at a time, so a slow earlier one never lands after a later one.
    writing: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @property
    def server(self) -> ServerMode | None:
        mode = self.desired.definition.invoke_mode
        return mode if isinstance(mode, ServerMode) else None

    @property
    def endpoint(self) -> ServingEndpoint | None:
        """Where frontends connect to a Running Server-mode container."""
        server = self.server
        if self.status != ContainerStatus.RUNNING or self.made is None or server is None:
            return None
        return ServingEndpoint(str(self.made.allocation.container_address), server.port)


class Invocation:
    """One container as the HTTP server sees it (``Invocable``)."""

    def __init__(self, agent: Agent, sup: Supervised) -> None:
        self.container_id = sup.desired.container_id
        self._agent, self._sup = agent, sup

    def serving(self) -> bool:
        return self._sup.status == ContainerStatus.RUNNING and self._sup.made is not None

    def server_address(self) -> tuple[str, int] | None:
        made, server = self._sup.made, self._sup.server
        if made is None or server is None:
            return None
        return str(made.allocation.container_address), server.port

    async def execute(
        self, stdin: AsyncIterable[bytes], timeout: float, max_output: int
    ) -> ExecResult:
        made = self._sup.made
        assert made is not None
        argv = self._sup.desired.definition.invoke_mode.argv
        return await self._agent.runtime.execute(
            self._sup.desired, made, argv, stdin, timeout, max_output
        )


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        runtime: Runtime,
        presence: Presence,
        logs: LogStore,
        metrics: AgentMetrics,
        wake: asyncio.Event,
        timelines: Timelines | None = None,
    ) -> None:
        self.config = config
        self.timelines = timelines or Timelines()
        self.runtime = runtime
        self.presence = presence
        self.logs = logs
        self.metrics = metrics
        self.backoff = Backoff(config.restart_backoff, config.restart_backoff_cap)
        self.containers: dict[uuid.UUID, Supervised] = {}
        self.wake = wake
        self._removing: set[uuid.UUID] = set()
        self._listed: set[uuid.UUID] | None = None  # the runtime's containers when last listed
        # Loops also check this flag: Python 3.11's wait_for can swallow a cancellation that
        # races with its inner future completing.
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._work: set[asyncio.Task[None]] = set()
        self._announced: int | None = None
        self._measured: set[uuid.UUID] = set()  # containers with cpu/memory series

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        await self.runtime.start()
        await self.presence.start()
        self._tasks = [
            asyncio.create_task(self._events(), name="task-events"),
            asyncio.create_task(self._loop(), name="reconcile"),
            asyncio.create_task(self._cap_logs(), name="log-cap"),
        ]
        self.wake.set()

    async def stop(self) -> None:
        """Stop supervising; every container keeps running for the next agent to adopt."""
        self._stopping = True
        self.wake.set()
        self.presence.stop()
        tasks = [*self._tasks, *self._work]
        for task in tasks:
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=STOP_TIMEOUT)
            if stuck:
                names = sorted(t.get_name() for t in stuck)
                log.warning("tasks did not stop within %ss: %s", STOP_TIMEOUT, names)
        await self.runtime.close()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._work.add(task)
        task.add_done_callback(self._work.discard)

    # --- the loop ---------------------------------------------------------------------

    async def _loop(self) -> None:
        while not self._stopping:
            timeout = PASS_INTERVAL
            due = restart_due(self._observed_local(), time.monotonic(), self.backoff)
            if due is not None:
                timeout = min(timeout, due + 0.01)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout)
            self.wake.clear()
            if self._stopping:
                return
            try:
                await self.reconcile()
            except BismuthError as exc:
                reraise_if_cancelling(exc)
                log.warning("reconcile pass incomplete: %s", exc.message)
            except Exception:
                log.exception("reconcile pass failed")

    async def reconcile(self) -> None:
        """One pass: observe, plan, apply; then report statuses and the container count."""
        observing = asyncio.ensure_future(self.observe())  # containerd, while ZooKeeper answers
        try:
            desired = await self.presence.desired()
        except BaseException as exc:
            observing.cancel()
            await asyncio.wait([observing])
            if not observing.cancelled():
                observing.exception()
            if isinstance(exc, Unavailable):
                return  # ZooKeeper away: keep running what runs
            raise
        # New containers start now; the runtime's listing, still under way, is not theirs.
        early = unheard_of(set(desired), {*self.containers, *self._removing}, self._listed)
        for cid in early:
            self._spawn(self._create(self._begin(cid, desired[cid]), leftovers=False))
        observed = await observing
        for cid in early:  # the listing may have been taken before they began
            if (sup := self.containers.get(cid)) is not None:
                observed[cid] = self._observed(sup)
        for sup in self.containers.values():  # definitions may change on a redeploy
            if sup.desired.container_id in desired:
                sup.desired = desired[sup.desired.container_id]
        now = time.monotonic()
        for action in plan_node(set(desired), observed, now, self.backoff):
            cid = action.container_id
            if isinstance(action, Remove):
                self._removing.add(cid)
                if cid in self.containers:
                    self.containers[cid].busy = True
                self._spawn(self._remove(cid))
            elif isinstance(action, Create):
                sup = self._begin(cid, desired[cid])
                self._spawn(self._create(sup, leftovers=cid in observed))
            elif isinstance(action, Restart):
                sup = self._begin(cid, desired[cid])
                self._spawn(self._create(sup, leftovers=True))
            elif isinstance(action, Adopt):
                sup = self._begin(cid, desired[cid])
                self._spawn(self._adopt(sup))
        await self._report()

    def _begin(self, cid: uuid.UUID, desired: DesiredContainer) -> Supervised:
        sup = self.containers.get(cid)
        if sup is None:
            sup = self.containers[cid] = Supervised(desired)
        sup.busy = True
        return sup

    async def observe(self) -> dict[uuid.UUID, Observed]:
        """The runtime's containers of this node and their tasks, with what this process
        knows; a supervised container whose task is gone or stopped without an event seen
        counts as exited now."""
        existing = await self.runtime.observe()
        self._listed = set(existing)
        observed = self._observed_local()
        for cid, there in existing.items():
            if cid in self._removing or (cid in observed and observed[cid].supervised):
                continue
            observed[cid] = Observed(cid, there.state, supervised=False)
        for cid, seen in list(observed.items()):
            sup = self.containers.get(cid)
            if not (seen.supervised and sup and sup.made and not sup.busy):
                continue
            found = existing.get(cid)
            if sup.exited_at is None and (found is None or found.state == TaskState.STOPPED):
                self._exited(sup, found.exit_status if found else None)  # missed its event
                observed[cid] = self._observed(sup)
        return observed

    def _observed_local(self) -> dict[uuid.UUID, Observed]:
        return {
            cid: self._observed(sup)
            for cid, sup in self.containers.items()
            if cid not in self._removing
        }

    @staticmethod
    def _observed(sup: Supervised) -> Observed:
        cid = sup.desired.container_id
        if sup.busy:
            return Observed(cid, TaskState.CREATED, supervised=True)
        if sup.exited_at is not None:
            return Observed(cid, TaskState.STOPPED, True, sup.exited_at, sup.failures)
        return Observed(cid, TaskState.RUNNING, supervised=True)

    # --- applying actions ---------------------------------------------------------------

    async def _create(self, sup: Supervised, leftovers: bool) -> None:
        cid = sup.desired.container_id
        self.timelines.begin(cid, sup.desired.committed_at if sup.failures == 0 else None)
        # Written while the container is made (sent first, so applied before any later
        # status of this session's): not a step of the start.
        self._spawn(self._set_status(sup, ContainerStatus.STARTING))
        try:
            if leftovers:
                await self.runtime.remove(cid, keep_logs=True, grace=self.config.stop_grace)
            sup.made, sup.exited_at = None, None
            sup.made = await self.runtime.create(sup.desired)
        except SetupFailed as exc:
            log.warning("cannot start container: %s", exc.message, extra={"container_id": cid})
            self._failed(sup)
            return
        finally:
            sup.busy = False
        self._spawn(self._health(sup))

    async def _adopt(self, sup: Supervised) -> None:
        cid = sup.desired.container_id
        try:
            sup.made = await self.runtime.adopt(sup.desired)
        except BismuthError as exc:
            log.warning(
                "cannot adopt container, making it again: %s",
                exc.message,
                extra={"container_id": cid},
            )
            sup.busy = False
            await self._create(sup, leftovers=True)
            return
        sup.busy = False
        log.info("adopted running container", extra={"container_id": cid})
        self._spawn(self._health(sup))

    async def _remove(self, cid: uuid.UUID) -> None:
        sup = self.containers.get(cid)
        try:
            if sup is not None and sup.status == ContainerStatus.RUNNING:
                # Frontends learn of its removal from the same change in ZooKeeper as this
                # agent: it serves on while they stop sending to it (a drain period, not a
                # wait for a condition this agent could see), then it gets SIGTERM.
                await asyncio.sleep(self.config.stop_drain)
            await self.runtime.remove(cid, grace=self.config.stop_grace)
        finally:
            self.containers.pop(cid, None)
            self._removing.discard(cid)
        log.info("removed container", extra={"container_id": cid})

    async def _health(self, sup: Supervised) -> None:
        """Starting → Running once the entrypoint accepts connections (Server mode)."""
        made, server = sup.made, sup.server
        if made is None:
            return
        if server is not None and not await self._listening(sup, made, server):
            return
        cid = sup.desired.container_id
        self.timelines.stamp(cid, LISTENING)
        try:
            self.runtime.settle(sup.desired)
        except BismuthError as exc:
            self.logs.note(cid, f"cannot hold the container to its cpu: {exc.message}")
            self._failed(sup)
            return
        starting = sup.status != ContainerStatus.RUNNING
        if starting:
            self.metrics.start_latency.observe(time.monotonic() - sup.seen_at)
        await self._set_status(sup, ContainerStatus.RUNNING)
        if starting and sup.reported == ContainerStatus.RUNNING:
            self._log_timeline(cid)

    async def _listening(self, sup: Supervised, made: Made, server: ServerMode) -> bool:
        """Wait until the entrypoint accepts a connection; False if the container was
        restarted or exited meanwhile, or failed for not listening within start_timeout."""
        began = time.monotonic()
        delay = HEALTH_POLL
        address = str(made.allocation.container_address)
        while sup.made is made and sup.exited_at is None:
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(address, server.port), 1.0
                )
                writer.close()
                return True
            except (OSError, TimeoutError):
                if time.monotonic() - began > self.config.start_timeout:
                    self.logs.note(
                        sup.desired.container_id,
                        f"the entrypoint did not accept connections on port "
                        f"{server.port} within {self.config.start_timeout:g}s",
                    )
                    self._failed(sup)
                    return False
                await asyncio.sleep(delay)
                if time.monotonic() - began > HEALTH_FAST:
                    delay = min(delay * 2, HEALTH_POLL_CAP)
        return False

    def _log_timeline(self, cid: uuid.UUID) -> None:
        """One line per start: milliseconds spent reaching each stage."""
        self.timelines.stamp(cid, RUNNING)
        line = self.timelines.get(cid)
        if line is not None:
            steps = " ".join(f"{k}={v}" for k, v in durations(line).items())
            log.info("container running: %s", steps, extra={"container_id": cid})

    def _failed(self, sup: Supervised) -> None:
        sup.failures += 1
        sup.exited_at = time.monotonic()
        sup.status = ContainerStatus.FAILED
        self._spawn(self._set_status(sup, ContainerStatus.FAILED))
        self.wake.set()

    def _exited(self, sup: Supervised, code: int | None) -> None:
        self.logs.note(sup.desired.container_id, f"the process exited with status {code}")
        self._failed(sup)

    # --- events, statuses, logs -------------------------------------------------------

    async def _events(self) -> None:
        async for event in self.runtime.events():
            self._on_event(event)

    def _on_event(self, event: Event) -> None:
        if isinstance(event, Missed):
            self.wake.set()  # a pass catches exits missed meanwhile
            return
        sup = self.containers.get(event.container_id)
        if sup is None:
            return
        if isinstance(event, OutOfMemory):
            self.logs.note(event.container_id, "the container ran out of memory (OOM kill)")
        elif isinstance(event, Exited) and not sup.busy and sup.made and sup.made.pid == event.pid:
            self._exited(sup, event.exit_status)

    async def _set_status(self, sup: Supervised, status: ContainerStatus) -> None:
        sup.status, sup.decided = status, True
        await self._write_status(sup)

    async def _write_status(self, sup: Supervised) -> None:
        """Bring the container's status znode to what this agent knows, in order: a status
        decided while an earlier one was being written is written after it."""
        async with sup.writing:
            while True:
                wanted, endpoint = sup.status, sup.endpoint
                if (
                    not sup.decided
                    or (sup.reported, sup.reported_endpoint) == (wanted, endpoint)
                    or sup.desired.container_id not in self.containers
                ):
                    return
                try:
                    await self.presence.set_status(sup.desired.container_id, wanted, endpoint)
                except Unavailable:
                    return  # written by a later pass
                sup.reported, sup.reported_endpoint = wanted, endpoint

    async def _report(self) -> None:
        for sup in list(self.containers.values()):
            if not sup.busy:
                await self._write_status(sup)
        count = len(self.containers)
        if count != self._announced:
            with contextlib.suppress(Unavailable):
                await self.presence.announce(count)
                self._announced = count

    async def _cap_logs(self) -> None:
        while not self._stopping:
            await asyncio.sleep(LOG_CAP_INTERVAL)
            for cid in list(self.containers):
                with contextlib.suppress(OSError):
                    self.runtime.cap_logs(cid)

    # --- what the HTTP server asks ------------------------------------------------------

    def lookup(self, cid: uuid.UUID) -> Invocation | None:
        sup = self.containers.get(cid)
        return Invocation(self, sup) if sup is not None else None

    def known(self, cid: uuid.UUID) -> bool:
        return cid in self.containers

    def health(self) -> dict[str, object]:
        counts: dict[str, int] = {}
        for sup in self.containers.values():
            counts[sup.status.label] = counts.get(sup.status.label, 0) + 1
        return {
            "node": self.config.node_ip,
            "containers": counts,
            "zookeeper": self.presence.connected,
        }

    async def refresh_metrics(self) -> None:
        for status in ContainerStatus:
            self.metrics.containers.labels(status.label).set(
                sum(1 for s in self.containers.values() if s.status == status)
            )
        made = [cid for cid, s in self.containers.items() if s.made]
        for gone in self._measured - set(made):  # a removed container's series go with it
            for gauge in (self.metrics.cpu_seconds, self.metrics.memory_bytes):
                with contextlib.suppress(KeyError):
                    gauge.remove(str(gone))
        self._measured &= set(made)
        with contextlib.suppress(BismuthError):
            for used in await self.runtime.usage(made):
                self.metrics.cpu_seconds.labels(str(used.container_id)).set(used.cpu_seconds)
                self.metrics.memory_bytes.labels(str(used.container_id)).set(used.memory_bytes)
                self._measured.add(used.container_id)
