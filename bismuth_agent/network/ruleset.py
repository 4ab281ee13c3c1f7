"""The nftables scripts of the container firewall, as text (pure functions, no I/O).

Everything lives in the toolkit's own table ``inet bismuth_<id>``. Base chains only ever act
on packets that enter or leave through an interface of the container interface group, or
that are addressed to the node's container pool, so the host's own traffic flows exactly as
before; deleting the table removes the firewall.

Policy for a container whose host end is ``bthX`` holding ``.1`` (its subnet's ``.2`` inside):

- to the host (input): only TCP to its own ``.1:<provider port>``, and replies on connections
  the host opened (the agent's proxy); everything else is dropped, so the host's daemons and
  other addresses, and other containers' provider addresses, are out of reach;
- providers from anywhere else (another host, the host's other interfaces): dropped; only
  the host itself (over ``lo``) and the container reach a ``.1:<provider port>``;
- ``<metadata address>:<provider port>`` is DNATed to the container's own ``.1`` on the way in;
- forwarded (the outside world): allowed, except to private, shared, link-local, loopback,
  multicast and reserved ranges, the pool, the host's own networks and any extra networks,
  and never to another container; optional masquerade behind the outgoing address;
- into a container (forward): replies, and TCP to its serving port (Server mode) from the
  fleet's frontends (the ``frontends`` networks); the host itself (a frontend on the node)
  reaches it anyway, as its own traffic is not filtered. The container answers those
  connections (their reply direction), and nothing else of theirs reaches private ranges;
- to the pool, through any interface but a container's (a container that is gone, so its
  /30 has no route any more): rejected at once, from this host and forwarded alike, so it
  never leaves by the default route and the sender learns at once;
- any packet whose source is not the container's own ``.2``, and all IPv6, is dropped.

One exception to "container interfaces only": where the host did not forward, the agent turns
forwarding on per interface (see :mod:`.sysctl`), for its containers' host ends and for the
host's uplinks, so replies and fleet traffic reach containers. A guard rule per uplink it
turned on drops what arrives there for anything but a container, so the host routes nothing
it did not route before. A guard matches only packets received on that uplink and leaving
through another interface: traffic bridged across a bridge of the host (which
``br_netfilter`` shows to this hook with the bridge as both interfaces), and everything
received elsewhere, is never touched. Its comment names the uplink, so later installs keep
it and removing the last bismuth table guarding an uplink turns its forwarding back off.

Per-container state is three set elements keyed by interface name (four with a serving
port), added and removed in one transaction: adding a container never rewrites a rule.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from ipaddress import IPv4Network

from .model import HOST_IFNAME_PREFIX, Allocation
from .settings import NetworkSettings

PROVIDER_MAP = "provider_by_iface"  # ifname : .1 (DNAT target)
PROVIDER_SET = "provider_endpoints"  # ifname . .1 (allowed to the host)
SOURCE_SET = "container_sources"  # ifname . .2 (anti-spoofing)
SERVING_SET = "serving_endpoints"  # ifname . .2 . port (frontends connect there)
BLOCKED_SET = "blocked_destinations"
FRONTEND_SET = "frontend_sources"  # networks of the fleet's frontends
TABLE_PREFIX = "bismuth_"
GUARD_COMMENT = "bismuth forwards container traffic only, received on "
# The global guard of agents before per-interface forwarding: they turned ip_forward on.
LEGACY_FORWARDING_GUARD = "bismuth turned forwarding on: forward container traffic only"
_IFNAME = re.compile(r"[A-Za-z0-9_.:@-]{1,15}")
ELEMENT_SETS = (PROVIDER_MAP, PROVIDER_SET, SOURCE_SET, SERVING_SET)

# Destinations that are never "the outside world" (RFC 6890 special-purpose ranges).
NON_PUBLIC = tuple(
    IPv4Network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "224.0.0.0/4",
        "240.0.0.0/4",
    )
)

_BASE_CHAINS = (
    ("prerouting", "nat", "prerouting", "dstnat"),
    ("input", "filter", "input", "filter"),
    ("forward", "filter", "forward", "filter"),
    ("output", "filter", "output", "filter"),
    ("postrouting", "nat", "postrouting", "srcnat"),
)
_REGULAR_CHAINS = ("container_to_host", "from_container", "to_container")


def blocked_destinations(
    settings: NetworkSettings, host_networks: Iterable[IPv4Network] = ()
) -> list[IPv4Network]:
    """Destinations forwarded container traffic must not reach, merged into few prefixes."""
    extra = [IPv4Network(n) for n in settings.blocked_networks]
    every = [*NON_PUBLIC, settings.pool_network, *host_networks, *extra]
    return list(ipaddress.collapse_addresses(every))


def install_script(
    settings: NetworkSettings,
    host_networks: Iterable[IPv4Network] = (),
    guarded_uplinks: Iterable[str] = (),
) -> str:
    """Create or refresh the table in one transaction, keeping the per-container elements."""
    t = f"inet {settings.table}"
    lines = [f"add table {t}", *_declarations(t)]
    lines += [f"flush chain {t} {name}" for name, *_ in _BASE_CHAINS]
    lines += [f"flush chain {t} {name}" for name in _REGULAR_CHAINS]
    lines.append(f"flush set {t} {BLOCKED_SET}")
    blocked = ", ".join(str(n) for n in blocked_destinations(settings, host_networks))
    lines.append(f"add element {t} {BLOCKED_SET} {{ {blocked} }}")
    lines.append(f"flush set {t} {FRONTEND_SET}")
    frontends = list(ipaddress.collapse_addresses(IPv4Network(n) for n in settings.frontends))
    if frontends:
        lines.append(f"add element {t} {FRONTEND_SET} {{ {', '.join(map(str, frontends))} }}")
    lines += [f"add rule {t} {rule}" for rule in _rules(settings, guarded_uplinks)]
    return "\n".join(lines) + "\n"


def _declarations(t: str) -> list[str]:
    lines = [
        f"add map {t} {PROVIDER_MAP} {{ type ifname : ipv4_addr; }}",
        f"add set {t} {PROVIDER_SET} {{ type ifname . ipv4_addr; }}",
        f"add set {t} {SOURCE_SET} {{ type ifname . ipv4_addr; }}",
        f"add set {t} {BLOCKED_SET} {{ type ipv4_addr; flags interval; }}",
        f"add set {t} {SERVING_SET} {{ type ifname . ipv4_addr . inet_service; }}",
        f"add set {t} {FRONTEND_SET} {{ type ipv4_addr; flags interval; }}",
    ]
    for name, kind, hook, priority in _BASE_CHAINS:
        spec = f"type {kind} hook {hook} priority {priority}; policy accept;"
        lines.append(f"add chain {t} {name} {{ {spec} }}")
    lines += [f"add chain {t} {name}" for name in _REGULAR_CHAINS]
    return lines


def _rules(settings: NetworkSettings, guarded_uplinks: Iterable[str]) -> list[str]:
    group = settings.interface_group
    port = settings.provider_port
    rules = [
        f"prerouting iifgroup {group} ip daddr {settings.metadata_address} tcp dport {port}"
        f" dnat ip to iifname map @{PROVIDER_MAP}",
        f"input iifgroup {group} jump container_to_host",
        f'input iifname != "lo" ip daddr {settings.pool} tcp dport {port} drop',
        f"forward meta nfproto ipv4 ip daddr {settings.pool} oifgroup != {group} reject",
        f"forward iifgroup {group} jump from_container",
        f"forward oifgroup {group} jump to_container",
        f"output meta nfproto ipv4 ip daddr {settings.pool} oifgroup != {group}"
        ' oifname != "lo" reject',  # (the providers' addresses are the host's own)
        "container_to_host meta nfproto != ipv4 drop",
        f"container_to_host iifname . ip saddr != @{SOURCE_SET} drop",
        "container_to_host ct state established,related accept",
        f"container_to_host tcp dport {port} iifname . ip daddr @{PROVIDER_SET} accept",
        "container_to_host drop",
        "from_container meta nfproto != ipv4 drop",
        f"from_container iifname . ip saddr != @{SOURCE_SET} drop",
        f"from_container oifgroup {group} drop",
        "from_container ct direction reply ct state established accept",
        f"from_container ip daddr @{BLOCKED_SET} drop",
        "to_container ct state established,related accept",
        f"to_container ip saddr @{FRONTEND_SET} oifname . ip daddr . tcp dport"
        f" @{SERVING_SET} accept",
        "to_container drop",
    ]
    if settings.masquerade:
        rules.append(f"postrouting iifgroup {group} oifgroup != {group} masquerade")
    ours = f'"{HOST_IFNAME_PREFIX}*"'  # any bismuth agent's containers on this host
    for uplink in guarded_uplinks:
        name = _uplink(uplink)
        rules.append(
            f"forward meta nfproto ipv4 iifname {name} oifname != {name} oifname != {ours}"
            f' drop comment "{GUARD_COMMENT}{uplink}"'
        )
    return rules


def uplink_name(ifname: str) -> bool:
    """Whether an interface name can be written into a rule (others are never guarded)."""
    return bool(_IFNAME.fullmatch(ifname))


def guarded_uplink(comment: str) -> str | None:
    """The uplink a guard rule's comment names; None for any other rule."""
    if comment.startswith(GUARD_COMMENT):
        return comment.removeprefix(GUARD_COMMENT)
    return None


