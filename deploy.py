"""Bring up a Bismuth cluster: ``pyinfra -y inventories/<fleet>.py deploy.py`` (repo root).

First the pre-flight checks of every host (``tasks/preflight.py``): any problem stops the
run before anything is changed. On every host: Debian packages, kernel settings and
directories, the host firewall (the daemons' ports only from the fleet's hosts and
loopback), the service manager and the toolkit (a versioned install, or a checkout's
virtualenv). Then by inventory group: the ZooKeeper ensemble (``zookeeper``), the cluster
key (which seals function secrets and from which the daemons' credentials derive,
ZooKeeper's included; frontends get only a key derived from it), the environment
(bootstrapped once, its tree given the cluster's ACLs) and every agent host provisioned as
a node, the operator's admin token (on ``api`` hosts, its hash registered in ZooKeeper), the
API (``api``) and the frontend (``frontends``), containerd, the base image and the agent
(``agents``), and finally a sample function served through the frontends. An inventory
without these groups makes each host a single-node cluster. Settings come from
``group_data/`` and host data; every step is idempotent, so a second run reports no
changes.
"""

from tasks.admin_token import admin_token
from tasks.agent import agent
from tasks.base import base
from tasks.cluster import cluster
from tasks.cluster_key import cluster_key, frontend_key
from tasks.containerd import containerd
from tasks.daemons import api, frontend
from tasks.host_firewall import host_firewall
from tasks.images import base_image
from tasks.preflight import preflight
from tasks.sample import sample_function
from tasks.services import service_manager
from tasks.toolkit import toolkit
from tasks.zookeeper import zookeeper

preflight()  # every host checked before anything changes anywhere
base()
host_firewall()
service_manager()
toolkit()
zookeeper()
key = cluster_key()  # before the cluster: bismuthctl acts as the cluster with it
cluster()
admin_token()
api(restart_on=[key])
frontend(restart_on=[frontend_key()])
containerd()
base_image()
agent(restart_on=[key])
sample_function()
