"""Rolling upgrade of the agents: ``pyinfra -y inventories/<fleet>.py upgrade.py`` (repo root).

Builds this run's version (the checkout's, or ``toolkit_source``, with
``toolkit_version_label``), installs it next to the running one on every agent host, then
switches the agents to it one batch of ``upgrade_batch_size`` hosts at a time: restart the
agent, wait until it is alive with the new version and has adopted every container of its
node, all still ``Running`` in the same processes. The first host that fails this gate is
rolled back and the rollout stops there; later hosts keep their version. Containers are never
restarted. Only the agents change: run ``deploy.py`` with the same version afterwards to move
the API and the frontends too. See ``tasks/upgrade.py``.
"""

from tasks.preflight import preflight
from tasks.upgrade import rolling_upgrade, stage

preflight()
stage()
rolling_upgrade()
