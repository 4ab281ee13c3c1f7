"""Settings for every host of a Bismuth deploy: every path, port and knob lives here.

Override per group (``group_data/<group>.py``), per host (the inventory's host data) or per
run (``pyinfra --data key=value``). Values derived from others (file names under ``etc_dir``,
the ZooKeeper connect string, ...) are computed by the tasks, so overriding a base setting
moves everything that depends on it.
"""

import sys
from pathlib import Path

# --- cluster -----------------------------------------------------------------------------
# Environment (ZooKeeper chroot) the daemons and bismuthctl use; several can share an ensemble.
zookeeper_env = "default"
# This host's IPv4 address: its node name in ZooKeeper, and the address ZooKeeper binds to.
node_ip = "127.0.0.1"
# Seconds bismuthctl waits for ZooKeeper to answer before bootstrapping the environment.
bootstrap_wait = 60
# The fleet's cluster key seals function secrets in ZooKeeper; every host gets the same one.
# Kept on the machine running the deploy (generated there, mode 0600, if missing; back it up:
# without it the stored secrets are lost); "" = <this checkout>/var/secrets/<zookeeper_env>.key
cluster_key_source = ""
cluster_key_file = ""  # "" = <etc_dir>/cluster.key: where the API and the agent read it
# Frontends get a key derived from the cluster key instead, which gives them the credential
# agents ask of callers and nothing more; "" = <etc_dir>/frontend.key.
frontend_key_file = ""
# The operator's admin token for the API (every tenant), made on the machine running the
# deploy like the cluster key and kept next to it (mode 0600; "" = var/secrets/<env>.admin-token
# when the key is var/secrets/<env>.key), installed on API hosts (root, 0600; "" =
# <etc_dir>/admin.token); only its hash is in ZooKeeper. The deploy calls the API with it.
admin_token_source = ""
admin_token_file = ""

# --- ZooKeeper ---------------------------------------------------------------------------
# Members of the ensemble are the hosts of the inventory group "zookeeper" (their node_ip,
# in inventory order, gives each its myid). Without such a group, each host runs a
# standalone ZooKeeper of its own. Hosts of the group "zookeeper_observers" run observers,
# which the frontends read through (docs/scale.md).
zookeeper_port = 2181  # client port
zookeeper_peer_port = 2888  # follower <-> leader (ensembles only)
zookeeper_election_port = 3888  # leader election (ensembles only)
zookeeper_heap = "256m"  # JVM -Xmx
zookeeper_java_opts: list[str] = []  # extra JVM flags
zookeeper_tick_ms = 2000  # ZooKeeper's time unit; session timeouts are 2-20 ticks
zookeeper_log_level = "INFO"  # log4j level of ZooKeeper's log: DEBUG, INFO, WARN or ERROR
zookeeper_java = "/usr/bin/java"
# Debian's zookeeper.jar names its dependencies in its manifest; add exactly one SLF4J
# binding (log4j 1.2) so ZooKeeper logs. "/usr/share/java/*" would bring several bindings,
# which silence ZooKeeper or stop it (log4j-over-slf4j next to slf4j-log4j12).
zookeeper_classpath = ":".join(
    [
        "/usr/share/java/zookeeper.jar",
        "/usr/share/java/slf4j-log4j12.jar",
        "/usr/share/java/log4j-1.2.jar",
    ]
)

# --- Bismuth daemons ---------------------------------------------------------------------
api_bind = "127.0.0.1:8002"  # bismuth-api: control-plane HTTP API
fe_bind = "127.0.0.1:8000"  # the frontend's nginx: function traffic, routed by Host header
fe_admin_bind = "127.0.0.1:8003"  # bismuthfe (nginx's controller): /healthz and /metrics
# The frontend: nginx serves fe_bind, bismuthfe fills its route table through a socket in
# <run_dir>/fe (0700). Proxies in front of it whose X-Forwarded-For/-Proto are kept (CIDRs;
# any other peer's claims are replaced by its address), nginx's worker processes (0 = one
# per core), the largest request body, request line or header, and how long a client may
# take (seconds) before it is cut off.
fe_trusted_proxies: list[str] = []
fe_workers = 0
fe_max_body_size = 10485760
fe_max_header_size = 8192
fe_client_timeout = 30.0
# Routes from frontends to each node's container pool, kept by bismuthfe from what the
# agents announce: None = on frontends of a fleet with role groups, off on single nodes.
fe_node_routes: bool | None = None
agent_port = 8001  # bismuthd's port on every node's IP
node_loss_grace = 10.0  # seconds a node may be gone before its containers are replaced
# Seconds of each API replica's ZooKeeper session: how long a replica that died keeps leading
# (finishing rollouts, replacing lost nodes' containers) before a standby takes over. At
# least 2 ZooKeeper ticks (zookeeper_tick_ms); ZooKeeper raises shorter requests to that.
api_session_timeout = 4.0
log_level = "info"  # debug, info, warning or error
# Seconds the deploy waits for the agent to be alive and for the sample function to answer.
start_wait = 180
# Pre-flight checks, on every host before anything is changed (see tasks/preflight.py): the
# Debian release hosts must run, and the free disk space (MiB) each needs where the deploy
# writes (var_dir; toolkit_dir with wheel installs).
required_debian = "12"
min_free_disk_mb = 1024

