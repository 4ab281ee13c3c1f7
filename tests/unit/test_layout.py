"""ZooKeeper layout: paths, byte encodings and their tolerance of malformed znode data."""

from __future__ import annotations

import json
import math
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bismuth_core import layout
from bismuth_core.layout import Backend, ContainerRecord, ContainerStatus, NodeAlive

FID = uuid.UUID("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")
CID = uuid.UUID("12345678-1234-5678-1234-567812345678")

backends = st.builds(
    Backend, st.ip_addresses(v=4).map(str), st.uuids(version=4) | st.uuids(allow_nil=True)
)
# Arbitrary JSON objects, biased towards the field names the decoders read.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([10**400, -(10**400)])
    | st.floats()
    | st.text(max_size=10)
)
json_objects = st.dictionaries(
    st.sampled_from(["cpus", "memory", "version", "containers", "cpu"]) | st.text(max_size=6),
    json_scalars | st.lists(json_scalars, max_size=2),
).map(lambda d: json.dumps(d).encode())


# --- paths --------------------------------------------------------------------------


def test_paths_follow_the_documented_tree() -> None:
    assert layout.function_path(FID) == f"/function/{FID}"
    assert layout.backends_path(FID) == f"/function/{FID}/backends"
    assert layout.retiring_path(FID) == f"/rollout/{FID}"
    assert layout.node_path("10.0.0.1") == "/node/10.0.0.1"
    assert layout.alive_path("10.0.0.1") == "/node/10.0.0.1/alive"
    assert layout.containers_path("10.0.0.1") == "/node/10.0.0.1/container"
    assert layout.container_path("10.0.0.1", CID) == f"/node/10.0.0.1/container/{CID}"
    assert layout.status_path("10.0.0.1", CID) == f"/node/10.0.0.1/container/{CID}/status"
    assert layout.route_path("app.example") == "/route/app.example"


@pytest.mark.parametrize("env", ["default", "a", "t0123abcd", "a_b-c", "9lives", "x" * 63])
def test_chroot_accepts_environment_names(env: str) -> None:
    assert layout.chroot(env) == "/" + env


@pytest.mark.parametrize(
    "env",
    ["", "Default", "-x", "_x", "a/b", "a.b", "a b", "x" * 64, "default\n", "dé", "../x"],
)
def test_chroot_rejects_bad_environment_names(env: str) -> None:
    with pytest.raises(ValueError, match="environment name"):
        layout.chroot(env)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (str(CID), CID),
        (str(CID).upper(), CID),
        (CID.hex, CID),
        ("not-a-uuid", None),
        ("", None),
        (str(CID)[:-1], None),
        (str(CID) + "0", None),
    ],
)
def test_parse_uuid(text: str, expected: uuid.UUID | None) -> None:
    assert layout.parse_uuid(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.1", "10.0.0.1"),
        ("127.0.3.12", "127.0.3.12"),
        ("0.0.0.0", "0.0.0.0"),
        ("255.255.255.255", "255.255.255.255"),
        ("010.0.0.1", None),
        ("256.0.0.1", None),
        ("1.2.3", None),
        ("1.2.3.4.5", None),
        ("::1", None),
        ("", None),
        (" 1.2.3.4", None),
        ("alive", None),
        ("container", None),
    ],
)
def test_parse_ipv4(text: str, expected: str | None) -> None:
    assert layout.parse_ipv4(text) == expected


# --- backends -----------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(backends, max_size=40))
def test_backends_round_trip(items: list[Backend]) -> None:
    packed = layout.pack_backends(items)
    assert len(packed) == 20 * len(items)
    assert layout.unpack_backends(packed) == tuple(items)


def test_backend_packing_is_ipv4_then_uuid() -> None:
    packed = layout.pack_backends([Backend("10.1.2.3", CID)])
    assert packed == bytes([10, 1, 2, 3]) + CID.bytes
    assert Backend("10.1.2.3", CID).to_json() == {"ip": "10.1.2.3", "container_id": str(CID)}


@pytest.mark.parametrize("data", [None, b""])
def test_no_backends(data: bytes | None) -> None:
    assert layout.unpack_backends(data) == ()
    assert layout.pack_backends([]) == b""


@pytest.mark.parametrize("length", [1, 4, 16, 19, 21, 39, 41])
def test_backends_of_bad_length_raise(length: int) -> None:
    with pytest.raises(ValueError, match="multiple of 20"):
        layout.unpack_backends(b"\x01" * length)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=100))
def test_any_bytes_unpack_or_raise_value_error(data: bytes) -> None:
    if len(data) % 20:
        with pytest.raises(ValueError):
            layout.unpack_backends(data)
    else:
        got = layout.unpack_backends(data)
        assert len(got) == len(data) // 20
        assert layout.pack_backends(got) == data


