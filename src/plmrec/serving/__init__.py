"""Serving: the bundle the predictor loads, request parsing, the KServe predictor, the MLflow pyfunc."""
