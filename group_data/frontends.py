"""Settings of the hosts in the inventory group ``frontends`` (see ``all.py`` for every key).

Frontends take the fleet's function traffic, so they listen on every address; their
``/healthz`` and ``/metrics`` stay on loopback (``fe_admin_bind``).
"""

fe_bind = "0.0.0.0:8000"
