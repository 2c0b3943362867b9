"""k3s: the join token, the settings piml hands the playbooks, the admin kubeconfig (fetch, store, merge)."""
