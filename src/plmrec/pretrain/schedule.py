"""A schedule of pretraining phases, each starting from the previous phase's weights.

Layout of the output directory:
  hf/                    the final encoder as a Hugging Face *ForMaskedLM checkpoint + tokenizer
  sentence-transformer/  the same encoder wrapped for sentence-transformers (pooling, L2 norm)
  phases/<i>-<corpus>-<objective>/phase.json   what each phase did; its weights until the next is done
  corpora/{tapt,dapt}.txt, loss_curve.png, pretrain_report.json
A rerun with the same configuration skips finished phases and resumes the current one from its
newest checkpoint.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from plmrec.config import PhaseParams, PretrainParams
from plmrec.distributed import barrier, is_main_process
from plmrec.encoders import sentence_model
from plmrec.errors import TrainingConfigError
from plmrec.plots import plot_losses
from plmrec.pretrain.models import check_base_model, quiet_transformers
from plmrec.pretrain.objectives import make_objective
from plmrec.training.loop import run_phase

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def check_schedule(params: PretrainParams, corpora: dict[str, list[str]]) -> str:
    """Everything that can be checked before training: the base model loads, every phase's corpus
    has text. Returns the resolved base model."""
    if not params.phases:
        raise TrainingConfigError("pretrain.phases is empty: nothing to train")
    for i, phase in enumerate(params.phases, start=1):
        if phase.objective not in ("mlm", "tsdae"):
            raise TrainingConfigError(f"phase {i}: unknown objective '{phase.objective}' (expected mlm or tsdae)")
        if not corpora.get(phase.corpus):
            raise TrainingConfigError(f"phase {i} ({phase.name}): the {phase.corpus.upper()} corpus is empty")
    return check_base_model(params.base_model)


def _phase_record(phase: PhaseParams, params: PretrainParams, start: str, *, seed: int) -> dict:
    return {
        "phase": phase.model_dump(exclude_none=True),
        "start_model": start,
        "seed": seed,
        "settings": params.model_dump(
            include={
                "batch_size",
                "grad_accum",
                "learning_rate",
                "weight_decay",
                "warmup_ratio",
                "max_length",
                "packing",
                "mlm_probability",
                "tsdae_deletion_ratio",
                "pooling",
                "mlm_head",
                "head_warmup_steps",
                "head_learning_rate",
                "head_fit_rows",
                "retain_weight",
            }
        ),
    }


def _finished_phases(params: PretrainParams, out: Path, base: str, *, seed: int) -> int:
    """How many leading phases a previous run with this configuration completed (the last of them
    still holding its weights), so that a rerun continues after them."""
    finished, start = 0, base
    for i, phase in enumerate(params.phases, start=1):
        phase_dir = out / "phases" / f"{i}-{phase.name}"
        done_file = phase_dir / "phase.json"
        if not done_file.exists() or json.loads(done_file.read_text())["record"] != _phase_record(
            phase, params, start, seed=seed
        ):
            break
        if any((phase_dir / w).exists() for w in WEIGHT_FILES):
            finished = i
        start = str(phase_dir)
    return finished


def _drop_weights(directory: Path) -> None:
    for name in WEIGHT_FILES:
        (directory / name).unlink(missing_ok=True)


def _start_head(objective, examples: list, params: PretrainParams, *, label: str, seed: int) -> dict:
    """A fresh MLM head (the checkpoint has none) started as pretrain.mlm_head says, then warmed up."""
    from plmrec.pretrain.head import start_informed_head, warm_up_head

    facts: dict = {"mlm_head": params.mlm_head}
    if params.mlm_head == "informed":
        facts.update(start_informed_head(objective, examples, max_rows=params.head_fit_rows, seed=seed))
        if facts.get("informed"):
            print(
                f"[plmrec] pretrain: phase {label}: informed MLM head, held-out loss "
                f"{facts['random_head_loss']:.3f} (random) -> {facts['informed_head_loss']:.3f}",
                flush=True,
            )
    if params.head_warmup_steps:
        facts["warmup"] = warm_up_head(
            objective,
            examples,
            steps=params.head_warmup_steps,
            learning_rate=params.head_learning_rate,
            settings=params,
            seed=seed,
        )
    return facts


def _valid_proxy(probe, model_dir: str, params: PretrainParams) -> dict:
    """The retrieval proxy of one encoder on the valid window: the best of the mean and recency queries."""
    from plmrec.encoders import load_encoder
    from plmrec.selection import PROXY_KINDS, best_query
    from plmrec.training.device import resolve_device

    model = load_encoder(model_dir, params.pooling, params.max_length, device=str(resolve_device(params.device)))
    scores = probe.score(model, kinds=PROXY_KINDS)
    kind, value = best_query(scores)
    return {"query": kind, "ndcg@10": round(value, 5), "recall@10": round(scores[kind]["recall@10"], 5)}


def run_schedule(
    params: PretrainParams,
    corpora: dict[str, list[str]],
    out_dir: str | Path,
    *,
    seed: int = 0,
    on_log: Callable[[str, int, float], None] | None = None,
    probe=None,
    on_proxy: Callable[[int, dict], None] | None = None,
    progress: bool = True,
) -> dict:
    """Train every phase in order; returns the report (also written to pretrain_report.json). With a
    `probe` (plmrec.selection.ValidProbe), the base encoder and each phase's encoder are scored on the
    valid window (`valid_proxy` in the report; `on_proxy(phase index, figures)`, 0 for the base)."""
    out = Path(out_dir)
    quiet_transformers()
    base = check_schedule(params, corpora)
    ckpt_root = Path(params.checkpoint_dir) if params.checkpoint_dir else out / "checkpoints"
    current, report, started = (
        base,
        {
            "base_model": params.base_model,
            "resolved_base_model": base,
            "corpora": {k: len(v) for k, v in corpora.items()},
            "phases": [],
        },
        time.time(),
    )
    finished = _finished_phases(params, out, base, seed=seed)

    def score(index: int, model_dir: str, label: str) -> dict | None:
        if probe is None or not is_main_process():
            return None
        figures = _valid_proxy(probe, model_dir, params)
        print(
            f"[plmrec] pretrain: {label}: valid proxy ndcg@10 {figures['ndcg@10']:.4f} ({figures['query']} query)",
            flush=True,
        )
        if on_proxy:
            on_proxy(index, figures)
        return figures

    if probe is not None:
        report["valid_proxy_base"] = score(0, base, "base model")
    for i, phase in enumerate(params.phases, start=1):
        label = f"{i}-{phase.name}"
        phase_dir = out / "phases" / label
        record = _phase_record(phase, params, current, seed=seed)
        done_file = phase_dir / "phase.json"
        if i <= finished:
            print(f"[plmrec] pretrain: phase {label} already done, skipped", flush=True)
            entry = json.loads(done_file.read_text())
            if on_proxy and entry.get("valid_proxy"):
                on_proxy(i, entry["valid_proxy"])
            report["phases"].append(entry)
            current = str(phase_dir)
            continue
        objective = make_objective(
            phase.objective,
            current,
            params.max_length,
            mlm_probability=params.mlm_probability,
            packing=params.packing,
            pooling=params.pooling,
            deletion_ratio=params.tsdae_deletion_ratio,
            retain_weight=params.retain_weight,
        )
        start_fp = objective.start_fingerprint()
        load_start = time.perf_counter()
        examples = objective.encode(corpora[phase.corpus])
        if not examples:
            raise TrainingConfigError(
                f"phase {label}: the {phase.corpus.upper()} corpus gives no training examples after tokenisation"
            )
        tokenise_s = time.perf_counter() - load_start
        facts = {"record": record, "examples": len(examples), "start_fingerprint": start_fp}
        if phase.objective == "mlm" and objective.fresh_head:
            facts["head_start"] = _start_head(objective, examples, params, label=label, seed=seed + i)
        entry = run_phase(
            objective,
            examples,
            phase,
            stage="pretrain",
            settings=params,
            seed=seed + i,
            progress=progress,
            label=label,
            phase_dir=phase_dir,
            checkpoint_root=ckpt_root,
            on_log=on_log,
            facts={**facts, "tokenise_seconds": round(tokenise_s, 3)},
        )
        if is_main_process() and Path(current).parent == out / "phases":  # the previous weights are not needed
            _drop_weights(Path(current))
        proxy = score(i, str(phase_dir), f"phase {label}")
        if proxy is not None:
            entry["valid_proxy"] = proxy
            done_file.write_text(json.dumps(entry, indent=2))
        report["phases"].append(entry)
        current = str(phase_dir)
    report["seconds"] = round(time.time() - started, 2)
    if is_main_process():
        export(current, out, params.pooling, max_length=params.max_length)
        (out / "pretrain_report.json").write_text(json.dumps(report, indent=2))
        plot_losses(report, out / "loss_curve.png")
    barrier()
    return report


def export(model_dir: str, out: Path, pooling: str, *, max_length: int) -> None:
    """Copy the final checkpoint to hf/ and wrap it for sentence-transformers."""
    hf = out / "hf"
    if Path(model_dir).resolve() != hf.resolve():
        shutil.rmtree(hf, ignore_errors=True)
        shutil.copytree(model_dir, hf, ignore=shutil.ignore_patterns("phase.json"))
    st = sentence_model(str(hf), pooling, max_length)
    shutil.rmtree(out / "sentence-transformer", ignore_errors=True)
    st.save(str(out / "sentence-transformer"))
