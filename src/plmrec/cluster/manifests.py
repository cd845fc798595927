"""Render the kustomize overlays and validate every resource offline: built-in kinds against the
Kubernetes OpenAPI schemas of a stated version (kubernetes-validate, strict: unknown fields fail),
KServe kinds against a schema generated from the KServe SDK's models (the CRD's field tree), a
policy that every container has requests and limits and meets the restricted Pod Security profile,
and who can reach what: default-deny NetworkPolicies, MLflow and the predictor reached only from
named sources, MLflow's authentication on with its secrets in Secrets. The Istio examples
(manifests/examples) are checked against the predictor's routes."""

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


def _pod_spec(resource: dict) -> dict:
    pod = resource
    for key in _POD_SPEC_PATHS.get(resource.get("kind"), ()):
        pod = pod.get(key) or {}
    return pod


def policy_problems(resource: dict) -> list[str]:
    """Every container: requests and limits for cpu and memory, and what the restricted Pod Security
    profile demands: non-root, no privilege escalation, every capability dropped, a seccomp profile
    (container or pod level), no privileged container, no host namespaces or host paths. (An
    InferenceService's model inherits its runtime's security context.)"""
    pod_security, containers = _containers(resource)
    problems = []
    pod = _pod_spec(resource) if resource.get("kind") in _POD_SPEC_PATHS else {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            problems.append(f"{name_of(resource)}: {key} is not allowed under the restricted profile")
    if any("hostPath" in volume for volume in pod.get("volumes") or []):
        problems.append(f"{name_of(resource)}: a hostPath volume is not allowed under the restricted profile")
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
        if security.get("privileged"):
            problems.append(f"{where}: privileged is not allowed")
        if "ALL" not in ((security.get("capabilities") or {}).get("drop") or []):
            problems.append(f"{where}: capabilities must drop ALL")
        seccomp = (security.get("seccompProfile") or pod_security.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{where}: no seccompProfile (RuntimeDefault) at container or pod level")
    return problems


# ------------------------------------------------------------------------------- who can reach what
TRACKING = {"app.kubernetes.io/component": "tracking"}
PREDICTOR_LABEL = "serving.kserve.io/inferenceservice"
OPEN_PERMISSIONS = ("EDIT", "MANAGE")  # as MLflow's default, any user could move @champion


def _selects(selector: dict, labels: dict) -> bool:
    """A label selector (matchLabels, matchExpressions with In, NotIn, Exists, DoesNotExist) on labels."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e.get("key"), e.get("operator"), e.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }.get(op, False)
        if not ok:
            return False
    return True


def _pod_labels(resource: dict) -> dict:
    kind = resource.get("kind")
    if kind == "InferenceService":
        return {PREDICTOR_LABEL: (resource.get("metadata") or {}).get("name")}
    if kind == "Pod":
        return (resource.get("metadata") or {}).get("labels") or {}
    path = _POD_SPEC_PATHS.get(kind)
    if not path:
        return {}
    template = resource
    for key in path[:-1]:  # down to the template, whose metadata holds the pod's labels
        template = template.get(key) or {}
    return (template.get("metadata") or {}).get("labels") or {}


def _open_sources(policy: dict) -> list[str]:
    """The ingress rules of a NetworkPolicy that let any pod or any namespace in."""
    found = []
    for i, rule in enumerate((policy.get("spec") or {}).get("ingress") or []):
        sources = rule.get("from")
        if not sources:
            found.append(f"ingress[{i}] has no `from`: every source")
        for peer in sources or []:
            if peer.get("ipBlock", {}).get("cidr") in ("0.0.0.0/0", "::/0"):
                found.append(f"ingress[{i}] lets every address in")
            if "namespaceSelector" in peer and not peer["namespaceSelector"] and not peer.get("podSelector"):
                found.append(f"ingress[{i}] lets every namespace in")
            if peer.get("podSelector") == {} and "namespaceSelector" not in peer:
                found.append(f"ingress[{i}] lets every pod of the namespace in")
    return found


def access_problems(resources: list[dict]) -> list[str]:
    """Who can reach what, for an overlay as a whole: the namespace enforces the restricted Pod Security
    profile; a NetworkPolicy denies all ingress by default and none lets everyone in; MLflow and the
    predictor are each reached only through a policy naming their sources; MLflow runs its built-in
    authentication with its secrets from Secrets and no permission for users by default."""
    problems = []
    by_kind: dict[str, list[dict]] = {}
    for r in resources:
        by_kind.setdefault(r.get("kind"), []).append(r)
    for ns in by_kind.get("Namespace", []):
        labels = (ns.get("metadata") or {}).get("labels") or {}
        if labels.get("pod-security.kubernetes.io/enforce") != "restricted":
            problems.append(f"{name_of(ns)}: pod-security.kubernetes.io/enforce must be 'restricted'")
    policies = by_kind.get("NetworkPolicy", [])
    if not any(
        (p.get("spec") or {}).get("podSelector") == {}
        and "Ingress" in ((p.get("spec") or {}).get("policyTypes") or [])
        and not (p.get("spec") or {}).get("ingress")
        for p in policies
    ):
        problems.append("no NetworkPolicy denies ingress by default (podSelector {}, policyTypes [Ingress], no rules)")
    for p in policies:
        problems += [f"{name_of(p)}: {o}" for o in _open_sources(p)]
    guarded = [
        (r, _pod_labels(r))
        for r in resources
        if r.get("kind") == "InferenceService" or _selects({"matchLabels": TRACKING}, _pod_labels(r))
    ]
    for r, labels in guarded:
        allowing = [
            p
            for p in policies
            if (p.get("spec") or {}).get("ingress") and _selects((p.get("spec") or {}).get("podSelector") or {}, labels)
        ]
        if not allowing:
            problems.append(f"{name_of(r)}: no NetworkPolicy names who may reach it")
    for svc in by_kind.get("Service", []):
        if (svc.get("spec") or {}).get("type") in ("NodePort", "LoadBalancer"):
            problems.append(f"{name_of(svc)}: type {svc['spec']['type']} opens it outside the cluster")
    problems += _mlflow_auth_problems(by_kind)
    return problems


def _mlflow_auth_problems(by_kind: dict[str, list[dict]]) -> list[str]:
    servers = [d for d in by_kind.get("Deployment", []) if _selects({"matchLabels": TRACKING}, _pod_labels(d))]
    problems = []
    for deployment in servers:
        pod = _pod_spec(deployment)
        for container in pod.get("containers") or []:
            where = f"{name_of(deployment)} container {container.get('name')}"
            args = " ".join(container.get("args") or []) + " " + " ".join(container.get("command") or [])
            if "--app-name=basic-auth" not in args and "--app-name basic-auth" not in args:
                problems.append(f"{where}: MLflow runs without its authentication (--app-name=basic-auth)")
                continue
            env = {e.get("name"): e for e in container.get("env") or []}
            for name in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
                if "secretKeyRef" not in ((env.get(name) or {}).get("valueFrom") or {}):
                    problems.append(f"{where}: {name} must come from a Secret (secretKeyRef)")
            path = (env.get("MLFLOW_AUTH_CONFIG_PATH") or {}).get("value")
            ini = _mounted_file(pod, container, path, config_maps=by_kind.get("ConfigMap", []))
            if ini is None:
                problems.append(f"{where}: MLFLOW_AUTH_CONFIG_PATH ({path}) is not a file of a mounted ConfigMap")
                continue
            problems += [f"{where}: {p}" for p in _auth_ini_problems(ini)]
    return problems


def _mounted_file(pod: dict, container: dict, path: str | None, *, config_maps: list[dict]) -> str | None:
    """The text at `path` in the container when it lies in a mounted ConfigMap (the key's value), else None."""
    if not path:
        return None
    volumes = {v.get("name"): v for v in pod.get("volumes") or []}
    for mount in container.get("volumeMounts") or []:
        prefix = mount.get("mountPath", "").rstrip("/") + "/"
        config_map = (volumes.get(mount.get("name")) or {}).get("configMap")
        if config_map and path.startswith(prefix):
            for cm in config_maps:
                if (cm.get("metadata") or {}).get("name") == config_map.get("name"):
                    return (cm.get("data") or {}).get(path[len(prefix) :])
    return None


def _auth_ini_problems(text: str) -> list[str]:
    import configparser

    config = configparser.ConfigParser()
    try:
        config.read_string(text)
        section = config["mlflow"]
    except (configparser.Error, KeyError) as exc:
        return [f"the auth config is not an [mlflow] ini file: {exc}"]
    problems = []
    permission = section.get("default_permission", "READ")
    if permission in OPEN_PERMISSIONS:
        problems.append(f"default_permission = {permission}: every user could change runs and move @champion")
    if section.get("admin_password"):
        problems.append(
            "admin_password is written in the auth config; take it from a Secret (MLFLOW_AUTH_ADMIN_PASSWORD)"
        )
    if section.get("database_uri", "").startswith("sqlite"):
        problems.append("the users' database is SQLite inside the pod: lost on restart, one per replica")
    return problems


def example_problems(resources: list[dict]) -> list[str]:
    """The Istio examples: each policy selects the predictor, and each path and method it names is one the
    predictor answers (plmrec.serving.http.ROUTES)."""
    from plmrec.serving.http import find_route

    problems = []
    for r in resources:
        if r.get("apiVersion", "").split("/")[0] != "security.istio.io":
            problems.append(f"{name_of(r)}: not an Istio security resource (the examples folder holds those)")
            continue
        spec = r.get("spec") or {}
        if PREDICTOR_LABEL not in ((spec.get("selector") or {}).get("matchLabels") or {}):
            problems.append(f"{name_of(r)}: its selector does not name the predictor ({PREDICTOR_LABEL})")
        if r.get("kind") == "AuthorizationPolicy":
            if spec.get("action", "ALLOW") not in ("ALLOW", "DENY", "AUDIT", "CUSTOM"):
                problems.append(f"{name_of(r)}: action {spec.get('action')!r} is none of ALLOW, DENY, AUDIT, CUSTOM")
            for i, rule in enumerate(spec.get("rules") or []):
                for to in rule.get("to") or []:
                    operation = to.get("operation") or {}
                    for path in operation.get("paths") or []:
                        route = find_route(path)
                        if route is None:
                            problems.append(f"{name_of(r)}: rules[{i}]: the predictor has no route {path}")
                            continue
                        wrong = [m for m in operation.get("methods") or [] if m not in route.methods]
                        if wrong and not set(operation.get("methods")) & set(route.methods):
                            problems.append(f"{name_of(r)}: rules[{i}]: {path} takes {', '.join(route.methods)}")
    return problems


def check_overlay(overlay: str | Path, kubernetes_version: str = KUBERNETES_VERSION) -> Report:
    """Render one overlay and collect every schema and policy problem of its resources."""
    kubernetes_definitions(kubernetes_version)  # an unsupported version fails here, clearly
    report = Report(str(overlay), render(overlay))
    for resource in report.resources:
        report.problems += schema_problems(resource, kubernetes_version) + policy_problems(resource)
    report.problems += access_problems(report.resources)
    return report


def check_examples(folder: str | Path) -> Report:
    """The example manifests beside the overlays (Istio policies for the predictor), checked offline."""
    resources = []
    for path in sorted(Path(folder).glob("*.yaml")):
        resources += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return Report(str(folder), resources, example_problems(resources))
