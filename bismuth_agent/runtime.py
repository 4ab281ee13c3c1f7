"""Making and unmaking one container, as a sequence of idempotent steps.

Setup is :mod:`.making` (a base class of the runtime). Teardown runs every step's undo in
reverse, each safe when its setup never ran ("not found" is success): SIGTERM, a grace
period, SIGKILL; task, provider, container, snapshot, firewall, veth, namespaces, the
repo's tmpfs, files, and (once the container is no longer wanted) its id range.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path

from bismuth_agent.containerd.client import ContainerdClient
from bismuth_agent.containerd.errors import ContainerdError, NotFound
from bismuth_agent.containerd.events import EventStream, TaskExit, TaskOOM
from bismuth_agent.containerd.process import OutputTooLarge, exec_process
from bismuth_agent.network import Firewall, NetworkAdapter, host_ifname
from bismuth_core.config import ConfigError
from bismuth_core.errors import Conflict
from bismuth_core.eventloop import reraise_if_cancelling
from bismuth_core.secrets import SecretBox, load_cluster_key
from bismuth_core.zk import ZooKeeper

from . import files, repos, seccomp, secretserver
from .cgroups import Cgroup, Limits
from .config import AgentConfig
from .idranges import IdRangeStore, mapping_of
from .images import ImageSnapshots
from .logstore import LogStore
from .making import NODE_LABEL, PROVIDERS_CGROUP, ContainerMaking, serving_port
from .model import (
    DesiredContainer,
    Event,
    ExecOutputTooLarge,
    ExecResult,
    ExecTimeout,
    Existing,
    Exited,
    Made,
    Missed,
    OutOfMemory,
    SetupFailed,
    Usage,
)
from .namespaces import PreparedNamespaces
from .plan import TaskState
from .providers import (
    ProviderSupervisor,
    cap_log,
    confined,
    default_command,
    provider_identity,
)
from .repos import RepoSettings
from .secretserver import SecretSource
from .spec import (
    ContainerPlan,
    IdMapping,
    process,
)
from .timeline import Timelines
from .zygote import ProviderZygote

log = logging.getLogger(__name__)

EVENTS_RETRY = 0.5  # seconds before subscribing again after the event stream broke
_TASK_STATES = {  # containerd's task status -> what the planner knows
    "CREATED": TaskState.CREATED,
    "RUNNING": TaskState.RUNNING,
    "PAUSED": TaskState.RUNNING,
    "PAUSING": TaskState.RUNNING,
    "STOPPED": TaskState.STOPPED,
}
ID_RANGES_FILE = "idranges.json"
ZYGOTE = "zygote"  # the providers' zygote: its cgroup (under providers/)
ZYGOTE_LOG = "provider-zygote.log"


def cluster_box(key_file: str) -> SecretBox | None:
    """The cluster key that opens function secrets (``None``: this node has none)."""
    return SecretBox(load_cluster_key("", key_file)) if key_file else None


class ContainerRuntime(ContainerMaking):
    """The agent's containers through containerd, the network adapter, the firewall and
    the providers: implements :class:`.model.Runtime`."""

    def __init__(
        self,
        config: AgentConfig,
        ctrd: ContainerdClient,
        network: NetworkAdapter,
        firewall: Firewall,
        logs: LogStore,
        zk: ZooKeeper,
        timelines: Timelines | None = None,
    ) -> None:
        self.config = config
        self.timelines = timelines or Timelines()
        self.ctrd = ctrd
        self.network = network
        self.firewall = firewall
        self.logs = logs
        self.id_ranges = IdRangeStore(
            Path(config.state_dir) / ID_RANGES_FILE,
            config.id_map_start,
            config.id_map_size,
            config.id_map_count,
        )
        self.seccomp = seccomp.profile()
        self.namespaces = PreparedNamespaces.of_agent(config.state_dir)
        if config.init_path and not os.access(config.init_path, os.X_OK):
            raise ConfigError(
                f"config init_path: {config.init_path} is not an executable file"
                ' (Debian package tini; "" runs containers without an init)'
            )
        self.provider_user = provider_identity(config.provider_user)
        self.providers = ProviderSupervisor(config.provider_command, zygote=self._zygote())
        self.secrets = SecretSource(zk, cluster_box(config.cluster_key_file))
        self.secrets_socket = Path(config.state_dir) / secretserver.SOCKET
        self._serving = contextlib.AsyncExitStack()
        self._letting_go: set[asyncio.Task[None]] = set()  # rootfs leases being deleted
        self._stream: EventStream | None = None
        self.images = ImageSnapshots(
            ctrd,
            self.id_ranges,
            config.plain_http_registries,
            config.id_map_spare,
            mount_dir=Path(config.state_dir) / "remap",
        )
        self.repo_settings = RepoSettings(
            config.repo_http_hosts, config.git_ca_file, config.repo_max_bytes, config.repo_timeout
        )

    def _zygote(self) -> ProviderZygote | None:
        """The providers' zygote (``provider_zygote``): as their user, in a cgroup of its own
        with their limits."""
        config = self.config
        if not config.provider_zygote:
            return None
        cgroup = Cgroup(f"{config.cgroup_root}/{PROVIDERS_CGROUP}/{ZYGOTE}")
        command = [*(config.provider_command or default_command()), "--zygote"]
        return ProviderZygote(
            confined(command, self.provider_user, cgroup),
            Path(config.state_dir) / ZYGOTE_LOG,
            cgroup,
            Limits(config.provider_memory, config.provider_pids),
        )

    async def start(self) -> None:
        """Install the containers' logger, subscribe to task events (live before anything
        is observed), install the firewall, answer the providers' questions (secrets) on
        their socket, and reap what containers containerd no longer has left behind."""
        self.logs.install_logger(Path(self.config.state_dir))
        await self.images.start()
        self._stream = self.ctrd.events.subscribe()
        await self._stream.ready()
        await self.firewall.install(await self.network.host_view())
        self.secrets_socket.parent.mkdir(parents=True, exist_ok=True)
        self.providers.prepare()
        group = self.provider_user[1] if self.provider_user is not None else None
        await self._serving.enter_async_context(
            secretserver.serving(self.secrets_socket, self.secrets, self.providers.asker, group)
        )
        await self.reap({str(cid) for cid in await self._containers()})

    async def close(self) -> None:
        """Stop watching providers and answering them, and making spare snapshots;
        containers and providers run on."""
        self.providers.close()
        await self._serving.aclose()
        await self.images.close()

    # --- observing --------------------------------------------------------------------

    async def events(self) -> AsyncIterator[Event]:
        """Task exits and OOMs of this namespace; ``Missed`` after the stream broke and was
        opened again (exits meanwhile are only seen by looking)."""
        stream = self._stream or self.ctrd.events.subscribe()
        while True:
            try:
                async with stream:
                    async for envelope in stream:
                        event = _event(envelope.event)
                        if event is not None:
                            yield event
            except (ContainerdError, OSError) as exc:
                reraise_if_cancelling(exc)
                log.warning("task event stream broke, resubscribing: %r", exc)
            await asyncio.sleep(EVENTS_RETRY)
            stream = self.ctrd.events.subscribe()
            yield Missed()

    async def observe(self) -> dict[uuid.UUID, Existing]:
        containers, listed = await asyncio.gather(self._containers(), self.ctrd.tasks.list())
        tasks = {t.container_id: t for t in listed}
        found = {}
        for cid in containers:
            task = tasks.get(str(cid))
            if task is not None and task.status in _TASK_STATES:
                state = _TASK_STATES[task.status]
                exit_status = task.exit_status if state == TaskState.STOPPED else None
            else:
                state, exit_status = await self._recheck(cid)
            found[cid] = Existing(cid, state, exit_status)
        return found

    async def _recheck(self, cid: uuid.UUID) -> tuple[TaskState, int | None]:
        """A container the task list showed without a task, or with a status it could not
        tell, asked alone: containerd lists a task whose shim did not answer in time as
        UNKNOWN (or leaves it out), and taking that for no task would remake a container
        that runs. ``UNKNOWN`` if containerd still cannot tell."""
        try:
            task = await self.ctrd.tasks.get(str(cid))
        except NotFound:
            return TaskState.ABSENT, None
        except ContainerdError as exc:
            log.warning("cannot tell the state of a task: %r", exc, extra={"container_id": cid})
            return TaskState.UNKNOWN, None
        state = _TASK_STATES.get(task.status, TaskState.UNKNOWN)
        return state, task.exit_status if state == TaskState.STOPPED else None

    async def _containers(self) -> list[uuid.UUID]:
        """containerd's containers of this node (by their label)."""
        records = await self.ctrd.containers.list([f'labels."{NODE_LABEL}"=={self.config.node_ip}'])
        return [cid for cid in map(_uuid, (r.id for r in records)) if cid is not None]

    def cap_logs(self, cid: uuid.UUID) -> None:
        self.logs.enforce_cap(cid)
        cap_log(self.dir(cid))

    async def usage(self, cids: list[uuid.UUID]) -> list[Usage]:
        if not cids:
            return []
        found = await self.ctrd.tasks.metrics([str(c) for c in cids])
        return [
            Usage(cid, m.cpu_usage_ns / 1e9, m.memory_usage_bytes)
            for m in found
            if (cid := _uuid(m.container_id)) is not None
        ]

    # --- running containers ---------------------------------------------------------------

    async def adopt(self, desired: DesiredContainer) -> Made:
        """Take over a running task (and its provider) after an agent restart, restarting
        neither."""
        cid = desired.container_id
        pid = (await self.ctrd.tasks.get(str(cid))).pid
        ids = self._adopted_ids(cid, pid)
        allocation = await self.network.adopt(str(cid), f"/proc/{pid}/ns/net")
        await self.firewall.attach(allocation, serving_port(desired))
        token = self._token(self.dir(cid))
        await self.providers.adopt(self._launch(desired, allocation, token))
        return Made(cid, pid, allocation, token, ids)

    def _adopted_ids(self, cid: uuid.UUID, pid: int) -> IdMapping:
        """The range the running task maps, recorded as its own; ``SetupFailed`` if another
        container holds it (made before ranges were per container): it is made again."""
        found = mapping_of(pid)
        if found is None:
            raise SetupFailed(f"cannot read the uid map of task {pid}")
        try:
            return self.id_ranges.claim(cid, found)
        except Conflict as exc:
            raise SetupFailed(f"its user namespace {exc.message}") from None

    async def execute(
        self,
        desired: DesiredContainer,
        made: Made,
        argv: tuple[str, ...],
        stdin: AsyncIterable[bytes],
        timeout: float,
        max_output: int,
    ) -> ExecResult:
        """Run ``argv`` in the container once; ``ExecTimeout`` past ``timeout``,
        ``ExecOutputTooLarge`` past ``max_output`` bytes of stdout (killed either way)."""
        plan = ContainerPlan(
            container_id=made.container_id,
            function_id=desired.function_id,
            definition=desired.definition,
            auth_token=made.token,
            ids=made.ids,
            cgroup_parent=self.config.cgroup_root,
        )
        try:
            result = await asyncio.wait_for(
                exec_process(
                    self.ctrd,
                    str(made.container_id),
                    process(plan, argv),
                    self.dir(made.container_id) / "fifo",
                    stdin=stdin,
                    max_stdout=max_output,
                ),
                timeout,
            )
        except TimeoutError:
            raise ExecTimeout() from None
        except OutputTooLarge:
            raise ExecOutputTooLarge() from None
        return ExecResult(result.exit_code, result.stdout, result.stderr)

    # --- teardown ---------------------------------------------------------------------

    async def stop_task(self, cid: uuid.UUID, grace: float) -> None:
        """SIGTERM, up to ``grace`` seconds, then SIGKILL; then delete the task."""
        name = str(cid)
        with contextlib.suppress(NotFound):
            await self.ctrd.tasks.kill(name, signal.SIGTERM, all=True)
            try:
                await asyncio.wait_for(self.ctrd.tasks.wait(name), grace)
            except TimeoutError:
                await self.ctrd.tasks.kill(name, signal.SIGKILL, all=True)
                await asyncio.wait_for(self.ctrd.tasks.wait(name), 10.0)
        with contextlib.suppress(NotFound):
            await self.ctrd.tasks.delete(name)

    async def remove(self, cid: uuid.UUID, *, keep_logs: bool = False, grace: float = 0.0) -> None:
        """Undo every setup step; each is safe if it never ran."""
        try:
            await self.stop_task(cid, grace)
        except ContainerdError as exc:
            log.warning("stopping the task failed: %s", exc.message, extra={"container_id": cid})
        await self.providers.stop(cid, self.dir(cid))
        self.provider_cgroup(cid).remove()
        await self.ctrd.delete_container(str(cid))
        await self.firewall.detach(host_ifname(str(cid)))
        await self.network.teardown(str(cid))
        await self.namespaces.remove(str(cid))
        await repos.remove(self.dir(cid))
        self._cgroup(cid).remove()  # made for its repo's fetch if runc never took it over
        if not keep_logs:
            files.remove(self.dir(cid))
            self.logs.remove(cid)
            self.id_ranges.release(cid)

    async def reap(self, known: set[str]) -> None:
        """Forget what containers containerd no longer has (``known``: those it has) left:
        veths, subnets, firewall elements, host id ranges, providers and files of an agent
        killed mid-removal or mid-setup."""
        for found in await self.network.list():
            if found.container_id is not None and found.container_id not in known:
                log.info(
                    "reaping the network of a container that is gone",
                    extra={"container_id": found.container_id},
                )
                await self.firewall.detach(found.ifname)
                await self.network.teardown(found.container_id)
        await self.network.release_others(known)
        await self.namespaces.keep_only(known)
        self.id_ranges.keep_only(cid for cid in map(_uuid, known) if cid is not None)
        await self._reap_providers(known)

    async def _reap_providers(self, known: set[str]) -> None:
        """Providers (and files) of containers containerd never made: an agent stopped
        between starting a provider and making its container."""
        top = Path(self.config.state_dir) / "containers"
        for directory in top.iterdir() if top.is_dir() else ():
            cid = _uuid(directory.name)
            if cid is not None and directory.name not in known:
                await self.providers.stop(cid, directory)
                self.provider_cgroup(cid).remove()
                await repos.remove(directory)
                files.remove(directory)


def _uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def _event(raw: object) -> Event | None:
    """A containerd event as the agent knows it: its containers' init exits and OOMs."""
    if isinstance(raw, TaskOOM):
        cid = _uuid(raw.container_id)
        return OutOfMemory(cid) if cid else None
    if isinstance(raw, TaskExit) and raw.id == raw.container_id:  # not an exec's
        cid = _uuid(raw.container_id)
        return Exited(cid, raw.pid, raw.exit_status) if cid else None
    return None
