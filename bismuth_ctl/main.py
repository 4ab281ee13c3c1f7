"""``bismuthctl``: the operator CLI of a Bismuth cluster.

Usage: ``bismuthctl [global flags] COMMAND [args]``; global flags may also follow COMMAND.
Global flags: ``--config FILE``, ``--zookeeper HOST:PORT[,...]``, ``--zookeeper-env NAME``,
``--log-level LEVEL``, ``--json`` (one JSON document on stdout), ``--timeout SECONDS``
(ZooKeeper connect timeout and API request timeout, default 10), ``--cluster-key-file FILE``
(the fleet's cluster key, with which ``secret set`` seals values itself), ``--api URL`` and
``--token TOKEN``. Settings come from :class:`CtlConfig`: defaults, the TOML file (see
:mod:`bismuth_ctl.access`), ``BISMUTH_*`` environment variables, then flags.

Most commands talk to ZooKeeper directly, as the cluster: with the identity derived from
the cluster key (``--cluster-key-file``, ``cluster_key`` or ``cluster_key_file``, else
``/etc/bismuth/cluster.key`` when it can be read, as root on the fleet's API and agent
hosts); ``function ...`` and ``secret set`` without a cluster key talk to ``bismuth-api``
with a token (:mod:`bismuth_ctl.functions`).

Exit codes:

0. success
1. the operation failed or found problems (consistency found issues without ``--fix``,
   drain could not move some containers, ``--wait`` timed out)
2. usage error or bad argument (including bad configuration)
3. not found (node not provisioned, environment not bootstrapped, no such tenant or token)
4. conflict (deprovision refused while the node has containers or a live agent, a tenant
   name taken, a tenant deleted while it owns functions)
5. ZooKeeper or the API unavailable (unreachable, or answering 503: e.g. no room left in
   the fleet)
6. not authorized: no token, a token the API does not accept (401), or one whose scope
   does not allow the request (403); ZooKeeper refusing a session without the cluster key

Errors go to stderr as one line ``bismuthctl: error: ...``; with ``--json`` stdout also
carries a JSON object with an ``"error"`` key. Expected failures print no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

from bismuth_core import layout, operations
from bismuth_core.config import ConfigError, add_common_arguments, flag_overrides, load_config
from bismuth_core.credentials import ClusterCredentials, writer_access
from bismuth_core.errors import (
    AccessDenied,
    BismuthError,
    Conflict,
    Forbidden,
    InsufficientCapacity,
    InvalidRequest,
    NotFound,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from bismuth_core.logs import setup_logging
from bismuth_core.secrets import SecretBox, load_cluster_key
from bismuth_core.zk import ZooKeeper

from . import commands, functions, tenants
from .access import AccessError, config_file, resolve_token
from .apiclient import ApiClient
from .commands import (
    CONFLICT,
    FAILED,
    NOT_FOUND,
    OK,
    UNAUTHORIZED,
    UNAVAILABLE,
    USAGE,
    ApiCommand,
    Command,
    CommandGroup,
    Outcome,
)

PROG = "bismuthctl"
HOST_CLUSTER_KEY = "/etc/bismuth/cluster.key"  # where the deploy installs it on hosts
log = logging.getLogger(__name__)

EPILOG = """\
exit codes:
  0  success
  1  the operation failed or found problems (consistency issues without --fix,
     drain could not move some containers, --wait timed out)
  2  usage error or bad argument
  3  not found (node not provisioned, environment not bootstrapped, no such tenant
     or token)
  4  conflict (e.g. deprovision refused while the node has containers or a live
     agent, a tenant name taken, a tenant that owns functions)
  5  ZooKeeper or the API unavailable (unreachable, or API answer 503: e.g. no
     room left in the fleet)
  6  not authorized: no API token, or the API refused it (401/403); ZooKeeper
     refused access (no cluster key, or another cluster's)

ZooKeeper commands act with the identity derived from the cluster key: --cluster-key-file
FILE, cluster_key(_file) in the config file, else /etc/bismuth/cluster.key if it can be
read (root on the fleet's API and agent hosts).

API commands (function ..., secret set without a cluster key) take the API's URL
from --api, BISMUTH_API or 'api' in the config file (default http://127.0.0.1:8002)
and a token from --token, BISMUTH_TOKEN or 'token' in the config file (default file:
$XDG_CONFIG_HOME/bismuth/config.toml or ~/.config/bismuth/config.toml, mode 0600);
without one, /etc/bismuth/admin.token (token_file) if it can be read (root on API hosts).
"""


@dataclass(frozen=True)
class CtlConfig:
    zookeeper: str = "127.0.0.1:2181"
    zookeeper_env: str = "default"
    log_level: str = "warning"
    timeout: float = 10.0
    # The fleet's cluster key (base64), inline or in a file: ZooKeeper admits bismuthctl with
    # the identity derived from it, and 'secret set' seals with it. The default file is used
    # when it can be read (root on the fleet's API and agent hosts); "" = no key.
    cluster_key: str = field(default="", repr=False)
    cluster_key_file: str = HOST_CLUSTER_KEY
    # The API the 'function' commands (and 'secret set' without a key) talk to, and the
    # token they send; without a token, the one in token_file if it can be read.
    api: str = "http://127.0.0.1:8002"
    token: str = field(default="", repr=False)
    token_file: str = "/etc/bismuth/admin.token"


class UsageError(Exception):
    """A bad command line or configuration: exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


_GLOBAL_DEFAULTS = {"json": False}


def _global_flags() -> _Parser:
    """Flags accepted before and after the subcommand; absent ones stay unset."""
    parser = _Parser(add_help=False)
    group = parser.add_argument_group("global options")
    add_common_arguments(group, None)  # type: ignore[arg-type]
    group.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    group.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=commands.seconds,
        help="ZooKeeper connect timeout and API request timeout (default 10)",
    )
    group.add_argument(
        "--cluster-key-file",
        metavar="FILE",
        help="file holding the fleet's cluster key: 'secret set' then seals the value "
        "itself and writes ZooKeeper (or cluster_key / BISMUTH_CLUSTER_KEY)",
    )
    group.add_argument(
        "--api",
        metavar="URL",
        help="the API, for 'function' commands (default http://127.0.0.1:8002)",
    )
    group.add_argument(
        "--token",
        metavar="TOKEN",
        help="API token (visible in ps: prefer BISMUTH_TOKEN or the config file)",
    )
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return parser


def build_parser() -> argparse.ArgumentParser:
    common = _global_flags()
    parser = _Parser(
        prog=PROG,
        description="Operate a Bismuth cluster through its ZooKeeper tree.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    entries = (
        *commands.COMMANDS,
        *tenants.COMMANDS,
        CommandGroup(
            "function",
            "create, list, show, update, redeploy and delete functions; their logs (API)",
            functions.COMMANDS,
        ),
    )
    _add_commands(parser, entries, common, "command")
    return parser


def _add_commands(
    parser: argparse.ArgumentParser,
    entries: Sequence[Command | ApiCommand | CommandGroup],
    common: argparse.ArgumentParser,
    dest: str,
) -> None:
    """One subparser per command; a group's commands below its own subparser."""
    subparsers = parser.add_subparsers(dest=dest, metavar="COMMAND", required=True)
    for entry in entries:
        sub = subparsers.add_parser(
            entry.name,
            help=entry.help,
            description=entry.help,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[common],
        )
        if isinstance(entry, CommandGroup):
            _add_commands(sub, entry.commands, common, f"{entry.name}_command")
        else:
            entry.arguments(sub)
            sub.set_defaults(run=entry)


def exit_code(error: BismuthError) -> int:
    if isinstance(error, (InvalidRequest, TooLarge)):
        return USAGE
    if isinstance(error, NotFound):
        return NOT_FOUND
    if isinstance(error, Conflict):
        return CONFLICT
    if isinstance(error, (Unauthorized, Forbidden, AccessDenied)):
        return UNAUTHORIZED
    if isinstance(error, InsufficientCapacity):
        return FAILED
    if isinstance(error, Unavailable):
        return UNAVAILABLE
    return FAILED


# --- running a command -----------------------------------------------------------------


async def execute(
    command: Command | ApiCommand, args: argparse.Namespace, config: CtlConfig
) -> Outcome:
    if isinstance(command, ApiCommand):
        token = resolve_token(config.token, config.token_file)
        async with ApiClient(config.api, token, config.timeout) as api:
            return await command.handler(api, args)
    connect_timeout = getattr(args, "wait", None) if command.name == "bootstrap" else None
    key = getattr(args, "cluster_key", None)
    access = writer_access(ClusterCredentials.from_cluster_key(key)) if key else None
    zk = ZooKeeper(config.zookeeper, config.zookeeper_env, access=access, op_timeout=config.timeout)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "No chroot path exists")
        try:
            await zk.start(connect_timeout or config.timeout)
        except Unavailable as exc:
            waited = connect_timeout or config.timeout
            raise Unavailable(
                f"cannot reach ZooKeeper at {config.zookeeper} within {waited:g}s"
            ) from exc
    try:
        if command.needs_tree and not await operations.is_bootstrapped(zk):
            raise NotFound(
                f"environment {config.zookeeper_env!r} is not bootstrapped; "
                f"run '{PROG} bootstrap' first"
            )
        return await command.handler(zk, args)
    finally:
        await zk.stop()


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, CtlConfig]:
    """Arguments and configuration; raise :class:`UsageError` on anything wrong."""
    args = build_parser().parse_args(argv)
    for key, default in _GLOBAL_DEFAULTS.items():
        if not hasattr(args, key):
            setattr(args, key, default)
    try:
        file = config_file(getattr(args, "config", None))
        config = load_config(CtlConfig, file=file, overrides=flag_overrides(args))
        layout.chroot(config.zookeeper_env)
    except (ConfigError, AccessError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    if not config.timeout > 0:
        raise UsageError(f"timeout must be a positive number of seconds, not {config.timeout}")
    try:
        args.cluster_key = cluster_key(config)
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc
    if isinstance(args.run, Command) and args.run.needs_cluster_key:
        if args.cluster_key is not None:
            args.secret_box = SecretBox(args.cluster_key)
        else:
            args.run = functions.SECRET_SET  # no key here: the API seals it
    return args, config


def cluster_key(config: CtlConfig) -> bytes | None:
    """The cluster key, if bismuthctl has one: ``cluster_key`` or ``cluster_key_file`` (which
    must then be usable), else the host's ``/etc/bismuth/cluster.key`` when it can be read."""
    if config.cluster_key:
        chosen = "" if config.cluster_key_file == HOST_CLUSTER_KEY else config.cluster_key_file
        return load_cluster_key(config.cluster_key, chosen)
    if not config.cluster_key_file:
        return None
    if config.cluster_key_file == HOST_CLUSTER_KEY and not os.access(HOST_CLUSTER_KEY, os.R_OK):
        return None
    return load_cluster_key(file=config.cluster_key_file)


def emit(outcome: Outcome, as_json: bool) -> int:
    """Print ``outcome`` (JSON or text on stdout, its error on stderr); its exit code."""
    if outcome.streamed:
        pass
    elif as_json:
        document = dict(outcome.document)
        if outcome.error:
            document["error"] = outcome.error
        print(json.dumps(document, indent=2))
    elif outcome.text:
        print(outcome.text)
    if outcome.error:
        print(f"{PROG}: error: {outcome.error}", file=sys.stderr)
    return outcome.code


def failure(message: str, code: int) -> Outcome:
    return Outcome({}, "", code, message)


@contextlib.contextmanager
def logging_to_stderr(level: str) -> Iterator[None]:
    """Log to stderr for the duration of one command; restore the previous set-up after."""
    root, kazoo = logging.getLogger(), logging.getLogger("kazoo")
    handlers, root_level, kazoo_level = list(root.handlers), root.level, kazoo.level
    try:
        setup_logging(level)
    except ValueError as exc:
        raise UsageError(f"bad log level {level!r}") from exc
    if root.level > logging.DEBUG:
        kazoo.setLevel(logging.CRITICAL)  # connection trouble is reported as one error line
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(root_level)
        kazoo.setLevel(kazoo_level)


def run(args: argparse.Namespace, config: CtlConfig) -> Outcome:
    """Run the parsed command; every failure becomes an outcome with its exit code."""
    try:
        return asyncio.run(execute(args.run, args, config))
    except BismuthError as exc:
        return failure(exc.message, exit_code(exc))
    except KeyboardInterrupt:
        return failure("interrupted", FAILED)
    except Exception as exc:
        log.debug("unexpected failure", exc_info=True)
        return failure(f"unexpected {type(exc).__name__}: {exc}", FAILED)


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit code (the console script exits with it)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        args, config = parse(argv)
    except UsageError as exc:
        return emit(failure(f"{exc} (see '{PROG} --help')", USAGE), "--json" in argv)
    except SystemExit as exc:  # --help printed
        return exc.code if isinstance(exc.code, int) else OK
    try:
        with logging_to_stderr(config.log_level):
            outcome = run(args, config)
    except UsageError as exc:
        outcome = failure(str(exc), USAGE)
    return emit(outcome, args.json)


if __name__ == "__main__":
    sys.exit(main())
