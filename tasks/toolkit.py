"""The toolkit itself on each host: versioned virtualenvs, or a checkout's virtualenv.

``toolkit_install = "wheel"`` (fleets): the machine running pyinfra builds the wheelhouse
(:mod:`tasks.wheelhouse`) once per run, when pyinfra executes and only if it is not
current (a dry run lists the build and builds nothing); each host gets it in
``<toolkit_dir>/wheelhouse/<version>/`` (uploaded as one tar, only when the files there do
not match its checksums) and installs
it with ``toolkit_python -m venv`` and ``pip install --no-index`` into
``<toolkit_dir>/<version>/``. ``<toolkit_dir>/current`` then points at that version: the
``bismuthctl`` and Python the deploy and operators use. Each daemon runs from a link of its
own, ``<toolkit_dir>/<program>`` (``bismuth-agent``, ``bismuth-api``, ``bismuth-fe``), which
its task points at the version it should run: a daemon restarts when its link moved, and
``upgrade.py`` moves the agents' links one host at a time. Old versions stay installed
(providers started by an older agent keep running from it).

``toolkit_install = "checkout"`` (``make up``): every daemon runs from ``bismuth_venv``, the
checkout's own virtualenv. The providers, which run as an unprivileged user that may not
read the checkout (it may sit under /root), run from a versioned install of the checkout
instead, made on agent hosts exactly as above but labelled after the checkout's content
(``<version>+checkout.<12 hex>``): an edit of the code gets an install of its own, and older
checkout installs that no process runs from any more are removed.
"""

from __future__ import annotations

import functools
import shlex
import threading
import time
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.files import FileContents, Link
from pyinfra.operations import files, server

from tasks.facts import StaleCheckoutInstalls, WheelhouseChecksum
from tasks.local import control_step, progress
from tasks.roles import AGENTS, has_role
from tasks.wheelhouse import (
    Wheelhouse,
    WheelhouseError,
    archive,
    archive_current,
    archive_path,
    build,
    checkout_label,
    current,
    full_version,
)

CHECKOUT = Path(__file__).resolve().parent.parent
BUILD_MARKER = ".bismuth-build"  # in an installed version: the build_id it was installed from
# pyinfra prepares hosts concurrently (gevent greenlets, with threading patched): the first
# host builds, the others wait for its result.
BUILDING = threading.Lock()


def wheel_install() -> bool:
    """Whether hosts get versioned installs (True) or run a checkout's virtualenv (False)."""
    mode = host.data.toolkit_install
    if mode not in ("wheel", "checkout"):
        raise DeployError(f"toolkit_install must be wheel or checkout, not {mode!r}")
    return bool(mode == "wheel")


def toolkit_dir() -> str:
    return str(host.data.toolkit_dir)


def tool_bin(program: str) -> str:
    """A program of the toolkit for tools (``bismuthctl``, ``python``): the current version."""
    if wheel_install():
        return f"{toolkit_dir()}/current/bin/{program}"
    return f"{host.data.bismuth_venv}/bin/{program}"


def daemon_bin(daemon: str, program: str) -> str:
    """``program`` as daemon ``daemon`` runs it: through the daemon's own version link."""
    if wheel_install():
        return f"{toolkit_dir()}/{daemon}/bin/{program}"
    return f"{host.data.bismuth_venv}/bin/{program}"


def _source() -> Path:
    return Path(host.data.toolkit_source or CHECKOUT)


def _label() -> str:
    """``toolkit_version_label``; checkout installs: a label naming the checkout's content."""
    if not wheel_install():
        return _checkout_label(_source())
    return str(host.data.toolkit_version_label or "")


@functools.cache
def _checkout_label(source: Path) -> str:
    try:
        return checkout_label(source)
    except (WheelhouseError, OSError) as exc:
        raise DeployError(f"cannot read the checkout {source}: {exc}") from None


def _root() -> Path:
    return Path(host.data.wheelhouse_dir or CHECKOUT / "var" / "wheelhouse")


def wheelhouse() -> Wheelhouse:
    """This run's wheelhouse and its tar, built on this machine the first time a host asks.

    Only while pyinfra executes: preparing, the deploy asks :func:`needs_build` instead.
    """
    with BUILDING:
        return _built(_source(), _label(), _root())


@functools.cache
def _built(source: Path, label: str, root: Path) -> Wheelhouse:
    started = time.monotonic()
    try:
        built = build(source, label, root, progress)
        archive(built)
    except (WheelhouseError, OSError) as exc:
        raise DeployError(f"cannot build the toolkit's wheelhouse from {source}: {exc}") from None
    progress(f"wheelhouse of bismuth {built.version}: ready in {time.monotonic() - started:.0f} s")
    return built


def needs_build() -> bool:
    """Whether this run must build the wheelhouse or its tar (reads only)."""
    return _needs_build(_source(), _label(), _root())


@functools.cache
def _needs_build(source: Path, label: str, root: Path) -> bool:
    try:
        found = current(source, label, root)
    except (WheelhouseError, OSError) as exc:
        raise DeployError(f"cannot read the toolkit's sources in {source}: {exc}") from None
    return found is None or not archive_current(found)


def version() -> str:
    """The version this run installs, read from the sources (no build)."""
    try:
        return full_version(_source(), _label())
    except WheelhouseError as exc:
        raise DeployError(str(exc)) from None


