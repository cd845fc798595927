"""The cluster path: rendering and validating the Kubernetes manifests, submitting pipeline runs to
Kubeflow Pipelines, and pointing the KServe InferenceService at a promoted model."""
