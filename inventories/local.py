"""This machine as a single-node cluster: pyinfra's local connector, no SSH.

Run from the repository root so that ``group_data/`` is found::

    .venv/bin/pyinfra -y inventories/local.py deploy.py
"""

local = ["@local"]
