"""The Kubernetes API as Velvet calls it: configuration, resources, list pages, watch streams, writes.

The client library is lightkube (PyPI `lightkube`), chosen over kubernetes_asyncio and kr8s:
it is typed (py.typed, checked by mypy --strict here), imports in about 0.1 s (kubernetes_asyncio's
generated client takes about 0.3 s, kr8s is about as fast but still 0.x and reshapes its API between
releases), and it reads every kubeconfig form (certificates, bearer tokens, token files rotated by the
kubelet, exec plugins) and the in-cluster service account. Velvet takes from it the configuration and
the authenticated HTTP transport it builds, and speaks list and watch itself: lightkube's watch decodes
into its own models, asks for no bookmarks and, on 410 Gone, restarts from "now" instead of relisting,
which would lose the changes made meanwhile. The informer (`kube_informer`) needs the raw JSON, the
bookmarks and the relist; this module gives it exactly those calls.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
from lightkube.config.client_adapter import AsyncClient, Client, ConnectionParams
from lightkube.config.kubeconfig import KubeConfig, SingleConfig
from lightkube.core.exceptions import ConfigError

from velvet.errors import VelvetError

Json = dict[str, Any]
REQUEST_TIMEOUT_SECONDS = 10.0
WATCH_TIMEOUT_SECONDS = 300  # the API server ends a watch after this; the informer watches again
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
logging.getLogger("httpx2").setLevel(logging.WARNING)  # a line per request would flood the agent's log


class KubeError(VelvetError):
    """The Kubernetes API refused a call or could not be reached."""

    def __init__(self, message: str, code: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class Gone(KubeError):
    """410 Gone: the resourceVersion asked for was compacted away; list again."""


class Conflict(KubeError):
    """409: the object exists already (reason AlreadyExists) or changed since read (reason Conflict)."""


class Missing(KubeError):
    """404: no such object."""


class Unreachable(KubeError):
    """The API server did not answer (connection refused, reset or timed out)."""


@dataclass(frozen=True)
class Resource:
    """One API resource: its kind, group/version, plural and scope."""

    kind: str
    group: str
    version: str
    plural: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        """`v1`, or `group/version`."""
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str = "", name: str = "") -> str:
        """The URL path of the collection (every namespace when `namespace` is ""), or of one object."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if namespace and self.namespaced:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return f"{base}/{name}" if name else base


NAMESPACES = Resource("Namespace", "", "v1", "namespaces", namespaced=False)
PODS = Resource("Pod", "", "v1", "pods", namespaced=True)
SERVICES = Resource("Service", "", "v1", "services", namespaced=True)
NODES = Resource("Node", "", "v1", "nodes", namespaced=False)
ENDPOINTSLICES = Resource("EndpointSlice", "discovery.k8s.io", "v1", "endpointslices", namespaced=True)
NETWORKPOLICIES = Resource("NetworkPolicy", "networking.k8s.io", "v1", "networkpolicies", namespaced=True)
VELVET_IDENTITIES = Resource("VelvetIdentity", "velvet.io", "v1alpha1", "velvetidentities", namespaced=False)
VELVET_ENDPOINTS = Resource("VelvetEndpoint", "velvet.io", "v1alpha1", "velvetendpoints", namespaced=True)
VELVET_TRACING_POLICIES = Resource("VelvetTracingPolicy", "velvet.io", "v1alpha1", "velvettracingpolicies",
                                   namespaced=False)
VELVET_TRACING_POLICIES_NAMESPACED = Resource("VelvetTracingPolicyNamespaced", "velvet.io", "v1alpha1",
                                              "velvettracingpoliciesnamespaced", namespaced=True)


def load_config(kubeconfig: Path | None) -> SingleConfig:
    """The kubeconfig file's current context, or the pod's service account when no file is given."""
    try:
        if kubeconfig is not None:
            config = KubeConfig.from_file(kubeconfig).get()
        else:
            config = KubeConfig.from_service_account(SERVICE_ACCOUNT).get()
    except (ConfigError, OSError, KeyError, ValueError) as err:
        where = kubeconfig or "the in-cluster service account (KUBERNETES_SERVICE_HOST/PORT, " \
                              f"{SERVICE_ACCOUNT})"
        raise KubeError(f"no Kubernetes API configuration from {where}: {err}") from None
    if config is None:
        raise KubeError(f"{kubeconfig}: no current context")
    return config


def server_of(config: SingleConfig) -> str:
    """The API server's URL."""
    return str(config.cluster.server)


def _failure(response: httpx.Response, what: str) -> KubeError:
    """The typed error for a non-2xx answer, with the API's Status message."""
    try:
        status = json.loads(response.content)
    except ValueError:
        status = {}
    return _status_error(status if isinstance(status, dict) else {}, response.status_code, what)


def _status_error(status: Mapping[str, Any], code: int, what: str) -> KubeError:
    """The typed error a v1 Status names."""
    code = int(status.get("code") or code)
    reason = str(status.get("reason") or "")
    message = f"{what}: {code} {reason or 'error'}: {status.get('message') or ''}".rstrip(": ")
    kind = {410: Gone, 409: Conflict, 404: Missing}.get(code, KubeError)
    return kind(message, code, reason)


