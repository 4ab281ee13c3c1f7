"""Lab hosts: network namespaces with sshd on one machine, for fleet tests and operators.

``python -m bismuth_lab up 3`` brings up lab1..lab3 (see :mod:`bismuth_lab.lab`);
``inventories/lab.py`` points pyinfra at them.
"""

from bismuth_lab.lab import HostStatus, Lab, LabError
from bismuth_lab.plan import PRIVATE_DIRS, TMPFS_DIRS

__all__ = ["PRIVATE_DIRS", "TMPFS_DIRS", "HostStatus", "Lab", "LabError"]
