"""The sample function: proof that a fresh cluster serves requests end to end.

Its definition (``templates/sample-function.json.j2``: the base image running
``templates/sample-function.py`` in Server mode) is rendered to
``<etc_dir>/sample-function.json`` on the first host of ``api`` and POSTed to its API once,
with the operator's admin token for the tenant ``default``, when no function answers
``sample_hostname`` yet. Every frontend host then waits, with a
deadline, until its frontend answers that hostname with 200. Off with
``sample_function = False``.
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import server

from bismuth_core.tenancy import DEFAULT_TENANT
from tasks.admin_token import authorization_header
from tasks.cluster import bismuthctl
from tasks.daemons import FE_PROGRAM
from tasks.facts import HttpStatus, RoutedHostnames, http_probe
from tasks.local import streamed_shell
from tasks.rendering import TEMPLATES, template_file
from tasks.roles import API, FRONTENDS, first_of, has_role
from tasks.services import program_log
from tasks.waiting import wait_until

PROGRAM = TEMPLATES / "sample-function.py"


def local_url(bind: str) -> str:
    """``http://ADDR:PORT/`` for a daemon bound to ``bind`` (every address: loopback)."""
    address, _, port = bind.rpartition(":")
    return f"http://{'127.0.0.1' if address in ('0.0.0.0', '') else address}:{port}/"


def frontend_url() -> str:
    return local_url(host.data.fe_bind)


def routed() -> bool:
    """Whether a function answers ``sample_hostname``, asked when the deploy executes."""
    return host.data.sample_hostname in host.get_fact(RoutedHostnames, bismuthctl=bismuthctl())


def answers() -> bool:
    """Whether the frontend answers ``sample_hostname`` with 200 right now."""
    status = host.get_fact(HttpStatus, url=frontend_url(), host_header=host.data.sample_hostname)
    return bool(status == 200)


def create_command(definition: str) -> str:
    """POST the definition as the operator (the admin token's header from stdin, not argv),
    for the tenant ``default``."""
    curl = shlex.join(
        [
            "curl",
            "-sS",
            "--fail-with-body",
            "--noproxy",
            "*",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-H",
            "@-",
            "--data-binary",
            f"@{definition}",
            f"{local_url(host.data.api_bind)}function?tenant={DEFAULT_TENANT}",
        ]
    )
    return f"{authorization_header()} | {curl}"


@deploy("Sample function")
def sample_function() -> None:
    """Create the sample function unless its hostname is routed; wait until it answers."""
    if not host.data.sample_function:
        return
    hostname = host.data.sample_hostname
    if first_of(API):
        path = f"{host.data.etc_dir}/sample-function.json"
        template_file(
            "Sample function definition",
            "sample-function.json.j2",
            path,
            "644",
            image=host.data.base_image,
            hostname=hostname,
            program=PROGRAM.read_text(),
        )
        server.shell(
            name=f"Create the sample function ({hostname})",
            commands=[create_command(path)],
            _if=lambda: not routed(),
        )
    if not has_role(FRONTENDS):
        return
    probe = http_probe(frontend_url(), hostname)
    streamed_shell(
        f"Wait until {hostname} answers through the frontend",
        wait_until(
            f'[ "$({probe})" = 200 ]',
            float(host.data.start_wait),
            f"{hostname} answering 200 at {frontend_url()}",
            program_log(FE_PROGRAM),
            interval=0.5,
        ),
        _if=lambda: not answers(),
    )
