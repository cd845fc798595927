"""The `plmrec` command line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from plmrec import __version__
from plmrec.cluster.trainjob import DISTRIBUTED_STAGES
from plmrec.config import load_params
from plmrec.errors import PlmrecError
from plmrec.options import PARAMS_ENV, params_option, set_option

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


class _Group(click.Group):
    """Turns plmrec's own errors into one clear line and the error's exit code (plmrec.errors)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PlmrecError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(exc.exit_code)
        except Exception as exc:
            from plmrec.tracking import unavailable

            down = unavailable(exc)
            if down is None:
                raise
            click.secho(f"error: {down}", fg="red", err=True)
            sys.exit(down.exit_code)


def _params_for_every_command(ctx, param, value):
    if value:  # `plmrec --params F <command>` means the same as `plmrec <command> --params F`
        os.environ[PARAMS_ENV] = os.pathsep.join(value)  # click splits a path list on the path separator
    return value


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="plmrec")
@click.option(
    "--params",
    type=click.Path(dir_okay=False),
    multiple=True,
    expose_value=False,
    is_eager=True,
    callback=_params_for_every_command,
    help=f"params file for the command that follows (or ${PARAMS_ENV})",
)
def main():
    """plmrec: e-commerce recommendations improved with pretrained language models.

    \b
    Typical use:
      plmrec data generate                 write a synthetic Online Retail table
      plmrec data validate FILE            check a transactions file, write a report
      plmrec run                           run the whole pipeline locally (kfp.local + MLflow)
      plmrec compile                       write the KFP pipeline YAML for a cluster

    Every command reads params.yaml (override any key with -S key=value).
    """


# ---------------------------------------------------------------------------- data
@main.group()
def data():
    """Generate, download and validate datasets."""


@data.command("generate")
@params_option
@set_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default="data/synthetic_online_retail.parquet",
    show_default=True,
    help=".parquet, .csv or .csv.gz",
)
def data_generate(params_path, overrides, out):
    """Write a synthetic transactions table in the Online Retail schema (params: data.synthetic)."""
    from plmrec.data.online_retail import transactions_to_csv_bytes
    from plmrec.data.synthetic import generate_transactions
    from plmrec.data.tables import write_table

    params = load_params(params_path, overrides)
    df = generate_transactions(params.data.synthetic)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.name.endswith(".parquet"):
        write_table(df, out, {"source": "synthetic", **params.data.synthetic.model_dump(mode="json")})
    elif out.name.endswith(".csv.gz"):
        import gzip

        out.write_bytes(gzip.compress(transactions_to_csv_bytes(df)))
    elif out.name.endswith(".csv"):
        out.write_bytes(transactions_to_csv_bytes(df))
    else:
        raise PlmrecError(f"{out}: choose a .parquet, .csv or .csv.gz file name")
    click.echo(
        f"wrote {len(df):,} rows, {df['InvoiceNo'].nunique():,} invoices, "
        f"{df['CustomerID'].nunique():,} customers, {df['StockCode'].nunique():,} stock codes to {out}"
    )


@data.command("download")
@click.argument("dataset", type=click.Choice(["online-retail", "online-retail-ii"]))
@click.option("--dest", type=click.Path(file_okay=False), default="data/external", show_default=True)
@click.option("--sha256", default=None, help="expected checksum of the archive (else recorded on first download)")
def data_download(dataset, dest, sha256):
    """Download a public dataset from its source and verify its checksum (needs network)."""
    from plmrec.data.download import download

    path = download(dataset, dest, sha256=sha256)
    click.echo(f"{dataset}: {path}")


@data.command("validate")
@click.argument("path", type=click.Path(dir_okay=False))
@params_option
@set_option
@click.option("--suite", type=click.Choice(["raw", "prepared"]), default="raw", show_default=True)
@click.option("--report-dir", type=click.Path(file_okay=False), default="reports/validation", show_default=True)
def data_validate(path, params_path, overrides, suite, report_dir):
    """Validate a transactions file; exit 3 with a one-line summary if an expectation fails."""
    from plmrec.data.online_retail import load_transactions
    from plmrec.data.tables import read_table
    from plmrec.validation import validate_table

    params = load_params(params_path, overrides)
    df, meta = read_table(path) if suite == "prepared" else (load_transactions(path, encoding=params.data.encoding), {})
    outcome = validate_table(df, suite, params, report_dir=Path(report_dir) / suite, meta=meta)
    click.echo(outcome.summary + f" Report: {Path(report_dir) / suite / 'report.html'}")


