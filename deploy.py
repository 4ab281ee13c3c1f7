"""Bring up a Bismuth cluster: ``pyinfra -y inventories/<fleet>.py deploy.py`` (repo root).

Packages and directories, the service manager, ZooKeeper, the environment and this node in
it, then the API and the frontend. Settings come from ``group_data/`` and host data; every
step is idempotent, so a second run reports no changes.
"""

from tasks.base import base
from tasks.cluster import cluster
from tasks.daemons import api, frontend
from tasks.services import service_manager
from tasks.zookeeper import zookeeper

base()
service_manager()
zookeeper()
cluster()
api()
frontend()
