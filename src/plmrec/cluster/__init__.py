"""The cluster path: rendering and validating the Kubernetes manifests (`manifests`), submitting
pipeline runs to Kubeflow Pipelines (`submit`), running a training stage as a Kubeflow Trainer job
(`trainjob`) and pointing the KServe InferenceService at a promoted model (`deploy`)."""