@data.command("inspect")
@click.argument("path", type=click.Path(exists=True), required=False)
@params_option
@set_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "online_retail", "amazon", "recbole", "unisrec", "table"]),
    default=None,
    help="the adapter (default: data.format)",
)
@click.option("--meta", default=None, type=click.Path(exists=True, dir_okay=False), help="amazon: item metadata")
@click.option("--json", "as_json", is_flag=True, help="the report as JSON")
def data_inspect(path, params_path, overrides, fmt, meta, as_json):
    """What plmrec makes of a shop's data before anything trains: the adapter, the columns found and
    mapped, counts, drops, the split it would make, and what the pipeline can run on it (PATH: a file or a
    folder; default: data.path, or the synthetic generator)."""
    from plmrec.data import inspect as inspection
    from plmrec.data.adapters import read_shop

    params = load_params(params_path, overrides)
    if fmt:
        params.data.format = fmt
    if meta:
        params.data.meta_path = meta
    found = inspection.report(read_shop(params, path), params)
    click.echo(json.dumps(found, indent=2, default=str) if as_json else "\n".join(inspection.lines(found)))


# ---------------------------------------------------------------------------- pipeline
@main.command()
@params_option
@set_option
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="where artifacts and the log go (default: runs/<run key>)",
)
@click.option("-v", "--verbose", is_flag=True, help="stream every task's full log")
def run(params_path, overrides, run_dir, verbose):
    """Run the training pipeline locally with the KFP local runner; stages log to MLflow."""
    from plmrec.local_pipeline import run_local

    params = load_params(params_path, overrides)
    result = run_local(params, run_dir=run_dir, verbose=verbose)
    if not result.succeeded:
        sys.exit(1)


overlay_option = click.option(
    "--overlay",
    type=click.Path(exists=True),
    default=None,
    help="a deployment overlay (manifests/overlays/NAME) or params file laid over params.yaml",
)


def _cluster_params(params_path, overrides, overlay):
    from plmrec.config import overlay_params_file

    return load_params(params_path, overrides, [overlay_params_file(overlay)] if overlay else [])


@main.command("compile")
@params_option
@set_option
@overlay_option
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="pipeline.yaml", show_default=True)
def compile_cmd(params_path, overrides, overlay, output):
    """Compile the pipeline to KFP IR YAML (params.yaml becomes the default `config`)."""
    from plmrec.pipelines import compile_pipeline

    params = _cluster_params(params_path, overrides, overlay)
    click.echo(f"wrote {compile_pipeline(params, output)}")


