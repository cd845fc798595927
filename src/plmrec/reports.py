"""Text and HTML renderings of result tables for the terminal, MLflow and the KFP UI."""

from __future__ import annotations

import base64
from pathlib import Path

import pandas as pd


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table, one row per frame row."""
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False, name=None)]
    return "\n".join(lines) + "\n"


def image_html(title: str, pngs: list[Path], extra: str = "") -> str:
    """An HTML page (a KFP `HTML` artifact) with a title, the PNGs inlined and `extra` markup."""
    imgs = "".join(
        f'<img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        for p in pngs
        if p.exists()
    )
    return f"<html><body><h3>{title}</h3>{imgs}{extra}</body></html>"
