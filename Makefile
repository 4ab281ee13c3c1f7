# Bismuth fleet toolkit: the two commands (`make up`, `make test`) and a few more.
# Settings (paths, ports, packages) are read from group_data/all.py, the deploy's own data.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

SYSTEM_PYTHON ?= /usr/bin/python3
VENV := .venv
STAMP := $(VENV)/.installed
# One setting of group_data/all.py, printed for the shell (lists space-separated).
setting = $(shell $(SYSTEM_PYTHON) -c 'import runpy, sys; v = runpy.run_path("group_data/all.py")[sys.argv[1]]; print(" ".join(v) if isinstance(v, list) else v)' $(1))

.PHONY: help up down test lint venv packages test-packages python

help:
	@echo "make up     install everything and bring up a single-node cluster on this machine (root)"
	@echo "make down   stop what 'make up' started"
	@echo "make test   install what the tests lack, then run the whole test suite (root)"
	@echo "make lint   ruff check and ruff format --check"

# Python first: reading the settings needs it (a minimal Debian may not have it yet).
python:
	@test -x $(SYSTEM_PYTHON) || { apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3; }

# Debian packages, only if one is missing (so a second run touches nothing): this machine
# runs every part of the cluster and builds the toolkit and the base image.
DEBIAN_PACKAGES = $(foreach list,debian_packages agent_packages zookeeper_packages frontend_packages build_packages,$(call setting,$(list)))
# What the tests need beyond that: one list, tests/debian-packages.txt.
TEST_PACKAGES = $(shell sed -e 's/\#.*//' tests/debian-packages.txt)
define install_missing
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -q; \
	  apt-get install -y -q --no-install-recommends $$missing; \
	fi
endef
packages: python
	$(call install_missing,$(DEBIAN_PACKAGES))

test-packages: packages
	$(call install_missing,$(TEST_PACKAGES))