@main.command()
@params_option
@set_option
@overlay_option
@click.option("--host", default=None, help="Kubeflow Pipelines endpoint (env KFP_HOST)")
@click.option("--token", default=None, help="bearer token (env KFP_TOKEN)")
@click.option("--cookies", default=None, help="session cookies, e.g. authservice_session=... (env KFP_COOKIES)")
@click.option("--namespace", default=None, help="profile namespace of a multi-user deployment (env KFP_NAMESPACE)")
@click.option("--ssl-ca-cert", default=None, help="CA bundle of the endpoint (env KFP_SSL_CA_CERT)")
@click.option("--ui-host", default=None, help="UI address for the run link, if not the endpoint (env KFP_UI_HOST)")
@click.option("--experiment", default=None, help="KFP experiment (default: tracking.experiment)")
@click.option("--run-name", default=None, help="default: <pipeline name> <UTC time>")
@click.option(
    "--service-account",
    default=None,
    help="the steps' service account (plmrec-pipeline can patch the InferenceService)",
)
@click.option("--wait", is_flag=True, help="follow the run to its end; exit 1 unless it succeeds")
@click.option("--timeout", type=click.IntRange(1), default=6 * 3600, show_default=True, help="seconds --wait waits")
@click.option(
    "--schedule",
    "cron",
    default=None,
    metavar="CRON",
    help="create a recurring run instead, e.g. '0 3 * * 1' (Mondays 03:00; 6 fields: seconds first)",
)
@click.option(
    "--max-concurrency", type=click.IntRange(1, 10), default=1, show_default=True, help="recurring runs allowed at once"
)
@click.option(
    "--package",
    type=click.Path(dir_okay=False),
    default=None,
    help="keep the compiled pipeline here (default: a temporary file)",
)
@click.option("--dry-run", is_flag=True, help="compile and show what would be submitted; contact nothing")
def submit(
    params_path,
    overrides,
    overlay,
    host,
    token,
    cookies,
    namespace,
    ssl_ca_cert,
    ui_host,
    experiment,
    run_name,
    service_account,
    wait,
    timeout,
    cron,
    max_concurrency,
    package,
    dry_run,
):
    """Compile the pipeline with params.yaml (+ overlay) and submit it to Kubeflow Pipelines."""
    import datetime as dt
    import tempfile

    from plmrec.cluster import submit as kfp_submit
    from plmrec.pipelines import compile_pipeline

    params = _cluster_params(params_path, overrides, overlay)
    schedule = kfp_submit.cron_expression(cron) if cron else None  # a bad one fails before compiling or connecting
    if schedule and wait:
        raise click.UsageError("--wait follows one run; it does not apply to --schedule")
    endpoint = kfp_submit.Endpoint.from_env(
        host=host, token=token, cookies=cookies, namespace=namespace, ssl_ca_cert=ssl_ca_cert, ui_host=ui_host
    )
    experiment = experiment or params.tracking.experiment
    run_name = run_name or f"{params.pipeline.name} {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M:%S}"
    package = Path(package or Path(tempfile.mkdtemp(prefix="plmrec-submit-")) / "pipeline.yaml")
    compile_pipeline(params, package)
    arguments = {"tracking_uri": params.tracking.uri or ""}
    plan = {
        "package": str(package),
        "host": endpoint.host,
        "namespace": endpoint.namespace,
        "experiment": experiment,
        "run_name": run_name,
        "service_account": service_account,
        "arguments": arguments,
        "schedule": schedule,
        "images": {"cpu": params.pipeline.image, "gpu": params.pipeline.gpu_image},
    }
    if dry_run:
        click.echo(json.dumps(plan, indent=2))
        return
    client = kfp_submit.connect(endpoint)
    if schedule:
        done = kfp_submit.schedule_run(
            client,
            endpoint.host,
            package,
            arguments=arguments,
            experiment=experiment,
            job_name=run_name,
            cron=schedule,
            max_concurrency=max_concurrency,
            namespace=endpoint.namespace,
            service_account=service_account,
        )
        click.echo(f"recurring run {done.id} ({done.details['cron']}): {done.url}")
        return
    done = kfp_submit.submit_run(
        client,
        endpoint.host,
        package,
        arguments=arguments,
        experiment=experiment,
        run_name=run_name,
        namespace=endpoint.namespace,
        service_account=service_account,
    )
    click.echo(f"run {done.id}: {done.url}")
    if wait:
        state = kfp_submit.follow(
            client,
            endpoint.host,
            done.id,
            timeout=timeout,
            on_state=lambda st, t: click.echo(f"  {t:7.0f} s  {st}", err=True),
        )
        click.echo(f"run {done.id} {state}")
        if state != "SUCCEEDED":
            sys.exit(1)


@main.group()
def manifests():
    """Render and validate the Kubernetes manifests (kustomize overlays)."""


