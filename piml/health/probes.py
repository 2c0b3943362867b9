"""Each component answers: MLflow (health, basic auth really on), Dask (health, workers), Ray (dashboard,
alive nodes and CPUs), the queue broker (PING / connection, piml's queues).

`component_checks` runs one probe per enabled component, in parallel; each probe is a short sequence of rows
(its first row is "does it answer at all"; when that fails, the rest are skipped). Every HTTP call is bounded
(HTTP_TIMEOUT; three times that for MLflow calls with basic auth, which cost a password hash each). Routes
used, as the real servers answer them:

    MLflow  GET {url}/health -> "OK"; GET {url}/api/2.0/mlflow/experiments/search?max_results=1 -> 200 with
            basic auth, 401 without (basic-auth app on)
    Dask    GET {dashboard}/health -> "ok"; GET {dashboard}/json/counts.json -> {"workers", "cores", "hosts", ...}
    Ray     GET {dashboard}/api/version -> {"ray_version"}; GET {dashboard}/api/v0/nodes -> the state API's
            nodes: {"data": {"result": {"result": [{"state", "is_head_node", "resources_total"}]}}}
    queue   piml.queue.connect (Redis: PING with the password; RabbitMQ: the connection opens and piml's
            queues are declared), then the queues' lengths

No password ever reaches a row: URLs are shown redacted and every row is scrubbed of the endpoints' secrets.
"""

from __future__ import annotations

import base64
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from piml.config import PimlConfig
from piml.errors import PimlError
from piml.health.endpoints import Endpoints
from piml.health.result import FAIL, SKIP, CheckFailed, CheckSkipped, Result, timed

GROUP = "components"
HTTP_TIMEOUT = 5.0
AUTH_FACTOR = 3  # MLflow checks a password hash (scrypt) on every authenticated call: seconds on a small board
MAX_BODY = 4 << 20
LOOPBACK = ("127.0.0.1", "localhost", "::1")


# -- HTTP -------------------------------------------------------------------------------------------------
class Unreachable(Exception):
    """No HTTP answer at all (refused, timed out, DNS); str() is one short line."""


_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # port-forwards: never through a proxy
_default = urllib.request.build_opener()


def show_url(url: str) -> str:
    """A URL fit to print: no user or password in it."""
    try:
        parts = urlsplit(url)
        if parts.username is None and parts.password is None:
            return url
        host = parts.hostname or ""
        netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    except ValueError:
        return "<unparsable URL>"


def join(base: str, path: str) -> str:
    return base.rstrip("/") + "/" + path.lstrip("/")


