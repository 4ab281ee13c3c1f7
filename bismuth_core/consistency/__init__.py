"""Consistency check of an environment's ZooKeeper tree, and its repair.

:func:`check` scans the tree for damage that the guarded multi-ops of
:mod:`bismuth_core.operations` never leave behind, but a crash, a bug or a hand edit can:

``orphan-container``
    a container znode whose function does not exist or lists it in neither its backends nor
    its retiring set. Fix: delete its status and the container znode in one multi-op.
``backend-without-container``
    a backend a function lists (in ``backends`` or ``retiring``) without a container znode.
    Fix: remove it from both lists, guarded by their versions.
``route-to-missing-function``
    a route whose function does not exist, or whose definition does not list that hostname.
    Fix: delete the route, guarded by its version (and the function's, if it exists).
``missing-route``
    a function lists a hostname that has no route. Fix: create the route, guarded by the
    function's version.
``reservation-drift``
    a node's reservation (data of ``/node/<ip>/container``) differs from the sum of what
    its containers reserve. Fix: rewrite it from the containers, guarded by its version.
``orphan-rollout``
    a ``/rollout/<fid>`` of a function that does not exist. Fix: delete it.
``orphan-secrets``
    a ``/secret/<fid>`` (sealed secrets) of a function that does not exist. Fix: delete it
    and its children in one multi-op. Secrets of existing functions are never findings.
``undecodable``
    a znode whose data cannot be decoded. Fix: undecodable container and route znodes are
    deleted; undecodable function, backends and node znodes are only reported.

The scan reads the tree piece by piece, not as one snapshot (:mod:`.reads`), so every
candidate is confirmed by fresh reads before it is reported, and again right before it is
repaired: a finding that no longer holds (a function created meanwhile) is skipped. Each
kind has one check (:mod:`.checks`) whose single predicate decides both; each repair is
planned from those fresh reads as one guarded multi-op and retried on a lost race.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from ..operations import retry_races
from ..zk import ZooKeeper
from . import reads
from .checks import CHECKS, check_of
from .findings import Finding, Kind, Report

__all__ = ["Finding", "Kind", "Report", "check", "check_and_repair", "repair"]

log = logging.getLogger(__name__)

MAX_PASSES = 3
_ORDER = list(Kind)


async def check(zk: ZooKeeper) -> list[Finding]:
    """Every inconsistency in the tree, each confirmed by fresh reads, in a stable order."""
    tree = await reads.scan(zk)
    found = await asyncio.gather(*(c.scan(zk, tree) for c in CHECKS))
    candidates = [f for per_check in found for f in per_check]
    plans = await asyncio.gather(*(check_of(f).plan(zk, f) for f in candidates))
    confirmed = {f for f, plan in zip(candidates, plans, strict=True) if plan is not None}
    return sorted(confirmed, key=lambda f: (_ORDER.index(f.kind), f.path, f.detail))


async def repair(zk: ZooKeeper, findings: Iterable[Finding]) -> list[Finding]:
    """Repair what can be repaired; return the findings that were.

    Findings that no longer hold are skipped; report-only ones are left as they are.
    """
    repaired = []
    for finding in findings:
        if await _repair_one(zk, finding):
            repaired.append(finding)
    return repaired


async def _repair_one(zk: ZooKeeper, finding: Finding) -> bool:
    async def attempt() -> bool:
        ops = await check_of(finding).plan(zk, finding)
        if not ops:
            return False
        await zk.commit(ops)
        return True

    done = await retry_races(attempt, f"repair {finding.kind} at {finding.path}")
    if done:
        log.info("repaired %s", finding.kind, extra={"path": finding.path})
    return done


async def check_and_repair(zk: ZooKeeper, max_passes: int = MAX_PASSES) -> Report:
    """Check and repair until clean, or nothing more can be repaired, or ``max_passes``.

    One repair can reveal another (deleting an undecodable container a function lists
    leaves that backend without a container), hence several passes.
    """
    found = await check(zk)
    current, repaired = found, []
    for _ in range(max_passes):
        done = await repair(zk, current)
        repaired += done
        current = await check(zk)
        if not done or not current:
            break
    return Report(tuple(found), tuple(repaired), tuple(current))