@manifests.command("validate")
@click.argument("overlays", nargs=-1, type=click.Path(exists=True, file_okay=False))
@click.option("--kubernetes-version", default=None, help="schemas to validate against (default: 1.37.0)")
def manifests_validate(overlays, kubernetes_version):
    """Render each overlay (default: every manifests/overlays/*) and check it against the Kubernetes and
    KServe schemas and the security/resources policy; exit 1 on any problem."""
    from plmrec.cluster import manifests as mf

    overlays = overlays or sorted(str(d) for d in Path("manifests/overlays").glob("*") if d.is_dir())
    if not overlays:
        raise click.UsageError("no overlays given and no manifests/overlays/* here")
    failed = False
    for overlay in overlays:
        report = mf.check_overlay(overlay, kubernetes_version or mf.KUBERNETES_VERSION)
        kinds = sorted({r.get("kind") for r in report.resources})
        click.echo(
            f"{overlay}: {len(report.resources)} resources ({', '.join(kinds)}): "
            f"{'ok' if report.ok else f'{len(report.problems)} problems'}"
        )
        for problem in report.problems:
            click.echo(f"  {problem}")
        failed |= not report.ok
    examples = Path("manifests/examples")
    if examples.is_dir():
        report = mf.check_examples(examples)
        click.echo(f"{examples}: {len(report.resources)} resources: {'ok' if report.ok else 'problems'}")
        for problem in report.problems:
            click.echo(f"  {problem}")
        failed |= not report.ok
    if failed:
        sys.exit(1)


@manifests.command("trainjob")
@click.argument("stage_name", type=click.Choice(list(DISTRIBUTED_STAGES)))
@params_option
@set_option
@click.option("--run-key", default="manual", show_default=True, help="the pipeline run the job belongs to")
@click.option("--namespace", default=None, help="the job's namespace (default: serving.namespace, else none)")
def manifests_trainjob(stage_name, params_path, overrides, run_key, namespace):
    """Print the Kubeflow Trainer TrainJob the pipeline step submits for a stage with
    <stage>.resources.distributed.workers > 1, checked offline against the Trainer API's schema
    (exit 1 with one line per problem)."""
    import yaml

    from plmrec import tracking
    from plmrec.cluster import trainjob
    from plmrec.errors import ManifestError

    p = load_params(params_path, overrides)
    dist = trainjob.resources_of(p, stage_name).distributed
    if dist.workers == 1:
        click.echo(f"{stage_name}.resources.distributed.workers is 1: the step trains in its own pod, no TrainJob")
        return
    try:
        doc = trainjob.job_for(
            p,
            stage_name,
            run_key=run_key,
            tracking_uri=tracking.resolve_tracking_uri(p),
            namespace=namespace or p.serving.namespace or None,
        )
    except ManifestError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    click.echo(yaml.safe_dump(doc, sort_keys=False), nl=False)


@main.group()
def params():
    """Inspect the configuration."""


@params.command("show")
@params_option
@set_option
@click.option("--json", "as_json", is_flag=True, help="JSON instead of YAML")
@click.option("--origin", is_flag=True, help="one line per value with the file or override that set it")
def params_show(params_path, overrides, as_json, origin):
    """Print the effective configuration (defaults, the params files and the overrides merged) as YAML."""
    import yaml

    from plmrec.config import params_sources

    effective = load_params(params_path, overrides).to_dict()
    if origin:
        sources = params_sources(list(params_path) or None, overrides)
        flat = {}
        for key in sources:
            node = effective
            for part in key.split("."):
                node = node[part]
            flat[key] = node
        width = max(len(f"{k}: {json.dumps(v)}") for k, v in flat.items())
        for key, value in flat.items():
            shown = f"{key}: {json.dumps(value)}"
            click.echo(f"{shown:<{min(width, 70)}}  # {sources[key]}")
        return
    click.echo(json.dumps(effective, indent=2) if as_json else yaml.safe_dump(effective, sort_keys=False), nl=as_json)


# ---------------------------------------------------------------------------- stages (DVC)
class _Stages(click.Group):
    """The stage commands, each from its module (plmrec.stages), listed in pipeline order."""

    def list_commands(self, ctx):
        from plmrec.stages import STAGES

        return list(STAGES)

    def get_command(self, ctx, cmd_name):
        from plmrec import stages

        return stages.command(cmd_name) if cmd_name in stages.STAGES else None


@main.group(cls=_Stages)
def stage():
    """Run one pipeline stage on files (what dvc.yaml calls); its options are its inputs and outputs."""


