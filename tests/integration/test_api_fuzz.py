"""Random and malformed bodies against a live bismuth-api: never a 5xx, always JSON errors."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.apiserver import Api, definition

pytestmark = pytest.mark.integration

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
fields = st.sampled_from(sorted(definition()))
bodies = st.one_of(
    json_values.map(json.dumps),
    st.tuples(fields, json_values).map(lambda kv: json.dumps(definition(**{kv[0]: kv[1]}))),
    st.binary(max_size=64).map(lambda b: b.decode("latin-1")),
)


def send(method: str, url: str, body: str, headers: dict[str, str]) -> tuple[int, bytes]:
    data = body.encode("utf-8", "surrogatepass")
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


async def test_fuzzed_bodies_never_5xx(api_config, standins):
    await standins.add(cpus=64.0, memory=1 << 40)
    api = Api(api_config)
    await api.start()
    status, body = await asyncio.to_thread(
        send, "POST", f"{api.url}/function", json.dumps(definition()), api.admin
    )
    existing = json.loads(body)["id"]

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=bodies, method=st.sampled_from(["POST", "PUT"]))
    def check(body: str, method: str) -> None:
        path = "/function" if method == "POST" else f"/function/{existing}"
        status, raw = send(method, api.url + path, body, api.admin)
        assert status < 500, (status, raw)
        answer = json.loads(raw)
        if status >= 400:
            assert isinstance(answer["error"], str) and answer["error"]

    try:
        await asyncio.to_thread(check)
        url = f"{api.url}/function/{uuid.uuid4()}"
        status, _ = await asyncio.to_thread(send, "GET", url, "", api.admin)
        assert status == 404
    finally:
        await api.stop()
