"""bismuth-provider, the per-container service provider: not included in this release yet."""