# ---------------------------------------------------------------------------- registry and serving
def _registry_client(params):
    from plmrec import tracking

    return tracking.command_client(params)


def version_option(help: str):
    """--version: a registered version's number (a positive integer; anything else is a usage error, exit 2)."""
    return click.option("--version", "version", type=click.IntRange(min=1), default=None, help=help)


@main.command()
@params_option
@set_option
@version_option("the version to gate (default: @challenger)")
@click.option("--force", is_flag=True, help="skip the gate: make the version champion (an operator's decision)")
@click.option("--rollback", is_flag=True, help="point @champion back at the previous champion in its history")
def promote(params_path, overrides, version, force, rollback):
    """Gate a registered version for @champion, force it, or roll the champion back."""
    from plmrec import registry

    params = load_params(params_path, overrides)
    client, _ = _registry_client(params)
    name = params.registry.model_name
    if rollback:
        if version or force:
            raise click.UsageError("--rollback takes no --version or --force")
        was, now = registry.rollback(client, params.registry)
        click.echo(f"{name}@champion: version {was} -> {now} (rolled back)")
        return
    if version is None:
        version = registry.require_alias(
            client, name, registry.CHALLENGER, remedy="run the pipeline first, or pass --version"
        ).version
    version = str(version)
    champion = registry.alias_version(client, name, registry.CHAMPION)
    if champion is not None and str(champion.version) == version:
        registry.model_version(client, name, version)
        click.echo(f"{name} version {version} is already @champion: nothing to do")
        return
    decision = (
        registry.force_promote(client, params.registry, version)
        if force
        else registry.gate(client, params.registry, version)
    )
    word = "promoted to @champion" if decision.promoted else "not promoted"
    click.echo(f"{name} version {version}: {word}: {decision.reason}")
    click.echo(f"{name}@champion is version {decision.champion_after}")
    if not decision.promoted:
        sys.exit(1)


@main.command()
@params_option
@set_option
@overlay_option
@version_option("the registered version (default: @champion)")
@click.option("--print-only", is_flag=True, help="print the storageUri and the kubectl patch; change nothing")
def deploy(params_path, overrides, overlay, version, print_only):
    """Point the KServe InferenceService (serving.inference_service) at a registered version."""
    from plmrec import registry
    from plmrec.cluster import deploy as kdeploy

    params = _cluster_params(params_path, overrides, overlay)
    client, _ = _registry_client(params)
    name = params.registry.model_name
    if version is None:
        version = registry.require_alias(client, name, registry.CHAMPION, remedy="promote a version first").version
    version = str(registry.model_version(client, name, str(version)).version)
    uri = kdeploy.version_storage_uri(client, name, version, artifacts_destination=params.serving.artifacts_destination)
    isvc = (
        params.serving.inference_service or params.serving.model_name
    )  # the runtime serves the model under the ISVC's name
    click.echo(f"{name} version {version}: storageUri {uri}")
    if print_only:
        click.echo(f"kubectl patch inferenceservice {isvc} --type merge -p '{json.dumps(kdeploy.storage_patch(uri))}'")
        return
    kdeploy.patch_inference_service(isvc, params.serving.namespace or None, uri)
    click.echo(f"InferenceService {isvc} now serves version {version}")


@main.group()
def runs():
    """Compare pipeline runs and registered versions (what the MLflow UI shows, in the terminal)."""


@runs.command("compare")
@params_option
@set_option
@click.option("-n", "--last", "limit", type=click.IntRange(1, 100), default=5, show_default=True)
def runs_compare(params_path, overrides, limit):
    """The newest pipeline runs side by side: status, duration, headline metrics, registered version."""
    from plmrec.pipeline_runs import compare_runs, format_runs

    params = load_params(params_path, overrides)
    client, uri = _registry_client(params)
    table = compare_runs(client, params.tracking.experiment, limit)
    click.echo(format_runs(table, uri, params.tracking.experiment))


