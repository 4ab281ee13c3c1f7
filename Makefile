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

.PHONY: help up down test lint venv packages python

help:
	@echo "make up     install everything and bring up a single-node cluster on this machine (root)"
	@echo "make down   stop what 'make up' started"
	@echo "make test   run the whole test suite"
	@echo "make lint   ruff check and ruff format --check"

# Python first: reading the settings needs it (a minimal Debian may not have it yet).
python:
	@test -x $(SYSTEM_PYTHON) || { apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3; }

# Debian packages, only if one is missing (so a second run touches nothing).
packages: python
	@missing=""; for p in $(call setting,debian_packages); do \
	  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -q; \
	  apt-get install -y -q --no-install-recommends $$missing; \
	fi

# The virtualenv with the toolkit (editable) and its test tools; redone when pyproject changes.
venv: $(STAMP)
$(STAMP): pyproject.toml setup.py | packages
	test -x $(VENV)/bin/python || $(SYSTEM_PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

up: packages venv
	$(VENV)/bin/pyinfra -y inventories/local.py deploy.py
	@echo
	@echo "Bismuth is up (environment '$(call setting,zookeeper_env)'):"
	@echo "  API       http://$(call setting,api_bind)/   (health: /healthz)"
	@echo "  frontend  http://$(call setting,fe_bind)/   (health: http://$(call setting,fe_admin_bind)/healthz)"
	@echo "  ZooKeeper $(call setting,node_ip):$(call setting,zookeeper_port)"
	@echo "  logs      $(call setting,log_dir)/"
	@echo "Try:"
	@echo "  curl -s http://$(call setting,api_bind)/healthz"
	@echo "  curl -s http://$(call setting,api_bind)/function"
	@echo "  $(VENV)/bin/bismuthctl nodes"

# Stops supervisord (and with it every daemon) through its own socket, then waits for it to exit.
# On hosts where systemd is PID 1 the daemons are units instead: stop those.
down:
	@if [ -d /run/systemd/system ]; then \
	  systemctl stop bismuth-fe bismuth-api bismuth-zookeeper 2>/dev/null || true; \
	  exit 0; \
	fi; \
	conf="$(call setting,etc_dir)/supervisord.conf"; \
	if ! pid=$$(supervisorctl -c "$$conf" pid 2>/dev/null) || ! [ "$$pid" -gt 0 ] 2>/dev/null; then \
	  echo "nothing to stop: supervisord ($$conf) is not running"; exit 0; \
	fi; \
	supervisorctl -c "$$conf" shutdown; \
	alive() { local s; s=$$(sed -E 's/.*\) (.).*/\1/' "/proc/$$1/stat" 2>/dev/null) && [ "$$s" != Z ]; }; \
	for _ in $$(seq 600); do alive "$$pid" || break; sleep 0.1; done; \
	if alive "$$pid"; then echo "supervisord $$pid is still running" >&2; exit 1; fi; \
	echo "stopped supervisord $$pid and its daemons"

test: venv
	$(VENV)/bin/pytest

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
