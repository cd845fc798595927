"""register-model: the bundle registered in the MLflow registry as a new version (its metrics and data
version attached) and made @challenger; the promotion gate makes it @champion when it is better. On
a cluster (serving.inference_service set) the InferenceService is then pointed at the new champion.

Inputs: `bundle` (models/bundle), `prepared` (data/prepared.parquet: its md5 is the data version).
Output: `decision` (metrics/registry.json: the version and the gate's decision). Registering is a side
effect: the pipeline never caches this step.
"""

from __future__ import annotations

from pathlib import Path

from plmrec import tracking
from plmrec.config import Params
from plmrec.data.files import file_digest
from plmrec.stages.common import kfp_setup, log_figures, say, write_json
from plmrec.stages.compare_models import BUNDLE
from plmrec.stages.declaration import Port, Stage
from plmrec.stages.prepare import PREPARED

SPEC = Stage(
    "register-model",
    __name__,
    inputs=(
        BUNDLE.reading("the bundle compare-models wrote", required=True),
        PREPARED.reading("the prepared table (its md5 is the data version)"),
    ),
    outputs=(
        Port("decision", "metrics", "the registered version and the gate's decision (JSON)", "metrics/registry.json"),
    ),
    params=("registry", "data.name", "data.source", "data.path"),
    code=("src/plmrec/registry.py",),
    comment="a side effect on the MLflow registry: new version, @challenger, gate",
)


def _deploy_champion(params: Params, client, decision) -> str | None:
    """On a cluster (serving.inference_service set): point the InferenceService at the new champion."""
    from plmrec.cluster import deploy

    serving = params.serving
    if not serving.inference_service:
        return None
    uri = deploy.version_storage_uri(
        client, params.registry.model_name, decision.champion_after, artifacts_destination=serving.artifacts_destination
    )
    deploy.patch_inference_service(serving.inference_service, serving.namespace or None, uri)
    say("register-model", f"InferenceService {serving.inference_service} -> {uri}")
    return uri


def _description(meta: dict, tags: dict, gated) -> str:
    """A version's description: the served model and its test figures, the encoder, the data, the gate."""
    from plmrec.serving.bundle import lift_note, twin_lifts

    primary = {k: v for k, v in meta["metrics"].items() if "@" in k and not k.endswith("_std")}
    figures = ", ".join(
        f"{k} {v:.4f}" + (f" ± {meta['metrics'][k + '_std']:.4f}" if k + "_std" in meta["metrics"] else "")
        for k, v in list(primary.items())[:4]
    )
    encoder = meta.get("encoder", {}).get("name") or Path(meta.get("encoder", {}).get("source", "?")).name
    twin = meta.get("twin")
    lifts = twin_lifts(meta)
    lists = "".join(f"{kind.replace('_', ' ')} list by {row}; " for kind, row in meta.get("list_rows", {}).items())
    against_twin = (
        f"{lists}against its no-text twin {twin}: "
        + ", ".join(
            f"{x['view']} {x['metric']} {x['difference']:+.4f} ({lift_note(x)}"
            + ("" if x["model"] == meta["model"] else f"; {x['model']} vs {x['versus']}")
            + ")"
            for x in lifts
        )
        + "; "
        if lifts
        else ("it reads no item text; " if twin == meta["model"] else "")
    )
    return (
        f"{meta['model']} (test {figures}, mean ± std over seeds); {against_twin}"
        f"item text from the '{encoder}' encoder; "
        f"{meta['customers']:,} customers, {meta['items']:,} items, data md5 {tags['data.md5']}; "
        f"pipeline run {tags['plmrec.run_key'] or '(standalone)'}; gate: "
        f"{'promoted to @champion' if gated.promoted else 'not promoted'}: {gated.reason}"
    )


def register_model(
    params: Params,
    *,
    bundle: str | Path,
    prepared: str | Path,
    decision: str | Path,
    run_key: str | None = None,
    tracking_uri: str | None = None,
) -> dict:
    """Register `bundle`, make it the challenger, promote it if it passes the gate; the outcome to `decision`."""
    from plmrec import registry
    from plmrec.serving.bundle import read_meta

    registry_params = params.registry
    if not registry_params.enabled:
        outcome = {"registered": False, "reason": "registry.enabled is false"}
        write_json(decision, outcome, indent=None)
        return outcome
    meta = read_meta(bundle)
    figures = {k: v for k, v in meta["metrics"].items() if not k.endswith("_std")}
    tags = {
        "data.md5": file_digest(prepared, "md5"),
        "data.path": str(prepared),
        registry.DATA_TAG: params.data.dataset(),
        "served_model": meta["model"],
        "plmrec.run_key": run_key or "",
    }
    with tracking.stage_run(params, "register-model", run_key=run_key, tracking_uri=tracking_uri):
        version = registry.register_bundle(bundle, registry_params, figures, tags=tags)
        client = tracking.mlflow_client()
        gated = registry.gate(client, registry_params, version)
        tracking.log_json(gated.to_dict(), "registry/decision.json")
        logged = {"gate_promoted": float(gated.promoted), "registered_version": float(version)}
        tracking.log_numeric(logged)
        tracking.set_tags({"plmrec.registered_version": version, "plmrec.gate": gated.reason})
        tracking.log_parent_metrics(params, logged, run_key=run_key, tracking_uri=tracking_uri)
        registry.describe(client, registry_params, version, text=_description(meta, tags, gated))
        deployed = _deploy_champion(params, client, gated) if gated.promoted else None
        if deployed:
            tracking.set_tags({"plmrec.deployed_storage_uri": deployed})
    outcome = {
        "registered": True,
        "model_name": registry_params.model_name,
        **gated.to_dict(),
        "deployed_storage_uri": deployed,
    }
    write_json(decision, outcome)
    say(
        "register-model",
        f"{registry_params.model_name} version {version} is @challenger; "
        f"{'promoted to @champion' if gated.promoted else 'not promoted'}: {gated.reason}",
    )
    return outcome


command = SPEC.command(
    register_model,
    help="Register the bundle in the MLflow registry as @challenger; promote it to @champion if it passes the gate.",
)


def kfp(config: dict, tracking_uri: str, run_key: str, *, bundle, prepared, decision) -> None:
    """The KFP component's body: the version, the gate's outcome and the challenger's figures as Metrics."""
    params, tracked = kfp_setup(config, tracking_uri, run_key)
    out = register_model(
        params, **SPEC.kfp_paths({"bundle": bundle, "prepared": prepared, "decision": decision}), **tracked
    )
    if out.get("registered"):
        log_figures(
            decision,
            {
                "registered_version": int(out["version"]),
                "promoted": int(out["promoted"]),
                **{f"challenger_{k}": v for k, v in out["primary"].items() if isinstance(v, float)},
            },
        )
