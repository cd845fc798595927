"""The MLflow model registry: register each run's recommender, gate its promotion, roll back.

Every pipeline run logs its serving bundle as an MLflow pyfunc model and registers it as a new
version of one registered model, with its test metrics and data version as version tags. The
new version becomes `@challenger`; the gate promotes it to `@champion` only when it beats the
current champion on the primary metric by more than the margin and no guard metric drops by more
than the tolerance. Moving the `champion` alias is the single step that changes what is served;
every move of it is recorded in the registered model's champion history, and `rollback` goes to the
previous champion there. The gate, a forced promotion and a rollback hold one lock at a time.
"""

from __future__ import annotations

import json
import os
import random
import socket
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from plmrec.config import RegistryParams
from plmrec.errors import RegistryError

CHAMPION, CHALLENGER = "champion", "challenger"
PREVIOUS_TAG = "plmrec.previous_champion"
METRIC_TAG = "metric."  # where versions registered before plmrec logged figures on the model kept them
GATE_TAG = "plmrec.gate"
DATA_TAG = "data.name"  # what a version was trained on (DataParams.dataset): the gate compares like with like


def metric_tag(metric: str) -> str:
    return METRIC_TAG + metric.replace("@", "_at_")  # tag keys allow no '@'


def register_bundle(
    bundle_dir: str | Path, rp: RegistryParams, metrics: dict[str, float], *, tags: dict[str, str]
) -> str:
    """Log the bundle as a pyfunc model in the active run and register it, metrics and tags
    attached in the same call; returns the new version."""
    import mlflow

    from plmrec.serving.pyfunc import BundleModel, pip_requirements, request_example, signature

    example = request_example(bundle_dir)
    info = mlflow.pyfunc.log_model(
        name="recommender",
        python_model=BundleModel(),
        artifacts={"bundle": str(bundle_dir)},
        pip_requirements=pip_requirements(),
        metadata={"plmrec_metrics": metrics},
        signature=signature(bundle_dir, example),
        input_example=example,
    )
    mlflow.log_metrics({k.replace("@", "_at_"): float(v) for k, v in metrics.items()}, model_id=info.model_id)
    version = mlflow.register_model(info.model_uri, rp.model_name, await_registration_for=60, tags=tags)
    return str(version.version)


def version_metrics(client, version) -> dict[str, float]:
    """A version's test figures: the metrics of the logged model it was registered from (MLflow 3 keeps
    them there, with the run's); versions from before that read their `metric.*` tags."""
    model_id = getattr(version, "model_id", None) or _logged_model_id(version.source)
    if model_id:
        logged = client.get_logged_model(model_id)
        found = {m.key.replace("_at_", "@"): float(m.value) for m in logged.metrics or []}
        if found:
            return found
    return {
        k[len(METRIC_TAG) :].replace("_at_", "@"): float(v) for k, v in version.tags.items() if k.startswith(METRIC_TAG)
    }


def _logged_model_id(source: str | None) -> str | None:
    """The logged model's id in a version's source (`models:/m-<id>`), else None."""
    if source and source.startswith("models:/m-") and "/" not in source[len("models:/") :]:
        return source[len("models:/") :]
    return None


def _no_answer(exc) -> bool:
    """An MLflow error from the request itself (the server did not answer, or not in MLflow's terms)."""
    return str(exc).startswith("API request to")


def _not_found(exc) -> bool:
    """An MLflow error that says the thing asked for does not exist (not a server that did not answer)."""
    if _no_answer(exc):
        return False
    code = getattr(exc, "error_code", "")
    return code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND") or "not found" in str(exc)


def alias_version(client, name: str, alias: str):
    """The version behind `name@alias`, or None when the alias (or the model) is not there; any other
    failure (a server that does not answer) is raised, never taken for a missing alias."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if _not_found(exc):
            return None
        raise


def model_version(client, name: str, version: str):
    """Version `version` of `name`; a RegistryError naming the versions there are when it does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if not _not_found(exc):
            raise
        try:
            found = [str(v.version) for v in client.search_model_versions(f"name = '{name}'", max_results=100)]
        except MlflowException:
            found = []
        there = f"its versions: {', '.join(sorted(found, key=int))}" if found else "it has no versions"
        raise RegistryError(f"{name} has no version {version} in {client.tracking_uri} ({there})") from None