@pytest.mark.parametrize("ip", ["10.0.0.256", "::1", "node-a", ""])
def test_packing_a_non_ipv4_backend_raises(ip: str) -> None:
    with pytest.raises(ValueError):
        layout.pack_backends([Backend(ip, CID)])


# --- status and enabled -------------------------------------------------------------


@pytest.mark.parametrize("status", list(ContainerStatus))
def test_status_round_trip(status: ContainerStatus) -> None:
    assert layout.encode_status(status) == bytes([status.value])
    assert layout.decode_status(layout.encode_status(status)) is status


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (None, ContainerStatus.INVALID),
        (b"", ContainerStatus.INVALID),
        (b"\x05", ContainerStatus.INVALID),
        (b"\xff", ContainerStatus.INVALID),
        (b"\x01", ContainerStatus.STARTING),
        (b"\x02trailing", ContainerStatus.RUNNING),
        (b"\x04", ContainerStatus.FAILED),
    ],
)
def test_decode_status_never_raises(data: bytes | None, expected: ContainerStatus) -> None:
    assert layout.decode_status(data) is expected


def test_status_labels_are_the_api_strings() -> None:
    labels = [s.label for s in ContainerStatus]
    assert labels == ["Invalid", "Starting", "Running", "Paused", "Failed"]


@pytest.mark.parametrize(
    ("data", "expected"),
    [(b"\x01", True), (b"\x00", False), (b"\x02", False), (b"", False), (None, False)],
)
def test_decode_enabled(data: bytes | None, expected: bool) -> None:
    assert layout.decode_enabled(data) is expected


@pytest.mark.parametrize("enabled", [True, False])
def test_enabled_round_trip(enabled: bool) -> None:
    assert layout.decode_enabled(layout.encode_enabled(enabled)) is enabled


# --- container records --------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.uuids(),
    st.floats(min_value=0, max_value=1024, allow_nan=False),
    st.integers(min_value=0, max_value=2**62),
)
def test_container_record_round_trip(fid: uuid.UUID, cpu: float, memory: int) -> None:
    record = ContainerRecord(fid, cpu, memory)
    data = record.encode()
    assert data[:16] == fid.bytes
    assert ContainerRecord.decode(data) == record


def test_container_record_without_metadata_reserves_nothing() -> None:
    assert ContainerRecord.decode(FID.bytes) == ContainerRecord(FID, 0.0, 0)


@pytest.mark.parametrize(
    "meta",
    [
        b"not json",
        b"\xff\xfe\x00",
        b"[1, 2]",
        b'"text"',
        b"null",
        b'{"cpu": "1", "memory": "2"}',
        b'{"cpu": -1, "memory": -5}',
        b'{"cpu": true, "memory": false}',
        b'{"cpu": NaN, "memory": Infinity}',
        b'{"cpu": 1e999, "memory": 1e999}',
        b'{"cpu": ' + b"9" * 400 + b', "memory": 0.5e400}',
        b"[" * 100_000,
    ],
)
def test_garbage_container_metadata_reads_as_no_reservation(meta: bytes) -> None:
    record = ContainerRecord.decode(FID.bytes + meta)
    assert record == ContainerRecord(FID, 0.0, 0)


def test_partial_container_metadata_keeps_valid_fields() -> None:
    record = ContainerRecord.decode(FID.bytes + b'{"cpu": 0.25, "memory": "lots"}')
    assert record == ContainerRecord(FID, 0.25, 0)


@pytest.mark.parametrize("length", [0, 1, 15])
def test_short_container_znode_raises(length: int) -> None:
    with pytest.raises(ValueError, match="expected at least 16"):
        ContainerRecord.decode(b"\x00" * length)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=16, max_size=64) | json_objects.map(lambda meta: FID.bytes + meta))
def test_any_container_znode_of_16_bytes_or_more_decodes(data: bytes) -> None:
    record = ContainerRecord.decode(data)
    assert record.function_id == uuid.UUID(bytes=data[:16])
    assert math.isfinite(record.cpu) and record.cpu >= 0
    assert record.memory >= 0


# --- alive --------------------------------------------------------------------------


def test_node_alive_round_trip() -> None:
    alive = NodeAlive(
        cpus=2.5,
        memory=8 << 30,
        version="0.1.0",
        containers=3,
        container_overhead=96 << 20,
        pool="10.1.0.0/20",
    )
    assert NodeAlive.decode(alive.encode()) == alive
    assert json.loads(alive.encode()) == {
        "cpus": 2.5,
        "memory": 8 << 30,
        "version": "0.1.0",
        "containers": 3,
        "container_overhead": 96 << 20,
        "pool": "10.1.0.0/20",
    }
    older = NodeAlive.decode(b'{"cpus": 2, "memory": 1024}')  # an agent from before overhead
    assert older.container_overhead == 0


