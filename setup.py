"""setuptools hook: generate the containerd gRPC stubs whenever the package is built.

``build_py`` runs for wheels and for editable installs (``pip install -e .``); it first runs
``bismuth_agent/containerd/generate.py`` (loaded by path: the package's own dependencies are
not installed yet at build time) and adds the generated packages to what is built.
Everything else about the project is declared in pyproject.toml.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
GENERATOR = ROOT / "bismuth_agent" / "containerd" / "generate.py"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_bismuth_containerd_generate", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


class BuildWithContainerdStubs(build_py):
    """build_py that generates bismuth_agent/containerd/_api first."""

    def run(self) -> None:
        generator = _generator()
        try:
            generator.generate(ROOT)
        except generator.GenerationError as exc:
            raise SystemExit(f"error: cannot generate the containerd stubs: {exc}") from None
        packages: list[str] = list(getattr(self, "packages", None) or [])
        packages += [p for p in generator.generated_packages(ROOT) if p not in packages]
        self.packages = packages
        super().run()


setup(cmdclass={"build_py": BuildWithContainerdStubs})
