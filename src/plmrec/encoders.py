"""Sentence encoders: a Hugging Face encoder wrapped for sentence-transformers, and loading
whichever of the two a stage left behind."""

from __future__ import annotations

from pathlib import Path


def sentence_model(model_dir: str, pooling: str, max_length: int, *, device: str = "cpu"):
    """A sentence-transformers model over a Hugging Face encoder directory: transformer, pooling
    (mean or cls) and L2 normalisation."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoConfig

    dim = AutoConfig.from_pretrained(model_dir).hidden_size
    word = models.Transformer(model_dir, max_seq_length=max_length)
    return SentenceTransformer(modules=[word, models.Pooling(dim, pooling), models.Normalize()], device=device)


def encoder_folder(path: str | Path) -> Path:
    """The sentence-transformers folder in `path`: `path` itself, or the `sentence-transformer/` a stage
    wrote inside it (evaluate-retrieval's `encoder`, finetune's `finetuned`, pretrain's `pretrained`)."""
    from plmrec.errors import StageError

    path = Path(path)
    for candidate in (path / "sentence-transformer", path):
        if (candidate / "modules.json").exists() or (candidate / "config.json").exists():
            return candidate
    raise StageError(
        f"{path} holds no encoder (no modules.json or config.json, in it or in its sentence-transformer/): "
        f"pass the folder evaluate-retrieval wrote (models/encoder) or a sentence-transformers model"
    )


def load_encoder(path: str | Path, pooling: str, max_length: int, *, device: str = "cpu"):
    """A sentence-transformers directory as saved, or a Hugging Face encoder wrapped with `pooling`."""
    from sentence_transformers import SentenceTransformer

    path = Path(path)
    if (path / "modules.json").exists():
        model = SentenceTransformer(str(path), device=device)
        model.max_seq_length = max_length
        return model
    return sentence_model(str(path), pooling, max_length, device=device)