def http(
    method: str,
    url: str,
    *,
    auth: tuple[str, str] | None = None,
    body: Any = None,
    timeout: float | None = None,
    bearer: str | None = None,
) -> tuple[int, bytes]:
    """(status, body) of one request bounded by `timeout` (default HTTP_TIMEOUT, AUTH_FACTOR times that with
    basic auth); an HTTP error status is an answer, not an exception. Raises Unreachable when nothing answers.
    `body` is sent as JSON; `bearer` is a token for `Authorization: Bearer` (Ray's token authentication).
    """
    if timeout is None:
        timeout = HTTP_TIMEOUT * (AUTH_FACTOR if auth is not None else 1)
    headers = {"Accept": "application/json", "User-Agent": "piml-check"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    elif bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    opener = _direct if (urlsplit(url).hostname or "") in LOOPBACK else _default
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, response.read(MAX_BODY)
    except urllib.error.HTTPError as exc:
        try:
            content = exc.read(MAX_BODY)
        except Exception:  # noqa: BLE001 - the status is what matters
            content = b""
        return exc.code, content
    except urllib.error.URLError as exc:
        raise Unreachable(_reason(exc.reason, timeout)) from None
    except TimeoutError:
        raise Unreachable(f"no answer within {timeout:g} s") from None
    except (OSError, ValueError) as exc:  # reset mid-answer, a malformed URL
        raise Unreachable(_reason(exc, timeout)) from None


def _reason(reason: Any, timeout: float) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"no answer within {timeout:g} s"
    if isinstance(reason, socket.gaierror):
        return "unknown host"
    if isinstance(reason, BaseException):
        text = str(reason).strip().splitlines()[0][:160] if str(reason).strip() else ""
        return f"{type(reason).__name__}: {text}" if text else type(reason).__name__
    return str(reason)[:160]


def http_json(method: str, url: str, **options: Any) -> tuple[int, Any]:
    status, content = http(method, url, **options)
    try:
        return status, json.loads(content) if content else None
    except ValueError:
        return status, None


def snippet(content: bytes | str | None, limit: int = 160) -> str:
    """The first line of an answer's body, short."""
    if content is None:
        return ""
    text = content.decode("utf-8", "replace") if isinstance(content, bytes) else str(content)
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


# -- secrets ----------------------------------------------------------------------------------------------
def secrets_of(endpoints: Endpoints) -> list[str]:
    found = [endpoints.mlflow_password, endpoints.queue_password, endpoints.ray_token, endpoints.serve_token]
    for url in (
        endpoints.queue_url,
        endpoints.mlflow_url,
        endpoints.mlflow_url_inside,
        endpoints.dask_dashboard_url,
        endpoints.ray_dashboard_url,
    ):
        if url:
            try:
                found.append(urlsplit(url).password)
            except ValueError:
                pass
    return [s for s in found if s]


def scrub_text(text: str, secrets: list[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def scrub(rows: list[Result], secrets: list[str]) -> list[Result]:
    """The rows with every secret replaced by *** (a last guard: the checks never put one in)."""
    if not secrets:
        return rows
    return [replace(row, detail=scrub_text(row.detail, secrets), fix=scrub_text(row.fix, secrets)) for row in rows]


# -- running a component's rows ---------------------------------------------------------------------------
Step = tuple[str, Callable[[], str]]


def sequence(group: str, target: str, steps: list[Step]) -> list[Result]:
    """Run a component's rows in order; once its first row (does it answer) fails, the others are skipped."""
    rows: list[Result] = []
    for index, (check, body) in enumerate(steps):
        if index and rows[0].status == FAIL:
            rows.append(Result(group, target, check, SKIP, f"not checked: {target} does not answer"))
            continue
        rows.append(timed(group, target, check, body))
    return rows


def unreachable(endpoints: Endpoints, component: str, what: str) -> str:
    why = (getattr(endpoints, "unreachable", None) or {}).get(component)
    return f"could not be reached: {why}" if why else f"could not be reached: no address for {what}"


def ask(who: str, fix: str, url: str, path: str, *, as_json: bool = False, **options: Any) -> tuple[int, Any]:
    """GET `path` under `url`: (status, body), the body JSON-decoded with `as_json`. When nothing answers,
    a CheckFailed saying that `who` does not answer at `url`, with `fix`."""
    try:
        return (http_json if as_json else http)("GET", join(url, path), **options)
    except Unreachable as exc:
        raise CheckFailed(f"{who} does not answer at {show_url(url)} ({exc})", fix) from None


# -- MLflow -----------------------------------------------------------------------------------------------
def _mlflow_fix(ns: str) -> str:
    return f"kubectl -n {ns} get pods -l app.kubernetes.io/name=mlflow; kubectl -n {ns} logs deploy/mlflow --tail=50"


def mlflow_rows(endpoints: Endpoints, config: PimlConfig) -> list[Result]:
    ns, url = config.namespace, endpoints.mlflow_url
    if not url:
        return [
            Result(
                GROUP, "mlflow", "health", FAIL, unreachable(endpoints, "mlflow", "the MLflow server"), _mlflow_fix(ns)
            )
        ]

    def health() -> str:
        status, content = ask("MLflow", _mlflow_fix(ns), url, "health")
        if status != 200 or snippet(content).upper() != "OK":
            raise CheckFailed(
                f"{show_url(join(url, 'health'))} answered HTTP {status} {snippet(content, 80)!r}, not 200 OK: "
                "is this MLflow (and its URL prefix right)?",
                _mlflow_fix(ns),
            )
        return f"answers at {show_url(url)}"

    def auth() -> str:
        search = "api/2.0/mlflow/experiments/search?max_results=1"
        user, password = endpoints.mlflow_user, endpoints.mlflow_password
        if not user or not password:
            raise CheckFailed(
                "no MLflow user and password to test its basic auth with",
                f"piml reads them from the project's secrets, or from the cluster: kubectl -n {ns} get secret mlflow",
            )
        status, content = ask("MLflow's API", _mlflow_fix(ns), url, search, auth=(user, password))
        if status == 401:
            raise CheckFailed(
                f"MLflow refused user '{user}' (HTTP 401): the password piml has is not the server's",
                f"MLflow keeps the admin password of its first start in its auth database; compare piml's with "
                f"kubectl -n {ns} get secret mlflow, and see kubectl -n {ns} logs deploy/mlflow",
            )
        if status != 200:
            raise CheckFailed(f"an API call as '{user}' answered HTTP {status}: {snippet(content)}", _mlflow_fix(ns))
        anonymous, _ = ask("MLflow's API", _mlflow_fix(ns), url, search)
        if anonymous != 401:
            raise CheckFailed(
                f"MLflow answers its API without credentials (HTTP {anonymous}, not 401): basic auth is off",
                f"the server must run with --app-name basic-auth: kubectl -n {ns} get deploy mlflow -o yaml",
            )
        return f"user '{user}' is let in; a call without credentials is refused (401)"

    return sequence(GROUP, "mlflow", [("health", health), ("auth", auth)])


# -- Dask -------------------------------------------------------------------------------------------------
def dask_rows(endpoints: Endpoints, config: PimlConfig) -> list[Result]:
    ns, url = config.namespace, endpoints.dask_dashboard_url
    scheduler_fix = f"kubectl -n {ns} get pods -l app.kubernetes.io/name=dask-scheduler; kubectl -n {ns} logs deploy/dask-scheduler --tail=50"
    worker_fix = (
        f"kubectl -n {ns} get pods -l app.kubernetes.io/name=dask-worker -o wide; "
        f"kubectl -n {ns} logs -l app.kubernetes.io/name=dask-worker --tail=50"
    )
    if not url:
        return [
            Result(
                GROUP,
                "dask",
                "health",
                FAIL,
                unreachable(endpoints, "dask", "the Dask scheduler's dashboard"),
                scheduler_fix,
            )
        ]

    def health() -> str:
        status, content = ask("the Dask scheduler", scheduler_fix, url, "health")
        if status != 200 or snippet(content) != "ok":
            raise CheckFailed(
                f"{show_url(join(url, 'health'))} answered HTTP {status} {snippet(content, 80)!r}, not 200 ok: "
                "is this the Dask dashboard (and its prefix right)?",
                scheduler_fix,
            )
        return f"the scheduler answers at {show_url(url)}"

    def workers() -> str:
        status, counts = ask("the Dask scheduler", scheduler_fix, url, "json/counts.json", as_json=True)
        if status != 200 or not isinstance(counts, dict) or not isinstance(counts.get("workers"), int):
            raise CheckFailed(f"json/counts.json answered HTTP {status} without a worker count", scheduler_fix)
        n, cores, hosts = counts["workers"], counts.get("cores", 0), counts.get("hosts", 0)
        if n == 0:
            raise CheckFailed("the scheduler has 0 workers: nothing can compute", worker_fix)
        return f"{n} worker{'s' * (n != 1)} on {hosts} host{'s' * (hosts != 1)}, {cores} thread{'s' * (cores != 1)}"

    return sequence(GROUP, "dask", [("health", health), ("workers", workers)])


# -- Ray --------------------------------------------------------------------------------------------------
def ray_rows(endpoints: Endpoints, config: PimlConfig) -> list[Result]:
    ns, url = config.namespace, endpoints.ray_dashboard_url
    head_fix = f"kubectl -n {ns} get raycluster ray; kubectl -n {ns} logs -l ray.io/node-type=head --tail=50"
    if not url:
        return [
            Result(GROUP, "ray", "dashboard", FAIL, unreachable(endpoints, "ray", "the Ray head's dashboard"), head_fix)
        ]

    def dashboard() -> str:
        status, version = ask(
            "the Ray dashboard", head_fix, url, "api/version", as_json=True, bearer=endpoints.ray_token
        )
        if status in (401, 403):
            raise CheckFailed(
                f"the Ray dashboard refused piml's token (HTTP {status})",
                f"the token is in .piml/secrets.yaml (ray_auth_token) and Secret ray-auth; {head_fix}",
            )
        if status != 200 or not isinstance(version, dict) or "ray_version" not in version:
            raise CheckFailed(
                f"{show_url(join(url, 'api/version'))} answered HTTP {status} without a Ray version: "
                "is this the Ray dashboard?",
                head_fix,
            )
        running = str(version["ray_version"])
        note = "" if running == config.ray.version else f" (piml.yaml says {config.ray.version})"
        return f"Ray {running}{note} answers at {show_url(url)}"

    def auth() -> str:
        status, _ = ask("the Ray dashboard", head_fix, url, "api/version")
        if status not in (401, 403):
            raise CheckFailed(
                f"the Ray dashboard answers HTTP {status} without a token: its Jobs API runs any code "
                "for anyone who can reach it",
                f"kubectl -n {ns} get raycluster ray -o jsonpath='{{.spec.authOptions}}'",
            )
        return f"token authentication on (no token: HTTP {status})"

    def nodes() -> str:
        status, answer = ask(
            "the Ray dashboard", head_fix, url, "api/v0/nodes?limit=1000", as_json=True, bearer=endpoints.ray_token
        )
        try:
            listed = answer["data"]["result"]["result"]
            assert isinstance(listed, list)
        except (TypeError, KeyError, AssertionError):
            raise CheckFailed(
                f"the nodes API answered HTTP {status}: {snippet(json.dumps(answer) if answer else '')}", head_fix
            ) from None
        alive = [node for node in listed if node.get("state") == "ALIVE"]
        if not alive:
            raise CheckFailed(f"no Ray node is alive ({len(listed)} known)", head_fix)
        heads = sum(1 for node in alive if node.get("is_head_node"))
        cpus = sum(float((node.get("resources_total") or {}).get("CPU", 0)) for node in alive)
        detail = f"{len(alive)} node{'s' * (len(alive) != 1)} alive ({heads} head), {cpus:g} CPU{'s' * (cpus != 1)}"
        if not heads:
            raise CheckFailed(detail + ", but no head node", head_fix)
        if cpus == 0:
            detail += " (workers start on demand)"
        return detail

    steps = [("dashboard", dashboard), ("nodes", nodes)]
    if endpoints.ray_token is not None:
        steps.insert(1, ("auth", auth))
    return sequence(GROUP, "ray", steps)


# -- the queue --------------------------------------------------------------------------------------------
def queue_fix(config: PimlConfig) -> str:
    name = "rabbitmq" if config.queue.kind == "rabbitmq" else "redis"
    return f"kubectl -n {config.namespace} get pods -l app.kubernetes.io/name={name}; kubectl -n {config.namespace} logs deploy/{name} --tail=50"


def open_broker(endpoints: Endpoints, config: PimlConfig):
    """piml's broker client on the queue URL; CheckFailed with the broker's own one-line problem."""
    from piml.queue import connect, redact

    url = endpoints.queue_url or ""
    scheme = url.split("://", 1)[0].lower()
    expected = ("amqp", "amqps") if config.queue.kind == "rabbitmq" else ("redis", "rediss")
    if scheme not in expected:
        raise CheckFailed(
            f"the broker URL {redact(url)} is not {config.queue.kind} (piml.yaml's queue.kind)",
            "pass the broker's URL (redis://... or amqp://...) that matches queue.kind",
        )
    options: dict[str, Any] = {"socket_timeout": HTTP_TIMEOUT} if scheme.startswith("redis") else {}
    try:
        return connect(url, password=endpoints.queue_password, **options)
    except PimlError as exc:
        problem = exc.problems[0]
        raise CheckFailed(
            f"{problem.what} at {redact(url)}",
            f"{problem.fix}; {queue_fix(config)}" if problem.fix else queue_fix(config),
        ) from None


def queue_rows(endpoints: Endpoints, config: PimlConfig) -> list[Result]:
    url = endpoints.queue_url
    fix = queue_fix(config)
    if not url:
        return [
            Result(
                GROUP, "queue", "broker", FAIL, unreachable(endpoints, "queue", f"the {config.queue.kind} broker"), fix
            )
        ]
    from piml.queue import redact

    held: dict[str, Any] = {}

    def broker() -> str:
        held["broker"] = b = open_broker(endpoints, config)
        if b.kind == "redis":
            version = b.r.info("server").get("redis_version", "?")
            return f"Redis {version} answers PING with the password at {redact(url)}"
        try:
            version = b.conn._impl.server_properties.get("version", b"?")
            version = version.decode() if isinstance(version, bytes) else str(version)
        except Exception:  # noqa: BLE001 - the version is only for the detail
            version = "?"
        return f"RabbitMQ {version}: a connection opens at {redact(url)}"

    def queues() -> str:
        b = held["broker"]
        if b.kind == "redis":
            kinds = {key: b.r.type(key).decode() for key in (b.queue_key, b.dead_key)}
            wrong = {key: kind for key, kind in kinds.items() if kind not in ("list", "none")}
            if wrong:
                raise CheckFailed(
                    ", ".join(f"{key} is a {kind}, not a list" for key, kind in wrong.items())
                    + ": something else writes piml's keys",
                    fix,
                )
            waiting, dead, runners = b.queue_length(), int(b.r.llen(b.dead_key)), int(b.r.scard(b.runners_key))
            return (
                f"{b.queue_key}: {waiting} waiting, {dead} dead-lettered, {runners} runner{'s' * (runners != 1)} active"
            )
        from piml.queue.rabbitmq import DEAD, QUEUE, STATE

        counts = {name: int(b.ch.queue_declare(name, passive=True).method.message_count) for name in (QUEUE, DEAD)}
        b.ch.queue_declare(STATE, passive=True)
        return f"{QUEUE}: {counts[QUEUE]} waiting, {DEAD}: {counts[DEAD]} dead-lettered; {STATE} stream declared"

    try:
        return sequence(GROUP, "queue", [("broker", broker), ("queues", queues)])
    finally:
        if "broker" in held:
            held["broker"].close()


# -- all of them ------------------------------------------------------------------------------------------
PROBES: list[tuple[str, Callable[[Endpoints, PimlConfig], list[Result]]]] = [
    ("mlflow", mlflow_rows),
    ("dask", dask_rows),
    ("ray", ray_rows),
    ("queue", queue_rows),
]


def component_checks(endpoints: Endpoints, config: PimlConfig) -> list[Result]:
    """The components' rows (group "components"), in the order MLflow, Dask, Ray, queue; the enabled ones only.

    The probes run in parallel, so the whole takes about as long as the slowest component.
    """
    enabled = [(name, probe) for name, probe in PROBES if getattr(config, name).enabled]
    if not enabled:
        return []

    def run(name: str, probe: Callable[[Endpoints, PimlConfig], list[Result]]) -> list[Result]:
        try:
            return probe(endpoints, config)
        except Exception as exc:  # noqa: BLE001 - a probe must report, never take the others down
            return [timed(GROUP, name, "probe", _raise(exc))]

    with ThreadPoolExecutor(max_workers=len(enabled), thread_name_prefix="piml-probe") as pool:
        futures = [pool.submit(run, name, probe) for name, probe in enabled]
        rows = [row for future in futures for row in future.result()]
    return scrub(rows, secrets_of(endpoints))


def _raise(exc: Exception) -> Callable[[], str]:
    def body() -> str:
        raise exc

    return body


__all__ = ["CheckFailed", "CheckSkipped", "Unreachable", "component_checks", "http", "http_json", "scrub", "secrets_of"]