def _uplink(ifname: str) -> str:
    if not uplink_name(ifname):
        raise ValueError(f"unexpected interface name {ifname!r}")
    return f'"{ifname}"'


def attach_script(table: str, allocation: Allocation, serving_port: int | None = None) -> str:
    """Elements that let one container reach its provider (and pass the source check), and
    the fleet's frontends reach its serving port."""
    t, name = f"inet {table}", _quoted(allocation.ifname)
    host, inside = allocation.host_address, allocation.container_address
    script = (
        f"add element {t} {PROVIDER_MAP} {{ {name} : {host} }}\n"
        f"add element {t} {PROVIDER_SET} {{ {name} . {host} }}\n"
        f"add element {t} {SOURCE_SET} {{ {name} . {inside} }}\n"
    )
    if serving_port is not None:
        if not 1 <= serving_port <= 65535:
            raise ValueError(f"unexpected port {serving_port!r}")
        script += f"add element {t} {SERVING_SET} {{ {name} . {inside} . {serving_port} }}\n"
    return script


def detach_script(table: str, elements: dict[str, list[tuple[str, ...]]]) -> str:
    """Delete the given elements (``{set name: [key tuples]}``); empty if there are none."""
    lines = []
    for set_name, keys in elements.items():
        for key in keys:
            text = " . ".join(_quoted(k) if i == 0 else k for i, k in enumerate(key))
            lines.append(f"delete element inet {table} {set_name} {{ {text} }}")
    return "".join(line + "\n" for line in lines)


def _quoted(ifname: str) -> str:
    if not ifname.isalnum():
        raise ValueError(f"unexpected interface name {ifname!r}")
    return f'"{ifname}"'
