"""The toolkit as hosts receive it: a wheelhouse built on the machine that runs the deploy.

``<root>/<version>/`` holds the project's wheel, a wheel of every dependency, ``SHA256SUMS``
(their checksums) and ``BUILD`` (what it was built from). Hosts install from it with
``pip install --no-index``, so they need no access to PyPI. The build:

1. copies the source tree (``pyproject.toml``, ``setup.py``, ``README.md`` and the packages
   pyproject includes) into a scratch directory and writes the version there, in
   ``pyproject.toml`` and ``bismuth_core/__init__.py``: the source's own version, plus
   ``+<label>`` when a label is given, so a test build or a hotfix gets a version of its own
   without touching the checkout;
2. builds the project's wheel from that copy (``pip wheel --no-deps``);
3. adds its dependencies (``pip wheel``), pinned to the versions installed next to the
   Python running the deploy, taken from earlier wheelhouses when they hold them and from
   the package index otherwise.

A wheelhouse whose ``BUILD`` names the same source fingerprint (every copied file, the label,
the pins) and whose files match ``SHA256SUMS`` is reused as it is, so a second deploy
neither rebuilds nor uploads anything. Dependency wheels are chosen for this machine's
Python and architecture: hosts need the same (Debian 12 everywhere: Python 3.11).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

PROJECT = "bismuth"
VERSION_FILE = Path("bismuth_core") / "__init__.py"
CHECKOUT_LABEL = "checkout"
TOP_FILES = ("pyproject.toml", "setup.py", "README.md")
MANIFEST = "SHA256SUMS"
BUILD = "BUILD"
SKIPPED_DIRS = {"__pycache__"}
SKIPPED_SUFFIXES = (".pyc", ".pyo")
_LABEL = re.compile(r"[A-Za-z0-9]+(\.[A-Za-z0-9]+)*\Z")
_PROJECT_VERSION = re.compile(r'^version\s*=\s*"[^"]*"', re.MULTILINE)
_MODULE_VERSION = re.compile(r'^__version__\s*=\s*"[^"]*"', re.MULTILINE)


Progress = Callable[[str], None]  # told one line per stage of a build


class WheelhouseError(RuntimeError):
    """The wheelhouse cannot be built; the message says why."""


def _silent(_line: str) -> None:
    pass


@dataclass(frozen=True)
class Wheelhouse:
    """One built wheelhouse: ``path`` holds ``files`` (wheels and ``SHA256SUMS``)."""

    version: str
    path: Path
    build_id: str  # sha256 of SHA256SUMS: names this exact set of wheels
    files: tuple[str, ...]

    @property
    def requirement(self) -> str:
        return f"{PROJECT}=={self.version}"


def full_version(source: Path, label: str) -> str:
    """The source's version from its pyproject, with ``+label`` if a label is given."""
    try:
        project = tomllib.loads((source / "pyproject.toml").read_text())["project"]
        base = str(project["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise WheelhouseError(f"{source}/pyproject.toml: no project version ({exc})") from None
    if not label:
        return base
    if not _LABEL.match(label):
        raise WheelhouseError(
            f"toolkit_version_label {label!r}: use letters and digits, dot-separated"
        )
    if "+" in base:
        raise WheelhouseError(f"version {base!r} already has a local label: give none")
    return f"{base}+{label}"


def source_files(source: Path) -> list[Path]:
    """Files the wheel is built from, relative to ``source``, sorted."""
    project = tomllib.loads((source / "pyproject.toml").read_text())
    find = project.get("tool", {}).get("setuptools", {}).get("packages", {}).get("find", {})
    patterns = [str(p) for p in find.get("include", ["*"])]
    found = [Path(name) for name in TOP_FILES if (source / name).is_file()]
    for top in sorted(source.iterdir()):
        if not top.is_dir() or not (top / "__init__.py").exists():
            continue
        if any(fnmatch(top.name, p) for p in patterns):
            found += [p.relative_to(source) for p in _walk(top)]
    return sorted(found)


def _walk(directory: Path) -> Iterator[Path]:
    for path in sorted(directory.iterdir()):
        if path.is_dir():
            if path.name not in SKIPPED_DIRS:
                yield from _walk(path)
        elif path.is_file() and not path.name.endswith(SKIPPED_SUFFIXES):
            yield path


def pins() -> list[str]:
    """``name==version`` of every distribution installed next to this Python (not ours)."""
    found = {
        dist.metadata["Name"].lower(): dist.version
        for dist in importlib.metadata.distributions()
        if dist.metadata["Name"] and dist.metadata["Name"].lower() != PROJECT
    }
    return [f"{name}=={version}" for name, version in sorted(found.items())]


def fingerprint(source: Path, files: list[Path], version: str, pinned: list[str]) -> str:
    digest = hashlib.sha256()
    digest.update(f"{version}\n{sys.version_info[:2]}\n".encode())
    digest.update("\n".join(pinned).encode())
    for relative in files:
        digest.update(f"\0{relative}\0".encode())
        digest.update((source / relative).read_bytes())
    return digest.hexdigest()


def checkout_label(source: Path) -> str:
    """A label naming the source's content: ``checkout.<12 hex>`` (checkout installs build
    the providers' install from the checkout; an edit gets a version of its own)."""
    source = source.resolve()
    digest = fingerprint(source, source_files(source), full_version(source, ""), pins())
    return f"{CHECKOUT_LABEL}.{digest[:12]}"


def current(source: Path, label: str, root: Path) -> Wheelhouse | None:
    """The wheelhouse of ``source`` (+ ``label``) if one under ``root`` is up to date and
    intact; ``None`` if a build is needed. Only reads: a dry run may ask."""
    source, root = source.resolve(), root.resolve()
    version = full_version(source, label)
    wanted = fingerprint(source, source_files(source), version, pins())
    existing = load(root / version)
    if existing is not None and _built_from(root / version) == wanted:
        return existing
    return None


def build(source: Path, label: str, root: Path, progress: Progress = _silent) -> Wheelhouse:
    """The wheelhouse of ``source`` (+ ``label``) under ``root``, built unless it is current."""
    source, root = source.resolve(), root.resolve()
    version = full_version(source, label)
    files = source_files(source)
    pinned = pins()
    wanted = fingerprint(source, files, version, pinned)
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / ".lock"):
        existing = load(root / version)
        if existing is not None and _built_from(root / version) == wanted:
            return existing
        _build_into(source, files, version, pinned, wanted, root, progress)
    built = load(root / version)
    if built is None:
        raise WheelhouseError(f"{root / version}: incomplete after the build")
    return built


def archive_path(root: Path, version: str) -> Path:
    """Where the tar of ``version``'s wheelhouse is (or will be) kept."""
    return root.resolve() / f"{version}.tar"


def archive_current(built: Wheelhouse) -> bool:
    """Whether the tar next to ``built`` holds exactly its files (only reads)."""
    target = archive_path(built.path.parent, built.version)
    stamp = target.parent / f"{built.version}.tar.id"
    return target.exists() and stamp.exists() and stamp.read_text() == built.build_id


def archive(built: Wheelhouse) -> Path:
    """A tar of the wheelhouse's files next to it (made once): hosts get one upload."""
    target = archive_path(built.path.parent, built.version)
    stamp = built.path.parent / f"{built.version}.tar.id"
    with _locked(built.path.parent / ".lock"):
        if archive_current(built):
            return target
        partial = target.with_suffix(".tar.partial")
        with tarfile.open(partial, "w") as tar:
            for name in built.files:
                tar.add(built.path / name, arcname=name)
        partial.rename(target)
        stamp.write_text(built.build_id)
    return target


def load(path: Path) -> Wheelhouse | None:
    """The wheelhouse at ``path`` if every file it lists is there with its checksum."""
    try:
        manifest = (path / MANIFEST).read_bytes()
        version = json.loads((path / BUILD).read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None
    names = []
    for line in manifest.decode().splitlines():
        checksum, _, name = line.partition("  ")
        try:
            if hashlib.sha256((path / name).read_bytes()).hexdigest() != checksum:
                return None
        except OSError:
            return None
        names.append(name)
    files = (*sorted(names), MANIFEST, BUILD)
    return Wheelhouse(str(version), path, hashlib.sha256(manifest).hexdigest(), files)


def _built_from(path: Path) -> str | None:
    try:
        return str(json.loads((path / BUILD).read_text())["fingerprint"])
    except (OSError, ValueError, KeyError):
        return None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One build at a time per wheelhouse root, across processes."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build_into(
    source: Path,
    files: list[Path],
    version: str,
    pinned: list[str],
    wanted: str,
    root: Path,
    progress: Progress,
) -> None:
    with tempfile.TemporaryDirectory(prefix=".build-", dir=root) as scratch:
        tree, out = Path(scratch) / "src", Path(scratch) / "wheels"
        progress(f"copying {len(files)} source files of bismuth {version}")
        _copy(source, files, tree)
        _write_version(tree, version)
        progress(f"building the bismuth {version} wheel")
        wheel = _project_wheel(tree, out)
        constraints = Path(scratch) / "constraints.txt"
        constraints.write_text("\n".join(pinned) + "\n")
        earlier = [p for p in root.iterdir() if p.is_dir()]
        _dependency_wheels(wheel, out, constraints, earlier, progress)
        names = sorted(p.name for p in out.iterdir() if p.suffix == ".whl")
        lines = [f"{hashlib.sha256((out / n).read_bytes()).hexdigest()}  {n}" for n in names]
        (out / MANIFEST).write_text("\n".join(lines) + "\n")
        (out / BUILD).write_text(
            json.dumps({"version": version, "fingerprint": wanted, "source": str(source)}) + "\n"
        )
        target = root / version
        if target.exists():
            shutil.rmtree(target)
        out.rename(target)


def _copy(source: Path, files: list[Path], tree: Path) -> None:
    for relative in files:
        (tree / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / relative, tree / relative)


def _write_version(tree: Path, version: str) -> None:
    for relative, pattern, line in (
        (Path("pyproject.toml"), _PROJECT_VERSION, f'version = "{version}"'),
        (VERSION_FILE, _MODULE_VERSION, f'__version__ = "{version}"'),
    ):
        text = (tree / relative).read_text()
        new, count = pattern.subn(line, text, count=1)
        if count != 1:
            raise WheelhouseError(f"{relative}: found no version line to write {version} into")
        (tree / relative).write_text(new)


def _project_wheel(tree: Path, out: Path) -> Path:
    """Build the project's wheel; with the build tools of this Python if it has them."""
    isolation = ["--no-build-isolation"] if _has_build_tools() else []
    _pip("wheel", "--no-deps", *isolation, "--wheel-dir", str(out), str(tree))
    wheels = list(out.glob(f"{PROJECT}-*.whl"))
    if len(wheels) != 1:
        raise WheelhouseError(f"building the {PROJECT} wheel left {len(wheels)} wheels")
    return wheels[0]


def _has_build_tools() -> bool:
    return all(importlib.util.find_spec(m) for m in ("setuptools", "grpc_tools"))


def _dependency_wheels(
    wheel: Path, out: Path, constraints: Path, earlier: list[Path], progress: Progress
) -> None:
    """Wheels of every dependency: offline from earlier wheelhouses, else from the index."""
    common = ["--wheel-dir", str(out), "--constraint", str(constraints), str(wheel)]
    if earlier:
        progress(f"collecting dependency wheels from {len(earlier)} earlier wheelhouse(s)")
        links = [arg for path in earlier for arg in ("--find-links", str(path))]
        if _pip("wheel", "--no-index", *links, *common, check=False):
            return
    progress("collecting dependency wheels from the package index")
    _pip("wheel", *common)


def _pip(*args: str, check: bool = True) -> bool:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args]
    done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0 and check:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
        raise WheelhouseError(f"pip {args[0]} failed (exit {done.returncode}):\n{tail}")
    return done.returncode == 0
