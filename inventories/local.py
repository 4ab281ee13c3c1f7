"""This machine as a single-node cluster: pyinfra's local connector, no SSH.

Run from the repository root so that ``group_data/`` is found::

    .venv/bin/pyinfra -y inventories/local.py deploy.py

No role groups: this host runs everything (ZooKeeper, API, frontend, containerd, agent).
The toolkit runs from this checkout's virtualenv (``toolkit_install = "checkout"``), so an
edit of the code only needs the daemons restarted (``make down && make up``), and the base
image is built here from the checkout.
"""

local = [("@local", {"toolkit_install": "checkout"})]
