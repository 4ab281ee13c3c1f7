"""Templated files: every task renders ``templates/*.j2`` the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyinfra.api.operation import OperationMeta
from pyinfra.operations import files

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
JINJA = {"trim_blocks": True, "lstrip_blocks": True}


def template_file(
    name: str, template: str, dest: str, mode: str, **variables: Any
) -> OperationMeta:
    """Render ``templates/<template>`` to ``dest`` on the host; changed only if the text did."""
    return files.template(
        name=name,
        src=str(TEMPLATES / template),
        dest=dest,
        mode=mode,
        jinja_env_kwargs=dict(JINJA),
        **variables,
    )
