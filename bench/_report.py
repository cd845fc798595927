"""What every benchmark does with its result: print it as JSON, and write it to --out when given;
and how a figure over several seeds is summarised."""

from __future__ import annotations

import json
import statistics
from pathlib import Path


def mean_std(values: list[float]) -> dict:
    """Mean and sample std (ddof 1, as compare-models; 0 for one seed), with the values."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "values": values}


def emit(result: dict, out: str | Path | None) -> None:
    text = json.dumps(result, indent=2)
    print(text, flush=True)
    if out:
        Path(out).write_text(text + "\n")
