"""The metrics that flow from evaluation to reports, summaries, the CLI and ``metrics.json``, as types.

Each key is defined once, here: :class:`LossResults` (cross-entropy and KL per condition, loss
recovered per baseline), :class:`ReconstructionResults` (one spliced site), and
:class:`EvaluationResults` (one evaluation, single or joint). They serialise to exactly the JSON
``metrics.json`` has always held, and load it back with every field type-checked, so a report or a
summary never reads a key that evaluation does not write.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from saekit.settings import from_dict, to_dict

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
    token_damage: dict[str, Any] = field(default_factory=dict)  # saekit.evaluation.damage.token_damage
    # saekit.evaluation.effective_compute.effective_compute_report, or {"error": why not}
    effective_compute: dict[str, Any] = field(default_factory=dict)
    generations: list[dict[str, Any]] = field(default_factory=list)  # SideBySide rows
    # Why no generations were sampled (none requested, an acausal splice); absent where some were, and in
    # metrics written before it was recorded.
    generations_skipped: str | None = None
    run: dict[str, Any] | None = None  # the run's config.json, for a single-run evaluation
    alone: dict[str, EvaluationResults] = field(default_factory=dict)  # a joint evaluation: each run alone
    # The run's throughput.json (where its last training session's time went), for a single-run evaluation
    training: dict[str, Any] | None = None

    @property
    def is_joint(self) -> bool:
        return bool(self.alone)

    def to_dict(self) -> dict[str, Any]:
        data = to_dict(self)
        data["alone"] = {run: results.to_dict() for run, results in self.alone.items()}
        for optional in ("generations", "generations_skipped", "run", "alone", "training"):  # only when present
            if not data[optional]:
                del data[optional]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "metrics") -> EvaluationResults:
        return from_dict(cls, data, where)