# --- the toolkit on the hosts ------------------------------------------------------------
# "wheel": the machine running pyinfra builds a wheel of this project and of each of its
# dependencies into <wheelhouse_dir>/<version>/, uploads that to every host and installs it,
# without any package index, into a virtualenv of its own, <toolkit_dir>/<version>
# (<toolkit_dir>/current: the host's bismuthctl; each daemon runs from its own link,
# <toolkit_dir>/bismuth-agent, -api, -fe). Hosts need the Python (major.minor) and the
# architecture of the machine running pyinfra.
# "checkout": every program runs from bismuth_venv, a checkout's virtualenv on the host
# (inventories/local.py: make up on this machine).
toolkit_install = "wheel"
toolkit_dir = "/opt/bismuth"
toolkit_python = "/usr/bin/python3"  # makes the virtualenvs on the hosts (Debian's python3)
toolkit_source = ""  # "" = this checkout: the source tree the wheel is built from
# The version installed is pyproject's, plus "+<label>" when a label is set (letters and
# digits, dot-separated): a build of changed sources gets a version of its own.
toolkit_version_label = ""
wheelhouse_dir = ""  # "" = <this checkout>/var/wheelhouse, on the machine running pyinfra
# Checkout installs: the virtualenv (default: the one running pyinfra) and the checkout the
# base image is built from, on the host.
bismuth_venv = sys.prefix
bismuth_source = str(Path(__file__).resolve().parent.parent)

# --- rolling agent upgrades (upgrade.py) -------------------------------------------------
upgrade_batch_size = 1  # agent hosts upgraded at the same time
# Seconds a restarted agent has to pass its health gate: alive with the new version, every
# container of its node adopted and Running, every container's task the same process.
upgrade_gate_wait = 120

# --- the agent (bismuthd) and its containers ---------------------------------------------
agent_state_dir = ""  # "" = <var_dir>/agent: network allocations, per-container files
container_log_dir = ""  # "" = <log_dir>/containers: each container's stdout and stderr
agent_cgroup_parent = ""  # "" = /bismuth-<node_ip>; two agents on one machine never share one
# Each node's containers get /30s of the node's own pool; every pool lies in
# container_network, which no container reaches. network_pool "" = the container_pool_prefix
# slice of container_network numbered by node_ip (tasks/pools.py); the deploy refuses two
# nodes sharing a pool. Frontends connect to containers' addresses straight.
container_network = "10.160.0.0/11"
container_pool_prefix = 20  # a /20 per node: 1024 containers; 512 nodes in a /11
network_pool = ""
plain_http_registries: list[str] = []  # registries (host[:port]) pulled from over plain HTTP
outbound_nat = False  # containers reach the internet through NAT
rate_limit_kbit = 0  # per-container rate limit in kbit/s each way (0 = none)
# Function repos are fetched over https only; plain http only from these hosts ("name" or
# "name:port": a lab's git server). git trusts the system's CAs, or only those in
# git_ca_file (a PEM bundle on the agent hosts); a clone may hold repo_max_bytes.
repo_http_hosts: list[str] = []
git_ca_file = ""
repo_max_bytes = 256 << 20
# Where each container's provider keeps its group's key/value pairs and blobs:
# "" = local://<var_dir>/data (SQLite and files on the node), or s3://bucket/prefix, shared
# by every node, with the endpoint, region and credentials below.
provider_storage = ""
# s3:// storage's settings, handed to every provider as they are: endpoint (e.g.
# "https://s3.example.net"; none = AWS's own), region ("us-east-1"), access_key and
# secret_key (none = boto3's credential chain), part_size, max_attempts.
provider_s3: dict[str, str] = {}
# The system user providers run as (the deploy creates it on agent hosts), so code that
# breaks a provider gets no root on the host. None = "bismuth-provider" (checkout installs
# too: their providers run from a versioned install of the checkout, which that user can
# read wherever the checkout is); "" = root.
provider_user: str | None = None
# Each provider's cgroup: memory in bytes (every container costs its node this much beyond
# its own limit: the agent announces it, the scheduler counts it) and processes.
provider_memory = 96 << 20
provider_pids = 64
# Fork each provider from one zygote that has imported the provider once (confined like a
# provider: its user, no new privileges, a cgroup of its own): a provider answers in tens of
# milliseconds instead of after a Python start. False: every provider is a new process.
provider_zygote = True
# Free host id ranges each agent keeps remapped ahead of need for every image it starts (in
# the background): a container given a range nobody used yet waits for its remap otherwise.
id_map_spare = 2
# Cores a container may use until its Server entrypoint listens (then its function's cpu):
# an interpreter's start is CPU-bound. 0 = the function's cpu from the start.
start_cpu = 1.0
# Kernel settings of agent hosts, applied by every deploy: modules loaded unless loaded or
# built in, and sysctls, e.g. {"fs.inotify.max_user_instances": 1024}. Not net.ipv4.ip_forward:
# the agent turns forwarding on per interface itself, with a firewall rule that forwards
# container traffic only, and off again; turned on globally, the host would route everything.
# To keep them across reboots name files for them (e.g. /etc/sysctl.d/60-bismuth.conf,
# /etc/modules-load.d/bismuth.conf); "" = not written (the kernel loads modules on use).
agent_kernel_modules = ["overlay", "veth", "nf_tables"]
agent_sysctls: dict[str, int | str] = {}
sysctl_conf = ""
modules_conf = ""

