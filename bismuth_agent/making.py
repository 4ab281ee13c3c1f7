"""How the agent makes a container: the steps of ``create``, a base of
:class:`.runtime.ContainerRuntime` (which holds everything the steps use).

A host id range of its own and a subnet reserved → alongside: the image (pulled or
imported, unpacked, its top layer remapped to that range once per image and range:
:mod:`.images`, which also remaps spare ranges ahead) and the rootfs snapshot on it; the
containerd container's record (the repo fetched into its tmpfs first, if it has one); the
container's user and network namespaces (:mod:`.namespaces`); the /etc files once the
subnet is known → the task created in those namespaces (runc made the others, process not
started; output to the log file) → alongside its creation: the provider started (it
answers on the subnet's host address once the veth exists) and the namespaces wired (veth,
addresses, routes, firewall elements) → task started. A failed step lets the steps running
alongside end, then the runtime's ``remove`` tears down what they made before the error is
reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from bismuth_agent.containerd.client import ContainerdClient
from bismuth_agent.containerd.errors import AlreadyExists, NotFound
from bismuth_agent.containerd.remap import with_metacopy
from bismuth_agent.containerd.types import Mount, Stdio
from bismuth_agent.network import Allocation, Firewall, NetworkAdapter
from bismuth_core.definition import ServerMode
from bismuth_core.errors import BismuthError

from . import files, repos
from .cgroups import Cgroup, Limits
from .config import AgentConfig
from .idranges import IdRangeStore
from .images import ImageSnapshots
from .logstore import LogStore
from .model import DesiredContainer, Made, SetupFailed
from .namespaces import NamespaceFiles, PreparedNamespaces
from .providers import Launch, ProviderSupervisor, local_storage_root
from .repos import RepoSettings
from .spec import (
    CONTAINER_GID,
    CONTAINER_UID,
    CPU_PERIOD,
    ContainerPlan,
    IdMapping,
    container_spec,
    cpu_quota,
)
from .timeline import CONTAINER, IMAGE, NETWORK, PROVIDER, STARTED, TASK, Timelines

log = logging.getLogger(__name__)

NODE_LABEL = "bismuth.node"  # containerd label: the node a container belongs to
TOKEN_FILE = "token"
PROVIDERS_CGROUP = "providers"  # under the agent's cgroup root: the providers' cgroups
# A rootfs is made before its container's record references it, under a lease of its own
# that the agent deletes then; one an agent stopped before deleting expires by itself.
ROOTFS_LEASE = timedelta(hours=1)


class ContainerMaking:
    """``create`` and its steps; the runtime provides what they use."""

    config: AgentConfig
    ctrd: ContainerdClient
    timelines: Timelines
    network: NetworkAdapter
    firewall: Firewall
    logs: LogStore
    id_ranges: IdRangeStore
    images: ImageSnapshots
    namespaces: PreparedNamespaces
    providers: ProviderSupervisor
    provider_user: tuple[int, int] | None
    secrets_socket: Path
    seccomp: dict[str, Any]
    repo_settings: RepoSettings
    _letting_go: set[asyncio.Task[None]]

    def dir(self, cid: uuid.UUID) -> Path:
        return files.container_dir(self.config.state_dir, cid)

    def _cgroup(self, cid: uuid.UUID) -> Cgroup:
        """The container's own cgroup (runc's ``cgroupsPath``)."""
        return Cgroup(f"{self.config.cgroup_root}/{cid}")

    def provider_cgroup(self, cid: uuid.UUID) -> Cgroup:
        return Cgroup(f"{self.config.cgroup_root}/{PROVIDERS_CGROUP}/{cid}")

    async def remove(self, cid: uuid.UUID, *, keep_logs: bool = False, grace: float = 0.0) -> None:
        raise NotImplementedError

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
        """The steps in order, but most run alongside: its addresses are reserved from the
        start; once the container has its host id range, the image's snapshot for that range
        is looked up and the container's rootfs made on it, its record made (the /etc files
        it mounts are written once its addresses are known) and its user and network
        namespaces made. The task is created once its record, rootfs and namespaces exist;
        only then do the provider start and the namespaces get wired (veth, addresses,
        firewall): that work would otherwise hold the agent's core and interpreter while
        the record and the task are being made, the start's longest steps. The start waits
        for all of them."""
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
        steps: list[asyncio.Future[Any]] = [reserving, parent, rootfs, namespaces]
        provider: asyncio.Future[None] | None = None
        try:
            token = self._token(self.dir(cid))
            record = asyncio.ensure_future(self._container(desired, ids, token, rootfs))
            steps.append(record)
            allocation = await reserving
            self._etc(desired, allocation)
            mounts = await asyncio.shield(record)  # a cancelled create still lets it end
            self.timelines.stamp(cid, CONTAINER)
            await asyncio.shield(namespaces)
            uri = self.logs.uri(cid)
            creating = asyncio.ensure_future(
                self.ctrd.tasks.create(
                    str(cid), rootfs=with_metacopy(mounts), stdio=Stdio(stdout=uri, stderr=uri)
                )
            )  # sent before the work below begins
            steps.append(creating)
            provider = asyncio.ensure_future(
                self.providers.start(self._launch(desired, allocation, token))
            )
            wired = asyncio.ensure_future(self._wire(desired, allocation, namespaces))
            steps += [provider, wired]
            pid = await asyncio.shield(creating)
            self.timelines.stamp(cid, TASK)
            await asyncio.shield(wired)
            self.timelines.stamp(cid, NETWORK)
            await provider
            self.timelines.stamp(cid, PROVIDER)
        except BaseException:
            if provider is not None:
                provider.cancel()  # the others end on their own: removal finds all
            await _settled(*steps)  # their failures are not the news
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

    def _etc(self, desired: DesiredContainer, allocation: Allocation) -> None:
        """The /etc files the container's record mounts (its address in /etc/hosts)."""
        cid = desired.container_id
        address = str(allocation.container_address)
        files.write_etc_files(self.dir(cid), cid, address, files.nameservers())

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
        rootfs: asyncio.Future[tuple[list[Mount], str]],
    ) -> list[Mount]:
        """The containerd container: its repo fetched, if it has one, then its record, made
        while its ``rootfs`` is being made; then the rootfs's mounts."""
        cid, definition = desired.container_id, desired.definition
        directory = self.dir(cid)
        repo_dir = None
        if definition.repo:
            url, branch = definition.repo
            owner = (ids.host_start + CONTAINER_UID, ids.host_start + CONTAINER_GID)
            limits = Limits(definition.memory, self.config.pids_limit)
            repo_dir = await repos.fetch(
                directory, url, branch, owner, self.repo_settings, (self._cgroup(cid), limits)
            )
        plan = ContainerPlan(
            container_id=cid,
            function_id=desired.function_id,
            definition=definition,
            auth_token=token,
            ids=ids,
            cgroup_parent=self.config.cgroup_root,
            etc_files=files.etc_mounts(directory),
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


async def _settled(*steps: asyncio.Future[Any]) -> None:
    """Wait until every step has ended, taking (and dropping) their errors."""
    await asyncio.wait(steps)
    for step in steps:
        if not step.cancelled():
            step.exception()


def serving_port(desired: DesiredContainer) -> int | None:
    """The port frontends connect to straight: a Server-mode container's; None otherwise."""
    mode = desired.definition.invoke_mode
    return mode.port if isinstance(mode, ServerMode) else None
