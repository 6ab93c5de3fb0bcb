"""An API-compatible Kubernetes test server: the REST semantics Fleet Planner relies on, in aiohttp.

No kube-apiserver runs on these machines, so the connector and the Lease election are tested
through kubernetes-asyncio against this server. It implements, as the real API server does:

- GET one object, LIST (with ``labelSelector`` equality terms) and WATCH (``watch=true`` from a
  ``resourceVersion``; ``410 Gone`` when that version was compacted away; ``timeoutSeconds``);
- POST (``409 AlreadyExists``), PUT with a ``resourceVersion`` precondition (``409 Conflict``),
  DELETE (pods get a ``deletionTimestamp`` first — "terminating" — until :meth:`KubeStore.remove`);
- PATCH as RFC 6902 JSON patch and RFC 7386 merge patch; a patch that sets
  ``metadata.resourceVersion`` to a stale value is a ``409 Conflict`` (optimistic concurrency);
- the ``status`` subresource (main-resource writes keep status, status writes keep spec) and the
  ``scale`` subresource of CRDs that declare one (autoscaling/v1 ``Scale``);
- ``metadata.generation`` bumped on every spec change, one global ``resourceVersion`` counter.

Every object stored is validated first against its real schema (:mod:`kube_testserver.schemas`);
an invalid one is rejected with ``422 Invalid`` and nothing changes. Not implemented: field and
set-based selectors, server-side apply, strategic merge patch (answered ``415``), RBAC.
"""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from kube_testserver.patch import PatchError, apply_json_patch, apply_merge_patch
from kube_testserver.schemas import SchemaError, crd_spec, validate

Obj = dict[str, Any]
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"


@dataclass(frozen=True)
class Resource:
    """One REST resource the server serves."""

    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    has_status: bool = False
    scale: tuple[str, str, str] | None = None  # spec replicas, status replicas, selector paths

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


def _crd_resource(kind: str) -> Resource:
    crd = crd_spec(kind)["spec"]
    version = crd["versions"][0]
    sub = version.get("subresources", {})
    scale = sub.get("scale")
    return Resource(
        group=crd["group"],
        version=version["name"],
        plural=crd["names"]["plural"],
        kind=kind,
        has_status="status" in sub,
        scale=(scale["specReplicasPath"], scale["statusReplicasPath"], scale.get("labelSelectorPath", ""))
        if scale
        else None,
    )


def default_resources() -> list[Resource]:
    return [
        Resource("", "v1", "pods", "Pod", has_status=True),
        Resource("", "v1", "services", "Service", has_status=True),
        Resource("coordination.k8s.io", "v1", "leases", "Lease"),
        Resource("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute", has_status=True),
        Resource("gateway.envoyproxy.io", "v1alpha1", "backendtrafficpolicies", "BackendTrafficPolicy", True),
        _crd_resource("DynamoGraphDeployment"),
        _crd_resource("DynamoGraphDeploymentScalingAdapter"),
    ]


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> Obj:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _get_path(obj: Obj, dotted: str) -> Any:
    node: Any = obj
    for part in dotted.strip(".").split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _set_path(obj: Obj, dotted: str, value: Any) -> None:
    parts = dotted.strip(".").split(".")
    node = obj
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _without(obj: Obj, *keys: str) -> Obj:
    return {k: v for k, v in obj.items() if k not in keys}


@dataclass
class Event:
    resource_version: int
    type: str
    resource: Resource
    namespace: str
    obj: Obj


Key = tuple[str, str, str]  # plural@group, namespace, name


