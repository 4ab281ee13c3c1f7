"""Every change to desired state, each as one guarded ZooKeeper multi-op.

Used by the control plane (create, update, delete, finishing rollouts, replacing containers
of lost nodes, secrets) and by ``bismuthctl`` (bootstrap, provision, drain, consistency,
secrets). Writers race on version checks: a function's znodes are guarded by their
versions, and every node that receives containers has its ``container`` znode's version
bumped in the same multi-op, so two schedulers can never both fill the same free capacity.
A lost race is retried with freshly read state (:mod:`.races`).

By concern: :mod:`.functions` (create, update, delete), :mod:`.rollouts` (finishing a
rollout, moving a container), :mod:`.nodes` (bootstrap, provision, drain),
:mod:`.function_secrets`, and what they share: :mod:`.placement` (containers and node
reservations) and :mod:`.routes` (hostname ownership).
"""

from .function_secrets import (
    delete_secret,
    read_sealed_secret,
    secret_names,
    secret_removal_ops,
    set_secret,
)
from .functions import Guards, create_function, delete_function, ownership_ops, update_function
from .nodes import bootstrap, deprovision, drain, is_bootstrapped, provision, set_enabled
from .placement import removal_ops, remove_containers_ops
from .races import retry_races
from .rollouts import finish_rollout, move_container

__all__ = [
    "Guards",
    "bootstrap",
    "create_function",
    "delete_function",
    "delete_secret",
    "deprovision",
    "drain",
    "finish_rollout",
    "is_bootstrapped",
    "move_container",
    "ownership_ops",
    "provision",
    "read_sealed_secret",
    "removal_ops",
    "remove_containers_ops",
    "retry_races",
    "secret_names",
    "secret_removal_ops",
    "set_enabled",
    "set_secret",
    "update_function",
]
