"""Talking to the serving routes from the user's machine: GET /serve/<route>, POST .../predict, POST .../reload.

Every request is bounded; every failure is one line naming the route and what to do. A 400 (the payload) is the
user's input (exit 2); the route or the cluster failing is exit 1."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from piml.errors import EXIT_FAILED, EXIT_USAGE, PimlError, Problem

TIMEOUT = 30.0  # GET and predict: a Pi answers a small model in milliseconds, a cold replica in seconds
TOKEN_FIX = "run it in the project directory (-C), whose .piml/secrets.yaml has serve_token, or set $PIML_SERVE_TOKEN"
RELOAD_TIMEOUT = 150.0  # the app's own bound is 120 s (piml/serve/app.py RELOAD_SECONDS), plus the way there


@dataclass(frozen=True)
class RouteClient:
    base_url: str  # where Serve's HTTP proxy answers, e.g. http://127.0.0.1:PORT
    token: str | None = None  # the serving token every request carries (.piml/secrets.yaml serve_token)

    def info(self, route: str) -> dict[str, Any]:
        return self._call(route, "GET", "")

    def predict(self, route: str, body: bytes, content_type: str) -> dict[str, Any]:
        return self._call(route, "POST", "/predict", body, {"Content-Type": content_type})

    def reload(self, route: str) -> dict[str, Any]:
        return self._call(route, "POST", "/reload", b"", {}, RELOAD_TIMEOUT)

    def _call(
        self,
        route: str,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = TIMEOUT,
    ) -> dict[str, Any]:
        from piml.serve.apps import route_url

        url = f"{self.base_url.rstrip('/')}{route_url(route)}{path}"
        headers = {**(headers or {}), **({"Authorization": f"Bearer {self.token}"} if self.token else {})}
        request = urllib.request.Request(url, data=body, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return _json(response.read(), route)
        except urllib.error.HTTPError as exc:
            raise _refused(route, exc.code, exc.read(), bool(self.token)) from None
        except (urllib.error.URLError, OSError) as exc:  # refused, reset, timed out
            reason = getattr(exc, "reason", exc)
            raise PimlError(
                Problem(
                    f"route {route}",
                    f"no answer from {self.base_url} within {timeout:.0f} s ({reason})",
                    "check the serving cluster with `piml serve list` and `piml status`",
                ),
                EXIT_FAILED,
            ) from None


def _json(raw: bytes, route: str) -> dict[str, Any]:
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise PimlError(
            Problem(f"route {route}", "answered something other than a JSON object", "is the URL a piml route?"),
            EXIT_FAILED,
        )
    return answer


def _refused(route: str, status: int, raw: bytes, sent_token: bool = True) -> PimlError:
    try:  # piml's routes answer {"error": "<one line>"}; Serve's proxy itself answers plain text
        said = json.loads(raw).get("error")
    except (ValueError, AttributeError):
        said = None
    if not isinstance(said, str) or not said:
        said = next(iter(raw.decode(errors="replace").strip().splitlines()), "")
    where = f"route {route}"
    if status == 400:
        return PimlError(Problem(where, f"refused the input: {said}", "fix the rows or their columns"), EXIT_USAGE)
    if status == 401 and not sent_token:
        return PimlError(Problem(where, "needs the serving token", TOKEN_FIX), EXIT_USAGE)
    if status == 401:
        return PimlError(Problem(where, "refused the serving token", TOKEN_FIX), EXIT_USAGE)
    if status == 404:
        return PimlError(
            Problem(where, "is not served", "add it to serve.routes in piml.yaml and run `piml up`"), EXIT_USAGE
        )
    return PimlError(Problem(where, f"answered HTTP {status}: {said[:300]}", "see `piml serve list`"), EXIT_FAILED)