def _number(version) -> str | None:
    """A model version's number as text; None for no version (an alias not set)."""
    return str(version.version) if version is not None else None


def _set_alias(client, name: str, alias: str, *, version: str, tries: int = 3) -> None:
    """Point `name@alias` at `version`. Two registrations setting the same new alias at once can collide
    in the store (one insert wins, the other gets an integrity error); the alias then exists, and a
    second try updates it."""
    from mlflow.exceptions import MlflowException

    for attempt in range(tries):
        try:
            return client.set_registered_model_alias(name, alias, version)
        except MlflowException:
            if attempt == tries - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def require_alias(client, name: str, alias: str, *, remedy: str):
    """The version behind `name@alias`; a RegistryError saying what to do when the alias is not set."""
    version = alias_version(client, name, alias)
    if version is None:
        raise RegistryError(f"{name} has no @{alias} in {client.tracking_uri}: {remedy}")
    return version


@dataclass
class Decision:
    version: str
    promoted: bool
    reason: str
    champion_before: str | None
    champion_after: str | None
    primary: dict = field(default_factory=dict)
    guards: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def decide(
    candidate: dict[str, float], champion: dict[str, float] | None, rp: RegistryParams
) -> tuple[bool, str, dict, dict]:
    """The gate's rule alone: (promote?, reason, primary figures, guard figures)."""
    p = rp.primary_metric
    if p not in candidate:
        raise RegistryError(f"the candidate has no '{p}' metric (has: {', '.join(sorted(candidate)) or 'none'})")
    if champion is None:
        return True, "no champion yet: the first version is promoted", {"challenger": candidate[p]}, {}
    if p not in champion:
        return True, f"the champion has no '{p}' metric: the challenger replaces it", {"challenger": candidate[p]}, {}
    gain = candidate[p] - champion[p]
    primary = {
        "metric": p,
        "challenger": candidate[p],
        "champion": champion[p],
        "gain": gain,
        "min_improvement": rp.min_improvement,
    }
    guards, regressed = {}, []
    for g in rp.guard_metrics:
        if g in candidate and g in champion:
            drop = champion[g] - candidate[g]
            guards[g] = {
                "challenger": candidate[g],
                "champion": champion[g],
                "drop": drop,
                "tolerance": rp.guard_tolerance,
            }
            if drop > rp.guard_tolerance:
                regressed.append(f"{g} drops by {drop:.4f} (> {rp.guard_tolerance})")
    if gain <= rp.min_improvement:
        return (
            False,
            f"{p} {candidate[p]:.4f} does not beat the champion's {champion[p]:.4f} by more than "
            f"{rp.min_improvement} (gain {gain:+.4f})",
            primary,
            guards,
        )
    if regressed:
        return False, "guard metric regressed: " + "; ".join(regressed), primary, guards
    return (
        True,
        f"{p} {candidate[p]:.4f} beats the champion's {champion[p]:.4f} by {gain:+.4f} and no guard metric regressed",
        primary,
        guards,
    )


def other_data(candidate, champion) -> str | None:
    """Why the two versions' test figures cannot be compared (trained on different data, or on data the
    champion does not record), or None. Two versions that both predate the tag are compared as before."""
    ours, theirs = candidate.tags.get(DATA_TAG), champion.tags.get(DATA_TAG)
    if not ours or ours == theirs:
        return None
    trained = f"was trained on '{theirs}'" if theirs else "records no data name (registered before the tag existed)"
    return (
        f"the champion (version {champion.version}) {trained}, this version on '{ours}': their test figures "
        f"are not comparable, so the gate does not promote it. Register each shop under its own name "
        f"(-S registry.model_name=...), or make it champion by hand: "
        f"plmrec promote --version {candidate.version} --force"
    )


LOCK_TAG = "plmrec.gate_lock"  # a registered-model tag: "<owner> <lease end, unix seconds>"
HISTORY_TAG = "plmrec.champion_history"  # a registered-model tag: JSON, every move of @champion
HISTORY_KEPT = 40  # entries (a tag value holds 5,000 characters)


