"""The container firewall: the toolkit's nftables table, driven through the ``nft`` command.

Scripts come from :mod:`.ruleset`; each is one ``nft -f -`` transaction, so the table is
never half-updated. ``nft`` runs inside the host network namespace of the settings (see
:mod:`.namespaces`), on a worker thread.

Installing turns IPv4 forwarding on for the host's uplinks where the host did not forward, and
reports those changes; the table then forwards container traffic only (see :mod:`.ruleset`
and :mod:`.sysctl`), and removing the last bismuth table guarding an uplink turns its
forwarding off again. A forwarding host is left as it was.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
from ipaddress import IPv4Address
from typing import Any

from .model import NO_HOST_VIEW, Allocation, HostView, NetworkError, SysctlChange
from .namespaces import run_in_netns
from .ruleset import (
    ELEMENT_SETS,
    LEGACY_FORWARDING_GUARD,
    PROVIDER_MAP,
    TABLE_PREFIX,
    attach_script,
    detach_script,
    guarded_uplink,
    install_script,
    uplink_name,
)
from .settings import NetworkSettings
from .sysctl import NO_FORWARDING, ensure_sysctls, forward_off, forward_on_uplinks

log = logging.getLogger(__name__)

NFT_TIMEOUT = 30.0
Elements = dict[str, list[tuple[str, ...]]]


class Firewall:
    """Implements :class:`.model.ContainerFirewall` with ``nft``."""

    def __init__(self, settings: NetworkSettings) -> None:
        self.settings = settings
        self.table = settings.table
        self._lock = asyncio.Lock()

    async def install(self, host: HostView = NO_HOST_VIEW) -> list[SysctlChange]:
        """Create or refresh the table (keeping container elements); forward for containers.

        The host's own networks are added to the blocked destinations, so containers cannot
        reach the host's neighbours; its uplinks get forwarding where the host does not
        forward, each with its guard. Returns the sysctls it changed.
        """
        names = [u for u in host.uplinks if uplink_name(u)]
        async with self._lock:
            guards = await self._guards()
            changes = await self._retire_legacy_guard(guards)
            before = set().union(*guards.values())
            changed, guarded = await self._in_host_netns(lambda: forward_on_uplinks(names, before))
            changes += changed
            script = install_script(self.settings, host.networks, guarded_uplinks=guarded)
            try:
                await self._nft(["-f", "-"], script)
            except NetworkError as exc:
                # An older table whose sets have other types: start over; callers re-attach.
                log.warning("recreating nftables table %s: %s", self.table, exc)
                await self._delete_table()
                await self._nft(["-f", "-"], script)
        for change in changes:
            log.warning("set %s from %s to %s", change.key, change.before, change.after)
        log.info("firewall table inet %s installed", self.table)
        return changes

    async def attach(self, allocation: Allocation, serving_port: int | None = None) -> None:
        """Add the container's elements; adding present ones is a no-op."""
        async with self._lock:
            await self._nft(["-f", "-"], attach_script(self.table, allocation, serving_port))

    async def detach(self, ifname: str) -> None:
        """Delete every element of ``ifname``; nothing to delete is success."""
        async with self._lock:
            elements = _of_interface(await self._elements(), ifname)
            elements[PROVIDER_MAP] = [key[:1] for key in elements[PROVIDER_MAP]]
            script = detach_script(self.table, elements)
            if script:
                await self._nft(["-f", "-"], script)

    async def attached(self) -> dict[str, IPv4Address]:
        """Host interface name → provider address, for every attached container."""
        elements = await self._elements()
        return {key[0]: IPv4Address(key[1]) for key in elements.get(PROVIDER_MAP, [])}

    async def elements(self) -> Elements:
        """Every per-container element by set name: map entries as (key, value) tuples."""
        return await self._elements()

    async def remove_all(self) -> list[SysctlChange]:
        """Delete the table; a missing table is success.

        Forwarding goes back off on each uplink this table guarded, unless another bismuth
        table still guards it; returns the sysctls changed.
        """
        async with self._lock:
            guards = await self._guards()
            await self._delete_table()
            changes = await self._retire_legacy_guard(guards)
            ours = guards.pop(self.table, set())
            still = {u for found in guards.values() for u in found}
            changes += await self._in_host_netns(lambda: forward_off(sorted(ours - still)))
        for change in changes:
            log.warning("set %s from %s to %s", change.key, change.before, change.after)
        log.info("firewall table inet %s removed", self.table)
        return changes

    async def _retire_legacy_guard(self, guards: dict[str, set[str]]) -> list[SysctlChange]:
        """An older agent of this table turned the global switch on: turn it back off (once
        no other table relies on it); this agent then forwards per interface."""
        legacy = {t for t, found in guards.items() if LEGACY_FORWARDING_GUARD in found}
        if self.table not in legacy:
            return []
        guards[self.table].discard(LEGACY_FORWARDING_GUARD)
        if legacy - {self.table}:
            return []
        return await self._in_host_netns(lambda: ensure_sysctls(NO_FORWARDING))

    async def _delete_table(self) -> None:
        if await self._table_exists():
            await self._nft(["delete", "table", "inet", self.table])

    async def _table_exists(self) -> bool:
        return self.table in await self._bismuth_tables()

    async def _bismuth_tables(self) -> list[str]:
        """Every bismuth table in the host namespace (other agents' too)."""
        listing = json.loads(await self._nft(["-j", "list", "tables", "inet"]) or "{}")
        names = (e.get("table", {}).get("name", "") for e in listing.get("nftables", []))
        return [name for name in names if name.startswith(TABLE_PREFIX)]

    async def _guards(self) -> dict[str, set[str]]:
        """Uplinks each bismuth table here guards (other agents' too), by table name; an
        older agent's global guard shows as :data:`.ruleset.LEGACY_FORWARDING_GUARD`."""
        found: dict[str, set[str]] = {}
        for table in await self._bismuth_tables():
            try:
                chain = await self._nft(["-j", "list", "chain", "inet", table, "forward"])
            except NetworkError:  # a table without that chain guards nothing
                continue
            rules = (e.get("rule", {}) for e in json.loads(chain).get("nftables", []))
            comments = [str(rule.get("comment", "")) for rule in rules]
            uplinks = {guarded_uplink(c) for c in comments} | (
                {LEGACY_FORWARDING_GUARD} & set(comments)
            )
            found[table] = {u for u in uplinks if u}
        return found

    async def _elements(self) -> Elements:
        if not await self._table_exists():
            return {name: [] for name in ELEMENT_SETS}
        listing = json.loads(await self._nft(["-j", "list", "table", "inet", self.table]))
        return _parse_elements(listing)

    async def _nft(self, args: list[str], script: str | None = None) -> str:
        command = [self.settings.nft, *args]
        return await self._in_host_netns(lambda: _run(command, script))

    async def _in_host_netns(self, work: Any) -> Any:
        return await asyncio.to_thread(run_in_netns, self.settings.host_netns, work)


