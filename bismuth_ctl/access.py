"""Where ``bismuthctl`` finds its configuration file and its API token.

The configuration file is ``--config FILE``, else ``BISMUTH_CONFIG``, else the user's own
``$XDG_CONFIG_HOME/bismuth/config.toml`` (``~/.config/bismuth/config.toml``) when it exists.
A file that holds a ``token`` must be readable by its owner only (mode 0600 or stricter):
one readable by group or others is refused, naming the ``chmod`` that fixes it.

The token is the first of: ``--token``, ``BISMUTH_TOKEN``, ``token`` in the file, and then
the file ``token_file`` (default ``/etc/bismuth/admin.token``: the operator's admin token
the deploy installs on API hosts, readable by root only) when it can be read.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path

from bismuth_core import tokens
from bismuth_core.errors import Unauthorized

CONFIG_NAME = Path("bismuth") / "config.toml"


class AccessError(ValueError):
    """The configuration file or the token cannot be used; the message says why."""


def user_config_file(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/bismuth/config.toml``, or under ``~/.config`` without it."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(base) / CONFIG_NAME


def config_file(given: str | None, env: Mapping[str, str] | None = None) -> str | None:
    """The configuration file to read (``None``: none); checked if it holds a token."""
    env = os.environ if env is None else env
    chosen = given or env.get("BISMUTH_CONFIG")
    if not chosen:
        user = user_config_file(env)
        chosen = str(user) if user.is_file() else None
    if chosen:
        check_private(chosen)
    return chosen


def check_private(file: str) -> None:
    """Refuse a configuration file that holds a token and group or others may read."""
    try:
        mode = os.stat(file).st_mode
        with open(file, "rb") as fh:
            holds_token = "token" in tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError):
        return  # the configuration loader reports it, naming the file
    if holds_token and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AccessError(
            f"config file {file} holds a token and is readable by group or others "
            f"(mode {stat.S_IMODE(mode):04o}): run 'chmod 600 {file}'"
        )


def resolve_token(token: str, token_file: str) -> str:
    """The token to send: ``token`` if given, else the contents of ``token_file``.

    :class:`Unauthorized` if there is none or it does not have a token's shape (checked
    before anything is sent).
    """
    source = "--token / BISMUTH_TOKEN / token in the config file"
    if not token and token_file:
        try:
            token = Path(token_file).read_text(encoding="ascii", errors="replace").strip()
            source = token_file
        except OSError:
            token = ""
    if not token:
        raise Unauthorized(
            'no API token: give --token, set BISMUTH_TOKEN, or put token = "..." in '
            f"{user_config_file()} (mode 0600)"
        )
    if tokens.parse(token.strip()) is None:
        raise Unauthorized(f"the token from {source} is not a Bismuth token (bth_...)")
    return token.strip()
