"""Reaching the nodes: one SSH connection per host, opened in parallel and reused (see fleet.py)."""
