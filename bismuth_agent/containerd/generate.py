"""Generate the containerd gRPC stubs from the ``.proto`` files of the installed containerd.

The protos come from Debian (``golang-github-containerd-containerd-dev`` and, for the gogoproto
options they import, ``golang-github-gogo-protobuf-dev``); ``google/rpc/status.proto`` comes
from the PyPI package ``googleapis-common-protos``. protoc names Python modules after proto
paths, so every proto is first staged under ``bismuth_agent/containerd/_api/`` with its
``import`` lines rewritten to the staged paths; the generated modules then import each other
as ``bismuth_agent.containerd._api...``. Proto packages (and so gRPC method names and Any type
URLs) are unchanged.

Runs at build time (``setup.py``'s ``build_py``, for wheels and editable installs) and by hand:
``python -m bismuth_agent.containerd.generate [--gocode DIR] [--out PROJECT_ROOT]``
(``BISMUTH_GOCODE`` overrides where Debian's Go sources are, for other distributions).
This module uses only the standard library at import time: the build imports it by path,
before any dependency of the package is installed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

GOCODE = Path(os.environ.get("BISMUTH_GOCODE", "/usr/share/gocode/src"))  # Debian's Go sources
API_PACKAGE = ("bismuth_agent", "containerd", "_api")
CONTAINERD_DEB = "golang-github-containerd-containerd-dev"
GOGO_DEB = "golang-github-gogo-protobuf-dev"
CGROUPS_DEB = "golang-github-containerd-cgroups-dev"

# (directory or file under the gocode tree, staged prefix under _api/, Debian package)
_SOURCES: tuple[tuple[str, str, str], ...] = (
    ("github.com/containerd/containerd/api/", "containerd/", CONTAINERD_DEB),
    ("github.com/containerd/containerd/protobuf/plugin/", "containerd/plugin/", CONTAINERD_DEB),
    (
        "github.com/containerd/containerd/runtime/v2/runc/options/",
        "containerd/runc/options/",
        CONTAINERD_DEB,
    ),
    ("github.com/containerd/cgroups/stats/v1/", "cgroups/v1/", CGROUPS_DEB),
    ("github.com/containerd/cgroups/v2/stats/", "cgroups/v2/", CGROUPS_DEB),
    ("github.com/gogo/protobuf/gogoproto/", "gogoproto/", GOGO_DEB),
)
# How protos import gogo.proto (relative to an include root of gogo's tree).
_IMPORT_ALIASES = {"gogoproto/gogo.proto": "github.com/gogo/protobuf/gogoproto/gogo.proto"}
_IMPORT = re.compile(r'^(\s*import\s+(?:weak\s+|public\s+)?)"([^"]+)"\s*;', re.MULTILINE)


class GenerationError(RuntimeError):
    """The stubs cannot be generated; the message says what is missing."""


@dataclass(frozen=True)
class StagedProto:
    source: Path
    staged: str  # path relative to the staging root, e.g. bismuth_agent/containerd/_api/...


def staged_path(import_path: str) -> str | None:
    """The staged path of a proto imported as ``import_path``, or None if not ours."""
    import_path = _IMPORT_ALIASES.get(import_path, import_path)
    for source, prefix, _ in _SOURCES:
        if import_path.startswith(source):
            return "/".join((*API_PACKAGE, prefix + import_path[len(source) :]))
    return None


def rewrite_imports(text: str) -> str:
    """Point every import of a staged proto at its staged path; leave google/* alone."""

    def replace(match: re.Match[str]) -> str:
        target = staged_path(match.group(2))
        return f'{match.group(1)}"{target or match.group(2)}";'

    return _IMPORT.sub(replace, text)


def find_protos(gocode: Path) -> list[StagedProto]:
    """Every proto to generate, failing with the Debian package to install if one is missing."""
    found: list[StagedProto] = []
    for source, _, package in _SOURCES:
        directory = gocode / source
        protos = sorted(directory.rglob("*.proto")) if directory.is_dir() else []
        if not protos:
            raise GenerationError(
                f"no .proto files under {directory}: install the Debian package {package} "
                f"(apt-get install --no-install-recommends {package})"
            )
        for proto in protos:
            relative = proto.relative_to(gocode).as_posix()
            staged = staged_path(relative)
            assert staged is not None
            found.append(StagedProto(proto, staged))
    return found


def google_rpc_include() -> Path:
    """The sys.path entry that holds google/rpc/status.proto (googleapis-common-protos)."""
    for entry in sys.path:
        if entry and (Path(entry) / "google" / "rpc" / "status.proto").is_file():
            return Path(entry)
    raise GenerationError(
        "google/rpc/status.proto not found on sys.path: install the PyPI package "
        "googleapis-common-protos"
    )


def _protoc(arguments: Sequence[str]) -> None:
    try:
        from grpc_tools import protoc  # type: ignore[import-untyped]
    except ImportError:
        raise GenerationError(
            "grpc_tools not importable: install the PyPI package grpcio-tools"
        ) from None
    include = Path(protoc.__file__).parent / "_proto"
    status = protoc.main(["grpc_tools.protoc", f"-I{include}", *arguments])
    if status != 0:
        raise GenerationError(f"protoc failed with status {status} (its errors are above)")


def _finish_package(root: Path) -> None:
    """Make every generated directory a package, and keep type checkers out of the code."""
    for directory in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        init = directory / "__init__.py"
        if not init.exists():
            init.write_text('"""Generated from containerd\'s protos; do not edit."""\n')
    for module in [*root.rglob("*_pb2*.py"), *root.rglob("*_pb2*.pyi")]:
        module.write_text("# mypy: ignore-errors\n" + module.read_text())


def generate(project_root: Path, gocode: Path = GOCODE) -> Path:
    """(Re)generate ``bismuth_agent/containerd/_api`` under ``project_root``; returns its path."""
    protos = find_protos(gocode)
    rpc_include = google_rpc_include()
    target = project_root.joinpath(*API_PACKAGE)
    with tempfile.TemporaryDirectory(prefix="bismuth-protos-") as tmp:
        stage, out = Path(tmp) / "stage", Path(tmp) / "out"
        for proto in protos:
            staged = stage / proto.staged
            staged.parent.mkdir(parents=True, exist_ok=True)
            staged.write_text(rewrite_imports(proto.source.read_text()))
        out.mkdir()
        _protoc(
            [
                f"-I{stage}",
                f"-I{rpc_include}",
                f"--python_out={out}",
                f"--pyi_out={out}",
                f"--grpc_python_out={out}",
                *(proto.staged for proto in protos),
            ]
        )
        generated = out.joinpath(*API_PACKAGE)
        _finish_package(generated)
        _replace_tree(generated, target)
    return target


def _replace_tree(source: Path, target: Path) -> None:
    """Swap ``target`` for ``source`` (a fresh tree), leaving no mix of old and new files."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fresh = target.with_name(target.name + ".new")
    old = target.with_name(target.name + ".old")
    shutil.rmtree(fresh, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    shutil.copytree(source, fresh)
    if target.exists():
        target.rename(old)
    fresh.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def generated_packages(project_root: Path) -> list[str]:
    """Dotted names of the generated packages (for setuptools, which finds them after build)."""
    root = project_root.joinpath(*API_PACKAGE)
    return sorted(
        ".".join(init.parent.relative_to(project_root).parts) for init in root.rglob("__init__.py")
    )


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bismuth_agent.containerd.generate",
        description="Generate containerd gRPC stubs from Debian's protos.",
    )
    parser.add_argument("--gocode", type=Path, default=GOCODE, help="Debian's gocode src tree")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parents[2],
        help="project root that holds bismuth_agent/ (default: this checkout)",
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        target = generate(args.out, args.gocode)
    except GenerationError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    sys.stderr.write(f"generated containerd stubs in {target}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
