"""What every benchmark does with its result: print it as JSON, and write it to --out when given."""

from __future__ import annotations

import json
from pathlib import Path


def emit(result: dict, out: str | Path | None) -> None:
    text = json.dumps(result, indent=2)
    print(text, flush=True)
    if out:
        Path(out).write_text(text + "\n")
