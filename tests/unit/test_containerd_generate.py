"""Generating the containerd stubs: staging paths, rewritten imports, clear failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from bismuth_agent.containerd import generate


@pytest.mark.parametrize(
    ("imported", "staged"),
    [
        (
            "github.com/containerd/containerd/api/types/mount.proto",
            "bismuth_agent/containerd/_api/containerd/types/mount.proto",
        ),
        ("gogoproto/gogo.proto", "bismuth_agent/containerd/_api/gogoproto/gogo.proto"),
        (
            "github.com/containerd/containerd/protobuf/plugin/fieldpath.proto",
            "bismuth_agent/containerd/_api/containerd/plugin/fieldpath.proto",
        ),
        (
            "github.com/containerd/cgroups/stats/v1/metrics.proto",
            "bismuth_agent/containerd/_api/cgroups/v1/metrics.proto",
        ),
        ("google/protobuf/any.proto", None),
        ("google/rpc/status.proto", None),
    ],
)
def test_staged_path(imported: str, staged: str | None) -> None:
    assert generate.staged_path(imported) == staged


def test_rewrite_imports_points_at_staged_protos_and_keeps_google() -> None:
    source = (
        'syntax = "proto3";\n'
        'import weak "gogoproto/gogo.proto";\n'
        'import "google/protobuf/empty.proto";\n'
        'import "github.com/containerd/containerd/api/types/mount.proto";\n'
        "message M { string a = 1; }\n"
    )
    assert generate.rewrite_imports(source) == (
        'syntax = "proto3";\n'
        'import weak "bismuth_agent/containerd/_api/gogoproto/gogo.proto";\n'
        'import "google/protobuf/empty.proto";\n'
        'import "bismuth_agent/containerd/_api/containerd/types/mount.proto";\n'
        "message M { string a = 1; }\n"
    )


def test_missing_protos_name_the_debian_package(tmp_path: Path) -> None:
    with pytest.raises(generate.GenerationError, match=generate.CONTAINERD_DEB):
        generate.find_protos(tmp_path)


def test_main_reports_missing_protos_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert generate.main(["--gocode", str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    assert "golang-github-containerd-containerd-dev" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_generates_an_importable_package_tree(tmp_path: Path) -> None:
    target = generate.generate(tmp_path)
    assert target == tmp_path / "bismuth_agent" / "containerd" / "_api"
    tasks = target / "containerd" / "services" / "tasks" / "v1"
    assert {p.name for p in tasks.iterdir()} >= {
        "__init__.py",
        "tasks_pb2.py",
        "tasks_pb2.pyi",
        "tasks_pb2_grpc.py",
    }
    grpc_module = (tasks / "tasks_pb2_grpc.py").read_text()
    assert "from bismuth_agent.containerd._api.containerd.services.tasks.v1 import" in grpc_module
    assert "/containerd.services.tasks.v1.Tasks/Create" in grpc_module
    packages = generate.generated_packages(tmp_path)
    assert "bismuth_agent.containerd._api.containerd.services.tasks.v1" in packages
    assert "bismuth_agent.containerd._api.cgroups.v1" in packages
