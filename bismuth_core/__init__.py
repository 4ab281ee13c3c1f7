"""Shared model of a Bismuth cluster: definitions, ZooKeeper layout and client, config, errors."""

__version__ = "0.1.0"
