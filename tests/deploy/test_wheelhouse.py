"""The toolkit's wheelhouse, built from a small stand-in project: versions, reuse, rebuilds."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from tasks.wheelhouse import MANIFEST, WheelhouseError, build, full_version, load, source_files

PYPROJECT = """\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "bismuth"
version = "{version}"

[tool.setuptools.packages.find]
include = ["bismuth_core*"]
"""


def project(root: Path, version: str = "1.2.3") -> Path:
    """A project named like ours: one package with the version file the build rewrites."""
    (root / "bismuth_core").mkdir(parents=True)
    (root / "bismuth_core" / "__init__.py").write_text(f'__version__ = "{version}"\n')
    (root / "bismuth_core" / "__pycache__").mkdir()
    (root / "bismuth_core" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (root / "other").mkdir()
    (root / "other" / "__init__.py").write_text("")
    (root / "pyproject.toml").write_text(PYPROJECT.format(version=version))
    (root / "README.md").write_text("readme\n")
    return root


def wheel_text(path: Path, member: str) -> str:
    (wheel,) = path.glob("bismuth-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(member).decode()


@pytest.mark.parametrize(
    ("label", "version"), [("", "1.2.3"), ("rc1", "1.2.3+rc1"), ("t.7a", "1.2.3+t.7a")]
)
def test_the_version_is_the_projects_plus_the_label(
    tmp_path: Path, label: str, version: str
) -> None:
    assert full_version(project(tmp_path), label) == version


@pytest.mark.parametrize("label", ["a-b", "a_b", "a+b", " ", ".a", "a."])
def test_a_label_pep_440_would_rewrite_is_refused(tmp_path: Path, label: str) -> None:
    with pytest.raises(WheelhouseError, match="toolkit_version_label"):
        full_version(project(tmp_path), label)


def test_a_version_that_has_a_label_takes_no_second_one(tmp_path: Path) -> None:
    with pytest.raises(WheelhouseError, match="already has a local label"):
        full_version(project(tmp_path, "1.0+hotfix"), "rc1")


def test_the_build_takes_the_top_files_and_the_included_packages_only(tmp_path: Path) -> None:
    found = [str(p) for p in source_files(project(tmp_path))]
    assert found == ["README.md", "bismuth_core/__init__.py", "pyproject.toml"]


def test_a_build_writes_its_version_into_the_wheel_not_into_the_source(tmp_path: Path) -> None:
    source = project(tmp_path / "src")
    built = build(source, "t1", tmp_path / "wheelhouse")
    assert built.version == "1.2.3+t1"
    assert built.path == tmp_path / "wheelhouse" / "1.2.3+t1"
    assert wheel_text(built.path, "bismuth_core/__init__.py") == '__version__ = "1.2.3+t1"\n'
    assert (source / "bismuth_core" / "__init__.py").read_text() == '__version__ = "1.2.3"\n'
    assert json.loads((built.path / "BUILD").read_text())["version"] == "1.2.3+t1"
    assert built.files[-2:] == (MANIFEST, "BUILD")


def test_an_unchanged_source_reuses_the_wheelhouse_and_a_change_rebuilds_it(
    tmp_path: Path,
) -> None:
    source, root = project(tmp_path / "src"), tmp_path / "wheelhouse"
    first = build(source, "", root)
    (wheel,) = first.path.glob("*.whl")
    made = wheel.stat().st_mtime_ns
    again = build(source, "", root)
    assert again == first and wheel.stat().st_mtime_ns == made

    (source / "bismuth_core" / "extra.py").write_text("VALUE = 1\n")
    changed = build(source, "", root)
    assert changed.build_id != first.build_id
    assert "VALUE = 1" in wheel_text(changed.path, "bismuth_core/extra.py")


def test_a_damaged_wheelhouse_is_not_used_and_is_built_again(tmp_path: Path) -> None:
    source, root = project(tmp_path / "src"), tmp_path / "wheelhouse"
    first = build(source, "", root)
    (wheel,) = first.path.glob("*.whl")
    damaged = wheel.read_bytes() + b"damage"
    wheel.write_bytes(damaged)
    assert load(first.path) is None
    again = build(source, "", root)
    assert again == load(first.path) and again.version == first.version
    assert wheel.read_bytes() != damaged
