"""bismuthd, the per-host agent: runs the node's containers through containerd."""