@deploy("Bismuth toolkit")
def toolkit(make_current: bool = True) -> None:
    """Upload the wheelhouse and install its version; then point ``current`` at it.

    ``make_current=False`` (``upgrade.py``) installs the version next to the running one
    without switching anything to it. Checkout installs: only agent hosts get it, for their
    providers, and nothing points at it but the agent's ``provider_command``.
    """
    if not wheel_install() and not has_role(AGENTS):
        return
    wanted = version()
    control_step(
        f"Build the wheelhouse of bismuth {wanted} on this machine", needs_build(), wheelhouse
    )
    files.directory(name="Toolkit directory", path=toolkit_dir(), mode="755")
    remote = f"{toolkit_dir()}/wheelhouse/{wanted}"
    files.put(  # the tar may not exist yet: it is built when pyinfra executes
        name=f"Upload the wheelhouse of bismuth {wanted}",
        src=str(archive_path(_root(), wanted)),
        dest=f"{remote}.tar",
        mode="600",
        assume_exists=True,
        force=True,
        _if=lambda: not _uploaded(remote, wheelhouse()),
    )
    server.shell(  # asked again: a tar left by an interrupted run is unpacked too
        name=f"Unpack the wheelhouse of bismuth {wanted}",
        commands=[_unpack_script(remote)],
        _if=lambda: not _uploaded(remote, wheelhouse()),
    )
    server.shell(
        name=f"Install bismuth {wanted} into {toolkit_dir()}/{wanted}",
        commands=[_install_script(wanted, remote)],
        _if=lambda: _installed_build(wanted) != wheelhouse().build_id,
    )
    if not wheel_install():
        _remove_stale_checkout_installs(wanted)
    elif make_current:
        files.link(
            name=f"Make bismuth {wanted} current",
            path=f"{toolkit_dir()}/current",
            target=wanted,
        )


def _remove_stale_checkout_installs(keep: str) -> None:
    """Checkout installs of earlier edits that no running process uses any more."""
    stale = host.get_fact(StaleCheckoutInstalls, toolkit_dir=toolkit_dir(), keep=keep)
    if stale:
        server.shell(
            name="Remove checkout installs no process runs from",
            commands=[shlex.join(["rm", "-rf", "--", *stale])],
        )


def provider_command() -> list[str]:
    """How the agent runs providers: ``[]`` (its own Python) for versioned installs; for
    checkout installs, this run's versioned install of the checkout."""
    if wheel_install():
        return []
    return [f"{toolkit_dir()}/{version()}/bin/python", "-m", "bismuth_provider"]


def switch_daemon(daemon: str) -> OperationMeta | None:
    """Point ``daemon``'s link at this run's version; the result says if it moved (restart).

    ``None`` for checkout installs, where daemons run from the checkout's virtualenv.
    """
    if not wheel_install():
        return None
    wanted = version()
    return files.link(
        name=f"Run {daemon} from bismuth {wanted}",
        path=f"{toolkit_dir()}/{daemon}",
        target=wanted,
    )


def daemon_version(daemon: str) -> str | None:
    """The version ``daemon``'s link names now (``None``: no link), asked when executing."""
    link = host.get_fact(Link, path=f"{toolkit_dir()}/{daemon}")
    return str(link["link_target"]) if link else None


def _unpack_script(remote: str) -> str:
    """Shell: replace ``remote`` with the uploaded ``<remote>.tar``'s files; drop the tar."""
    directory, tar = shlex.quote(remote), shlex.quote(f"{remote}.tar")
    return (
        f"rm -rf {directory} && mkdir -p -m 755 {directory} && "
        f"tar -x --no-same-owner -f {tar} -C {directory} && chmod 644 {directory}/* && "
        f"rm -f {tar}"
    )


def _uploaded(remote: str, built: Wheelhouse) -> bool:
    return host.get_fact(WheelhouseChecksum, path=remote) == built.build_id


def _installed_build(version: str) -> str | None:
    lines = host.get_fact(FileContents, path=f"{toolkit_dir()}/{version}/{BUILD_MARKER}")
    return lines[0].strip() if lines else None


def _install_script(version: str, remote: str) -> str:
    """Shell: make the version's virtualenv and install into it from the wheelhouse only.

    pip ignores every configuration file and variable (``--isolated``, ``PIP_CONFIG_FILE``):
    a host's pip settings must not send it to an index. The marker, the build's id (the
    SHA-256 of the uploaded ``SHA256SUMS``), goes last, so an interrupted install is done
    again by the next run. A version installed from another build is never overwritten:
    daemons and providers may be running from it.
    """
    target = f"{toolkit_dir()}/{version}"
    pip = [
        "env",
        "PIP_CONFIG_FILE=/dev/null",
        f"{target}/bin/python",
        "-m",
        "pip",
        "--isolated",
        "--disable-pip-version-check",
        "-q",
        "install",
        "--no-index",
        "--find-links",
        remote,
        "--force-reinstall",
        f"bismuth=={version}",
    ]
    marker = shlex.quote(f"{target}/{BUILD_MARKER}")
    refusal = shlex.quote(
        f"bismuth {version} is installed here from another build: give this build a"
        " version of its own (toolkit_version_label)"
    )
    return " && ".join(
        [
            f"{{ ! [ -e {marker} ] || {{ echo {refusal} >&2; exit 1; }}; }}",
            f"{{ [ -x {shlex.quote(target)}/bin/python ] || "
            f"{shlex.join([host.data.toolkit_python, '-m', 'venv', target])}; }}",
            shlex.join(pip),
            f"sha256sum {shlex.quote(remote)}/SHA256SUMS | cut -d ' ' -f 1 > {marker}",
        ]
    )