def _params(params: Mapping[str, str | int | None]) -> dict[str, str]:
    return {k: str(v) for k, v in params.items() if v not in (None, "")}


class KubeApi:
    """Async calls on one event loop: list pages, watch streams; `close()` on the same loop."""

    def __init__(self, config: SingleConfig, timeout: float = REQUEST_TIMEOUT_SECONDS) -> None:
        self._client = AsyncClient(config, ConnectionParams(timeout=httpx.Timeout(timeout)))
        self.server = server_of(config)

    async def close(self) -> None:
        """Close the connections."""
        await self._client.aclose()

    async def list_page(self, res: Resource,
                        params: Mapping[str, str | int | None]) -> tuple[list[Json], str, str]:
        """One page of a list: its items (apiVersion and kind set), resourceVersion and continue token."""
        what = f"list {res.plural}"
        try:
            response = await self._client.get(res.path(), params=_params(params))
        except httpx.HTTPError as err:
            raise Unreachable(f"{what}: {self.server}: {err or type(err).__name__}") from None
        if response.status_code != 200:
            raise _failure(response, what)
        try:
            body = json.loads(response.content)
            meta = body.get("metadata") or {}
            items = [_typed(item, res) for item in body.get("items") or []]
            return items, str(meta.get("resourceVersion") or ""), str(meta.get("continue") or "")
        except (ValueError, AttributeError, TypeError) as err:
            raise KubeError(f"{what}: not a list ({err})") from None

    async def watch(self, res: Resource,
                    params: Mapping[str, str | int | None],
                    opened: Callable[[], None] | None = None) -> AsyncIterator[tuple[str, Json]]:
        """The events of one watch stream (type, object) until the server ends it; `Gone` on 410.
        `opened` is called once the server accepted the watch."""
        what = f"watch {res.plural}"
        query = _params({**params, "watch": "true", "allowWatchBookmarks": "true",
                         "timeoutSeconds": WATCH_TIMEOUT_SECONDS})
        timeout = httpx.Timeout(REQUEST_TIMEOUT_SECONDS, read=WATCH_TIMEOUT_SECONDS + REQUEST_TIMEOUT_SECONDS)
        try:
            async with self._client.stream("GET", res.path(), params=query, timeout=timeout) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise _failure(response, what)
                if opened is not None:
                    opened()
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    try:
                        event = json.loads(line)
                        kind, obj = str(event["type"]), event["object"]
                        if kind == "ERROR":
                            raise _status_error(obj if isinstance(obj, dict) else {}, 500, what)
                        typed = _typed(obj, res)
                    except (ValueError, KeyError, TypeError) as err:
                        raise KubeError(f"{what}: not a watch event ({err})") from None
                    yield kind, typed
        except httpx.HTTPError as err:
            raise Unreachable(f"{what}: {self.server}: {err or type(err).__name__}") from None


def _typed(item: Any, res: Resource) -> Json:
    """The object with apiVersion and kind (the API leaves them out of a built-in list's items)."""
    if not isinstance(item, dict):
        raise TypeError(f"a {res.kind} that is not an object")
    return {"apiVersion": res.api_version, "kind": res.kind, **item}


class KubeCalls:
    """Blocking calls for the state worker: get, create, replace, delete one object."""

    def __init__(self, config: SingleConfig, timeout: float = REQUEST_TIMEOUT_SECONDS) -> None:
        self._client = Client(config, ConnectionParams(timeout=httpx.Timeout(timeout)))
        self.server = server_of(config)

    def close(self) -> None:
        """Close the connections."""
        self._client.close()

    def _call(self, method: str, path: str, what: str, body: Json | None = None) -> Json:
        try:
            response = self._client.request(method, path, json=body)
        except httpx.HTTPError as err:
            raise Unreachable(f"{what}: {self.server}: {err or type(err).__name__}") from None
        if response.status_code >= 300:
            raise _failure(response, what)
        try:
            answer = json.loads(response.content)
        except ValueError as err:
            raise KubeError(f"{what}: not JSON ({err})") from None
        if not isinstance(answer, dict):
            raise KubeError(f"{what}: not an object")
        return answer

    def get(self, res: Resource, namespace: str, name: str) -> Json:
        """One object; `Missing` when there is none."""
        return _typed(self._call("GET", res.path(namespace, name), f"get {res.plural} {name}"), res)

    def create(self, res: Resource, obj: Json) -> Json:
        """Create `obj`; `Conflict` (AlreadyExists) when its name is taken."""
        meta = obj.get("metadata") or {}
        return self._call("POST", res.path(str(meta.get("namespace") or "")),
                          f"create {res.plural} {meta.get('name')}", obj)

    def replace(self, res: Resource, obj: Json) -> Json:
        """Update `obj` (its metadata.resourceVersion guards it); `Conflict` when it changed since."""
        meta = obj.get("metadata") or {}
        name = str(meta.get("name"))
        return self._call("PUT", res.path(str(meta.get("namespace") or ""), name),
                          f"update {res.plural} {name}", obj)

    def delete(self, res: Resource, namespace: str, name: str) -> None:
        """Delete one object; `Missing` when it is gone already."""
        self._call("DELETE", res.path(namespace, name), f"delete {res.plural} {name}")
