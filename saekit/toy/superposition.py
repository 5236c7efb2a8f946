"""Toy models of superposition: the ReLU output model, its geometric analyses and the 2-in-1 phase diagram.

The model maps sparse features x (n) through m < n hidden dimensions and back:

    x_hat = ReLU(W^T W x + b)        W: [m, n], column W_i is feature i's embedding

trained to minimise the importance-weighted error sum_i I_i (x_i - x_hat_i)^2 on inputs whose features
are U[0, 1] with probability 1 - S (the density) and 0 otherwise. Many small models train at once as
one batched tensor computation (a leading model axis on W, b, importance and density).

Analyses of a trained W (columns are features): the norm ||W_i|| (is the feature represented?), the
interference sum_{j != i} (W^_i . W_j)^2 (how much other features leak into its direction), and the
dimensionality D_i = ||W_i||^2 / sum_j (W^_i . W_j)^2 (1 for a dedicated dimension, 1/2 for an antipodal
pair, 0 for an unrepresented feature). D_i is invariant to rescaling W; the Frobenius "features per
dimension" ||W||_F^2 / m is not (:func:`rescaling_check`): a model with an untied read-out can move
any scale between encoder and decoder, so the Frobenius count is not a property of the function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch
from torch import Tensor
from tqdm.auto import tqdm

from saekit.errors import SaekitError
from saekit.toy.plotting import new_figure, save_png

NOT_REPRESENTED = "not represented"
DEDICATED = "dedicated dimension"
SUPERPOSITION = "superposition"
PHASES: tuple[str, ...] = (NOT_REPRESENTED, DEDICATED, SUPERPOSITION)
PHASE_COLOURS: tuple[str, ...] = ("#d9d9d9", "#4c72b0", "#dd8452")

_EPS = 1e-12


# ---- analyses of W --------------------------------------------------------------------------------


def feature_norms(W: Tensor) -> Tensor:
    """||W_i|| for every feature (column); W: [..., m, n] -> [..., n]."""
    return W.norm(dim=-2)


def _overlaps(W: Tensor) -> Tensor:
    """(W^_i . W_j)^2 as [..., n (i), n (j)]; rows of an all-zero feature are zero."""
    unit = W / feature_norms(W).unsqueeze(-2).clamp_min(_EPS)
    return (unit.transpose(-1, -2) @ W).pow(2)


def interference(W: Tensor) -> Tensor:
    """sum_{j != i} (W^_i . W_j)^2 for every feature i; W: [..., m, n] -> [..., n]."""
    overlaps = _overlaps(W)
    return overlaps.sum(-1) - overlaps.diagonal(dim1=-2, dim2=-1)


def feature_dimensionality(W: Tensor) -> Tensor:
    """D_i = ||W_i||^2 / sum_j (W^_i . W_j)^2 (0 for a zero feature); W: [..., m, n] -> [..., n]."""
    return feature_norms(W).pow(2) / _overlaps(W).sum(-1).clamp_min(_EPS)


def frobenius_features_per_dimension(W: Tensor) -> Tensor:
    """||W||_F^2 / m, the scale-dependent count of features per hidden dimension; [..., m, n] -> [...]."""
    return W.pow(2).sum((-2, -1)) / W.shape[-2]


@dataclass
class RescalingRow:
    """Both "features per dimension" readings of c * W."""

    scale: float
    frobenius_features_per_dimension: float
    dimensionality: list[float]  # D_i per feature
    total_dimensionality: float  # sum_i D_i: the hidden dimensions in use, a scale-free count


def rescaling_check(W: Tensor, scales: Sequence[float]) -> list[RescalingRow]:
    """Evaluate ||cW||_F^2 / m and D_i(cW) for each scale c: the first moves as c^2, the second not at all."""
    if W.dim() != 2:
        raise SaekitError(f"rescaling_check takes one W of shape [m, n], got {tuple(W.shape)}")
    rows = []
    for scale in scales:
        scaled = float(scale) * W
        dims = feature_dimensionality(scaled)
        rows.append(RescalingRow(
            scale=float(scale),
            frobenius_features_per_dimension=frobenius_features_per_dimension(scaled).item(),
            dimensionality=dims.tolist(),
            total_dimensionality=dims.sum().item(),
        ))
    return rows


# ---- batched training ----------------------------------------------------------------------------


@dataclass
class TMSTrainConfig:
    """Optimisation settings shared by every model in a batched run."""

    steps: int = 2000
    batch_size: int = 1024
    lr: float = 1e-2
    decay_fraction: float = 0.25  # linear learning-rate decay to 0 over this last fraction
    eval_samples: int = 16384
    seed: int = 0


@dataclass
class TMSModels:
    """A batch of trained models: weights, biases and final importance-weighted loss per model."""

    W: Tensor  # [B, m, n]
    b: Tensor  # [B, n]
    loss: Tensor  # [B], on a shared evaluation set


def sample_features(density: Tensor, n_samples: int, generator: torch.Generator | None = None) -> Tensor:
    """x [B, n, n_samples] (samples last, the fast layout): U[0, 1] features present w.p. ``density`` [B, n].

    One uniform draw u per entry serves both roles: the feature is present when u < p, and then
    u / p is again uniform on [0, 1].
    """
    p = density.unsqueeze(-1)
    u = torch.rand(density.shape[0], density.shape[1], n_samples, generator=generator)
    return (u / p) * (u < p)


def tms_forward(W: Tensor, b: Tensor, x: Tensor) -> Tensor:
    """ReLU(W^T W x + b) for a batch of models: W [B, m, n], b [B, n], x [B, n, N] -> [B, n, N]."""
    return (W.transpose(-1, -2) @ (W @ x) + b.unsqueeze(-1)).relu()


def tms_loss(W: Tensor, b: Tensor, x: Tensor, importance: Tensor) -> Tensor:
    """Importance-weighted squared error per model, averaged over samples: [B]."""
    error = (x - tms_forward(W, b, x)).pow(2)
    return (error * importance.unsqueeze(-1)).sum(-2).mean(-1)


def train_tms(density: Tensor, importance: Tensor, m_hidden: int, config: TMSTrainConfig | None = None,
              progress: bool = False) -> TMSModels:
    """Train B independent models at once; density and importance are [B, n] (one row per model)."""
    config = config or TMSTrainConfig()
    if density.shape != importance.shape or density.dim() != 2:
        raise SaekitError(f"density and importance must both be [B, n], got {tuple(density.shape)} "
                          f"and {tuple(importance.shape)}")
    n_models, n_features = density.shape
    generator = torch.Generator().manual_seed(config.seed)
    std = (2.0 / (m_hidden + n_features)) ** 0.5  # Xavier-normal initialisation
    W = (torch.randn(n_models, m_hidden, n_features, generator=generator) * std).requires_grad_()
    b = torch.zeros(n_models, n_features, requires_grad=True)
    optimizer = torch.optim.Adam([W, b], lr=config.lr)
    schedule = _decay_schedule(config.steps, config.decay_fraction)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    for _ in tqdm(range(config.steps), disable=not progress, desc="toy models"):
        x = sample_features(density, config.batch_size, generator)
        loss = tms_loss(W, b, x, importance).sum()  # models are independent: the sum separates
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return TMSModels(W=W.detach(), b=b.detach(), loss=_shared_eval_loss(W, b, density, importance, config))


def _decay_schedule(steps: int, decay_fraction: float) -> Callable[[int], float]:
    decay_steps = max(1, int(steps * decay_fraction))
    return lambda step: min(1.0, max(0.0, (steps - step) / decay_steps))


@torch.no_grad()
def _shared_eval_loss(W: Tensor, b: Tensor, density: Tensor, importance: Tensor,
                      config: TMSTrainConfig) -> Tensor:
    """Every model sees the same uniform draws (common random numbers), so seeds compare fairly."""
    generator = torch.Generator().manual_seed(config.seed + 1)
    u = torch.rand(1, density.shape[1], config.eval_samples, generator=generator)
    p = density.unsqueeze(-1)
    return tms_loss(W, b, (u / p) * (u < p), importance)


# ---- the 2-features-in-1-dimension phase diagram --------------------------------------------------


@dataclass
class PhaseDiagramConfig:
    """Grid and classification thresholds for the n=2, m=1 phase diagram (feature 1 importance 1)."""

    densities: list[float] = field(default_factory=lambda: torch.logspace(-2, 0, 9).tolist())  # 1 - S
    importances: list[float] = field(default_factory=lambda: torch.logspace(-1, 1, 11).tolist())  # r
    seeds: int = 6
    norm_threshold: float = 0.5  # ||W_2|| below this: feature 2 is not represented
    interference_threshold: float = 0.25  # (W^_2 . W_1)^2 above this: superposition, else dedicated
    train: TMSTrainConfig = field(default_factory=TMSTrainConfig)


@dataclass
class PhaseDiagram:
    """Per cell [density, importance]: the best seed's phase index, W, loss and feature-2 statistics."""

    densities: list[float]
    importances: list[float]
    phase: Tensor  # [n_density, n_importance] indices into PHASES
    W: Tensor  # [n_density, n_importance, 1, 2]
    loss: Tensor  # [n_density, n_importance]
    norm: Tensor  # ||W_2||
    interference: Tensor  # sum_{j != 2} (W^_2 . W_j)^2

    def labels(self) -> list[list[str]]:
        return [[PHASES[int(i)] for i in row] for row in self.phase]

    def to_dict(self) -> dict:
        return {
            "densities": self.densities, "importances": self.importances, "phases": list(PHASES),
            "label": self.labels(), "phase": self.phase.tolist(), "W": self.W.tolist(),
            "loss": self.loss.tolist(), "feature2_norm": self.norm.tolist(),
            "feature2_interference": self.interference.tolist(),
        }


