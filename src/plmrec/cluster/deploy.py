"""Point the KServe InferenceService at a registered model version: its artifact location in the
MLflow artifact store becomes the predictor's storageUri (the register-model step does this after a
promotion, with the RBAC of manifests/base/rbac.yaml)."""

from __future__ import annotations

from pathlib import Path

from plmrec.errors import DeployError

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
PROXY_SCHEME = "mlflow-artifacts:"


def storage_uri(artifact_location: str, artifacts_destination: str) -> str:
    """The bucket URI KServe's storage initializer reads. A proxied location (`mlflow-artifacts:/1/models/
    m-x/artifacts`, from a server run with --serve-artifacts) lies under the server's
    --artifacts-destination; a direct s3:// or gs:// location is used as it is."""
    if artifact_location.startswith(PROXY_SCHEME):
        if not artifacts_destination:
            raise DeployError(
                f"{artifact_location} is proxied by the tracking server: set "
                "serving.artifacts_destination to the server's --artifacts-destination (e.g. s3://mlflow-artifacts)"
            )
        path = artifact_location[len(PROXY_SCHEME) :].lstrip("/")
        return f"{artifacts_destination.rstrip('/')}/{path}"
    if artifact_location.split("://", 1)[0] in ("s3", "gs", "abfs", "https", "hdfs", "pvc"):
        return artifact_location
    raise DeployError(
        f"{artifact_location}: not an object-store location a cluster can read "
        "(run the tracking server with an S3/GCS artifact store)"
    )


def version_storage_uri(client, name: str, version: str, *, artifacts_destination: str) -> str:
    """storageUri of a registered model version: where the registry says its files are (the logged
    model's artifact location, resolved at registration). Not `ModelVersion.model_id`: MLflow's SQL
    registry store does not keep it, so versions read back from a database-backed server lack it."""
    return storage_uri(client.get_model_version_download_uri(name, str(version)), artifacts_destination)


def storage_patch(uri: str) -> dict:
    """The merge patch that moves the predictor to a new model (a canary when canaryTrafficPercent is set)."""
    return {"spec": {"predictor": {"model": {"storageUri": uri}}}}


def current_namespace(default: str = "default") -> str:
    return _NAMESPACE_FILE.read_text().strip() if _NAMESPACE_FILE.is_file() else default


def patch_inference_service(name: str, namespace: str | None, uri: str) -> dict:
    """Merge-patch the InferenceService (in-cluster service-account credentials, else ~/.kube/config)."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except Exception as exc:
            raise DeployError(
                f"no Kubernetes credentials to patch InferenceService {name}: not in a cluster "
                f"and no usable kubeconfig ({exc})"
            ) from None
    namespace = namespace or current_namespace()
    api = client.CustomObjectsApi()
    try:
        return api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, storage_patch(uri))
    except Exception as exc:
        status = getattr(exc, "status", None)
        hint = {
            403: " (the step's service account needs the plmrec-promoter Role)",
            404: " (apply manifests/overlays/<overlay> first)",
        }.get(status, "")
        raise DeployError(
            f"patching InferenceService {namespace}/{name} failed: {getattr(exc, 'reason', None) or exc}{hint}"
        ) from None
