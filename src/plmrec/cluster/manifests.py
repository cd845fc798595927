"""Render the kustomize overlays and validate every resource offline: built-in kinds against the
Kubernetes OpenAPI schemas of a stated version (kubernetes-validate, strict: unknown fields fail),
KServe kinds against a schema generated from the KServe SDK's models (the CRD's field tree), and a
policy that every container runs as non-root with requests and limits."""

from __future__ import annotations

import functools
import inspect
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from plmrec.errors import ManifestError

KUBERNETES_VERSION = "1.37.0"
KSERVE_KINDS = {
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "V1alpha1ClusterServingRuntime",
}
K8S_DEFS_URI = "https://kubernetes.io/api/_definitions.json"
_POD_SPEC_PATHS = {
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
    "Pod": ("spec",),
}


@dataclass
class Report:
    overlay: str
    resources: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def name_of(resource: dict) -> str:
    meta = resource.get("metadata") or {}
    return f"{resource.get('kind')}/{meta.get('name')}"


def render(overlay: str | Path) -> list[dict]:
    """`kubectl kustomize <overlay>` (kustomize is built into kubectl) as a list of resources."""
    overlay = Path(overlay)
    if not (overlay / "kustomization.yaml").is_file():
        raise ManifestError(f"{overlay}: no kustomization.yaml")
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise ManifestError("kubectl not found on PATH: it renders the kustomize overlays (kubectl kustomize)")
    proc = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ManifestError(f"{overlay}: kubectl kustomize failed: {proc.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


# ------------------------------------------------------------------------------- KServe schema
_SCALARS = {
    "str": {"type": "string"},
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "bool": {"type": "boolean"},
    "object": {},
    "dict": {"type": "object"},
    "V1Time": {"type": "string"},
    "datetime": {"type": "string"},
}


@functools.cache
def kubernetes_definitions(kubernetes_version: str = KUBERNETES_VERSION) -> dict:
    """The strict Kubernetes definitions kubernetes-validate uses for this version (its newest schemas
    not newer than the version's major.minor), so KServe's Kubernetes fields follow the same version."""
    from kubernetes_validate.utils import all_versions, major_minor, schema_contents
    from packaging.version import Version

    wanted = Version(major_minor(kubernetes_version))
    usable = [v for v in all_versions() if Version(major_minor(v)) <= wanted]
    if not usable:
        raise ManifestError(f"no Kubernetes schemas for {kubernetes_version} (oldest: {all_versions()[0]})")
    return schema_contents(f"kubernetes-json-schema/v{usable[-1]}-local-strict/_definitions.json", kubernetes_version)


def _kubernetes_ref(type_name: str, kubernetes_version: str) -> dict | None:
    """V1Container -> io.k8s.api.core.v1.Container; K8sIoApiAppsV1DeploymentStrategy -> io.k8s.api.apps.v1...."""
    defs = kubernetes_definitions(kubernetes_version)["$defs"]
    if type_name.startswith("K8sIo"):
        parts = re.findall(r"[A-Z][a-z0-9]*", type_name)  # K8s Io Api Apps V1 Deployment Strategy
        version_at = next(i for i, p in enumerate(parts) if re.fullmatch(r"V\d+", p))
        key = (
            "io.k8s." + ".".join(p.lower() for p in parts[2 : version_at + 1]) + "." + "".join(parts[version_at + 1 :])
        )
        return {"$ref": f"{K8S_DEFS_URI}#/$defs/{key}"} if key in defs else None
    match = re.fullmatch(r"(V\d+(?:alpha\d+|beta\d+)?)([A-Z]\w*)", type_name)
    if not match:
        return None
    suffix = f".{match.group(1).lower()}.{match.group(2)}"
    found = sorted(
        (k for k in defs if k.endswith(suffix)),
        key=lambda k: (not k.startswith("io.k8s.api.core."), not k.startswith("io.k8s.apimachinery."), k),
    )
    return {"$ref": f"{K8S_DEFS_URI}#/$defs/{found[0]}"} if found else None


def _required_fields(cls) -> list[str]:
    source = inspect.getsource(cls)
    names = re.findall(r"Invalid value for `(\w+)`, must not be `None`", source)
    return [cls.attribute_map[n] for n in dict.fromkeys(names) if n in cls.attribute_map]


def kserve_schema(model_class: str, kubernetes_version: str = KUBERNETES_VERSION) -> dict:
    """A JSON schema (draft 2020-12) for a KServe kind from the SDK's generated models: every field
    typed, unknown fields rejected, required fields required; Kubernetes types refer to the Kubernetes
    schemas. Types the SDK does not ship (a few status and LLM types) accept any value."""
    import kserve.models as models

    defs: dict[str, Any] = {}

    def schema_of(type_name: str) -> dict:
        type_name = type_name.strip()
        if type_name in _SCALARS:
            return _SCALARS[type_name]
        if type_name == "ResourceQuantity":
            return {"$ref": f"{K8S_DEFS_URI}#/$defs/io.k8s.apimachinery.pkg.api.resource.Quantity"}
        if type_name.startswith("list[") and type_name.endswith("]"):
            return {"type": "array", "items": schema_of(type_name[5:-1])}
        if type_name.startswith("dict(") and type_name.endswith(")"):
            return {"type": "object", "additionalProperties": schema_of(type_name[5:-1].split(",", 1)[1])}
        cls = getattr(models, type_name, None)
        if cls is not None and hasattr(cls, "openapi_types"):
            if type_name not in defs:
                defs[type_name] = {}  # placeholder against recursion
                properties = {cls.attribute_map[attr]: schema_of(t) for attr, t in cls.openapi_types.items()}
                defs[type_name] = {
                    "type": "object",
                    "properties": properties,
                    "additionalProperties": False,
                    "required": _required_fields(cls),
                }
            return {"$ref": f"#/$defs/{type_name}"}
        return _kubernetes_ref(type_name, kubernetes_version) or {}

    root = schema_of(model_class)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$defs": defs, **root}


@functools.cache
def _kserve_validator(model_class: str, kubernetes_version: str):
    import jsonschema
    from referencing import Registry, Resource

    definitions = Resource.from_contents(kubernetes_definitions(kubernetes_version))
    registry = Registry().with_resource(K8S_DEFS_URI, definitions)
    return jsonschema.Draft202012Validator(kserve_schema(model_class, kubernetes_version), registry=registry)


def schema_problems(resource: dict, kubernetes_version: str = KUBERNETES_VERSION) -> list[str]:
    """What the Kubernetes (or KServe) schema rejects in one resource, one line per error."""
    import kubernetes_validate

    name = name_of(resource)
    model_class = KSERVE_KINDS.get((resource.get("apiVersion"), resource.get("kind")))
    if model_class is not None:
        validator = _kserve_validator(model_class, kubernetes_version)
        errors = sorted(validator.iter_errors(resource), key=lambda e: list(e.absolute_path))
        return [f"{name}: {'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]
    try:
        kubernetes_validate.validate(resource, kubernetes_version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(map(str, exc.path)) or "<root>"
        return [f"{name}: {path}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [
            f"{name}: no schema for {resource.get('apiVersion')} {resource.get('kind')} "
            f"in Kubernetes {kubernetes_version} or KServe"
        ]
    return []


# ------------------------------------------------------------------------------- policy
def _containers(resource: dict) -> tuple[dict, list[dict]]:
    """(pod-level security context, containers) of a workload, a ServingRuntime or an InferenceService."""
    kind = resource.get("kind")
    if kind in _POD_SPEC_PATHS:
        pod = resource
        for key in _POD_SPEC_PATHS[kind]:
            pod = pod.get(key) or {}
        return pod.get("securityContext") or {}, (pod.get("initContainers") or []) + (pod.get("containers") or [])
    if kind in ("ServingRuntime", "ClusterServingRuntime"):
        spec = resource.get("spec") or {}
        return spec.get("securityContext") or {}, spec.get("containers") or []
    if kind == "InferenceService":
        predictor = (resource.get("spec") or {}).get("predictor") or {}
        model = predictor.get("model")
        return predictor.get("securityContext") or {}, [model] if model else []
    return {}, []


def policy_problems(resource: dict) -> list[str]:
    """Every container: requests and limits for cpu and memory, non-root (container or pod level), no
    privilege escalation. (An InferenceService's model inherits its runtime's security context.)"""
    pod_security, containers = _containers(resource)
    problems = []
    for container in containers:
        where = f"{name_of(resource)} container {container.get('name', '<model>')}"
        resources = container.get("resources") or {}
        for part in ("requests", "limits"):
            missing = {"cpu", "memory"} - set(resources.get(part) or {})
            if missing:
                problems.append(f"{where}: no {part} for {', '.join(sorted(missing))}")
        if resource.get("kind") == "InferenceService":
            continue
        security = container.get("securityContext") or {}
        if not (security.get("runAsNonRoot") or pod_security.get("runAsNonRoot")):
            problems.append(f"{where}: runAsNonRoot is not set")
        if security.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation must be false")
    return problems


def check_overlay(overlay: str | Path, kubernetes_version: str = KUBERNETES_VERSION) -> Report:
    """Render one overlay and collect every schema and policy problem of its resources."""
    kubernetes_definitions(kubernetes_version)  # an unsupported version fails here, clearly
    report = Report(str(overlay), render(overlay))
    for resource in report.resources:
        report.problems += schema_problems(resource, kubernetes_version) + policy_problems(resource)
    return report