def bundle_options(verb: str):
    """--bundle (a bundle directory) or --alias (the registry's model), for a command that `verb`s one."""

    def add(f):
        f = click.option("--alias", default="champion", show_default=True, help=f"which registry alias to {verb}")(f)
        return click.option(
            "--bundle",
            "bundle_dir",
            type=click.Path(file_okay=False, exists=True),
            default=None,
            help=f"{verb} this bundle directory instead of the registry's model",
        )(f)

    return add


def _bundle_or_alias(params, bundle_dir, alias: str, *, dst: str | None, prefix: str) -> tuple[str, str | None, dict]:
    """(bundle directory, registry version or None, where it came from): --bundle, else the registry's
    model at --alias, downloaded into `dst` (default: a temporary directory)."""
    if bundle_dir is not None:
        return bundle_dir, None, {"bundle": bundle_dir}
    import tempfile

    from plmrec import registry

    _, uri = _registry_client(params)
    name = params.registry.model_name
    local, version = registry.download(uri, name, alias, dst=dst or tempfile.mkdtemp(prefix=prefix))
    return local, version, {"registry": uri, "model": name, "alias": alias, "version": version}


@main.command()
@params_option
@set_option
@bundle_options("serve")
@click.option("--host", default=None, help="default: serving.host (127.0.0.1)")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="default: serving.port")
@click.option(
    "--download-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="where the registered model is downloaded (default: a temporary directory)",
)
def serve(params_path, overrides, bundle_dir, alias, host, port, download_dir):
    """Serve the @champion recommender with the KServe model server (v1 and v2 protocols)."""
    from plmrec.serving.predictor import serve as run_server

    params = load_params(params_path, overrides)
    bundle_dir, version, source = _bundle_or_alias(params, bundle_dir, alias, dst=download_dir, prefix="plmrec-serve-")
    if version is not None:
        click.echo(f"serving {source['model']}@{alias} (version {version}) from {source['registry']}")
    run_server(bundle_dir, params.serving, host, port=port, version=version)


@main.group()
def export():
    """Write what a trained model knows for other tools to read."""


@export.command("embeddings")
@params_option
@set_option
@bundle_options("export")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="the folder to write")
def export_embeddings_cmd(params_path, overrides, bundle_dir, alias, out_dir):
    """Item and customer vectors (text, ALS, the user model's C vectors) as Parquet, with a manifest
    naming the encoder and model that made them: the arrays the server ranks with."""
    from plmrec.serving.bundle import find_bundle
    from plmrec.serving.export import export_embeddings

    params = load_params(params_path, overrides)
    bundle_dir, _, source = _bundle_or_alias(params, bundle_dir, alias, dst=None, prefix="plmrec-export-")
    manifest = export_embeddings(find_bundle(bundle_dir), out_dir, source=source)
    widths = "; ".join(
        f"{table}: " + ", ".join(f"{name} {'x'.join(map(str, shape))}" for name, shape in columns.items())
        for table, columns in manifest["widths"].items()
    )
    click.echo(
        f"{manifest['items']:,} items and {manifest['customers']:,} customers of {manifest['model']} -> {out_dir} "
        f"({widths})"
    )


# ---------------------------------------------------------------------------- models
@main.command("tiny-model")
@params_option
@set_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True)
@click.option("--vocab-size", type=click.IntRange(300, 60000), default=2000, show_default=True)
def tiny_model(params_path, overrides, out_dir, vocab_size):
    """Build a small random RoBERTa with a byte-level BPE tokenizer trained on the synthetic
    catalogue and DAPT text: a base model for fast offline pretraining runs (-S pretrain.base_model=OUT)."""
    from plmrec.data.synthetic import synthetic_catalogue
    from plmrec.pretrain.corpus import synthetic_dapt_corpus
    from plmrec.pretrain.models import build_tiny_roberta, quiet_transformers

    params = load_params(params_path, overrides)
    quiet_transformers()
    texts = list(synthetic_catalogue(params.data.synthetic)["Description"]) + synthetic_dapt_corpus(5000)
    path = build_tiny_roberta(texts, out_dir, vocab_size=vocab_size, max_length=params.pretrain.max_length)
    click.echo(f"tiny RoBERTa -> {path}")


if __name__ == "__main__":
    main()
