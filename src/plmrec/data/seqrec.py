"""Loader for UniSRec/RecBole sequential-recommendation benchmarks (e.g. Amazon "Scientific").

A directory holds, for a prefix P:
  P.item2index  (original item id, integer index)     P.user2index (original user id, integer index)
  P.text        header `item_id:token  text:token_seq`, keyed by the original item id
  P.{train,valid,test}.inter  header `user_id:token  item_id_list:token_seq  item_id:token`,
                history as space-separated item indices, oldest first, and the next item index
Leave-one-out: each user's last item is the test target, the one before it the valid target.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from plmrec.errors import DataLoadError

INTER_HEADER = ["user_id:token", "item_id_list:token_seq", "item_id:token"]
SPLITS = ("train", "valid", "test")


@dataclass
class SeqRecDataset:
    name: str
    items: pd.DataFrame             # index (0..n-1), item_id, text
    splits: dict[str, pd.DataFrame]  # user, history (list[int]), target (int)

    @property
    def n_items(self) -> int:
        return len(self.items)


def find_prefix(directory: Path) -> str:
    found = sorted(p.name[: -len(".test.inter")] for p in directory.glob("*.test.inter"))
    if len(found) != 1:
        raise DataLoadError(f"{directory}: expected one <name>.test.inter, found {found or 'none'}; "
                            f"set retrieval.seqrec.name")
    return found[0]


def _require(path: Path) -> Path:
    if not path.is_file():
        raise DataLoadError(f"{path}: missing (a UniSRec/RecBole directory needs item2index, text and "
                            f"train/valid/test .inter files)")
    return path


def _read_tsv(path: Path, header: bool) -> list[list[str]]:
    lines = _require(path).read_text(encoding="utf-8").splitlines()
    return [line.split("\t") for line in (lines[1:] if header else lines) if line.strip()]


def _inter(path: Path, n_items: int) -> pd.DataFrame:
    head = _require(path).open(encoding="utf-8").readline().rstrip("\n").split("\t")
    if head != INTER_HEADER:
        raise DataLoadError(f"{path}: header {head} is not {INTER_HEADER}")
    users, histories, targets = [], [], []
    for lineno, fields in enumerate(_read_tsv(path, header=True), start=2):
        try:
            user, hist, target = fields
            history = [int(x) for x in hist.split()]
            target_i = int(target)
            users.append(int(user))
        except ValueError:
            raise DataLoadError(f"{path}:{lineno}: expected 'user<TAB>item item ...<TAB>item' with integer "
                                f"indices, got {fields!r}"[:300]) from None
        bad = [i for i in history + [target_i] if not 0 <= i < n_items]
        if bad:
            raise DataLoadError(f"{path}:{lineno}: item index {bad[0]} outside 0..{n_items - 1} (item2index)")
        histories.append(history)
        targets.append(target_i)
    return pd.DataFrame({"user": users, "history": histories, "target": targets})


def load_seqrec(path: str | Path, name: str | None = None) -> SeqRecDataset:
    directory = Path(path)
    if not directory.is_dir():
        raise DataLoadError(f"{directory}: not a directory (retrieval.seqrec.path)")
    name = name or find_prefix(directory)
    index_rows = _read_tsv(directory / f"{name}.item2index", header=False)
    try:
        item_index = {item: int(i) for item, i in index_rows}
    except ValueError:
        raise DataLoadError(f"{directory / f'{name}.item2index'}: expected '<item id><TAB><index>' lines") from None
    n = len(item_index)
    if sorted(item_index.values()) != list(range(n)):
        raise DataLoadError(f"{directory / f'{name}.item2index'}: indices are not 0..{n - 1}")
    texts = {fields[0]: (fields[1] if len(fields) > 1 else "").strip()
             for fields in _read_tsv(directory / f"{name}.text", header=True)}
    ids = sorted(item_index, key=item_index.__getitem__)
    items = pd.DataFrame({"index": range(n), "item_id": ids, "text": [texts.get(i, "") for i in ids]})
    splits = {s: _inter(directory / f"{name}.{s}.inter", n) for s in SPLITS}
    return SeqRecDataset(name=name, items=items, splits=splits)
