"""Build the base image ``bismuth.local/python:3.11`` as an OCI image-layout archive.

Usage (as root, on Debian with ``mmdebstrap`` installed)::

    python3 -m bismuth_images.build [--output PATH] [--force] [--mirror URI|'deb ...']...

The archive is written to ``var/images/python-3.11.oci.tar`` in the checkout unless
``--output`` says otherwise. If it already exists and checks out (every blob matches its
digest, the name is right, the architecture is this host's), nothing is built; ``--force``
rebuilds. Packages come from this machine's apt sources (``/etc/apt``) unless ``--mirror`` is
given. Import the result with ``ctr -n bismuth images import PATH``.

Exit status: 0 built or already up to date, 1 the build failed, 2 usage error. Only the
standard library is used, so any Python 3.11 runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .archive import ImageSummary, inspect_archive, wrap_rootfs
from .oci import ImageError, ImageReference, platform_for_dpkg
from .rootfs import RootfsSpec, bootstrap, check_rootfs
from .sources import host_sources, mirror_lines, select_sources

log = logging.getLogger("bismuth_images.build")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REFERENCE = "bismuth.local/python:3.11"
DEFAULT_SUITE = "bookworm"


def default_output(reference: str) -> Path:
    """``var/images/<repository basename>-<tag>.oci.tar`` in the checkout."""
    ref = ImageReference.parse(reference)
    base = ref.name[: -len(ref.tag) - 1].rsplit("/", 1)[-1]
    return REPO_ROOT / "var" / "images" / f"{base}-{ref.tag}.oci.tar"


@dataclass(frozen=True)
class BuildOptions:
    output: Path
    reference: str = DEFAULT_REFERENCE
    suite: str = DEFAULT_SUITE
    mirrors: tuple[str, ...] = ()
    packages: tuple[str, ...] = ("python3",)
    force: bool = False
    compression_level: int = 1
    apt_root: Path = field(default=Path("/"))


@dataclass(frozen=True)
class BuildResult:
    path: Path
    summary: ImageSummary
    built: bool  # False: an existing archive was valid and kept
    seconds: float
    size: int


def host_architecture() -> str:
    """This machine's dpkg architecture (``amd64``, ``arm64``, ...)."""
    try:
        out = subprocess.run(
            ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ImageError(f"cannot ask dpkg for the host architecture: {exc}") from None
    return out.stdout.strip()


def created_timestamp() -> str:
    """RFC 3339 UTC: ``SOURCE_DATE_EPOCH`` if set (reproducible builds; mmdebstrap uses it too)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = (
        datetime.datetime.fromtimestamp(int(epoch), datetime.UTC)
        if epoch
        else datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    )
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def python_version_of(reference: ImageReference) -> str | None:
    """A tag like ``3.11`` promises that Python version; the build checks the tree has it."""
    return reference.tag if re.fullmatch(r"\d+\.\d+", reference.tag) else None


@contextlib.contextmanager
def output_lock(output: Path) -> Iterator[None]:
    """One build per output at a time: a second one waits, then finds the archive valid."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output.with_name(output.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def existing_image(options: BuildOptions, architecture: str) -> ImageSummary | None:
    """The archive at the output path, if it is a valid image of the right name and platform."""
    if options.force or not options.output.exists():
        return None
    try:
        summary = inspect_archive(options.output, options.reference)
    except ImageError as exc:
        log.warning("rebuilding: existing archive is not usable: %s", exc)
        return None
    if summary.platform != platform_for_dpkg(architecture):
        log.warning("rebuilding: existing archive is for %s", summary.platform.architecture)
        return None
    return summary


def rootfs_spec(options: BuildOptions, architecture: str) -> RootfsSpec:
    if options.mirrors:
        sources = mirror_lines(options.mirrors, options.suite)
    else:
        chosen = select_sources(host_sources(options.apt_root), options.suite)
        sources = [source.line() for source in chosen]
    return RootfsSpec(options.suite, tuple(sources), architecture, options.packages)


def build_image(options: BuildOptions) -> BuildResult:
    """Build (or keep) the archive at ``options.output``; raises :class:`ImageError`."""
    started = time.monotonic()
    reference = ImageReference.parse(options.reference)
    architecture = host_architecture()
    with output_lock(options.output):
        kept = existing_image(options, architecture)
        if kept is not None:
            size = options.output.stat().st_size
            return BuildResult(options.output, kept, False, time.monotonic() - started, size)
        spec = rootfs_spec(options, architecture)
        with tempfile.TemporaryDirectory(dir=options.output.parent, prefix=".build-") as work:
            rootfs = Path(work) / "rootfs.tar"
            bootstrap(spec, rootfs)
            log.info("checking the root filesystem")
            problems = check_rootfs(rootfs, spec, python_version_of(reference))
            if problems:
                raise ImageError("the root filesystem is not usable: " + "; ".join(problems))
            log.info("packing the image layer (gzip level %d)", options.compression_level)
            summary = wrap_rootfs(
                rootfs,
                options.output,
                reference,
                platform_for_dpkg(architecture),
                created=created_timestamp(),
                created_by=f"mmdebstrap --variant=essential --include="
                f"{','.join(spec.packages)} {spec.suite}",
                level=options.compression_level,
            )
    size = options.output.stat().st_size
    return BuildResult(options.output, summary, True, time.monotonic() - started, size)


def parse_args(argv: Sequence[str] | None) -> BuildOptions:
    parser = argparse.ArgumentParser(
        prog="python3 -m bismuth_images.build",
        description=(__doc__ or "").split("\n\n")[0],
        epilog="See bismuth_images/README.md for what the image holds and how it is built.",
    )
    parser.add_argument(
        "--output", type=Path, metavar="PATH", help="archive path (default: var/images/...)"
    )
    parser.add_argument(
        "--name", default=DEFAULT_REFERENCE, metavar="REF", help="image reference (name:tag)"
    )
    parser.add_argument("--suite", default=DEFAULT_SUITE, help="Debian suite (default bookworm)")
    parser.add_argument(
        "--mirror",
        action="append",
        default=[],
        metavar="MIRROR",
        help="archive URI, or a full 'deb URI SUITE COMPONENTS' line; repeatable "
        "(default: this machine's apt sources)",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if the archive is valid")
    parser.add_argument(
        "--compression-level", type=int, default=1, choices=range(1, 10), metavar="1-9"
    )
    parser.add_argument(
        "--log-level", default="info", metavar="LEVEL", help="debug, info, warning or error"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
    try:
        output = args.output or default_output(args.name)
    except ImageError as exc:
        parser.error(str(exc))
    return BuildOptions(
        output=output,
        reference=args.name,
        suite=args.suite,
        mirrors=tuple(args.mirror),
        force=args.force,
        compression_level=args.compression_level,
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        result = build_image(options)
    except ImageError as exc:
        log.error("build of %s failed: %s", options.reference, exc)
        return 1
    log.info(
        "%s %s: %s, %.1f MB, manifest %s, %.1f s",
        "built" if result.built else "kept (valid; --force rebuilds)",
        result.summary.reference,
        result.path,
        result.size / 1e6,
        result.summary.manifest.digest,
        result.seconds,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
