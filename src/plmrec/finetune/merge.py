"""Weight-space ensembling of a fine-tuned encoder with the encoder it started from (WiSE-FT,
Wortsman et al., CVPR 2022): the weights (1 - alpha) * start + alpha * fine-tuned, alpha chosen on
the valid window.

A few hundred contrastive steps on one shop's pairs move the encoder far from what it knew; the
interpolation keeps part of that while keeping most of the gain. alpha = 1 is the fine-tuned model
as trained, and wins ties (the simpler model).
"""

from __future__ import annotations

import copy

from plmrec.errors import StageError
from plmrec.selection import SELECTION_METRIC, EncoderSelection, ValidProbe, best_query


def alpha_name(alpha: float) -> str:
    return f"alpha={alpha:g}"


def interpolate(start, tuned, alpha: float):
    """A copy of `tuned` (a sentence-transformers model) whose floating-point weights are
    (1 - alpha) * start + alpha * tuned; `start` must have the same modules and shapes."""
    ours, theirs = tuned.state_dict(), start.state_dict()
    missing = sorted(set(ours) ^ set(theirs))
    if missing:
        raise StageError(
            f"finetune.merge_alphas: the start encoder and the fine-tuned one differ in {len(missing)} weights "
            f"(e.g. '{missing[0]}'); set finetune.merge_alphas: [1.0]"
        )
    merged = {}
    for key, value in ours.items():
        other = theirs[key].to(value.device)
        if other.shape != value.shape:
            raise StageError(
                f"finetune.merge_alphas: '{key}' is {tuple(other.shape)} in the start, {tuple(value.shape)} after"
            )
        # a weight the start checkpoint lacks (e.g. a pooler, drawn at load) is mixed too: pooling reads
        # the token vectors, never the pooler
        merged[key] = (1 - alpha) * other + alpha * value if value.is_floating_point() else value
    model = copy.deepcopy(tuned)
    model.load_state_dict(merged)
    return model


def choose_alpha(start, tuned, alphas: list[float], *, probe: ValidProbe, progress=None):
    """Score the fine-tuned model (alpha 1, always a candidate) and each interpolation on the valid
    window: the best alpha by valid NDCG@10 over the query kinds, its model, and the selection."""
    order = [1.0] + sorted({float(a) for a in alphas if a != 1.0}, reverse=True)
    scores = {}
    for alpha in order:
        scores[alpha_name(alpha)] = probe.score(tuned if alpha == 1.0 else interpolate(start, tuned, alpha))
        if progress:
            kind, value = best_query(scores[alpha_name(alpha)])
            progress(f"valid {SELECTION_METRIC} at {alpha_name(alpha)}: {value:.4f} ({kind} query)")
    selection = EncoderSelection("auto", scores)
    alpha = next(a for a in order if alpha_name(a) == selection.chosen)
    return alpha, (tuned if alpha == 1.0 else interpolate(start, tuned, alpha)), selection
