"""Bring up a Bismuth cluster: ``pyinfra -y inventories/<fleet>.py deploy.py`` (repo root).

Packages and directories, the service manager, ZooKeeper, the environment and this node in
it, the cluster key (which seals function secrets), the API and the frontend, containerd,
the base image, the agent, and finally a sample function served through the frontend.
Settings come from ``group_data/`` and host data; every step is idempotent, so a second run
reports no changes.
"""

from tasks.agent import agent
from tasks.base import base
from tasks.cluster import cluster
from tasks.cluster_key import cluster_key
from tasks.containerd import containerd
from tasks.daemons import api, frontend
from tasks.images import base_image
from tasks.sample import sample_function
from tasks.services import service_manager
from tasks.zookeeper import zookeeper

base()
service_manager()
zookeeper()
cluster()
key = cluster_key()
api(restart_on=[key])
frontend()
containerd()
base_image()
agent(restart_on=[key])
sample_function()
