"""Changing nodes: piml's playbooks run by ansible-runner (runner.py), shown as per-node progress (progress.py)."""