@pytest.mark.parametrize(
    ("pool", "read"),
    [("10.1.0.0/20", "10.1.0.0/20"), ("10.1.0.1/20", ""), ("nope", ""), (7, ""), (None, "")],
)
def test_alive_pool_is_an_ipv4_network_or_none(pool: object, read: str) -> None:
    assert NodeAlive.decode(json.dumps({"pool": pool}).encode()).pool == read


def test_status_znode_carries_the_serving_endpoint() -> None:
    endpoint = layout.ServingEndpoint("10.160.0.2", 8080)
    data = layout.encode_status(ContainerStatus.RUNNING, endpoint)
    assert layout.decode_status(data) == ContainerStatus.RUNNING
    assert layout.decode_endpoint(data) == endpoint
    assert layout.encode_status(ContainerStatus.STARTING) == b"\x01"
    assert layout.decode_endpoint(b"\x01") is None


@pytest.mark.parametrize(
    "tail",
    [
        b"",
        b"junk",
        b"[]",
        b'{"address": "x", "port": 80}',
        b'{"address": "10.0.0.2"}',
        b'{"address": "10.0.0.2", "port": 0}',
        b'{"address": "10.0.0.2", "port": true}',
        b'{"address": "10.0.0.2", "port": 70000}',
        b"[" * 100_000,
    ],
)
def test_malformed_endpoint_reads_as_none(tail: bytes) -> None:
    assert layout.decode_endpoint(b"\x02" + tail) is None
    assert layout.decode_status(b"\x02" + tail) == ContainerStatus.RUNNING


@pytest.mark.parametrize(
    "data",
    [
        None,
        b"",
        b"{}",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b"42",
        b'{"cpus": "4", "memory": "1073741824"}',
        b'{"cpus": -4, "memory": -1}',
        b'{"cpus": true, "memory": true}',
        b'{"cpus": NaN, "memory": NaN}',
        b'{"cpus": Infinity, "memory": Infinity}',
        b'{"cpus": -Infinity, "memory": 1e999}',
        b'{"cpus": ' + b"9" * 400 + b', "memory": null}',
        b"[" * 100_000,
    ],
)
def test_malformed_alive_znode_advertises_zero_capacity(data: bytes | None) -> None:
    alive = NodeAlive.decode(data)
    assert (alive.cpus, alive.memory, alive.containers) == (0.0, 0, 0)


def test_alive_znode_with_some_fields_keeps_them() -> None:
    alive = NodeAlive.decode(b'{"cpus": 4, "memory": "x", "version": 7}')
    assert alive == NodeAlive(cpus=4.0, memory=0, version="7", containers=0)
    assert isinstance(alive.cpus, float)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64) | json_objects)
def test_alive_decode_never_raises(data: bytes) -> None:
    alive = NodeAlive.decode(data)
    assert math.isfinite(alive.cpus) and alive.cpus >= 0
    assert isinstance(alive.memory, int) and alive.memory >= 0
    assert isinstance(alive.containers, int) and alive.containers >= 0


# --- routes -------------------------------------------------------------------------


def test_route_round_trip() -> None:
    assert layout.encode_route(FID) == FID.bytes
    assert layout.decode_route(layout.encode_route(FID)) == FID


@pytest.mark.parametrize("data", [None, b"", b"\x00" * 15, b"\x00" * 17, FID.bytes + b"x"])
def test_route_of_wrong_length_reads_as_none(data: bytes | None) -> None:
    assert layout.decode_route(data) is None


# --- what a frontend's routing reads ----------------------------------------------------


@pytest.mark.parametrize(
    ("path", "reads_data"),
    [
        ("/route", False),
        ("/route/a.example", True),
        ("/function", False),
        (f"/function/{FID}", False),  # the definition: routing never reads it
        (f"/function/{FID}/backends", True),
        ("/node", False),
        ("/node/10.0.0.1", True),
        ("/node/10.0.0.1/alive", True),
        ("/node/10.0.0.1/container", False),
        (f"/node/10.0.0.1/container/{CID}", False),  # the record: only its existence
        (f"/node/10.0.0.1/container/{CID}/status", True),
        (f"/node/10.0.0.1/container/{CID}/other", False),
        ("/secret/x", False),
        ("/token/x/y", False),
        ("/rollout/x/alive", False),
    ],
)
def test_which_znodes_routing_reads_the_data_of(path: str, reads_data: bool) -> None:
    assert layout.routing_reads_data(path) is reads_data
