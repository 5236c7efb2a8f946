"""The rescaling experiment: Frobenius features-per-dimension moves with W -> cW, feature dimensionality does not."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from saekit.io import write_json, write_text
from saekit.render import markdown_table
from saekit.toy.experiments.common import ToyRunConfig
from saekit.toy.plotting import new_figure, save_png
from saekit.toy.superposition import TMSTrainConfig, rescaling_check, train_tms

RESCALING_SCALES: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)


@dataclass
class TMSSetting:
    """One toy model trained for the rescaling check: n features into m dimensions."""

    name: str
    n_features: int
    m_hidden: int
    density: float
    importance_decay: float  # importance of feature i is decay**i
    seeds: int = 4


RESCALING_SETTINGS: tuple[TMSSetting, ...] = (
    TMSSetting("5 features in 2 dims (pentagon)", 5, 2, 0.1, 1.0),
    TMSSetting("20 features in 5 dims", 20, 5, 0.1, 0.9),
)


def train_setting(setting: TMSSetting, run: ToyRunConfig) -> tuple[torch.Tensor, float]:
    """Train ``seeds`` copies at once; return the best one's W [m, n] and loss."""
    n = setting.n_features
    density = torch.full((setting.seeds, n), setting.density)
    importance = (setting.importance_decay ** torch.arange(n, dtype=torch.float32)).expand(setting.seeds, n)
    models = train_tms(density, importance.contiguous(), setting.m_hidden,
                       TMSTrainConfig(steps=run.steps, seed=run.seed), progress=run.progress)
    best = int(models.loss.argmin())
    return models.W[best], models.loss[best].item()


def run_rescaling(run: ToyRunConfig, directory: Path) -> list[str]:
    results = []
    for setting in RESCALING_SETTINGS:
        W, loss = train_setting(setting, run)
        rows = rescaling_check(W, RESCALING_SCALES)
        results.append({"setting": asdict(setting), "loss": loss, "W": W.tolist(),
                        "rows": [asdict(row) for row in rows]})
    write_json(directory / "rescaling.json", {"scales": list(RESCALING_SCALES), "models": results})
    plot_rescaling(results, directory / "rescaling.png")
    write_text(directory / "summary.md", rescaling_summary(results))
    return ["rescaling.png", "rescaling.json", "summary.md"]


def plot_rescaling(results: list[dict], path: Path) -> None:
    figure, (left, right) = new_figure(11, 4.2, ncols=2)
    for index, result in enumerate(results):
        scales = [row["scale"] for row in result["rows"]]
        name = result["setting"]["name"]
        left.plot(scales, [row["frobenius_features_per_dimension"] for row in result["rows"]], "o-", label=name)
        for feature in range(result["setting"]["n_features"]):
            right.plot(scales, [row["dimensionality"][feature] for row in result["rows"]], "--" if index else "-",
                       color=f"C{index}", alpha=0.6, lw=3 - index, label=name if feature == 0 else None)
    for ax in (left, right):
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(list(RESCALING_SCALES), [f"{scale:g}" for scale in RESCALING_SCALES])
        ax.set_xlabel("rescaling c (W -> cW)")
        ax.legend(fontsize=8)
    left.set(yscale="log", ylabel="‖cW‖²_F / m", title="Frobenius 'features per dimension' moves as c²")
    right.set(ylabel="D_i (one line per feature)", title="feature dimensionality D_i does not move",
              ylim=(-0.05, 1.05))
    save_png(figure, path)


def rescaling_summary(results: list[dict]) -> str:
    rows = []
    for result in results:
        for row in result["rows"]:
            dims = row["dimensionality"]
            rows.append([result["setting"]["name"], f"{row['scale']:g}", row["frobenius_features_per_dimension"],
                         row["total_dimensionality"], f"{min(dims):.3f}-{max(dims):.3f}"])
    table = markdown_table(["model", "scale c", "‖cW‖²_F / m", "sum_i D_i", "D_i range"], rows)
    return (
        "# Rescaling: Frobenius features-per-dimension vs feature dimensionality\n\n"
        "Trained ReLU-output toy models, W rescaled as a function (c W). The Frobenius count grows as c^2; "
        "D_i and their sum (the dimensions in use) are unchanged.\n\n" + table + "\n"
    )
