"""Validation of stored objects against the real schemas.

- Custom resources (DynamoGraphDeployment, its scaling adapter) against the vendored CRDs'
  ``openAPIV3Schema``. That schema is Kubernetes *structural* OpenAPI, so it is translated to JSON
  Schema first: ``x-kubernetes-int-or-string`` becomes "integer or string", and every object
  without ``additionalProperties`` or ``x-kubernetes-preserve-unknown-fields`` forbids unknown
  fields (a real API server would prune them silently; rejecting them is stricter and catches
  typos in test fixtures and in what the connector writes).
- Core objects (Pod, Lease, Service, ...) against the official schemas shipped in the
  ``kubernetes-validate`` package, strict (unknown fields are errors).
"""

from __future__ import annotations

import copy
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

CRD_DIR = Path(__file__).parent / "crds"
KUBERNETES_VERSION = "1.30"  # schema version asked of kubernetes-validate
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class SchemaError(ValueError):
    """The object does not match its schema; the message names the field."""


def _structural_to_json_schema(node: Any) -> Any:
    if isinstance(node, list):
        return [_structural_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _structural_to_json_schema(value) for key, value in node.items() if key != "description"}
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    preserve = out.pop("x-kubernetes-preserve-unknown-fields", False)
    for key in [k for k in out if k.startswith("x-kubernetes-")]:
        out.pop(key)
    if out.get("nullable"):
        out.pop("nullable")
        if "type" in out:
            out["type"] = [out["type"], "null"]
    if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


@cache
def crds() -> tuple[dict[str, Any], ...]:
    """Every CRD in ``crds/``, parsed once (the DGD file is 770 KB: the C loader when present)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return tuple(yaml.load(path.read_text(encoding="utf-8"), Loader=loader) for path in sorted(CRD_DIR.glob("*.yaml")))


@cache
def crd_validators() -> dict[tuple[str, str, str], jsonschema.protocols.Validator]:
    """(group, version, kind) -> validator, for every CRD file in ``crds/``."""
    validators: dict[tuple[str, str, str], jsonschema.protocols.Validator] = {}
    for crd in crds():
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = _structural_to_json_schema(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
            schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta is checked separately
            validators[(group, version["name"], kind)] = jsonschema.Draft7Validator(schema)
    return validators


def crd_spec(kind: str) -> dict[str, Any]:
    """The CRD of ``kind`` (names, subresources) from ``crds/``."""
    for crd in crds():
        if crd["spec"]["names"]["kind"] == kind:
            return crd
    raise KeyError(kind)


def _check_metadata(obj: dict[str, Any]) -> None:
    name = obj.get("metadata", {}).get("name", "")
    if not isinstance(name, str) or not _NAME.match(name) or len(name) > 253:
        raise SchemaError(f"metadata.name: invalid name {name!r} (lowercase RFC 1123 subdomain)")


UNVALIDATED_KINDS = frozenset({"HTTPRoute", "BackendTrafficPolicy"})  # no schema vendored (see the docs)


def validate(obj: dict[str, Any]) -> bool:
    """Raise :class:`SchemaError` unless ``obj`` matches the schema of its apiVersion and kind.

    Returns False (checked: metadata only) for the Gateway API and Envoy Gateway kinds, whose
    CRDs are not vendored here; True when the full schema was checked."""
    _check_metadata(obj)
    api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
    group, _, version = api_version.rpartition("/")
    validator = crd_validators().get((group, version, kind))
    if validator is not None:
        errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
        if errors:
            where = ".".join(str(p) for p in errors[0].absolute_path) or "(root)"
            raise SchemaError(f"{kind} {where}: {errors[0].message}")
        return True
    if kind in UNVALIDATED_KINDS:
        return False
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path) or "(root)"
        raise SchemaError(f"{kind} {where}: {exc.message}") from None
    except kubernetes_validate.SchemaNotFoundError:
        raise SchemaError(f"no schema for {api_version} {kind}") from None
    return True