@dataclass
class KubeStore:
    """The objects, the event history and the waiters of open watches."""

    resources: list[Resource] = field(default_factory=default_resources)
    objects: dict[Key, Obj] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    revision: int = 1
    compacted_to: int = 0
    changed: asyncio.Condition | None = None
    on_write: list[Callable[[str, Resource, Obj], None]] = field(default_factory=list)
    validated: dict[str, int] = field(default_factory=dict)  # kind -> objects checked against the full schema
    unvalidated: dict[str, int] = field(default_factory=dict)  # kind -> objects checked for metadata only

    def resource(self, group: str, version: str, plural: str) -> Resource:
        for res in self.resources:
            if (res.group, res.version, res.plural) == (group, version, plural):
                return res
        raise ApiError(404, "NotFound", f"the server could not find the requested resource ({group}/{plural})")

    def resource_of(self, kind: str) -> Resource:
        return next(res for res in self.resources if res.kind == kind)

    @staticmethod
    def key(res: Resource, namespace: str, name: str) -> Key:
        return (f"{res.plural}.{res.group}", namespace, name)

    def get(self, res: Resource, namespace: str, name: str) -> Obj:
        obj = self.objects.get(self.key(res, namespace, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{res.plural}.{res.group} "{name}" not found')
        return obj

    def list(self, res: Resource, namespace: str | None, selector: dict[str, str]) -> list[Obj]:
        out = []
        for (kind, ns, _), obj in sorted(self.objects.items()):
            if kind != f"{res.plural}.{res.group}" or (namespace is not None and ns != namespace):
                continue
            labels = obj["metadata"].get("labels") or {}
            if all(labels.get(k) == v for k, v in selector.items()):
                out.append(obj)
        return out

    def _commit(self, event_type: str, res: Resource, namespace: str, obj: Obj) -> Obj:
        self.revision += 1
        obj["metadata"]["resourceVersion"] = str(self.revision)
        key = self.key(res, namespace, obj["metadata"]["name"])
        if event_type == "DELETED":
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        self.events.append(Event(self.revision, event_type, res, namespace, copy.deepcopy(obj)))
        for hook in self.on_write:
            hook(event_type, res, obj)
        if self.changed is not None:
            asyncio.get_running_loop().create_task(self._notify())
        return obj

    async def _notify(self) -> None:
        assert self.changed is not None
        async with self.changed:
            self.changed.notify_all()

    def compact(self) -> None:
        """Forget the event history (as etcd compaction does): older watches get 410 Gone."""
        self.compacted_to = self.revision
        self.events.clear()

    def _validated(self, res: Resource, obj: Obj) -> Obj:
        obj.setdefault("apiVersion", res.api_version)
        obj.setdefault("kind", res.kind)
        if obj["apiVersion"] != res.api_version or obj["kind"] != res.kind:
            raise ApiError(
                400, "BadRequest", f"expected {res.api_version} {res.kind}, got {obj['apiVersion']} {obj['kind']}"
            )
        try:
            tally = self.validated if validate(obj) else self.unvalidated
            tally[res.kind] = tally.get(res.kind, 0) + 1
        except SchemaError as exc:
            raise ApiError(422, "Invalid", f'{res.kind} "{obj["metadata"].get("name")}" is invalid: {exc}') from None
        return obj

    def create(self, res: Resource, namespace: str, body: Obj) -> Obj:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if "name" not in meta and "generateName" in meta:
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        meta["namespace"] = namespace
        if self.key(res, namespace, meta.get("name", "")) in self.objects:
            raise ApiError(409, "AlreadyExists", f'{res.plural}.{res.group} "{meta["name"]}" already exists')
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        meta.pop("resourceVersion", None)
        self._validated(res, obj)
        return self._commit("ADDED", res, namespace, obj)

    def replace(self, res: Resource, namespace: str, name: str, new: Obj, *, subresource: str = "") -> Obj:
        """Store ``new`` in place of the current object, honouring the resourceVersion precondition."""
        current = self.get(res, namespace, name)
        new = copy.deepcopy(new)
        meta = new.setdefault("metadata", {})
        sent_rv = meta.get("resourceVersion")
        if sent_rv not in (None, "") and sent_rv != current["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {res.plural}.{res.group} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
            )
        if meta.get("name", name) != name:
            raise ApiError(400, "BadRequest", "metadata.name cannot change")
        for immutable in ("uid", "creationTimestamp", "namespace", "generation"):
            if immutable in current["metadata"]:
                meta[immutable] = current["metadata"][immutable]
        meta["name"] = name
        if res.has_status and subresource != "status":
            if "status" in current:
                new["status"] = copy.deepcopy(current["status"])
            else:
                new.pop("status", None)
        if subresource == "status":
            new = {**copy.deepcopy(current), "status": new.get("status"), "metadata": current["metadata"] | {}}
            if new["status"] is None:
                new.pop("status")
        if _without(new, "metadata", "status") != _without(current, "metadata", "status"):
            meta = new["metadata"]
            meta["generation"] = int(current["metadata"].get("generation", 1)) + 1
        if new == current:
            return current
        self._validated(res, new)
        return self._commit("MODIFIED", res, namespace, new)

    def patch(self, res: Resource, namespace: str, name: str, content_type: str, body: Any, sub: str = "") -> Obj:
        current = self.get(res, namespace, name)
        try:
            if content_type == JSON_PATCH:
                patched = apply_json_patch(current, body)
            elif content_type == MERGE_PATCH:
                patched = apply_merge_patch(current, body)
            else:
                raise ApiError(415, "UnsupportedMediaType", f"patch type {content_type!r} is not supported here")
        except PatchError as exc:
            raise ApiError(422, "Invalid", f"the patch cannot be applied: {exc}") from None
        if not isinstance(patched, dict):
            raise ApiError(422, "Invalid", "the patched document is not an object")
        return self.replace(res, namespace, name, patched, subresource=sub)

    def delete(self, res: Resource, namespace: str, name: str, grace_s: int | None = None) -> Obj:
        """Pods with a grace period become terminating (a kubelet would then stop them); the rest go."""
        obj = copy.deepcopy(self.get(res, namespace, name))
        if res.kind == "Pod" and grace_s != 0:
            if obj["metadata"].get("deletionTimestamp"):
                return obj
            obj["metadata"]["deletionTimestamp"] = _now()
            obj["metadata"]["deletionGracePeriodSeconds"] = 30 if grace_s is None else grace_s
            return self._commit("MODIFIED", res, namespace, obj)
        return self._commit("DELETED", res, namespace, obj)

    def remove(self, res: Resource, namespace: str, name: str) -> None:
        """Finish a deletion (the kubelet's confirmation for a terminating pod)."""
        self._commit("DELETED", res, namespace, copy.deepcopy(self.get(res, namespace, name)))

    # scale subresource
    def scale_of(self, res: Resource, obj: Obj) -> Obj:
        assert res.scale is not None
        spec_path, status_path, selector_path = res.scale
        meta = obj["metadata"]
        scale: Obj = {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")},
            "spec": {"replicas": _get_path(obj, spec_path) or 0},
            "status": {"replicas": _get_path(obj, status_path) or 0},
        }
        selector = _get_path(obj, selector_path) if selector_path else None
        if selector:
            scale["status"]["selector"] = selector
        return scale

    def write_scale(self, res: Resource, namespace: str, name: str, scale: Obj) -> Obj:
        if res.scale is None:
            raise ApiError(404, "NotFound", f"{res.plural}.{res.group} has no scale subresource")
        replicas = (scale.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            raise ApiError(422, "Invalid", f"Scale.spec.replicas: must be a non-negative integer, got {replicas!r}")
        current = self.get(res, namespace, name)
        new = copy.deepcopy(current)
        rv = (scale.get("metadata") or {}).get("resourceVersion")
        new["metadata"]["resourceVersion"] = rv or current["metadata"]["resourceVersion"]
        _set_path(new, res.scale[0], replicas)
        return self.scale_of(res, self.replace(res, namespace, name, new))


def _selector(text: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for term in filter(None, (text or "").split(",")):
        key, sep, value = term.partition("=")
        if not sep or key.endswith("!"):
            raise ApiError(400, "BadRequest", f"only equality label selectors are supported, got {term!r}")
        out[key.strip()] = value.lstrip("=").strip()
    return out


def _list_kind(res: Resource) -> str:
    return f"{res.kind}List"


class KubeTestServer:
    """The HTTP face of a :class:`KubeStore`; ``await start()`` returns its base URL."""

    def __init__(self, store: KubeStore | None = None, token: str | None = None):
        self.store = store or KubeStore()
        self.token = token
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for tests
        self.unavailable = False  # tests: answer every request 503, as an API server in trouble does
        self._runner: web.AppRunner | None = None
        self._stopping = False
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors])
        prefixes = ["/api/{version}", "/apis/{group}/{version}"]
        for prefix in prefixes:
            coll = prefix + "/namespaces/{namespace}/{plural}"
            app.router.add_route("GET", prefix + "/{plural}", self._list)
            app.router.add_route("GET", coll, self._list)
            app.router.add_route("POST", coll, self._create)
            app.router.add_route("*", coll + "/{name}", self._item)
            app.router.add_route("*", coll + "/{name}/{sub}", self._item)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self.store.changed = asyncio.Condition()
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0]
        self.url = f"http://{bound[0]}:{bound[1]}"
        return self.url

    async def stop(self) -> None:
        self._stopping = True
        if self.store.changed is not None:
            await self.store._notify()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _errors(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        try:
            if self.unavailable:
                raise ApiError(503, "ServiceUnavailable", "the server is currently unable to handle the request")
            if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            result: web.StreamResponse = await handler(request)
            return result
        except ApiError as exc:
            return web.json_response(exc.status(), status=exc.code)

    def _res(self, request: web.Request) -> Resource:
        info = request.match_info
        return self.store.resource(info.get("group", ""), info["version"], info["plural"])

    async def _list(self, request: web.Request) -> web.StreamResponse:
        res = self._res(request)
        namespace = request.match_info.get("namespace")
        selector = _selector(request.query.get("labelSelector"))
        if (request.query.get("watch") or "").lower() in ("1", "true"):
            return await self._watch(request, res, namespace, selector)
        items = self.store.list(res, namespace, selector)
        return web.json_response(
            {
                "apiVersion": res.api_version,
                "kind": _list_kind(res),
                "metadata": {"resourceVersion": str(self.store.revision)},
                "items": items,
            }
        )

    async def _watch(
        self, request: web.Request, res: Resource, namespace: str | None, selector: dict[str, str]
    ) -> web.StreamResponse:
        store = self.store
        assert store.changed is not None
        given = request.query.get("resourceVersion") or "0"
        since = int(given) if given != "0" else store.revision
        timeout = float(request.query.get("timeoutSeconds") or 1800)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        if since < store.compacted_to:
            gone = ApiError(410, "Expired", f"too old resource version: {since} ({store.compacted_to})")
            await response.write((json.dumps({"type": "ERROR", "object": gone.status()}) + "\n").encode())
            return response
        if given == "0":  # no version: the current objects first, as synthetic ADDED events
            for obj in store.list(res, namespace, selector):
                await response.write((json.dumps({"type": "ADDED", "object": obj}) + "\n").encode())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        sent = since
        while loop.time() < deadline and not self._stopping:
            if request.transport is None or request.transport.is_closing():
                break  # the client went away
            for event in [e for e in store.events if e.resource_version > sent]:
                sent = event.resource_version
                labels = event.obj["metadata"].get("labels") or {}
                if (
                    event.resource == res
                    and (namespace is None or event.namespace == namespace)
                    and all(labels.get(k) == v for k, v in selector.items())
                ):
                    line = json.dumps({"type": event.type, "object": event.obj}) + "\n"
                    await response.write(line.encode())
            async with store.changed:
                with suppress(TimeoutError):
                    await asyncio.wait_for(store.changed.wait(), timeout=max(0.0, min(1.0, deadline - loop.time())))
        return response

    async def _create(self, request: web.Request) -> web.StreamResponse:
        res = self._res(request)
        obj = self.store.create(res, request.match_info["namespace"], await self._body(request))
        return web.json_response(obj, status=201)

    @staticmethod
    async def _body(request: web.Request) -> Any:
        try:
            return await request.json(loads=json.loads)
        except json.JSONDecodeError as exc:
            raise ApiError(400, "BadRequest", f"request body is not JSON: {exc}") from None

    async def _item(self, request: web.Request) -> web.StreamResponse:
        res = self._res(request)
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        sub = request.match_info.get("sub", "")
        if sub not in ("", "status", "scale") or (sub == "status" and not res.has_status):
            raise ApiError(404, "NotFound", f"no subresource {sub!r} on {res.plural}")
        if sub == "scale" and res.scale is None:
            raise ApiError(404, "NotFound", f"{res.plural}.{res.group} has no scale subresource")
        store = self.store
        if request.method == "GET":
            obj = store.get(res, namespace, name)
            return web.json_response(store.scale_of(res, obj) if sub == "scale" else obj)
        if request.method == "DELETE":
            grace = request.query.get("gracePeriodSeconds")
            return web.json_response(store.delete(res, namespace, name, int(grace) if grace is not None else None))
        body = await self._body(request)
        if sub == "scale":
            if request.method == "PATCH":
                current = store.scale_of(res, store.get(res, namespace, name))
                content_type = request.content_type
                if content_type == JSON_PATCH:
                    body = apply_json_patch(current, body)
                elif content_type == MERGE_PATCH:
                    body = apply_merge_patch(current, body)
                else:
                    raise ApiError(415, "UnsupportedMediaType", f"patch type {content_type!r} is not supported here")
            return web.json_response(store.write_scale(res, namespace, name, body))
        if request.method == "PUT":
            return web.json_response(store.replace(res, namespace, name, body, subresource=sub))
        if request.method == "PATCH":
            return web.json_response(store.patch(res, namespace, name, request.content_type, body, sub))
        raise ApiError(405, "MethodNotAllowed", f"{request.method} is not supported")
