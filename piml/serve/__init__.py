"""Online serving: registered MLflow models answer POST /serve/<route>/predict through Ray Serve.

- `payload.py`: what a request may carry (MLflow's own scoring formats) and what the answer holds; pure, so it
  is tested without Ray.
- `app.py`: the Ray Serve application (one per route), run in the cluster's Ray on the image piml already runs.
"""
