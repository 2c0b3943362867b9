"""The Ray Serve application piml runs for each route in `serve:` (piml.yaml): one registered MLflow model behind
FastAPI, autoscaled by Ray Serve between the route's min and max replicas.

Ray Serve imports it by `import_path: piml.serve.app:build` with the route's args (route, model, batch_size);
MLflow's address and credentials come from the replica's environment (MLFLOW_TRACKING_URI,
MLFLOW_TRACKING_USERNAME / _PASSWORD from MLflow's Secret), never from a request.

  GET  /          the route, the model's name and the version loaded, since when
  POST /predict   JSON (inputs, dataframe_split, dataframe_records, instances) or CSV -> predictions
                  (and probabilities where the model has predict_proba); a bad request is a 400 with one line
  POST /reload    load the URI's version now (an alias's current one) on every replica, without dropping a
                  request: each request is answered by the model it began with, and the new one takes over once
                  loaded

Every request needs `Authorization: Bearer $PIML_SERVE_TOKEN` (the Secret piml-serve): Ray Serve's proxy checks
nothing, and the route is on the LAN through the ingress. This is the scheme that guards the Ray dashboard (a
bearer token), with a token of its own: the Ray token would let a client run code on the cluster.

Reload reaches every replica through a small named Ray actor per route (RouteState): /reload records the wanted
version there; each replica polls it every second, loads a version it lacks beside the one serving, swaps, and
reports; /reload answers when every live replica reports the version (bounded). A replica started later loads
the wanted version, not the URI's version of its start.

Requests of plain rows (JSON rows, or a DataFrame from CSV) are batched (@serve.batch): one parse and one model
call for up to batch_size requests that arrive together, each answered with its own rows.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations (Request) at runtime.
import asyncio
import hmac
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from piml.errors import first_line
from piml.serve.payload import PayloadError, Rows, predict, predict_together, read

POLL_SECONDS = 1.0
LIVE_SECONDS = 5.0  # a replica that has not reported for this long is gone (scaled down, restarted)
RELOAD_SECONDS = 120.0  # the bound of POST /reload: a Pi loads a small model in seconds, a big one in a minute
MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+|latest))$")
api = FastAPI(title="piml model route")


@dataclass(frozen=True)
class Loaded:
    name: str
    version: str
    model: Any
    since: float


def resolve(uri: str) -> tuple[str, str]:
    """(name, version) for a models:/ URI: the alias's or the latest version now, or the one it names."""
    import mlflow

    match = MODEL_URI.match(uri)
    if not match:
        raise ValueError(f"{uri!r} is not models:/NAME@ALIAS, models:/NAME/N or models:/NAME/latest")
    name, client = match["name"], mlflow.MlflowClient()
    if match["alias"]:
        return name, str(client.get_model_version_by_alias(name, match["alias"]).version)
    if match["version"] == "latest":
        versions = client.search_model_versions(f"name = '{name}'")
        if not versions:
            raise ValueError(f"model {name!r} has no versions")
        return name, str(max(int(v.version) for v in versions))
    return name, match["version"]


def load(name: str, version: str) -> Loaded:
    import mlflow.pyfunc

    return Loaded(name, version, mlflow.pyfunc.load_model(f"models:/{name}/{version}"), time.time())


class RouteState:
    """The version a route should serve (None until a reload), and which version each replica has. The wanted
    version is kept with its URI: a route changed to another model in piml.yaml starts from that model's own."""

    def __init__(self) -> None:
        self.wanted: tuple[str, str] | None = None  # (uri, version)
        self.reports: dict[str, tuple[str, float]] = {}

    def want(self, uri: str, version: str) -> None:
        self.wanted = (uri, version)

    def get_wanted(self, uri: str) -> str | None:
        return self.wanted[1] if self.wanted and self.wanted[0] == uri else None

    def report(self, replica: str, uri: str, version: str) -> str | None:
        self.reports[replica] = (version, time.time())
        return self.get_wanted(uri)

    def replicas(self) -> dict[str, str]:
        now = time.time()
        return {r: v for r, (v, at) in self.reports.items() if now - at < LIVE_SECONDS}


def route_state(route: str) -> Any:
    import ray

    actor = ray.remote(num_cpus=0)(RouteState)
    return actor.options(name=f"piml-route-{route}", lifetime="detached", get_if_exists=True).remote()


def _error(reason: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status)


