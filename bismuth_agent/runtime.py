"""Making and unmaking one container, as a sequence of idempotent steps.

Setup: a host id range of its own and a subnet → the provider started (it answers on the
subnet's host address once the veth exists; awaited before the task starts) and the
container's user and network namespaces made (:mod:`.namespaces`), then wired (veth,
addresses, routes, firewall elements), both alongside the next steps → files (/etc files,
token, the repo fetched into its tmpfs) → image (pulled or imported, unpacked, its top layer
remapped to that range once per image and range: :mod:`.images`, which also remaps spare
ranges ahead) → containerd container and rootfs snapshot → task created in those namespaces
(runc made the others, process not started; output to the log file) → network wired and
provider answering → task started.
Teardown runs every step's undo in reverse, each safe when its setup never ran ("not found"
is success): SIGTERM, a grace period, SIGKILL; task, provider, container, snapshot,
firewall, veth, namespaces, the repo's tmpfs, files, and (once the container is no longer
wanted) its id range. A failed setup lets the steps running alongside end, then tears down
what it made before the error is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from bismuth_agent.containerd.client import ContainerdClient
from bismuth_agent.containerd.errors import AlreadyExists, ContainerdError, NotFound
from bismuth_agent.containerd.events import EventStream, TaskExit, TaskOOM
from bismuth_agent.containerd.process import OutputTooLarge, exec_process
from bismuth_agent.containerd.remap import with_metacopy
from bismuth_agent.containerd.types import Mount, Stdio
from bismuth_agent.network import Allocation, Firewall, NetworkAdapter, host_ifname
from bismuth_core.config import ConfigError
from bismuth_core.definition import ServerMode
from bismuth_core.errors import BismuthError, Conflict
from bismuth_core.eventloop import reraise_if_cancelling
from bismuth_core.secrets import SecretBox, load_cluster_key
from bismuth_core.zk import ZooKeeper

from . import files, repos, seccomp, secretserver
from .cgroups import Cgroup, Limits
from .config import AgentConfig
from .idranges import IdRangeStore, mapping_of
from .images import ImageSnapshots
from .logstore import LogStore
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
from .namespaces import NamespaceFiles, PreparedNamespaces
from .plan import TaskState
from .providers import (
    Launch,
    ProviderSupervisor,
    cap_log,
    confined,
    default_command,
    local_storage_root,
    provider_identity,
)
from .repos import RepoSettings
from .secretserver import SecretSource
from .spec import (
    CONTAINER_GID,
    CONTAINER_UID,
    CPU_PERIOD,
    ContainerPlan,
    IdMapping,
    container_spec,
    cpu_quota,
    process,
)
from .timeline import CONTAINER, IMAGE, NETWORK, PROVIDER, STARTED, TASK, Timelines
from .zygote import ProviderZygote

log = logging.getLogger(__name__)

NODE_LABEL = "bismuth.node"  # containerd label: the node a container belongs to
TOKEN_FILE = "token"
EVENTS_RETRY = 0.5  # seconds before subscribing again after the event stream broke
# A rootfs is made before its container's record references it, under a lease of its own
# that the agent deletes then; one an agent stopped before deleting expires by itself.
ROOTFS_LEASE = timedelta(hours=1)
_TASK_STATES = {  # containerd's task status -> what the planner knows
    "CREATED": TaskState.CREATED,
    "RUNNING": TaskState.RUNNING,
    "PAUSED": TaskState.RUNNING,
    "PAUSING": TaskState.RUNNING,
    "STOPPED": TaskState.STOPPED,
}
ID_RANGES_FILE = "idranges.json"
PROVIDERS_CGROUP = "providers"
ZYGOTE = "zygote"  # the providers' zygote: its cgroup (under providers/)
ZYGOTE_LOG = "provider-zygote.log"


def cluster_box(key_file: str) -> SecretBox | None:
    """The cluster key that opens function secrets (``None``: this node has none)."""
    return SecretBox(load_cluster_key("", key_file)) if key_file else None


class ContainerRuntime:
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

    def dir(self, cid: uuid.UUID) -> Path:
        return files.container_dir(self.config.state_dir, cid)

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

    # --- setup ------------------------------------------------------------------------

    async def create(self, desired: DesiredContainer) -> Made:
        """Make the container and start its task; on failure leave nothing behind."""
        cid = desired.container_id
        self.logs.prepare(cid)
        try:
            return await self._create(desired)
        except (BismuthError, OSError) as exc:
            why = exc.message if isinstance(exc, BismuthError) else repr(exc)
            self.logs.note(cid, f"cannot start the container: {why}")
            await self.remove(cid, keep_logs=True)
            raise SetupFailed(why) from exc

    async def _create(self, desired: DesiredContainer) -> Made:
        """The steps in order, but six run alongside: its addresses are reserved from the
        start; once the container has its host id range, the image's snapshot for that range
        is looked up and the container's rootfs made on it, and the container's user and
        network namespaces are made (the task joins them); once its addresses are reserved,
        its provider starts and the namespaces are wired (veth, addresses, firewall). The
        container's record waits for its rootfs, the task for the namespaces; its start
        waits for all of them."""
        cid, image = desired.container_id, desired.definition.image
        reserving = asyncio.ensure_future(self.network.reserve(str(cid)))  # its addresses
        digest = asyncio.ensure_future(self.images.digest(image))  # pulled if missing
        lease = asyncio.ensure_future(self._rootfs_lease(cid))
        try:
            await self.providers.stop(cid, self.dir(cid))  # one an agent left starting, if any
            ids = self.id_ranges.allocate(cid)
        except BaseException:
            await _settled(reserving, digest, lease)
            raise
        parent = asyncio.ensure_future(self._image(cid, image, ids, digest))
        rootfs = asyncio.ensure_future(self._rootfs(cid, image, ids, parent, lease))
        namespaces = asyncio.ensure_future(self.namespaces.prepare(str(cid), ids))
        try:
            token = self._token(self.dir(cid))
            allocation = await reserving
        except BaseException:
            await _settled(reserving, parent, rootfs, namespaces)  # removal finds all they made
            raise
        launch = self._launch(desired, allocation, token)
        provider = asyncio.ensure_future(self.providers.start(launch))
        wired = asyncio.ensure_future(self._wire(desired, allocation, namespaces))
        try:
            pid = await self._task(desired, ids, token, allocation, namespaces, rootfs)
            await asyncio.shield(wired)  # a cancelled create still lets it end
            self.timelines.stamp(cid, NETWORK)
            await provider
            self.timelines.stamp(cid, PROVIDER)
        except BaseException:
            provider.cancel()  # the others end on their own: removal finds all
            await _settled(provider, namespaces, wired, parent, rootfs)  # failures not the news
            raise
        await self.ctrd.tasks.start(str(cid))
        self.timelines.stamp(cid, STARTED)
        self.images.prepare_ahead(desired.definition.image)
        return Made(cid, pid, allocation, token, ids)

    async def _wire(
        self,
        desired: DesiredContainer,
        allocation: Allocation,
        namespaces: asyncio.Future[NamespaceFiles],
    ) -> None:
        """Veth, addresses and routes into the container's network namespace; firewall."""
        made = await asyncio.shield(namespaces)
        await self.network.setup(str(desired.container_id), made.network)
        await self.firewall.attach(allocation, serving_port(desired))

    async def _task(
        self,
        desired: DesiredContainer,
        ids: IdMapping,
        token: str,
        allocation: Allocation,
        namespaces: asyncio.Future[NamespaceFiles],
        rootfs: asyncio.Future[tuple[list[Mount], str]],
    ) -> int:
        """Files, repo, containerd container (on its ``rootfs``, being made) and its task
        (not started, in the ``namespaces`` once they exist): its PID."""
        cid, definition = desired.container_id, desired.definition
        directory = self.dir(cid)
        address = str(allocation.container_address)
        etc = files.write_etc_files(directory, cid, address, files.nameservers())
        repo_dir = None
        if definition.repo:
            url, branch = definition.repo
            owner = (ids.host_start + CONTAINER_UID, ids.host_start + CONTAINER_GID)
            limits = Limits(definition.memory, self.config.pids_limit)
            repo_dir = await repos.fetch(
                directory, url, branch, owner, self.repo_settings, (self._cgroup(cid), limits)
            )
        mounts = await self._container(desired, ids, token, etc, repo_dir, rootfs)
        self.timelines.stamp(cid, CONTAINER)
        uri = self.logs.uri(cid)
        await asyncio.shield(namespaces)
        pid = await self.ctrd.tasks.create(
            str(cid), rootfs=with_metacopy(mounts), stdio=Stdio(stdout=uri, stderr=uri)
        )
        self.timelines.stamp(cid, TASK)
        return pid

    async def _image(
        self, cid: uuid.UUID, image: str, ids: IdMapping, digest: asyncio.Future[str]
    ) -> str:
        parent = await self.images.snapshot(image, ids, await digest)
        self.timelines.stamp(cid, IMAGE)
        return parent

    async def _rootfs_lease(self, cid: uuid.UUID) -> str:
        """The lease the container's rootfs is made under (made first thing: it is one of
        containerd's metadata writes, which take turns)."""
        lease = f"bismuth-rootfs-{cid}"
        with contextlib.suppress(AlreadyExists):  # an earlier attempt's, not let go yet
            await self.ctrd.create_lease(lease, ROOTFS_LEASE)
        return lease

    async def _rootfs(
        self,
        cid: uuid.UUID,
        image: str,
        ids: IdMapping,
        parent: asyncio.Future[str],
        leasing: asyncio.Future[str],
    ) -> tuple[list[Mount], str]:
        """The container's rootfs snapshot, made on ``parent`` (its image's, being found)
        before the container's record exists: under a lease of its own until the record
        references it (see :meth:`_let_go`); its mounts and the lease."""
        lease = await leasing
        leased = self.ctrd.derive(lease=lease)
        try:
            mounts = await leased.prepare_rootfs(str(cid), await parent)
        except NotFound:  # the image's snapshot known from before is gone: found anew
            digest = await self.images.digest(image)
            key = await self.images.snapshot(image, ids, digest, recheck=True)
            mounts = await leased.prepare_rootfs(str(cid), key)
        return mounts, lease

    def _let_go(self, lease: str) -> None:
        """Delete a rootfs's lease in the background (the record references it now); one
        not deleted, by an agent stopped meanwhile, expires after ``ROOTFS_LEASE``."""
        task = asyncio.ensure_future(self.ctrd.delete_lease(lease))
        self._letting_go.add(task)
        task.add_done_callback(self._let_gone)

    def _let_gone(self, task: asyncio.Task[None]) -> None:
        self._letting_go.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("cannot delete lease: %r (it expires)", task.exception())

    async def _container(
        self,
        desired: DesiredContainer,
        ids: IdMapping,
        token: str,
        etc: dict[str, str],
        repo_dir: str | None,
        rootfs: asyncio.Future[tuple[list[Mount], str]],
    ) -> list[Mount]:
        """The containerd container: its record, made while its ``rootfs`` is being made,
        then the rootfs's mounts."""
        cid, definition = desired.container_id, desired.definition
        plan = ContainerPlan(
            container_id=cid,
            function_id=desired.function_id,
            definition=definition,
            auth_token=token,
            ids=ids,
            cgroup_parent=self.config.cgroup_root,
            etc_files=etc,
            repo_dir=repo_dir,
            pids_limit=self.config.pids_limit,
            seccomp=self.seccomp,
            init=self.config.init_path or None,
            start_cpu=self.config.start_cpu,
            joined=self.namespaces.files(str(cid)).by_type(),
        )
        labels = {"bismuth.function": str(desired.function_id), NODE_LABEL: self.config.node_ip}
        await self.ctrd.create_record(
            str(cid), spec=container_spec(plan), image=definition.image, labels=labels
        )
        mounts, lease = await asyncio.shield(rootfs)  # a cancelled create still lets it end
        self._let_go(lease)
        return mounts

    def settle(self, desired: DesiredContainer) -> None:
        """Hold the container to its function's cpu from now on (it started with up to
        ``start_cpu`` cores); ``CgroupError`` if its cgroup cannot be changed."""
        quota = cpu_quota(desired.definition.cpu)
        self._cgroup(desired.container_id).set_cpu_quota(quota, CPU_PERIOD)

    def _launch(self, desired: DesiredContainer, allocation: Allocation, token: str) -> Launch:
        """How this container's provider runs: its address, scope, quotas and storage; its
        user and cgroup. It gets no cluster key and no ZooKeeper: it asks this agent for
        its function's secrets over the providers' socket."""
        cid, definition, config = desired.container_id, desired.definition, self.config
        quotas = definition.svc_quotas
        port = self.network.settings.provider_port
        env = {
            "BISMUTH_BIND": f"{allocation.provider_address}:{port}",
            "BISMUTH_TOKEN_FILE": "-",  # the token comes on the provider's stdin
            "BISMUTH_FUNCTION_ID": str(desired.function_id),
            "BISMUTH_GROUP_ID": str(definition.svc_group_id or desired.function_id),
            "BISMUTH_STORAGE": config.provider_storage,
            "BISMUTH_KV_QUOTA": str(quotas.kv if quotas and quotas.kv is not None else -1),
            "BISMUTH_BLOB_QUOTA": str(quotas.blob if quotas and quotas.blob is not None else -1),
            "BISMUTH_SECRETS_SOCKET": str(self.secrets_socket),
            "BISMUTH_S3": json.dumps(config.provider_s3),  # the table, as it is
            "BISMUTH_LOG_LEVEL": config.provider_log_level,
        }
        if self.provider_user is not None:  # it must own its group's local data
            local_storage_root(config.provider_storage, env["BISMUTH_GROUP_ID"], self.provider_user)
        return Launch(
            cid,
            self.dir(cid),
            str(allocation.provider_address),
            port,
            token,
            env,
            self.provider_user,
            function_id=desired.function_id,
            cgroup=self.provider_cgroup(cid),
            limits=Limits(config.provider_memory, config.provider_pids),
        )

    def _cgroup(self, cid: uuid.UUID) -> Cgroup:
        """The container's own cgroup (runc's ``cgroupsPath``)."""
        return Cgroup(f"{self.config.cgroup_root}/{cid}")

    def provider_cgroup(self, cid: uuid.UUID) -> Cgroup:
        return Cgroup(f"{self.config.cgroup_root}/{PROVIDERS_CGROUP}/{cid}")

    def _token(self, directory: Path) -> str:
        """The container's provider token, made once and kept across agent restarts."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / TOKEN_FILE
        if path.exists():
            return path.read_text().strip()
        token = secrets.token_urlsafe(32)
        path.touch(mode=0o600)
        path.write_text(token)
        return token

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


async def _settled(*steps: asyncio.Future[Any]) -> None:
    """Wait until every step has ended, taking (and dropping) their errors."""
    await asyncio.wait(steps)
    for step in steps:
        if not step.cancelled():
            step.exception()


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


def serving_port(desired: DesiredContainer) -> int | None:
    """The port frontends connect to straight: a Server-mode container's; None otherwise."""
    mode = desired.definition.invoke_mode
    return mode.port if isinstance(mode, ServerMode) else None