# --- containerd --------------------------------------------------------------------------
# The toolkit runs containerd with a config of its own (<etc_dir>/containerd.toml, the CRI
# plugin off). Where systemd is PID 1, Debian's containerd.service is stopped and disabled:
# it would use the same socket and root.
containerd_address = "/run/containerd/containerd.sock"  # gRPC socket (ttrpc: <address>.ttrpc)
containerd_root = "/var/lib/containerd"  # content, images, snapshots
containerd_state = "/run/containerd"  # runtime state (task bundles)
containerd_namespace = "bismuth"  # the design's namespace: `ctr -n bismuth tasks ls`
containerd_command = "/usr/bin/containerd"

# --- base image --------------------------------------------------------------------------
# Built once from Debian packages (python3 -m bismuth_images.build), then imported into containerd.
base_image = "bismuth.local/python:3.11"
base_image_archive = ""  # "" = <var_dir>/images/python-3.11.oci.tar (name follows base_image)
# Wheel installs: the archive is built on the machine running pyinfra, here, and uploaded.
base_image_source = ""  # "" = <this checkout>/var/images/python-3.11.oci.tar

# --- sample function ---------------------------------------------------------------------
# A small Python server in the base image, created once through the API and reachable
# through the frontend: curl -H 'Host: <sample_hostname>' http://<fe_bind>/
sample_function = True
sample_hostname = "hello.bismuth.local"

# --- filesystem --------------------------------------------------------------------------
etc_dir = "/etc/bismuth"  # configuration: daemon TOML files, containerd.toml, zookeeper/, ...
var_dir = "/var/lib/bismuth"  # state: ZooKeeper's data, the agent's state, the base image
log_dir = "/var/log/bismuth"  # one log file per daemon, containers/ for functions' output
run_dir = "/run/bismuth"  # supervisord's socket and pidfile; fe/: nginx's control socket

# --- host firewall -----------------------------------------------------------------------
# An nftables table of the deploy's own on every host: the ports of ZooKeeper, the agent, the
# API and the frontend's admin address accept connections only from loopback, from every
# inventory host's node_ip and from host_firewall_allow (addresses or IPv4 networks, e.g. a
# monitoring host); the frontend's public port and every other port are left alone.
host_firewall = True
host_firewall_table = ""  # "" = bismuth_host_<zookeeper_env>
host_firewall_allow: list[str] = []

# --- host --------------------------------------------------------------------------------
# "auto": systemd units where systemd is PID 1, otherwise a supervisord of the toolkit's own.
service_manager = "auto"
# Debian packages, installed only when missing (make up installs them before pyinfra runs):
# every host's, agent hosts', ZooKeeper hosts', and what building the toolkit and the base
# image needs (checkout installs, and the machine running a fleet's deploy).
debian_packages = [
    "curl",
    "iproute2",
    "nftables",
    "python3-venv",  # the toolkit's virtualenvs
    "supervisor",  # keeps the daemons running where systemd is not PID 1
]
agent_packages = [
    "containerd",  # the container runtime (brings runc and ctr)
    "git",  # the agent clones function repos
    "tini",  # tini-static: each container's PID 1 (signals, orphans)
]
zookeeper_packages = ["zookeeper"]
frontend_packages = [
    "nginx",  # the frontend's data plane
    "libnginx-mod-http-lua",  # its route table and balancer, in Lua
    "lua-resty-core",
    "lua-cjson",
]
build_packages = [
    "gcc",
    "golang-github-containerd-containerd-dev",  # containerd's API protos: stubs are generated
    "mmdebstrap",  # builds the base image from Debian packages
    "python3-dev",
]
