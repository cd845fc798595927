"""Submit the compiled pipeline to a Kubeflow Pipelines endpoint: one run, or a recurring run for
periodic retraining; optionally follow a run to its end."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plmrec.errors import SubmitError

FINAL_STATES = {"SUCCEEDED", "FAILED", "SKIPPED", "CANCELED", "ERROR"}
_CRON_FIELD = re.compile(r"^[0-9A-Za-z*?/,\-#LW]+$")


@dataclass
class Endpoint:
    """Where Kubeflow Pipelines listens and how to authenticate (flags, else environment)."""

    host: str | None = None
    token: str | None = None  # bearer token (e.g. `kubectl create token` or an OIDC token)
    cookies: str | None = None  # e.g. "authservice_session=..." behind Dex/oauth2-proxy
    namespace: str | None = None  # the profile namespace of a multi-user deployment
    ssl_ca_cert: str | None = None
    ui_host: str | None = None

    @classmethod
    def from_env(cls, **flags: Any) -> Endpoint:
        env = {
            "host": ("KFP_HOST", "KF_PIPELINES_ENDPOINT"),
            "token": ("KFP_TOKEN",),
            "cookies": ("KFP_COOKIES",),
            "namespace": ("KFP_NAMESPACE",),
            "ssl_ca_cert": ("KFP_SSL_CA_CERT",),
            "ui_host": ("KFP_UI_HOST", "KF_PIPELINES_UI_ENDPOINT"),
        }
        values = {}
        for key, names in env.items():
            values[key] = flags.get(key) or next((os.environ[n] for n in names if os.environ.get(n)), None)
        return cls(**values)


@dataclass
class Submitted:
    kind: str  # "run" or "recurring run"
    id: str
    url: str
    details: dict[str, Any] = field(default_factory=dict)


def cron_expression(expr: str) -> str:
    """KFP's scheduler takes six cron fields (seconds first); a standard five-field expression gets
    seconds 0. Anything else is refused here, before the server sees it."""
    fields = expr.split()
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) != 6 or not all(_CRON_FIELD.match(f) for f in fields):
        raise SubmitError(
            f"--schedule '{expr}': expected a cron expression of 5 fields (minute hour day month "
            f"weekday) or 6 (with seconds first), e.g. '0 3 * * 1' for Mondays at 03:00"
        )
    return " ".join(fields)


def connect(endpoint: Endpoint):
    """A kfp.Client for the endpoint; an unreachable or refusing endpoint is one clear error."""
    if not endpoint.host:
        raise SubmitError(
            "no Kubeflow Pipelines endpoint: pass --host or set KFP_HOST "
            "(e.g. http://localhost:8080 after `kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80`)"
        )
    import warnings

    import kfp

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "only works with KFP v2.0.0-beta.2 and later"
            return kfp.Client(
                host=endpoint.host,
                existing_token=endpoint.token,
                cookies=endpoint.cookies,
                namespace=endpoint.namespace or "kubeflow",
                ssl_ca_cert=endpoint.ssl_ca_cert,
                ui_host=endpoint.ui_host,
            )
    except Exception as exc:  # urllib3/ApiException/TimeoutError from the health check
        raise SubmitError(f"cannot reach Kubeflow Pipelines at {endpoint.host}: {_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    if status in (401, 403):
        return f"HTTP {status}: not authorised (pass --token or --cookies, or set KFP_TOKEN)"
    text = str(getattr(exc, "reason", None) or exc).strip().splitlines()
    return (f"HTTP {status}: " if status else "") + (text[0] if text else type(exc).__name__)


def _call(what: str, host: str, fn: Callable, *args, **kwargs):
    """fn(*args, **kwargs) with its errors as one SubmitError; kfp.Client's own prints ("Run details:
    ...") go to stderr, so stdout carries only plmrec's lines for scripts to read."""
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return fn(*args, **kwargs)
    except Exception as exc:
        raise SubmitError(f"{what} at {host} failed: {_reason(exc)}") from None


def run_url(client, run_id: str) -> str:
    return f"{client._get_url_prefix()}/#/runs/details/{run_id}"


def submit_run(
    client,
    host: str,
    package: str | Path,
    *,
    arguments: dict,
    experiment: str,
    run_name: str,
    namespace: str | None = None,
    service_account: str | None = None,
) -> Submitted:
    result = _call(
        "creating the run",
        host,
        client.create_run_from_pipeline_package,
        str(package),
        arguments=arguments,
        run_name=run_name,
        experiment_name=experiment,
        namespace=namespace,
        service_account=service_account,
    )
    return Submitted("run", result.run_id, run_url(client, result.run_id))


def schedule_run(
    client,
    host: str,
    package: str | Path,
    *,
    arguments: dict,
    experiment: str,
    job_name: str,
    cron: str,
    max_concurrency: int = 1,
    namespace: str | None = None,
    service_account: str | None = None,
) -> Submitted:
    """A recurring run: the same package and arguments on a cron schedule, without catch-up."""
    cron = cron_expression(cron)
    exp = _call("finding or creating the experiment", host, client.create_experiment, experiment, namespace=namespace)
    job = _call(
        "creating the recurring run",
        host,
        client.create_recurring_run,
        exp.experiment_id,
        job_name,
        cron_expression=cron,
        max_concurrency=max_concurrency,
        no_catchup=True,
        params=arguments,
        pipeline_package_path=str(package),
        service_account=service_account,
    )
    rid = job.recurring_run_id
    return Submitted(
        "recurring run",
        rid,
        f"{client._get_url_prefix()}/#/recurringrun/details/{rid}",
        details={"cron": cron, "experiment_id": exp.experiment_id},
    )


def follow(
    client,
    host: str,
    run_id: str,
    *,
    timeout: float,
    poll_seconds: float = 10,
    on_state: Callable[[str, float], None] = lambda state, elapsed: None,
) -> str:
    """Poll a run until it reaches a final state (returned) or `timeout` seconds pass (SubmitError)."""
    start, last = time.monotonic(), None
    while True:
        run = _call("reading the run", host, client.get_run, run_id)
        state = str(run.state or "PENDING").upper()
        elapsed = time.monotonic() - start
        if state != last:
            on_state(state, elapsed)
            last = state
        if state in FINAL_STATES:
            return state
        if elapsed > timeout:
            raise SubmitError(f"run {run_id} still {state} after {timeout:.0f} s (it goes on; follow it in the UI)")
        time.sleep(poll_seconds)
