"""The nftables scripts of the container firewall, and reading elements back (no root needed)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from bismuth_agent.network import Allocation, NetworkSettings
from bismuth_agent.network.firewall import _parse_elements
from bismuth_agent.network.ruleset import (
    GUARD_COMMENT,
    attach_script,
    blocked_destinations,
    detach_script,
    guarded_uplink,
    install_script,
)

SETTINGS = NetworkSettings(firewall_id="t1", interface_group=0xB150)
BASE_CHAINS = ("prerouting", "input", "forward", "output", "postrouting")
ALLOCATION = Allocation("3f2a9c1d-4e5b-4a6c-8d7e-9f0a1b2c3d4e", IPv4Network("10.253.0.4/30"))


def rules(script: str) -> list[tuple[str, str]]:
    """(chain, rule) of every ``add rule`` line."""
    prefix = f"add rule inet {SETTINGS.table} "
    lines = [line.removeprefix(prefix) for line in script.splitlines() if line.startswith(prefix)]
    return [(line.split(" ", 1)[0], line.split(" ", 1)[1]) for line in lines]


@pytest.mark.parametrize("masquerade", [False, True])
def test_base_chains_only_touch_container_interfaces(masquerade: bool) -> None:
    """The host's own traffic never matches: every hooked rule first checks the group, except
    the one that keeps other hosts away from the providers (the pool's provider port) and
    those refusing traffic to the pool that would leave through another interface."""
    settings = NetworkSettings(firewall_id="t1", interface_group=0xB150, masquerade=masquerade)
    script = install_script(settings)
    hooked = [rule for chain, rule in rules(script) if chain in BASE_CHAINS]
    assert hooked
    providers_only = f'iifname != "lo" ip daddr {settings.pool} tcp dport 9000 drop'
    pool_only = f"meta nfproto ipv4 ip daddr {settings.pool} oifgroup != 45392"
    assert [r for r in hooked if not r.startswith(("iifgroup 45392 ", "oifgroup 45392 "))] == [
        providers_only,
        f"{pool_only} reject",
        f'{pool_only} oifname != "lo" reject',
    ]


def test_frontends_reach_serving_ports_only() -> None:
    settings = NetworkSettings(
        firewall_id="t1", interface_group=0xB150, frontends=("10.250.0.11", "10.250.0.12/32")
    )
    script = install_script(settings)
    assert "add element inet bismuth_t1 frontend_sources { 10.250.0.11/32, 10.250.0.12/32 }" in (
        script
    )
    assert (
        "to_container",
        "ip saddr @frontend_sources oifname . ip daddr . tcp dport @serving_endpoints accept",
    ) in rules(script)
    assert "frontend_sources {" not in install_script(SETTINGS).split("flush set")[-1]
    attached = attach_script(SETTINGS.table, ALLOCATION, 8080)
    assert (
        'add element inet bismuth_t1 serving_endpoints { "bth3f2a9c1d4e5b" . 10.253.0.6 . 8080 }'
        in (attached)
    )
    assert "serving_endpoints" not in attach_script(SETTINGS.table, ALLOCATION)
    assert "policy accept" in script and "policy drop" not in script


def test_forwarding_guard_drops_only_what_the_host_did_not_forward_before() -> None:
    """One guard per uplink bismuth turned forwarding on for: what arrives there and leaves
    through another interface that is no container's. Bridged traffic (the same bridge in and
    out) and what arrives anywhere else never match."""
    plain = rules(install_script(SETTINGS))
    guarded = rules(install_script(SETTINGS, guarded_uplinks=["eth0", "br-lan.7"]))
    assert [r for r in guarded if r not in plain] == [
        (
            "forward",
            f'meta nfproto ipv4 iifname "{name}" oifname != "{name}" oifname != "bth*"'
            f' drop comment "{GUARD_COMMENT}{name}"',
        )
        for name in ("eth0", "br-lan.7")
    ]
    assert [guarded_uplink(f"{GUARD_COMMENT}eth0"), guarded_uplink("other")] == ["eth0", None]


@pytest.mark.parametrize("name", ['a"b', "x y", "", "sixteen-chars-xx", "a;b"])
def test_an_uplink_name_that_cannot_be_quoted_is_refused(name: str) -> None:
    with pytest.raises(ValueError):
        install_script(SETTINGS, guarded_uplinks=[name])


def test_masquerade_is_off_by_default() -> None:
    assert not any("masquerade" in rule for _, rule in rules(install_script(SETTINGS)))
    masq = install_script(
        NetworkSettings(firewall_id="t1", interface_group=0xB150, masquerade=True)
    )
    assert ("postrouting", "iifgroup 45392 oifgroup != 45392 masquerade") in rules(masq)


def test_metadata_address_is_dnated_to_the_containers_own_provider() -> None:
    assert (
        "prerouting",
        "iifgroup 45392 ip daddr 169.254.169.254 tcp dport 9000"
        " dnat ip to iifname map @provider_by_iface",
    ) in rules(install_script(SETTINGS))


def test_install_refreshes_rules_but_keeps_container_elements() -> None:
    script = install_script(SETTINGS)
    assert "flush set inet bismuth_t1 blocked_destinations" in script
    for name in (
        "provider_by_iface",
        "provider_endpoints",
        "container_sources",
        "serving_endpoints",
    ):
        assert f"flush set inet bismuth_t1 {name}" not in script
        assert f"flush map inet bismuth_t1 {name}" not in script
    assert "delete table" not in script


def test_blocked_destinations_cover_private_ranges_pool_host_and_extra_networks() -> None:
    settings = NetworkSettings(pool="100.127.0.0/16", blocked_networks=("203.0.113.0/24",))
    blocked = blocked_destinations(settings, [IPv4Network("198.51.100.0/24")])

    def is_blocked(address: str) -> bool:
        return any(IPv4Address(address) in network for network in blocked)

    inside = ["10.1.2.3", "172.20.0.1", "192.168.1.1", "169.254.169.254", "100.127.0.9"]
    inside += ["127.0.0.1", "198.51.100.7", "203.0.113.9", "224.0.0.1", "255.255.255.255"]
    assert [a for a in inside if not is_blocked(a)] == []
    assert [a for a in ("1.1.1.1", "8.8.8.8", "198.51.101.1") if is_blocked(a)] == []
    assert all(not a.overlaps(b) for a in blocked for b in blocked if a is not b)


def test_attach_adds_three_elements_keyed_by_interface() -> None:
    assert attach_script("bismuth_t1", ALLOCATION).splitlines() == [
        'add element inet bismuth_t1 provider_by_iface { "bth3f2a9c1d4e5b" : 10.253.0.5 }',
        'add element inet bismuth_t1 provider_endpoints { "bth3f2a9c1d4e5b" . 10.253.0.5 }',
        'add element inet bismuth_t1 container_sources { "bth3f2a9c1d4e5b" . 10.253.0.6 }',
    ]


def test_detach_deletes_given_elements() -> None:
    script = detach_script(
        "bismuth_t1",
        {"provider_by_iface": [("bthx",)], "container_sources": [("bthx", "10.253.0.6")]},
    )
    assert script.splitlines() == [
        'delete element inet bismuth_t1 provider_by_iface { "bthx" }',
        'delete element inet bismuth_t1 container_sources { "bthx" . 10.253.0.6 }',
    ]
    assert detach_script("bismuth_t1", {"provider_by_iface": []}) == ""


def test_odd_interface_names_are_refused() -> None:
    with pytest.raises(ValueError):
        detach_script("bismuth_t1", {"provider_by_iface": [('x" }; flush ruleset; {',)]})


def test_elements_are_read_from_nft_json() -> None:
    listing = {
        "nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "inet", "name": "bismuth_t1"}},
            {"map": {"name": "provider_by_iface", "elem": [["bthx", "10.253.0.5"]]}},
            {"set": {"name": "provider_endpoints", "elem": [{"concat": ["bthx", "10.253.0.5"]}]}},
            {"set": {"name": "container_sources"}},
            {
                "set": {
                    "name": "serving_endpoints",
                    "elem": [{"concat": ["bthx", "10.253.0.6", 80]}],
                }
            },
            {"set": {"name": "blocked_destinations", "elem": [{"prefix": {"addr": "10.0.0.0"}}]}},
        ]
    }
    assert _parse_elements(listing) == {
        "provider_by_iface": [("bthx", "10.253.0.5")],
        "provider_endpoints": [("bthx", "10.253.0.5")],
        "container_sources": [],
        "serving_endpoints": [("bthx", "10.253.0.6", "80")],
    }