def _run(command: list[str], script: str | None) -> str:
    try:
        done = subprocess.run(
            command,
            input=script,
            capture_output=True,
            text=True,
            timeout=NFT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetworkError(f"{command[0]}: {exc}") from exc
    if done.returncode != 0:
        raise NetworkError(f"{' '.join(command)}: {done.stderr.strip()}")
    return done.stdout


def _parse_elements(listing: dict[str, Any]) -> Elements:
    """Element keys of the per-container sets in ``nft -j list table`` output."""
    found: Elements = {name: [] for name in ELEMENT_SETS}
    for entry in listing.get("nftables", []):
        body = entry.get("set") or entry.get("map")
        if not body or body.get("name") not in found:
            continue
        found[body["name"]] = [_element_key(e) for e in body.get("elem", [])]
    return found


def _element_key(element: Any) -> tuple[str, ...]:
    """``"bthX"``, ``{"concat": [...]}``, or a map's ``[key, value]`` as a tuple."""
    if isinstance(element, list):  # map: [key, value]
        return tuple(str(part) for part in element)
    if isinstance(element, dict) and "concat" in element:
        return tuple(str(part) for part in element["concat"])
    return (str(element),)


def _of_interface(elements: Elements, ifname: str) -> Elements:
    return {name: [k for k in keys if k[0] == ifname] for name, keys in elements.items()}
