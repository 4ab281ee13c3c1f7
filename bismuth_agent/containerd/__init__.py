"""bismuthd's containerd adapter: containerd's gRPC API, asynchronously (the only grpc user).

Modules, by concern:

- ``client``: ``ContainerdClient(address, namespace="bismuth")`` with ``images``,
  ``containers``, ``content``, ``snapshots``, ``diff``, ``tasks`` and ``events`` services,
  ``version()``, ``ensure_namespace()`` and leases.
- ``oci`` / ``registry`` / ``unpack`` / ``remap``: ``import_oci_archive``, ``pull``,
  ``unpack`` (layers -> snapshots named by chain id) and ``remapped_snapshot`` (a user
  namespace's view of an image).
- ``stdio`` / ``process``: FIFOs for a process's stdio; ``exec_process`` runs one process.
- ``errors``: ``NotFound`` (teardown treats it as success), ``AlreadyExists``,
  ``ContainerdUnavailable``, ``ContainerdError``, ``ImageError``.
- ``types``: the frozen dataclasses callers see instead of protobuf messages.
- ``generate``: builds ``_api/`` (the gRPC stubs) from Debian's containerd protos at install
  time; nothing in ``_api/`` is written by hand or committed.

This package imports nothing at import time, so ``python -m
bismuth_agent.containerd.generate`` works before the stubs exist.
"""