def _registered(client, name: str):
    """The registered model `name`; a RegistryError when there is none (not a server that did not answer)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if not _not_found(exc):
            raise
        raise RegistryError(
            f"{name} is not a registered model in {client.tracking_uri}: run the pipeline first"
        ) from None


def _lease(client, name: str) -> tuple[str, float] | None:
    value = _registered(client, name).tags.get(LOCK_TAG, "")
    owner, _, until = value.rpartition(" ")
    try:
        return (owner, float(until)) if owner else None
    except ValueError:
        return None


@contextmanager
def gate_lock(client, rp: RegistryParams):
    """One gate, forced promotion or rollback at a time per registered model, across processes and hosts.

    MLflow has no transaction, and a tag write is last-writer-wins: a process writes its lease, waits
    `gate_settle_s` and reads it back; it holds the lock only if its own lease is still there (a racer that
    wrote after it has taken it, and this one waits). A lease ends after `gate_lease_s`, so a killed
    holder blocks nobody for longer."""
    from mlflow.exceptions import MlflowException

    name = rp.model_name
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.time() + rp.gate_lock_timeout_s
    while True:
        holder = _lease(client, name)
        if holder is None or holder[1] < time.time():
            try:
                client.set_registered_model_tag(name, LOCK_TAG, f"{owner} {time.time() + rp.gate_lease_s:.3f}")
            except MlflowException as exc:  # a racer inserted the tag in the same instant (the store's unique
                if _no_answer(exc):  # key refuses the second insert): it goes first
                    raise
            else:
                time.sleep(rp.gate_settle_s)
                holder = _lease(client, name)
                if holder is not None and holder[0] == owner:
                    break
        if time.time() > deadline:
            raise RegistryError(
                f"{name}: another gate ({holder[0] if holder else 'unknown'}) held the lock for more than "
                f"{rp.gate_lock_timeout_s:g} s (registry.gate_lock_timeout_s); if none is running, its lease "
                f"ends by itself within registry.gate_lease_s ({rp.gate_lease_s:g} s)"
            )
        time.sleep(random.uniform(0.1, 0.3) + rp.gate_settle_s / 2)
    try:
        yield
    finally:
        holder = _lease(client, name)
        if holder is not None and holder[0] == owner:
            client.delete_registered_model_tag(name, LOCK_TAG)


def champion_history(client, name: str) -> list[dict]:
    """Every move of @champion, oldest first: {"version", "by": gate | force | rollback, "at"}."""
    value = client.get_registered_model(name).tags.get(HISTORY_TAG)
    return json.loads(value) if value else []


def _record_champion(client, name: str, version: str, *, by: str) -> None:
    history = [*champion_history(client, name), {"version": str(version), "by": by, "at": round(time.time(), 3)}]
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[-HISTORY_KEPT:]))


def _move_champion(client, name: str, *, version: str, before: str | None, by: str) -> None:
    """The one step that changes what is served, with its records: the replaced champion on the new one
    (older plmrec's rollback reads it) and the move in the history."""
    if by != "rollback":
        client.set_model_version_tag(name, version, PREVIOUS_TAG, before or "")
    _set_alias(client, name, CHAMPION, version=version)
    _record_champion(client, name, version, by=by)


def gate(client, rp: RegistryParams, version: str) -> Decision:
    """Make `version` the challenger and promote it to champion if it beats the current one.

    Both aliases move under the gate lock (`gate_lock`): two registrations finishing together are gated
    one after the other, each against the champion the other left, so no version is champion for a
    moment it did not earn, and @challenger names the version gated last."""
    name = rp.model_name
    candidate = model_version(client, name, version)
    figures = version_metrics(client, candidate)
    with gate_lock(client, rp):
        _set_alias(client, name, CHALLENGER, version=version)
        current = alias_version(client, name, CHAMPION)
        before = _number(current)
        if before == str(version):
            raise RegistryError(f"version {version} of {name} is already the champion")
        mismatch = other_data(candidate, current) if current else None
        if mismatch:
            promote, reason, primary, guards = False, mismatch, {}, {}
        else:
            promote, reason, primary, guards = decide(
                figures, version_metrics(client, current) if current else None, rp
            )
        decision = Decision(str(version), promote, reason, before, str(version) if promote else before, primary, guards)
        if promote:
            _move_champion(client, name, version=str(version), before=before, by="gate")
        client.set_model_version_tag(name, version, GATE_TAG, json.dumps(decision.to_dict())[:4900])
    return decision


def force_promote(client, rp: RegistryParams, version: str) -> Decision:
    """Make `version` the champion without the gate (an operator's decision), keeping rollback possible."""
    name = rp.model_name
    model_version(client, name, version)  # a RegistryError if it does not exist
    with gate_lock(client, rp):
        before = _number(alias_version(client, name, CHAMPION))
        if before != str(version):
            _move_champion(client, name, version=str(version), before=before, by="force")
    return Decision(str(version), True, "promoted by hand (--force): gate skipped", before, str(version))


def _previous_champion(client, name: str, current) -> str:
    """The champion before the current one: the history read as a stack (a promotion pushes, a rollback
    pops), or, for a registry from before the history, the version the current one replaced."""
    stack: list[str] = []
    for entry in champion_history(client, name):
        if entry["by"] == "rollback":
            while stack and stack[-1] != entry["version"]:
                stack.pop()
            if not stack:
                stack.append(entry["version"])
        else:
            stack.append(entry["version"])
    if len(stack) > 1 and stack[-1] == str(current.version):
        return stack[-2]
    return current.tags.get(PREVIOUS_TAG, "")  # the first champion in the history, or none kept


def rollback(client, rp: RegistryParams) -> tuple[str, str]:
    """Point @champion back at the previous champion in its history; returns (from, to)."""
    name = rp.model_name
    with gate_lock(client, rp):
        current = require_alias(client, name, CHAMPION, remedy="nothing to roll back")
        previous = _previous_champion(client, name, current)
        if not previous:
            raise RegistryError(
                f"{name}@{CHAMPION} is version {current.version}, which replaced no earlier champion: "
                f"nothing to roll back to"
            )
        model_version(client, name, previous)
        client.set_model_version_tag(name, str(current.version), "plmrec.rolled_back_to", previous)
        _move_champion(client, name, version=previous, before=str(current.version), by="rollback")
    return str(current.version), previous


MODEL_DESCRIPTION = (
    "plmrec's served recommender: each version is one pipeline run's bundle (register-model), with its test "
    "figures, data version and the promotion gate's verdict in its description; @champion is what is served, "
    "@challenger the newest version; `plmrec promote --rollback` moves @champion back."
)


def describe(client, rp: RegistryParams, version: str, *, text: str) -> None:
    """The version's description (what it is, on what data, what the gate said), and the registered
    model's own description where it has none yet."""
    client.update_model_version(rp.model_name, str(version), description=text[:5000])
    if not client.get_registered_model(rp.model_name).description:
        client.update_registered_model(rp.model_name, description=MODEL_DESCRIPTION)


def download(uri: str, name: str, alias: str, *, dst: str | Path) -> tuple[Path, str]:
    """Download `models:/name@alias` into `dst`; returns (local directory, version)."""
    import mlflow

    v = require_alias(mlflow.MlflowClient(uri), name, alias, remedy="run the pipeline, then `plmrec promote`")
    mlflow.set_tracking_uri(uri)
    local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{v.version}", dst_path=str(dst))
    return Path(local), str(v.version)


def versions_table(client, name: str, limit: int = 10) -> list[dict]:
    """The newest versions with their aliases, gate decision and metrics."""
    aliases: dict[str, list[str]] = {}
    for alias, ver in client.get_registered_model(name).aliases.items():
        aliases.setdefault(str(ver), []).append(alias)
    rows = []
    for v in client.search_model_versions(f"name = '{name}'", order_by=["version_number DESC"], max_results=limit):
        gate_info = json.loads(v.tags.get(GATE_TAG, "{}") or "{}")
        rows.append(
            {
                "version": str(v.version),
                "aliases": ",".join(sorted(aliases.get(str(v.version), []))),
                "promoted": gate_info.get("promoted"),
                "run_id": v.run_id,
                **version_metrics(client, v),
                "data_md5": v.tags.get("data.md5", ""),
            }
        )
    return rows
