"""``bismuthfe``: the frontend that routes HTTP requests by ``Host`` to running containers.

A request for ``Host: app.example`` is looked up in a routing table kept current from
ZooKeeper (``/route``, ``/function/<fid>/backends``, container status and node liveness),
then streamed to ``http://<node>:<agent_port>/invoke/<cid><path>`` on the agent of a
running container, chosen by least outstanding requests. Modules:

- :mod:`.config`   ``FrontendConfig`` and the command line
- :mod:`.routing`  the immutable routing table, built from a ZooKeeper snapshot (pure)
- :mod:`.cache`    keeps the table current from ZooKeeper (:mod:`.subtree` mirrors)
- :mod:`.balance`  least-outstanding choice among eligible backends
- :mod:`.headers`  hop-by-hop filtering and ``X-Forwarded-*``
- :mod:`.tracing`  W3C ``traceparent``
- :mod:`.proxy`    one forwarded request: retries, timeouts, streaming both ways
- :mod:`.metrics`  Prometheus metrics on a per-app registry
- :mod:`.app`      ``create_app`` / ``create_admin_app`` and their dependencies
- :mod:`.server`   running both apps, graceful shutdown; :mod:`.main` the entry point
"""
