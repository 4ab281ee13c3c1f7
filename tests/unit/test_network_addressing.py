"""Subnet allocation, its state file, interface names and network settings (no root needed)."""

from __future__ import annotations

import json
import uuid
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from bismuth_agent.network import (
    Allocation,
    AllocationStore,
    NetworkSettings,
    NetworkStateError,
    SubnetPool,
    host_ifname,
)
from bismuth_core.config import ConfigError
from bismuth_core.errors import Conflict, InsufficientCapacity

POOL = IPv4Network("10.253.0.0/16")


def test_allocation_addresses() -> None:
    allocation = Allocation("c1", IPv4Network("10.253.0.4/30"))
    assert allocation.host_address == IPv4Address("10.253.0.5")
    assert allocation.provider_address == allocation.host_address
    assert allocation.container_address == IPv4Address("10.253.0.6")
    assert str(allocation.host_interface) == "10.253.0.5/30"
    assert str(allocation.container_interface) == "10.253.0.6/30"


@pytest.mark.parametrize(
    ("container_id", "name"),
    [
        ("3f2a9c1d-4e5b-4a6c-8d7e-9f0a1b2c3d4e", "bth3f2a9c1d4e5b"),
        ("3F2A9C1D-4E5B-4A6C-8D7E-9F0A1B2C3D4E", "bth3f2a9c1d4e5b"),
    ],
)
def test_host_ifname_of_uuid_is_its_prefix(container_id: str, name: str) -> None:
    assert host_ifname(container_id) == name


def test_host_ifname_of_other_ids_hashes_so_similar_ids_differ() -> None:
    names = {host_ifname(f"test-container-{i}") for i in range(100)}
    assert len(names) == 100
    assert all(len(n) == 15 and n.startswith("bth") and n.isalnum() for n in names)


def test_reserve_hands_out_consecutive_subnets_and_is_idempotent() -> None:
    pool = SubnetPool(POOL)
    first, second = pool.reserve("a"), pool.reserve("b")
    assert (first.subnet, second.subnet) == (
        IPv4Network("10.253.0.0/30"),
        IPv4Network("10.253.0.4/30"),
    )
    assert pool.reserve("a") == first
    assert pool.lookup("a") == first
    assert pool.lookup("nobody") is None


def test_released_subnets_are_reused_last() -> None:
    pool = SubnetPool(IPv4Network("10.0.0.0/28"))  # four /30s
    for cid in "abc":
        pool.reserve(cid)
    assert pool.release("a") == Allocation("a", IPv4Network("10.0.0.0/30"))
    assert pool.release("a") is None
    assert pool.reserve("d").subnet == IPv4Network("10.0.0.12/30")
    assert pool.reserve("e").subnet == IPv4Network("10.0.0.0/30")  # wrapped around


def test_exhausted_pool_is_insufficient_capacity() -> None:
    pool = SubnetPool(IPv4Network("10.0.0.0/29"))
    pool.reserve("a")
    pool.reserve("b")
    with pytest.raises(InsufficientCapacity, match="exhausted"):
        pool.reserve("c")
    assert pool.reserve("a").subnet == IPv4Network("10.0.0.0/30")


def test_claim_records_a_subnet_found_on_the_host() -> None:
    pool = SubnetPool(POOL)
    taken = pool.reserve("a").subnet
    found = IPv4Network("10.253.9.8/30")
    assert pool.claim("b", found) == Allocation("b", found)
    assert pool.claim("b", found) == Allocation("b", found)
    with pytest.raises(Conflict):
        pool.claim("c", taken)
    with pytest.raises(Conflict):
        pool.claim("b", IPv4Network("10.253.9.12/30"))
    with pytest.raises(Conflict):
        pool.claim("d", IPv4Network("10.253.9.0/29"))
    assert pool.reserve("e").subnet not in {taken, found}


def test_state_round_trip_keeps_allocations_and_cursor() -> None:
    pool = SubnetPool(POOL)
    for cid in "abc":
        pool.reserve(cid)
    pool.release("b")
    again = SubnetPool.from_json(POOL, json.loads(json.dumps(pool.to_json())))
    assert again.allocations() == pool.allocations()
    assert again.reserve("d") == pool.reserve("d")


def test_state_from_another_pool_keeps_its_subnets() -> None:
    old = SubnetPool(IPv4Network("10.99.0.0/16"))
    kept = old.reserve("a")
    new = SubnetPool.from_json(POOL, old.to_json())
    assert new.lookup("a") == kept
    assert new.reserve("b").subnet == IPv4Network("10.253.0.0/30")


@pytest.mark.parametrize(
    "state",
    [
        [],
        {"version": 2, "allocations": {}},
        {"version": 1},
        {"version": 1, "allocations": {"a": "not a subnet"}},
        {"version": 1, "allocations": {"a": "10.0.0.0/30", "b": "10.0.0.0/30"}},
    ],
)
def test_bad_state_is_refused(state: object) -> None:
    with pytest.raises(NetworkStateError):
        SubnetPool.from_json(POOL, state)


def test_store_persists_every_change(tmp_path: Path) -> None:
    path = tmp_path / "state" / "allocations.json"
    store = AllocationStore(path, POOL)
    a = store.reserve("a")
    store.reserve("b")
    store.release("b")
    assert json.loads(path.read_text())["allocations"] == {"a": "10.253.0.0/30"}
    reloaded = AllocationStore(path, POOL)
    assert reloaded.lookup("a") == a
    assert reloaded.reserve("c").subnet == IPv4Network("10.253.0.8/30")
    assert [p.name for p in path.parent.iterdir()] == ["allocations.json"]  # no temp files


def test_store_without_file_starts_empty_and_writes_nothing_for_lookups(tmp_path: Path) -> None:
    path = tmp_path / "allocations.json"
    store = AllocationStore(path, POOL)
    assert store.lookup(str(uuid.uuid4())) is None
    assert store.release("nobody") is None
    assert not path.exists()


def test_corrupt_state_file_stops_allocation(tmp_path: Path) -> None:
    path = tmp_path / "allocations.json"
    path.write_text('{"version": 1, "allocations": ')
    with pytest.raises(NetworkStateError, match="move it away"):
        AllocationStore(path, POOL)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"pool": "10.253.0.0/33"}, "pool"),
        ({"pool": "10.253.0.1/16"}, "pool"),
        ({"pool": "10.253.0.0/31"}, "pool"),
        ({"interface_group": 0}, "interface_group"),
        ({"firewall_id": "has-dash"}, "firewall_id"),
        ({"firewall_id": ""}, "firewall_id"),
        ({"provider_port": 0}, "provider_port"),
        ({"metadata_address": "fe80::1"}, "metadata_address"),
        ({"download_rate": -1}, "download_rate"),
        ({"rate_burst": -1}, "rate_burst"),
        ({"blocked_networks": ("nonsense",)}, "blocked_networks"),
    ],
)
def test_bad_settings_name_the_field(change: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=f"config {field}"):
        NetworkSettings(**change)  # type: ignore[arg-type]


def test_settings_defaults() -> None:
    settings = NetworkSettings()
    assert settings.table == "bismuth_main"
    assert settings.pool_network.num_addresses // 4 == 16384
    assert not settings.masquerade and settings.download_rate == settings.upload_rate == 0
    assert settings.burst_bytes(8_000_000) == 32768
    assert settings.burst_bytes(10_000_000_000) == 25_000_000
