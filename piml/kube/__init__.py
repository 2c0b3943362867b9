"""Changing and reading the cluster with the `kubernetes` client: apply, wait, diagnose, prune, teardown, status.

Import the modules where they are used (they import `kubernetes`); `piml --help` must stay fast:

    from piml.kube.deploy import deploy, Timeouts           # piml up, stage platform
    from piml.kube.teardown import teardown_platform        # piml teardown
    from piml.kube.status import cluster_status             # piml status
"""
