"""Each node's container pool: derived from its address, checked across the fleet (pure)."""

from __future__ import annotations

import pytest

from tasks.pools import PoolConflict, check_pools, derived_pool, pool_of

NETWORK = "10.160.0.0/11"


@pytest.mark.parametrize(
    ("node_ip", "pool"),
    [
        ("127.0.0.1", "10.160.16.0/20"),
        ("10.250.0.11", "10.160.176.0/20"),
        ("10.250.0.12", "10.160.192.0/20"),
        ("10.0.1.255", "10.191.240.0/20"),  # the last slice of the /11
        ("10.0.2.0", "10.160.0.0/20"),  # 512 slices: the numbering wraps
    ],
)
def test_pool_is_the_slice_numbered_by_the_node_address(node_ip: str, pool: str) -> None:
    assert derived_pool(node_ip, NETWORK, 20) == pool


def test_an_explicit_pool_wins() -> None:
    data = {"node_ip": "10.0.0.1", "container_network": NETWORK, "container_pool_prefix": 20}
    assert pool_of({**data, "network_pool": "10.170.0.0/20"}) == "10.170.0.0/20"
    assert pool_of({**data, "network_pool": ""}) == "10.160.16.0/20"


def test_nodes_of_one_small_subnet_never_collide() -> None:
    pools = [(f"n{i}", derived_pool(f"192.168.7.{i}", NETWORK, 20)) for i in range(1, 255)]
    check_pools(pools, NETWORK)  # no PoolConflict


@pytest.mark.parametrize(
    ("pools", "message"),
    [
        ([("a", "10.160.0.0/20"), ("b", "10.160.0.0/20")], "b and a would share"),
        ([("a", "10.160.0.0/16"), ("b", "10.160.16.0/20")], "b and a would share"),
        ([("a", "10.253.0.0/16")], "lies outside container_network"),
    ],
)
def test_conflicts_name_the_hosts(pools: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(PoolConflict, match=message):
        check_pools(pools, NETWORK)


def test_a_pool_prefix_that_does_not_fit_is_refused() -> None:
    with pytest.raises(PoolConflict, match="does not fit"):
        derived_pool("10.0.0.1", NETWORK, 8)
