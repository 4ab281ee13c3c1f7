"""``bismuthctl``: the operator CLI (bootstrap, provision, drain, listings, consistency).

The commands are thin over :mod:`bismuth_core.operations`, :mod:`bismuth_core.cluster` and
:mod:`bismuth_core.consistency`; see :mod:`bismuth_ctl.main` for flags and exit codes.
"""
