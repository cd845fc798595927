"""The recommender rows: one registry entry per row compare-models evaluates and the server can serve.

An entry says how the row scores from `plmrec.recsys.recommend.Scorers` (or that a learning-to-rank
ranker orders candidates instead), its blend weight and where that weight's grid lives in the params,
whether it needs train-user-model's output, and the vanilla rows its verdicts compare it with. The
study (`experiment.run_recommenders`), the verdicts (`comparison.Comparison`), the bundle and the served
ranking (`serving.bundle`) and the params' validators (`config`) all read it, so a new row is one
`register(...)` call below plus its settings in params.yaml (a blend's weight grid).

plmrec.config reads this registry while it is being imported: nothing heavy is imported here at module
level (the score functions import numpy and the recommenders when called).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np

    from plmrec.recsys.recommend import Scorers


GRID_SECTION = "recommenders.mf"  # the params section that takes the rows' weight grids (plmrec.config)


class RowScores(Protocol):
    def __call__(self, s: Scorers, weight: float) -> np.ndarray: ...


@dataclass(frozen=True)
class Scorer:
    """One scorer as it is (`Scorers.<field>`); a per-item one (popularity) is the same for every customer."""

    field: str

    def __call__(self, s: Scorers, weight: float) -> np.ndarray:
        from plmrec.recsys.recommend import scorer_scores

        return scorer_scores(s, self.field)


@dataclass(frozen=True)
class Mix:
    """(1 - w) * z(base) + w * z(added), both standardised per customer."""

    base: str
    added: str

    def __call__(self, s: Scorers, weight: float) -> np.ndarray:
        from plmrec.recsys.recommend import scorer_scores, zscore

        return (1 - weight) * zscore(scorer_scores(s, self.base)) + weight * zscore(scorer_scores(s, self.added))


@dataclass(frozen=True)
class Boost:
    """z(base) + w * z(added): the added score boosts the base one, both standardised per customer."""

    base: str
    added: str

    def __call__(self, s: Scorers, weight: float) -> np.ndarray:
        from plmrec.recsys.recommend import scorer_scores, zscore

        return zscore(scorer_scores(s, self.base)) + weight * zscore(scorer_scores(s, self.added))


@dataclass(frozen=True)
class Versus:
    """One verdict line: the row against its vanilla counterpart, headed `label`."""

    vanilla: str
    label: str


@dataclass(frozen=True)
class Row:
    """A recommender row. `scores(s, weight)`: customers x items from the scorers, served by its top-k;
    None: learning to rank (a ranker trained on the valid window orders candidates, in the study and
    served). `weight`: the blend weight's name in the chosen settings and bundle.json, chosen on valid
    from the grid at the params path `grid`, a recommenders.mf key (`default_grid` where the params
    leave it out; without one the params must set it). `user_model`: needs train-user-model's output
    (a row scored from it runs on the user model's own seeds only; learning to rank with it, on every
    seed). `versus`: its verdict lines, each shown when both rows were evaluated. `twin`: the
    text-free row it is measured against on every evaluation view; a row with one reads the items' text
    (`text`), one without is text-free (a text-free learning-to-rank row has no text feature and no text
    candidate) and is its own."""

    name: str
    scores: RowScores | None = None
    weight: str | None = None
    grid: str | None = None
    default_grid: tuple[float, ...] | None = None
    user_model: bool = False
    versus: tuple[Versus, ...] = ()
    twin: str | None = None

    def __post_init__(self) -> None:
        if (self.weight is None) != (self.grid is None):
            raise ValueError(f"row '{self.name}': a blend weight needs its grid in the params, and a grid its weight")
        if self.grid is not None and (not self.grid.startswith(f"{GRID_SECTION}.") or self.scores is None):
            raise ValueError(
                f"row '{self.name}': grid '{self.grid}' must be a {GRID_SECTION}.<key> of a scored row "
                f"(the params section that takes the rows' weight grids)"
            )
        if self.default_grid is not None and (self.grid is None or not self.default_grid):
            raise ValueError(f"row '{self.name}': a default grid needs a grid key and at least one weight")

    @property
    def text(self) -> bool:
        """It reads the items' text: a row that does names its text-free twin."""
        return self.twin is not None

    @property
    def learning_to_rank(self) -> bool:
        return self.scores is None

    def score(self, s: Scorers, weights: Mapping[str, Any]) -> np.ndarray:
        """Its scores at its weight in `weights` (0 when absent, as in a bundle written without it)."""
        if self.scores is None:
            raise ValueError(f"row '{self.name}' is ranked by learning to rank, not scored from the scorers")
        return self.scores(s, weights.get(self.weight, 0.0) if self.weight else 0.0)


_REGISTRY: dict[str, Row] = {}
# the rows compare-models reported first (verdicts, chosen weights) before this registry existed, in
# that order; every other row follows in registry order
_REPORTED_FIRST = ("mf+similarity", "mf+cluster", "mf+repeat")


