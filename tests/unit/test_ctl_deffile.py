"""Definition files for ``bismuthctl function create``: formats and human units (no I/O
beyond temporary files)."""

from __future__ import annotations

import pytest

from bismuth_ctl import deffile
from bismuth_ctl.deffile import DefinitionFileError, parse_cpu, parse_size


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (134217728, 134217728),
        ("134217728", 134217728),
        ("128Mi", 128 << 20),
        ("128MiB", 128 << 20),
        ("1Gi", 1 << 30),
        ("1.5Gi", 3 << 29),
        ("2Ti", 2 << 40),
        ("4Ki", 4096),
        ("10M", 10_000_000),
        ("10MB", 10_000_000),
        ("1k", 1000),
        ("1K", 1000),
        ("512 B", 512),
        (" 64 Mi ", 64 << 20),
        (1048576.0, 1048576),
    ],
)
def test_sizes(value, expected):
    assert parse_size(value, "memory") == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("12Qi", "memory: '12Qi' is not a size"),
        ("Mi", "is not a size"),
        ("-1Mi", "is not a size"),
        ("1e9", "is not a size"),
        ("0.3Ki", "not a whole number of bytes"),
        (1.5, "memory: 1.5 is not a whole number of bytes"),
        (True, "is not a size"),
        ([1], "is not a size"),
        ("128mi", "is not a size"),
    ],
)
def test_bad_sizes(value, message):
    with pytest.raises(ValueError, match=r"^memory: ") as info:
        parse_size(value, "memory")
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.5, 0.5), (2, 2.0), ("0.5", 0.5), ("500m", 0.5), ("250 m", 0.25), ("1", 1.0), (".5", 0.5)],
)
def test_cpu(value, expected):
    assert parse_cpu(value) == expected


@pytest.mark.parametrize("value", ["lots", "500M", "-1", "1/2", True, None, float("nan")])
def test_bad_cpu(value):
    with pytest.raises(ValueError, match=r"^cpu: "):
        parse_cpu(value)


def test_other_fields_pass_through_and_quotas_convert(tmp_path):
    file = tmp_path / "def.yml"
    file.write_text(
        "image: x\ncpu: 250m\nmemory: 64Mi\nsvc_quotas: {kv: 1Ki, blob: null}\nrepo: null\n"
    )
    assert deffile.load(str(file)) == {
        "image": "x",
        "cpu": 0.25,
        "memory": 64 << 20,
        "svc_quotas": {"kv": 1024, "blob": None},
        "repo": None,
    }


def test_yaml_values_without_a_json_form_are_refused(tmp_path):
    file = tmp_path / "def.yaml"
    file.write_text("image: x\ncreated: 2024-01-01\n")
    with pytest.raises(DefinitionFileError, match=r"def\.yaml: .*date"):
        deffile.load(str(file))


def test_unknown_suffix_reads_yaml_which_takes_json(tmp_path):
    file = tmp_path / "definition"
    file.write_text('{"image": "x", "memory": "1Mi"}')
    assert deffile.load(str(file)) == {"image": "x", "memory": 1 << 20}
