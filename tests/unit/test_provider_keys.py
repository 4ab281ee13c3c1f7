"""Key rules and settings of the provider: each broken rule is named in the error."""

from __future__ import annotations

import uuid

import pytest

from bismuth_core.config import ConfigError, load_config
from bismuth_core.errors import InvalidRequest
from bismuth_provider.config import ProviderConfig
from bismuth_provider.keys import MAX_KEY_BYTES, validate_key, validate_prefix
from bismuth_provider.storage import check_storage_url


@pytest.mark.parametrize(
    "key",
    ["a", "photos/2024/01.jpg", "a.b", "...", "a..b", "é/ü", "x" * MAX_KEY_BYTES, "a b", "~@:+="],
)
def test_keys_that_are_accepted(key):
    assert validate_key(key) == key


@pytest.mark.parametrize(
    ("key", "rule"),
    [
        ("", "must not be empty"),
        ("x" * (MAX_KEY_BYTES + 1), f"at most {MAX_KEY_BYTES} bytes"),
        ("é" * (MAX_KEY_BYTES // 2 + 1), "bytes of UTF-8"),
        ("a\x00b", "control"),
        ("a\nb", "control"),
        ("a\u200bb", "U+200B"),
        ("a\\b", "backslash"),
        ("/a", "'/'"),
        ("a/", "'/'"),
        ("a//b", "'//'"),
        ("..", "'..'"),
        ("a/../b", "'..'"),
        ("./a", "'.'"),
    ],
)
def test_keys_that_are_refused_name_the_rule(key, rule):
    with pytest.raises(InvalidRequest) as caught:
        validate_key(key)
    assert rule in caught.value.message and caught.value.status == 400


@pytest.mark.parametrize("prefix", ["", "a", "a/", "photos/20"])
def test_prefixes_may_be_empty_or_end_in_a_slash(prefix):
    assert validate_prefix(prefix) == prefix


@pytest.mark.parametrize("prefix", ["/", "../", "a//", "\x01"])
def test_bad_prefixes_are_refused(prefix):
    with pytest.raises(InvalidRequest):
        validate_prefix(prefix)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("local://host/data", "local:///absolute/path"),
        ("local:relative", "local:///absolute/path"),
        ("s3:///prefix", "s3://bucket"),
        ("file:///data", "scheme must be local or s3"),
    ],
)
def test_storage_urls_are_checked(url, problem):
    with pytest.raises(ConfigError, match=problem.replace("[", r"\[")):
        check_storage_url(url)


def test_config_needs_a_function_and_a_token_file_and_derives_the_group():
    fid = str(uuid.uuid4())
    with pytest.raises(ConfigError, match="function_id"):
        load_config(ProviderConfig, env={"BISMUTH_TOKEN_FILE": "/t"})
    with pytest.raises(ConfigError, match="token_file"):
        load_config(ProviderConfig, env={"BISMUTH_FUNCTION_ID": fid})
    with pytest.raises(ConfigError, match="group_id"):
        load_config(
            ProviderConfig,
            env={"BISMUTH_FUNCTION_ID": fid, "BISMUTH_TOKEN_FILE": "/t", "BISMUTH_GROUP_ID": "x"},
        )
    config = load_config(
        ProviderConfig,
        env={"BISMUTH_FUNCTION_ID": fid, "BISMUTH_TOKEN_FILE": "/t", "BISMUTH_KV_QUOTA": "10"},
    )
    assert config.group == fid
    assert (config.quotas.kv, config.quotas.blob) == (10, None)
