"""Talking to the cluster: an API client built from a kubeconfig, and plain JSON requests over it.

piml uses the official `kubernetes` client for configuration, authentication and TLS, and sends
its own requests over it (any kind, mapped by discovery), so nothing here needs a generated model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from piml.errors import EXIT_FAILED, PimlError, Problem


class KubeError(Exception):
    """The API answered with an error status."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(f"{status} {reason}: {message}")
        self.status, self.reason, self.message = status, reason, message


TERMINATING = re.compile(r"in namespace (\S+) because it is being terminated")


class KubeRefused(PimlError):
    """A 401 or 403 as one line (exit 1); a caller that knows which object it was about may say it better."""

    def __init__(self, problem: Problem, status: int, message: str):
        super().__init__(problem, EXIT_FAILED)
        self.status, self.message = status, message

    @property
    def terminating(self) -> str | None:
        """The namespace still being deleted that refused a new object (NamespaceLifecycle), if that was it."""
        found = TERMINATING.search(self.message) if self.status == 403 else None
        return found.group(1) if found else None


class Kube:
    """One API server. `request` returns parsed JSON (or text for logs); errors raise KubeError."""

    def __init__(self, api_client, where: str, request_timeout: float = 15.0):
        self.api_client = api_client
        self.where = where  # what to name in error lines: the kubeconfig as the user knows it
        self.request_timeout = request_timeout

    @property
    def server(self) -> str:
        return self.api_client.configuration.host

    def request(
        self,
        method: str,
        path: str,
        query: dict | None = None,
        body: Any = None,
        content_type: str = "application/json",
        text: bool = False,
        metadata_only: bool = False,
    ) -> Any:
        import urllib3

        full = path + ("?" + urlencode({k: v for k, v in query.items() if v is not None}) if query else "")
        # A text answer (a pod's log) is asked for as client-go asks: the API server answers 406 to `text/plain`.
        headers = {"Accept": "application/json, */*" if text else "application/json", "Content-Type": content_type}
        if metadata_only:  # a list of PartialObjectMetadata: names, owners and labels, never a Secret's data
            headers["Accept"] = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
        request = self.api_client.param_serialize(
            method, full, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        try:
            response = self.api_client.call_api(*request, _request_timeout=self.request_timeout)
            data = response.read()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise PimlError(
                Problem(
                    self.where,
                    f"cannot reach the Kubernetes API at {self.server} ({why_unreachable(exc, self.request_timeout)})",
                    "check that k3s runs on the first server (piml status) and that this machine can reach it",
                ),
                EXIT_FAILED,
            ) from None
        except Exception as exc:  # kubernetes.client.ApiException with status 0: TLS and the like
            if getattr(exc, "status", None) == 0:
                raise PimlError(
                    Problem(
                        self.where,
                        f"cannot talk to the Kubernetes API at {self.server}: "
                        f"{str(getattr(exc, 'reason', exc)).splitlines()[0]}",
                        "fetch a fresh kubeconfig with `piml up --only kubeconfig`",
                    ),
                    EXIT_FAILED,
                ) from None
            raise
        if not 200 <= response.status <= 299:
            message = ""
            try:
                message = json.loads(data).get("message", "")
            except (ValueError, AttributeError):
                message = data.decode(errors="replace")[:200] if data else ""
            if response.status in (401, 403):
                raise KubeRefused(_refusal(self.where, response.status, message), response.status, message)
            raise KubeError(response.status, response.reason or "", message)
        if text:
            return data.decode(errors="replace")
        return json.loads(data) if data else {}

    def get(self, path: str, query: dict | None = None) -> dict | None:
        """The object at `path`, or None when it does not exist."""
        try:
            return self.request("GET", path, query)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def close(self) -> None:
        self.api_client.close()


def why_unreachable(exc: BaseException, timeout: float) -> str:
    """A failed connection in the user's words: urllib3 wraps the cause in MaxRetryError."""
    import socket

    import urllib3

    cause = getattr(exc, "reason", None) or exc
    if isinstance(cause, (urllib3.exceptions.TimeoutError, socket.timeout, TimeoutError)):
        return f"no answer within {timeout:.0f} s"
    if isinstance(cause, urllib3.exceptions.NewConnectionError) or isinstance(exc, ConnectionRefusedError):
        return "nothing answers at that address" if "refused" in str(cause).lower() else "cannot connect"
    if isinstance(cause, urllib3.exceptions.SSLError):
        return "TLS failed: the server's certificate is not the one in the kubeconfig"
    if isinstance(cause, urllib3.exceptions.ProtocolError):
        return "the connection was dropped"
    return type(cause).__name__


REQUEST_TIMEOUT = 15.0  # seconds for one API request (or for opening one exec / port-forward stream)


def _refusal(where: str, status: int, message: str) -> Problem:
    """A 401 is about credentials; a 403 is the authorizer or an admission plugin saying no, for a reason."""
    terminating = TERMINATING.search(message)
    if status == 403 and terminating:  # NamespaceLifecycle: a teardown has not finished
        namespace = terminating.group(1)
        return Problem(
            f"namespace {namespace}",
            "is still being deleted (Terminating): nothing can be created in it",
            f"wait until it is gone (`kubectl get namespace {namespace} -o yaml` says what it waits for), "
            "then run piml up again",
        )
    if status == 401:
        return Problem(
            where,
            f"the Kubernetes API refused piml's credentials (401: {message})",
            "fetch a fresh kubeconfig with `piml up --only kubeconfig`",
        )
    return Problem(
        where,
        f"the Kubernetes API refused a request (403: {message})",
        "piml needs the cluster-admin kubeconfig k3s writes: fetch it with `piml up --only kubeconfig`",
    )


def connect(kubeconfig: Path, where: str | None = None, request_timeout: float = REQUEST_TIMEOUT) -> Kube:
    """A client for the cluster in `kubeconfig` (.piml/kubeconfig). Raises PimlError when it cannot be read."""
    where = where or str(kubeconfig)
    return Kube(api_client(kubeconfig, where), where, request_timeout)


def core_api(kubeconfig: Path, where: str | None = None):
    """The kubernetes client's generated CoreV1Api on the same client, for what needs its stream helpers
    (exec, port-forward). Callers pass `_request_timeout=REQUEST_TIMEOUT` to every call."""
    from kubernetes import client as k8s

    checked = api_client(kubeconfig, where or str(kubeconfig))  # first: CoreV1Api takes a second to import
    return k8s.CoreV1Api(checked)


def api_client(kubeconfig: Path, where: str):
    """The one way piml builds a client: from the kubeconfig, checked, with bounded retries."""
    from kubernetes import client as k8s
    from kubernetes.config import ConfigException, load_kube_config
    from yaml import YAMLError

    if not Path(kubeconfig).is_file():
        raise PimlError(
            Problem(where, "no kubeconfig here", "run `piml up` (the kubeconfig stage writes it)"), EXIT_FAILED
        )
    configuration = k8s.Configuration()
    try:
        load_kube_config(config_file=str(kubeconfig), client_configuration=configuration, persist_config=False)
    except (ConfigException, ValueError, OSError, YAMLError, TypeError, AttributeError, KeyError, IndexError) as exc:
        # The client parses the file as it goes: a file that is YAML but not a kubeconfig fails as a TypeError
        # or KeyError deep inside it. All of them mean the same thing to the user.
        detail = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PimlError(
            Problem(where, f"not a usable kubeconfig: {detail}", "fetch it again with `piml up --only kubeconfig`"),
            EXIT_FAILED,
        ) from None
    configuration.retries = 1  # bounded: one retry on a dropped connection, then a plain error
    return k8s.ApiClient(configuration)
