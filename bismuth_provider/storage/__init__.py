"""Storage backends of the provider, chosen by URL.

- ``local:///var/lib/bismuth/data`` (default): this host's disk (``local.LocalStorage``);
  data under ``<path>/<group>/``. Fits a single node, or fleets whose functions run on one
  host each.
- ``s3://bucket[/prefix]``: any S3-compatible service (``s3.S3Storage``); every host's
  providers see the same data. Endpoint, region and credentials come from the provider's
  ``s3_*`` settings.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from bismuth_core.config import ConfigError

from .base import BlobStream, QuotaExceeded, Quotas, Storage, WriteMode

__all__ = ["BlobStream", "QuotaExceeded", "Quotas", "Storage", "WriteMode", "open_storage"]


def check_storage_url(url: str) -> str:
    """``url`` if a backend serves it; ``ConfigError`` naming the problem otherwise."""
    parts = urlsplit(url)
    if parts.scheme == "local":
        if parts.netloc or not parts.path.startswith("/"):
            raise ConfigError(f"config storage: want local:///absolute/path, not {url!r}")
    elif parts.scheme == "s3":
        if not parts.netloc:
            raise ConfigError(f"config storage: want s3://bucket[/prefix], not {url!r}")
    else:
        raise ConfigError(f"config storage: scheme must be local or s3, not {parts.scheme!r}")
    return url


def open_storage(url: str, group: str, quotas: Quotas, s3: object | None = None) -> Storage:
    """The backend for ``url``, serving ``group``'s data (``s3``: an ``S3Settings``)."""
    check_storage_url(url)
    parts = urlsplit(url)
    if parts.scheme == "local":
        from .local import LocalStorage

        return LocalStorage(Path(parts.path), group, quotas)
    from .s3 import S3Settings, S3Storage

    settings = s3 if isinstance(s3, S3Settings) else S3Settings()
    return S3Storage(url, group, quotas, settings)
