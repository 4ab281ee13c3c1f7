"""nginx's configuration, rendered from :class:`~bismuth_fe.config.FrontendConfig` (pure).

The template (``nginx.conf.j2``) and the Lua it loads (``lua/bismuth/*.lua``) ship inside
this package, so a frontend always runs the Lua of its own version. Everything a route
change touches lives in shared memory, filled through the control socket: this file changes
only when the frontend's settings do.
"""

from __future__ import annotations

import re
from pathlib import Path

import jinja2

from bismuth_core.credentials import AGENT_HEADER, FrontendCredentials

from .config import FrontendConfig

PACKAGE_DIR = Path(__file__).resolve().parent
LUA_DIR = PACKAGE_DIR / "lua"
TEMPLATE = "nginx.conf.j2"

# nginx's own errors, answered in JSON (their text is in lua/bismuth/frontend.lua); nginx
# calls a head too large 494, and answers it as 431.
ERRORS = (
    (400, "bad_request"),
    (408, "client_timeout"),
    (411, "length_required"),
    (413, "too_large"),
    (414, "uri_too_long"),
    (494, "header_too_large"),
    (500, "internal_error"),
    (501, "not_implemented"),
)

_CREDENTIAL = re.compile(r"[A-Za-z0-9_-]+")
_ERROR_LEVELS = {"debug": "info", "info": "notice", "warning": "warn", "error": "error"}


def render(config: FrontendConfig, credentials: FrontendCredentials) -> str:
    """The text of nginx.conf for ``config``; requests through agents carry the agent
    credential of ``credentials`` (the file is root's alone)."""
    if not _CREDENTIAL.fullmatch(credentials.agent):
        raise ValueError("the agent credential is not base64url text")
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(PACKAGE_DIR)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # an nginx config, not HTML
    )
    host, port = config.public_address()
    return environment.get_template(TEMPLATE).render(
        modules=config.nginx_modules,
        user=config.nginx_user,
        workers=config.workers,
        worker_connections=config.worker_connections,
        shutdown_timeout=duration(config.shutdown_timeout),
        pid_file=config.pid_file,
        error_level=_ERROR_LEVELS.get(config.log_level.lower(), "notice"),
        access_log=config.access_log,
        temp_dir=config.temp_dir,
        lua_dir=LUA_DIR,
        routes_memory=config.routes_memory,
        lua_settings=lua_table(lua_settings(config)),
        client_timeout=duration(config.client_timeout),
        keepalive_timeout=duration(config.keepalive_timeout),
        max_header_buffers=config.max_header_buffers,
        max_header_size=config.max_header_size,
        max_body_size=config.max_body_size,
        trusted_proxies=[str(n) for n in config.proxy_networks()],
        upstream_keepalive=max(config.upstream_keepalive, 1),
        upstream_idle_timeout=duration(config.upstream_idle_timeout),
        public_listen=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        retries=config.retries,
        retry_window=duration(config.connect_timeout * (config.retries + 1) + 1.0),
        connect_timeout=duration(config.connect_timeout),
        request_timeout=duration(config.request_timeout),
        errors=ERRORS,
        control_socket=config.control_socket,
        agent_header=AGENT_HEADER,
        credential=credentials.agent,
    )


def lua_settings(config: FrontendConfig) -> dict[str, int | float | str]:
    """What the Lua side needs to know of the settings (for its messages and retries)."""
    return {
        "retries": config.retries,
        "connect_timeout": config.connect_timeout,
        "request_timeout": config.request_timeout,
        "max_body_size": config.max_body_size,
        "max_header_size": config.max_header_size,
    }


def lua_table(values: dict[str, int | float | str]) -> str:
    """A Lua table constructor for flat settings (names are identifiers)."""
    parts = []
    for name, value in sorted(values.items()):
        if isinstance(value, str):
            text = value.replace("\\", "\\\\").replace('"', '\\"')
            parts.append(f'{name} = "{text}"')
        else:
            parts.append(f"{name} = {value!r}")
    return "{" + ", ".join(parts) + "}"


def duration(seconds: float) -> str:
    """An nginx time value: whole milliseconds (nginx takes no fractional seconds)."""
    return f"{max(round(seconds * 1000), 1)}ms"