class _NeedsTheToken:
    """Every request carries the serving token; none set in the pod refuses all (fail closed). A plain ASGI
    middleware: Starlette's BaseHTTPMiddleware (@app.middleware) runs each request through extra tasks and
    streams, which cost this route a tenth of its throughput (benchmarks/serve_throughput.py)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        token = os.environ.get("PIML_SERVE_TOKEN", "")
        given = b""
        for key, value in scope.get("headers") or []:
            if key == b"authorization":
                given = value.removeprefix(b"Bearer ").strip()
                break
        if not token or not hmac.compare_digest(given, token.encode()):
            return await _error("needs the serving token (Authorization: Bearer ...)", 401)(scope, receive, send)
        return await self.app(scope, receive, send)


api.add_middleware(_NeedsTheToken)


# Everything the class uses is defined above it: Ray Serve may ship the class by value, with the globals it sees.
@serve.deployment(name="model")
@serve.ingress(api)
class ModelRoute:
    def __init__(self, route: str, model: str, batch_size: int = 16):
        import ray

        self.route, self.uri = route, model
        self.replica = os.urandom(6).hex()
        self.state = route_state(route)
        name, version = resolve(model)
        wanted = ray.get(self.state.get_wanted.remote(model), timeout=30)
        self.loaded = load(name, wanted or version)
        # counted from the start (GET / right after a deploy or a scale-up), not from the first round of _follow
        ray.get(self.state.report.remote(self.replica, model, self.loaded.version), timeout=30)
        self._stop = threading.Event()
        self._loading = threading.Lock()
        threading.Thread(target=self._follow, name="piml-route-follow", daemon=True).start()
        self.predict_batch.set_max_batch_size(batch_size)  # type: ignore[attr-defined, unused-ignore]  # ray typed or not

    def _follow(self) -> None:
        """Every second: report the version this replica serves, and start loading the wanted one if it differs.
        The load runs beside this loop, so a replica busy loading still reports (and is not taken for gone)."""
        import ray

        while not self._stop.wait(POLL_SECONDS):
            try:
                wanted = ray.get(self.state.report.remote(self.replica, self.uri, self.loaded.version), timeout=10)
            except Exception as exc:  # noqa: BLE001 - the actor away for a moment: the next round tries again
                logging.getLogger("ray.serve").warning("piml route %s: following reloads: %r", self.route, exc)
                continue
            if wanted and wanted != self.loaded.version and not self._loading.locked():
                threading.Thread(target=self._switch_quietly, args=(wanted,), daemon=True).start()

    def _switch(self, version: str) -> None:
        """Load `version` and serve it; one load at a time, and none for the version already served."""
        with self._loading:
            if version != self.loaded.version:
                self.loaded = load(self.loaded.name, version)  # the old one keeps answering until this returns

    def _switch_quietly(self, version: str) -> None:
        try:
            self._switch(version)
        except Exception as exc:  # noqa: BLE001 - MLflow away, the version unloadable: the next round retries
            logging.getLogger("ray.serve").warning("piml route %s: loading version %s: %r", self.route, version, exc)

    def __del__(self) -> None:
        self._stop.set()

    def _schema(self) -> Any:
        return self.loaded.model.metadata.get_input_schema()

    @api.get("/")
    async def info(self) -> dict[str, Any]:
        loaded = self.loaded
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(loaded.since))
        try:  # the live replicas and the version each serves; the route answers even when that actor does not
            replicas = await asyncio.wait_for(self.state.replicas.remote(), 10)
        except Exception:  # noqa: BLE001 - the state actor away or slow: say what this replica knows
            replicas = {self.replica: loaded.version}
        return {
            "route": self.route,
            "uri": self.uri,
            "model": loaded.name,
            "version": loaded.version,
            "since": since,
            "replicas": len(replicas),
            "replicas_on_version": sum(v == loaded.version for v in replicas.values()),
        }

    @api.post("/predict")
    async def predict(self, request: Request) -> Any:
        import pandas as pd

        loaded = self.loaded
        try:
            data, params = read(await request.body(), request.headers.get("content-type"), self._schema())
            if isinstance(data, (Rows, pd.DataFrame)) and not params:  # plain rows: parsed in the batch
                answer = await self.predict_batch((loaded, data))
            else:
                answer = predict(loaded.model, data, params)
            if isinstance(answer, PayloadError):
                raise answer
        except PayloadError as exc:
            return _error(str(exc))
        return {**answer, "model": loaded.name, "version": loaded.version}

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def predict_batch(self, items: list) -> list:
        """One parse and one model call for the requests that came together, (loaded, Rows or DataFrame) each:
        each is answered by the model its request began with (payload.predict_together)."""
        model = items[0][0].model
        if all(loaded.model is model for loaded, _ in items):
            return predict_together(model, [part for _, part in items])
        return [predict_together(loaded.model, [part])[0] for loaded, part in items]

    @api.post("/reload")
    async def reload(self) -> Any:
        try:
            name, version = await asyncio.to_thread(resolve, self.uri)
            await asyncio.to_thread(self._switch, version)  # here first: a version that cannot load fails now
            await self.state.want.remote(self.uri, version)  # then every other replica follows
        except Exception as exc:  # noqa: BLE001 - MLflow unreachable, the alias gone, the version unloadable
            return _error(f"cannot load {self.uri}: {first_line(exc)}", 502)
        deadline = time.monotonic() + RELOAD_SECONDS
        while True:
            replicas = await self.state.replicas.remote()
            loaded = sum(v == version for v in replicas.values())
            if replicas and loaded == len(replicas):
                return {"route": self.route, "model": name, "version": version, "replicas": loaded}
            if time.monotonic() > deadline:
                reason = f"{loaded} of {len(replicas)} replicas serve version {version} after {RELOAD_SECONDS:.0f} s"
                return _error(f"{reason}; the others keep trying", 504)
            await asyncio.sleep(POLL_SECONDS / 2)


def build(args: dict[str, Any]) -> Any:
    """Ray Serve's application builder: `import_path: piml.serve.app:build`, `args: {route, model, batch_size}`."""
    route, model, batch_size = str(args["route"]), str(args["model"]), int(args.get("batch_size", 16))
    return ModelRoute.bind(route, model, batch_size)  # type: ignore[attr-defined, unused-ignore]