def register(
    name: str,
    *,
    scores: RowScores | None = None,
    weight: str | None = None,
    grid: str | None = None,
    default_grid: Sequence[float] | None = None,
    user_model: bool = False,
    versus: Sequence[Versus] = (),
    twin: str | None = None,
) -> Row:
    """Add a row after the registered ones (see `Row`; without a `twin` it is text-free); its vanilla
    counterparts and its twin must be registered, the twin text-free."""
    row = Row(
        name,
        scores=scores,
        weight=weight,
        grid=grid,
        default_grid=None if default_grid is None else tuple(default_grid),
        user_model=user_model,
        versus=tuple(versus),
        twin=twin,
    )
    if name in _REGISTRY:
        raise ValueError(f"recommender row '{name}' is already registered")
    if twin is not None and (twin not in _REGISTRY or _REGISTRY[twin].text):
        raise ValueError(f"row '{name}': its twin '{twin}' must be a text-free row registered before it")
    unknown = [v.vanilla for v in row.versus if v.vanilla not in _REGISTRY]
    if unknown:
        raise ValueError(f"row '{name}': vanilla counterpart(s) {', '.join(unknown)} not registered before it")
    if weight and (weight in weight_names() or grid in {r.grid for r in _REGISTRY.values()}):
        raise ValueError(f"row '{name}': blend weight '{weight}' or grid '{grid}' belongs to another row")
    _REGISTRY[name] = row
    return row


def unregister(name: str) -> None:
    """Remove an added row (a plugin's or a test's)."""
    _REGISTRY.pop(name)


def names() -> tuple[str, ...]:
    """Every row's name, in registry order."""
    return tuple(_REGISTRY)


def get(name: str) -> Row:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown recommender row '{name}' (expected one of {', '.join(_REGISTRY)})") from None


def twin_of(name: str) -> str:
    """The text-free row `name` is measured against: its twin, or itself when it reads no text."""
    row = get(name)
    return row.twin or row.name


def scored_rows() -> tuple[Row, ...]:
    """The rows scored from the scorers, in registry order (the study evaluates them first)."""
    return tuple(r for r in _REGISTRY.values() if not r.learning_to_rank)


def ltr_rows() -> tuple[Row, ...]:
    """The learning-to-rank rows, in registry order (the study evaluates them after the scored ones)."""
    return tuple(r for r in _REGISTRY.values() if r.learning_to_rank)


def reported_rows() -> tuple[Row, ...]:
    """Every row in the order its verdicts and chosen weight are reported."""
    first = [_REGISTRY[n] for n in _REPORTED_FIRST if n in _REGISTRY]
    return (*first, *(r for r in _REGISTRY.values() if r.name not in _REPORTED_FIRST))


def blends() -> tuple[Row, ...]:
    """The rows with a blend weight, in reported order."""
    return tuple(r for r in reported_rows() if r.weight)


def weight_names() -> tuple[str, ...]:
    """The blend weights' names (keys of the chosen settings and of bundle.json), in reported order."""
    return tuple(r.weight for r in blends())


def grids() -> dict[str, Row]:
    """The rows' weight grids: key in GRID_SECTION -> its row."""
    return {r.grid.rpartition(".")[2]: r for r in blends()}


def weight_grid(row: Row, rp: Any) -> list[float]:
    """The row's weight grid from the recommenders params (`rp`: config.RecommendersParams)."""
    from plmrec.errors import ConfigError

    node = rp
    for part in row.grid.split(".")[1:]:
        node = getattr(node, part, None)
    if node is None and row.default_grid is not None:
        return list(row.default_grid)
    if node is None:
        raise ConfigError(f"{row.grid}: the weight grid of the '{row.name}' row is not in the params (set it)")
    return list(node)


# -- the rows ---------------------------------------------------------------------------------------

register("popularity", scores=Scorer("popularity"))
register("mf", scores=Scorer("mf"))
register(  # the text-free counterpart mf+similarity must beat (with max similarity, a bought item scores 1)
    "mf+repeat", scores=Mix("mf", "bought"), weight="repeat_weight", grid="recommenders.mf.repeat_weights"
)
register(
    "mf+cluster",
    scores=Boost("mf", "cluster"),
    weight="cluster_weight",
    grid="recommenders.mf.cluster_weights",
    versus=[Versus("mf", "MF")],
    twin="mf",
)
register(
    "mf+similarity",
    scores=Mix("mf", "similarity"),
    weight="similarity_weight",
    grid="recommenders.mf.similarity_weights",
    versus=[Versus("mf", "MF"), Versus("mf+repeat", "MF, text vs bought-before")],
    twin="mf+repeat",
)
register("text_neighbours", scores=Scorer("similarity"), twin="popularity")
register(  # the same ranker without a text feature or a text candidate source: the served model's twin
    "ltr-no-text", versus=[Versus("popularity", "Learning to rank without text")]
)
register(
    "ltr",
    versus=[Versus("popularity", "Learning to rank"), Versus("ltr-no-text", "Learning to rank, text vs no text")],
    twin="ltr-no-text",
)
register(  # train-user-model's GUIM: max over the customer's C vectors
    "user_model",
    scores=Scorer("user_model"),
    user_model=True,
    versus=[Versus("mf", "User model (GUIM)")],
    twin="mf",
)
register(  # learning to rank with the user model's candidates and features
    "ltr+user_model",
    user_model=True,
    versus=[
        Versus("ltr", "Learning to rank with the user model"),
        Versus("ltr-no-text", "Learning to rank with the user model vs no text"),
    ],
    twin="ltr-no-text",
)
