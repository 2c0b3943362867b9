"""Health checks that prove the platform works: `piml check` and the `verify` stage of `piml up`.

- result.py     one check's outcome (pass / fail / skip, detail, fix, seconds) and the timing wrapper
- endpoints.py  where each component answers: loopback URLs, through port-forwards in a cluster
- nodes.py      per node, on the facts the SSH fleet reads (one round trip per node)
- cluster.py    through the Kubernetes API: nodes Ready without pressure, KEDA and the Services ready
- probes.py     each component answers: MLflow, Dask, Ray, the queue broker
- deep.py       `--deep`: a Ray job trains and registers a model, a Dask computation, a queued request
- report.py     one table or JSON
"""
