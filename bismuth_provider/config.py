"""Configuration of ``bismuth-provider``: file, ``BISMUTH_*`` environment, then flags.

The agent starts one provider per container and passes everything through the environment
(``BISMUTH_BIND``, ``BISMUTH_TOKEN_FILE``, ...), so the token never appears on a command line.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from bismuth_core.config import ConfigError, split_hostport

from .storage import check_storage_url
from .storage.base import Quotas


@dataclass(frozen=True)
class ProviderConfig:
    # ADDR:PORT to serve on: the container's host-side veth address, port 9000.
    bind: str = "127.0.0.1:9000"
    # File holding the container's bearer token, or "-": read it from stdin (the agent's way).
    token_file: str = ""
    function_id: str = ""
    # Data scope: the function's service group; "" = the function's own id.
    group_id: str = ""
    storage: str = "local:///var/lib/bismuth/data"
    # Byte quotas of the group's data as this function sees it (-1 = none).
    kv_quota: int = -1
    blob_quota: int = -1
    # Largest key/value value and blob accepted (413 beyond).
    max_value_bytes: int = 1 << 20
    max_blob_bytes: int = 256 << 20
    # Secrets: the agent's socket to ask them of ("" = no secrets).
    secrets_socket: str = ""
    # S3 backend settings (storage = s3://bucket[/prefix]): keys of storage.s3.S3Settings.
    s3: dict[str, str] = field(default_factory=dict)
    log_level: str = "info"

    def __post_init__(self) -> None:
        split_hostport(self.bind, 9000)
        check_storage_url(self.storage)
        for name in ("function_id", "group_id"):
            value = getattr(self, name)
            if value:
                try:
                    uuid.UUID(value)
                except ValueError:
                    raise ConfigError(f"config {name}: not a UUID: {value!r}") from None
        if not self.function_id:
            raise ConfigError("config function_id: required")
        if not self.token_file:
            raise ConfigError("config token_file: required")

    @property
    def function(self) -> uuid.UUID:
        return uuid.UUID(self.function_id)

    @property
    def group(self) -> str:
        return str(uuid.UUID(self.group_id or self.function_id))

    @property
    def quotas(self) -> Quotas:
        return Quotas(
            kv=None if self.kv_quota < 0 else self.kv_quota,
            blob=None if self.blob_quota < 0 else self.blob_quota,
        )