# The virtualenv with the toolkit (editable), the deploy's tools (pyinfra) and the test tools;
# redone when pyproject changes.
venv: $(STAMP)
$(STAMP): pyproject.toml setup.py | packages
	test -x $(VENV)/bin/python || $(SYSTEM_PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[deploy,test]'
	touch $@

up: packages venv
	$(VENV)/bin/pyinfra -y inventories/local.py deploy.py
	@echo
	@echo "Bismuth is up (environment '$(call setting,zookeeper_env)'):"
	@echo "  API       http://$(call setting,api_bind)/   (health: /healthz)"
	@echo "  frontend  http://$(call setting,fe_bind)/   (health: http://$(call setting,fe_admin_bind)/healthz)"
	@echo "  agent     http://$(call setting,node_ip):$(call setting,agent_port)/healthz   (containerd: $(call setting,containerd_address))"
	@echo "  ZooKeeper $(call setting,node_ip):$(call setting,zookeeper_port)"
	@echo "  logs      $(call setting,log_dir)/"
	@echo "Try:"
	@if [ "$(call setting,sample_function)" = True ]; then \
	  echo "  curl -H 'Host: $(call setting,sample_hostname)' http://$(call setting,fe_bind)/   # the sample function"; \
	fi
	@echo "  curl -s -H \"Authorization: Bearer \$$(cat $(ADMIN_TOKEN_FILE))\" http://$(call setting,api_bind)/function"
	@echo "  $(VENV)/bin/bismuthctl nodes"
	@echo "  $(VENV)/bin/bismuthctl function list   # as root here: with the admin token"
	@echo "The operator's admin token (every tenant) is $(ADMIN_TOKEN_FILE) (root only);"
	@echo "the deploy keeps it in $(ADMIN_TOKEN_SOURCE) with the cluster key: back both up."
	@echo "Tenants and their tokens: $(VENV)/bin/bismuthctl tenant create NAME"

# The deploy's host firewall table (group data: host_firewall_table, else per environment).
HOST_FIREWALL_TABLE = $(or $(call setting,host_firewall_table),bismuth_host_$(call setting,zookeeper_env))

# Where `make up` keeps the operator's admin token: on this machine, and as the API host.
ADMIN_TOKEN_FILE = $(or $(call setting,admin_token_file),$(call setting,etc_dir)/admin.token)
ADMIN_TOKEN_SOURCE = $(or $(call setting,admin_token_source),var/secrets/$(call setting,zookeeper_env).admin-token)

# What `make down` stops, from group data. Override on the command line to stop another
# deploy of this machine (the deploy test does): make down ETC_DIR=... CONTAINERD_ADDRESS=...
ETC_DIR = $(call setting,etc_dir)
CONTAINERD_ADDRESS = $(call setting,containerd_address)
CONTAINERD_NAMESPACE = $(call setting,containerd_namespace)
SERVICE_MANAGER = $(call setting,service_manager)
AGENT_STATE_DIR = $(or $(call setting,agent_state_dir),$(call setting,var_dir)/agent)

# Stops the providers the agent started (they outlive it, in sessions of their own): each
# container's <agent state dir>/containers/<id>/provider.pid names one, killed only if that
# very process still runs (same start time, a provider's command line); SIGTERM, then SIGKILL
# after 10 s.
define STOP_PROVIDERS
import contextlib, os, signal, sys, time
from pathlib import Path
from bismuth_agent.providers import recorded_pid
dirs = [d for d in Path(sys.argv[1]).glob("containers/*") if d.is_dir()]
running = lambda: [(d, p) for d, p in ((d, recorded_pid(d)) for d in dirs) if p]
def signal_all(sig, found):
    for _, pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
first = running()
signal_all(signal.SIGTERM, first)
deadline = time.monotonic() + 10
while running() and time.monotonic() < deadline:
    time.sleep(0.1)
signal_all(signal.SIGKILL, running())
if first:
    print(f"stopped {len(first)} provider(s)")
endef
export STOP_PROVIDERS

# Lets go of the user and network namespaces the agent made for its containers (kept as
# files under its state dir while their tasks ran): their veths go with them. The next
# `make up` makes them again for the containers it starts.
define RELEASE_NAMESPACES
import asyncio, sys
from bismuth_agent.namespaces import PreparedNamespaces
if found := asyncio.run(PreparedNamespaces.of_agent(sys.argv[1]).keep_only(set())):
    print(f"released the namespaces of {found} container(s)")
endef
export RELEASE_NAMESPACES

# Removes the agent's firewall table (read from its config), as the agent does: forwarding
# goes off again on the interfaces where the agent had turned it on.
define REMOVE_FIREWALL
import asyncio, sys
from bismuth_agent.config import AgentConfig
from bismuth_agent.service import network_settings
from bismuth_agent.network import Firewall
from bismuth_core.config import load_config
config = load_config(AgentConfig, file=sys.argv[1], env={})
asyncio.run(Firewall(network_settings(config)).remove_all())
endef
export REMOVE_FIREWALL

# First the agent stops (so it restarts nothing), then every function task in containerd's
# namespace is killed and deleted (their containers stay: the next `make up` starts them
# again), then the containers' providers, namespaces and the agent's firewall table, then the rest: supervisord, shut down through its
# own socket (which stops every daemon), waited for until it has exited; or the systemd
# units where systemd is PID 1. Last, the deploy's host firewall table goes.
down:
	@remove_host_firewall() { \
	  nft list table inet "$(HOST_FIREWALL_TABLE)" >/dev/null 2>&1 || return 0; \
	  nft delete table inet "$(HOST_FIREWALL_TABLE)" && \
	    echo "removed the host firewall (table inet $(HOST_FIREWALL_TABLE))"; \
	}; \
	stop_providers() { \
	  [ -x $(VENV)/bin/python ] || return 0; \
	  $(VENV)/bin/python -c "$$STOP_PROVIDERS" "$(AGENT_STATE_DIR)"; \
	  $(VENV)/bin/python -c "$$RELEASE_NAMESPACES" "$(AGENT_STATE_DIR)"; \
	  [ -f "$(ETC_DIR)/agent.toml" ] || return 0; \
	  $(VENV)/bin/python -c "$$REMOVE_FIREWALL" "$(ETC_DIR)/agent.toml"; \
	}; \
	kill_tasks() { \
	  local ctr=(ctr -a "$(CONTAINERD_ADDRESS)" -n "$(CONTAINERD_NAMESPACE)") tasks left t; \
	  tasks=$$("$${ctr[@]}" tasks ls -q 2>/dev/null) || return 0; \
	  [ -n "$$tasks" ] || return 0; \
	  for t in $$tasks; do "$${ctr[@]}" tasks kill -a -s SIGKILL "$$t" >/dev/null 2>&1 || true; done; \
	  for _ in $$(seq 100); do \
	    left=$$("$${ctr[@]}" tasks ls -q) && [ -z "$$left" ] && break; \
	    for t in $$left; do "$${ctr[@]}" tasks rm "$$t" >/dev/null 2>&1 || true; done; \
	    sleep 0.1; \
	  done; \
	  if [ -n "$$left" ]; then echo "function tasks still there: $$left" >&2; return 1; fi; \
	  echo "killed and deleted $$(wc -w <<<"$$tasks") function task(s)"; \
	}; \
	systemd=no; \
	case "$(SERVICE_MANAGER)" in \
	  systemd) systemd=yes ;; \
	  auto) if [ -d /run/systemd/system ]; then systemd=yes; fi ;; \
	esac; \
	if [ "$$systemd" = yes ]; then \
	  systemctl stop bismuth-agent 2>/dev/null || true; \
	  kill_tasks; \
	  stop_providers; \
	  systemctl stop bismuth-fe bismuth-fe-nginx bismuth-api bismuth-containerd bismuth-zookeeper 2>/dev/null || true; \
	  remove_host_firewall; \
	  exit 0; \
	fi; \
	conf="$(ETC_DIR)/supervisord.conf"; \
	if ! pid=$$(supervisorctl -c "$$conf" pid 2>/dev/null) || ! [ "$$pid" -gt 0 ] 2>/dev/null; then \
	  stop_providers; \
	  remove_host_firewall; \
	  echo "nothing to stop: supervisord ($$conf) is not running"; exit 0; \
	fi; \
	supervisorctl -c "$$conf" stop bismuth-agent >/dev/null 2>&1 || true; \
	kill_tasks; \
	stop_providers; \
	supervisorctl -c "$$conf" shutdown; \
	alive() { local s; s=$$(sed -E 's/.*\) (.).*/\1/' "/proc/$$1/stat" 2>/dev/null) && [ "$$s" != Z ]; }; \
	for _ in $$(seq 600); do alive "$$pid" || break; sleep 0.1; done; \
	if alive "$$pid"; then echo "supervisord $$pid is still running" >&2; exit 1; fi; \
	remove_host_firewall; \
	echo "stopped supervisord $$pid and its daemons"

# The whole suite; installs what the tests lack first (it passes next to a running `make up`).
test: test-packages venv
	$(VENV)/bin/pytest

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
