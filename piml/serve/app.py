"""The Ray Serve application piml runs for each route in `serve:` (piml.yaml): one registered MLflow model behind
FastAPI, autoscaled by Ray Serve between the route's min and max replicas.

Ray Serve imports it by `import_path: piml.serve.app:build` with the route's args (route, model, batch_size);
MLflow's address and credentials come from the replica's environment (MLFLOW_TRACKING_URI,
MLFLOW_TRACKING_USERNAME / _PASSWORD from MLflow's Secret), never from a request.

  GET  /          the route, the model's name and the version loaded, since when
  POST /predict   JSON (inputs, dataframe_split, dataframe_records, instances) or CSV -> predictions
                  (and probabilities where the model has predict_proba); a bad request is a 400 with one line

Requests of plain rows (a DataFrame each) are batched (@serve.batch): one model call for up to batch_size
requests that arrive together, each answered with its own rows.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations (Request) at runtime.
import re
import time
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from piml.serve.payload import PayloadError, parse, predict

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


def load(uri: str) -> Loaded:
    import mlflow.pyfunc

    name, version = resolve(uri)
    return Loaded(name, version, mlflow.pyfunc.load_model(f"models:/{name}/{version}"), time.time())


def _bad(reason: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=400)


def _split(whole: dict[str, Any], sizes: list[int]) -> list[dict[str, Any]]:
    parts, start = [], 0
    for size in sizes:
        parts.append({key: value[start : start + size] for key, value in whole.items()})
        start += size
    return parts


# Everything the class uses is defined above it: Ray Serve may ship the class by value, with the globals it sees.
@serve.deployment(name="model")
@serve.ingress(api)
class ModelRoute:
    def __init__(self, route: str, model: str, batch_size: int = 16):
        self.route, self.uri = route, model
        self.loaded = load(model)
        self.predict_frames.set_max_batch_size(batch_size)  # type: ignore[attr-defined, unused-ignore]  # ray typed or not

    def _schema(self) -> Any:
        return self.loaded.model.metadata.get_input_schema()

    @api.get("/")
    def info(self) -> dict[str, Any]:
        loaded = self.loaded
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(loaded.since))
        return {"route": self.route, "uri": self.uri, "model": loaded.name, "version": loaded.version, "since": since}

    @api.post("/predict")
    async def predict(self, request: Request) -> Any:
        import pandas as pd

        loaded = self.loaded
        try:
            data, params = parse(await request.body(), request.headers.get("content-type"), self._schema())
            if isinstance(data, pd.DataFrame) and not params:
                answer = await self.predict_frames(data)
                if isinstance(answer, PayloadError):
                    raise answer
            else:
                answer = predict(loaded.model, data, params)
        except PayloadError as exc:
            return _bad(str(exc))
        return {**answer, "model": loaded.name, "version": loaded.version}

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def predict_frames(self, frames: list) -> list:
        """One model call for the frames of requests that came together; a batch the model refuses is asked
        again frame by frame, so only the bad request gets its 400."""
        import pandas as pd

        model = self.loaded.model
        if len(frames) > 1:
            try:
                whole = predict(model, pd.concat(frames, ignore_index=True), None)
                if all(isinstance(v, list) and len(v) == sum(map(len, frames)) for v in whole.values()):
                    return _split(whole, [len(f) for f in frames])
            except PayloadError:
                pass
        answers: list = []
        for frame in frames:
            try:
                answers.append(predict(model, frame, None))
            except PayloadError as exc:
                answers.append(exc)
        return answers


def build(args: dict[str, Any]) -> Any:
    """Ray Serve's application builder: `import_path: piml.serve.app:build`, `args: {route, model, batch_size}`."""
    route, model, batch_size = str(args["route"]), str(args["model"]), int(args.get("batch_size", 16))
    return ModelRoute.bind(route, model, batch_size)  # type: ignore[attr-defined, unused-ignore]
