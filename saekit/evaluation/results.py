"""The metrics that flow from evaluation to reports, summaries, the CLI and ``metrics.json``, as types.

Each key is defined once, as a dataclass field: here :class:`LossResults` (cross-entropy and KL per
condition, loss recovered per baseline), :class:`ReconstructionResults` (one spliced site),
:class:`SideBySide` (one generation) and :class:`EvaluationResults` (one evaluation, single or joint);
beside their producers :class:`~saekit.evaluation.damage.TokenDamage` and
:class:`~saekit.evaluation.effective_compute.EffectiveCompute` (or
:class:`~saekit.evaluation.effective_compute.ComputeNotReported`). They serialise to exactly the JSON
``metrics.json`` has always held, and load it back with every field type-checked, so a report or a
summary never reads a key that evaluation does not write.

Two fields stay JSON documents on purpose: ``run`` (the run's ``config.json``, copied in as written:
an old flat config stays flat, see :meth:`EvaluationResults.run_config` for the typed view) and
``training`` (the run's ``throughput.json``, which no type describes).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from saekit.evaluation.damage import TokenDamage
from saekit.evaluation.effective_compute import ComputeNotReported, EffectiveCompute
from saekit.settings import from_dict, to_dict

if TYPE_CHECKING:
    from saekit.training.config import TrainConfig

CONDITIONS = ("clean", "spliced", "zero", "mean")  # the model as is, with the dictionary, site zeroed, site at its mean
BASELINES = ("zero", "mean")  # the ablations loss recovered is measured against


@dataclass(frozen=True)
class MeanSE:
    """A mean over held-out contexts and its standard error."""

    mean: float
    se: float


@dataclass
class LossResults:
    """Next-token cross-entropy (nats) under each condition, its increase over clean, and KL(clean || condition)."""

    contexts: int
    ce_clean: MeanSE
    ce_spliced: MeanSE
    ce_zero: MeanSE
    ce_mean: MeanSE
    delta_ce_spliced: MeanSE  # paired by context
    delta_ce_zero: MeanSE
    delta_ce_mean: MeanSE
    kl_spliced: MeanSE
    kl_zero: MeanSE
    kl_mean: MeanSE
    loss_recovered_vs_zero_ablation: float
    loss_recovered_vs_mean_ablation: float

    def ce(self, condition: str) -> MeanSE:
        return getattr(self, f"ce_{condition}")

    def delta_ce(self, condition: str) -> MeanSE:
        return getattr(self, f"delta_ce_{condition}")

    def kl(self, condition: str) -> MeanSE:
        return getattr(self, f"kl_{condition}")

    def loss_recovered(self, baseline: str) -> float:
        return getattr(self, f"loss_recovered_vs_{baseline}_ablation")

    @staticmethod
    def build(contexts: int, ce: dict[str, MeanSE], delta_ce: dict[str, MeanSE], kl: dict[str, MeanSE],
              loss_recovered: dict[str, float]) -> LossResults:
        """From per-condition values: ``ce`` over CONDITIONS, the others over the non-clean ones."""
        values: dict[str, Any] = {"contexts": contexts}
        values.update({f"ce_{c}": v for c, v in ce.items()})
        values.update({f"delta_ce_{c}": v for c, v in delta_ce.items()})
        values.update({f"kl_{c}": v for c, v in kl.items()})
        values.update({f"loss_recovered_vs_{b}_ablation": v for b, v in loss_recovered.items()})
        return LossResults(**values)


@dataclass
class ReconstructionResults:
    """Reconstruction and sparsity at one spliced site (formulas in ``reconstruction.py``)."""

    tokens: int
    mse_per_token: float
    mse_per_element: float
    fvu: float
    explained_variance: float
    legacy_fvu_per_token_mean: float
    fvu_formula: str
    l0_mean: float
    l0_percentiles: dict[str, float]
    l0_histogram: dict[str, list[int]]
    dead_fraction: float
    dense_fraction: float
    dense_threshold: float
    latent_density: list[float]
    # Absent from metrics written before the outlier split; None there (and without an outlier rule).
    fvu_without_outliers: float | None = None
    outlier_norm_factor: float | None = None
    outlier_token_fraction: float | None = None
    outlier_variance_share: float | None = None
    outlier_error_share: float | None = None
    # Absent from metrics written before the shrinkage metrics.
    cosine_similarity_mean: float | None = None
    norm_ratio_mean: float | None = None
    relative_reconstruction_bias: float | None = None
    relative_reconstruction_bias_without_outliers: float | None = None

    @property
    def width(self) -> int:
        return len(self.latent_density)


@dataclass
class SideBySide:
    """One prompt's continuations from the clean and the spliced model, sampled with the same seed."""

    prompt: str
    clean: str
    spliced: str


EMPTY_WHEN_NONE = ("token_damage", "effective_compute")  # written as {} when absent, as they always were


@dataclass
class EvaluationResults:
    """One evaluation: the splice's losses, reconstruction per site, and what the report shows beside them."""

    model: str
    runs: list[str]
    sites: list[str]
    eval_contexts: int
    context_length: int
    bos_handling: str
    losses: LossResults
    reconstruction: dict[str, ReconstructionResults]
    token_damage: TokenDamage | None = None  # saekit.evaluation.damage.token_damage; None: {} in the JSON
    # saekit.evaluation.effective_compute.effective_compute_report, or why not ({"error": why} in the JSON);
    # None: {} in the JSON
    effective_compute: EffectiveCompute | ComputeNotReported | None = None
    generations: list[SideBySide] = field(default_factory=list)
    # Why no generations were sampled (none requested, an acausal splice); absent where some were, and in
    # metrics written before it was recorded.
    generations_skipped: str | None = None
    # JSON boundary, on purpose: the run's config.json as written (an old flat one stays flat, so a loaded
    # metrics.json writes back as it was), for a single-run evaluation. Typed: run_config().
    run: dict[str, Any] | None = None
    alone: dict[str, EvaluationResults] = field(default_factory=dict)  # a joint evaluation: each run alone
    # JSON boundary, on purpose: the run's throughput.json (where its last training session's time went; no
    # type describes it), for a single-run evaluation
    training: dict[str, Any] | None = None

    @property
    def is_joint(self) -> bool:
        return bool(self.alone)

    def run_config(self, where: str = "metrics: run") -> TrainConfig | None:
        """The run's config as a :class:`~saekit.training.config.TrainConfig` (an old flat one upgraded), or
        None for a joint evaluation."""
        from saekit.training.config import TrainConfig  # training sits above evaluation's result types

        return TrainConfig.from_dict(self.run, where) if self.run else None

    def to_dict(self) -> dict[str, Any]:
        data = to_dict(self)
        for name in EMPTY_WHEN_NONE:
            if data[name] is None:
                data[name] = {}
        data["alone"] = {run: results.to_dict() for run, results in self.alone.items()}
        for optional in ("generations", "generations_skipped", "run", "alone", "training"):  # only when present
            if not data[optional]:
                del data[optional]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "metrics") -> EvaluationResults:
        if isinstance(data, Mapping):
            data = {key: value for key, value in data.items() if not (key in EMPTY_WHEN_NONE and value == {})}
            alone = data.get("alone")
            if isinstance(alone, Mapping):  # each run alone is an evaluation of its own, read the same way
                data["alone"] = {run: cls.from_dict(results, f"{where}: alone[{run!r}]")
                                 for run, results in alone.items()}
        return from_dict(cls, data, where)
