"""bismuth-api: the control plane. CRUD for functions, scheduling, rollouts and node loss."""