def classify_feature(W: Tensor, feature: int, norm_threshold: float = 0.5,
                     interference_threshold: float = 0.25) -> Tensor:
    """Phase index (into PHASES) of one feature for a batch of W [..., m, n]."""
    norm = feature_norms(W)[..., feature]
    leak = interference(W)[..., feature]
    phase = torch.full_like(norm, PHASES.index(DEDICATED), dtype=torch.long)
    phase[leak > interference_threshold] = PHASES.index(SUPERPOSITION)
    phase[norm < norm_threshold] = PHASES.index(NOT_REPRESENTED)
    return phase


def phase_diagram(config: PhaseDiagramConfig | None = None, progress: bool = False) -> PhaseDiagram:
    """Train ``seeds`` models per (density, importance) cell in one batch; classify feature 2 of the best."""
    config = config or PhaseDiagramConfig()
    n_d, n_r, n_s = len(config.densities), len(config.importances), config.seeds
    if min(n_d, n_r, n_s) < 1:
        raise SaekitError("the phase diagram needs at least one density, one importance and one seed")
    density = torch.tensor(config.densities).view(n_d, 1, 1).expand(n_d, n_r, n_s)
    ratio = torch.tensor(config.importances).view(1, n_r, 1).expand(n_d, n_r, n_s)
    density_batch = density.reshape(-1, 1).expand(-1, 2).contiguous()
    importance_batch = torch.stack([torch.ones_like(ratio), ratio], -1).reshape(-1, 2)
    models = train_tms(density_batch, importance_batch, m_hidden=1, config=config.train, progress=progress)
    loss = models.loss.view(n_d, n_r, n_s)
    best = loss.argmin(-1)
    W = models.W.view(n_d, n_r, n_s, 1, 2)
    W_best = W.gather(2, best.view(n_d, n_r, 1, 1, 1).expand(n_d, n_r, 1, 1, 2)).squeeze(2)
    return PhaseDiagram(
        densities=list(config.densities), importances=list(config.importances),
        phase=classify_feature(W_best, 1, config.norm_threshold, config.interference_threshold),
        W=W_best, loss=loss.gather(2, best.unsqueeze(-1)).squeeze(-1),
        norm=feature_norms(W_best)[..., 1], interference=interference(W_best)[..., 1],
    )


def plot_phase_diagram(diagram: PhaseDiagram, path: str | Path) -> None:
    """Categorical image of the phases: x relative importance of feature 2, y density 1 - S (both log)."""
    figure, (ax,) = new_figure()
    ax.imshow(diagram.phase.numpy(), cmap=ListedColormap(PHASE_COLOURS), vmin=-0.5, vmax=len(PHASES) - 0.5,
              origin="lower", aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(diagram.importances)), [f"{r:.2g}" for r in diagram.importances], rotation=45)
    ax.set_yticks(range(len(diagram.densities)), [f"{p:.2g}" for p in diagram.densities])
    ax.set_xlabel("relative importance of feature 2, r (log scale)")
    ax.set_ylabel("feature density 1 - S (log scale)")
    ax.set_title("2 features in 1 dimension: what happens to feature 2")
    handles = [Patch(color=colour, label=name) for name, colour in zip(PHASES, PHASE_COLOURS, strict=True)]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
    save_png(figure, path)
