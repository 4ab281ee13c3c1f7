"""bismuthd, the per-host agent: not included in this release yet (see README)."""
