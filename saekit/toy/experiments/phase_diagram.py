"""The phase-diagram experiment: the phase (not represented, dedicated, superposed) of 2 features in 1 dimension."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from saekit.io import write_json, write_text
from saekit.render import markdown_table
from saekit.toy.experiments.common import ToyRunConfig
from saekit.toy.superposition import (
    PHASES,
    SUPERPOSITION,
    PhaseDiagram,
    PhaseDiagramConfig,
    TMSTrainConfig,
    phase_diagram,
    plot_phase_diagram,
)


def run_phase_diagram(run: ToyRunConfig, directory: Path) -> list[str]:
    config = PhaseDiagramConfig(train=TMSTrainConfig(steps=run.steps, seed=run.seed))
    diagram = phase_diagram(config, progress=run.progress)
    plot_phase_diagram(diagram, directory / "phase_diagram.png")
    write_json(directory / "phase_diagram.json", {"config": asdict(config), **diagram.to_dict()})
    write_text(directory / "summary.md", phase_summary(diagram, config))
    return ["phase_diagram.png", "phase_diagram.json", "summary.md"]


def phase_summary(diagram: PhaseDiagram, config: PhaseDiagramConfig) -> str:
    letters = {name: name[0].upper() for name in PHASES}  # N(ot represented), D(edicated), S(uperposition)
    header = ["1 - S \\ r", *[f"{r:.2g}" for r in diagram.importances]]
    labels = diagram.labels()
    rows = [[f"{p:.2g}", *[letters[label] for label in labels[i]]]
            for i, p in reversed(list(enumerate(diagram.densities)))]
    legend = ", ".join(f"{letter} = {name}" for name, letter in letters.items())
    return (
        "# Phase diagram: 2 features in 1 hidden dimension\n\n"
        f"Feature 2 of the best of {config.seeds} seeds per cell ({config.train.steps} steps). {legend}. "
        f"Not represented: ||W_2|| < {config.norm_threshold}; superposition: (W^_2 . W_1)^2 > "
        f"{config.interference_threshold}.\n\n"
        + markdown_table(header, rows) + "\n\n" + phase_verdict(diagram) + "\n"
    )


def phase_verdict(diagram: PhaseDiagram) -> str:
    """One line per extreme density: which phase holds at the lowest and highest importance."""
    lines = []
    for row, density in ((len(diagram.densities) - 1, diagram.densities[-1]), (0, diagram.densities[0])):
        labels = diagram.labels()[row]
        superposed = [r for r, label in zip(diagram.importances, labels, strict=True) if label == SUPERPOSITION]
        span = f"superposition for r in [{min(superposed):.2g}, {max(superposed):.2g}]" if superposed else \
            "no superposition"
        lines.append(f"- density {density:.2g}: r = {diagram.importances[0]:.2g} -> {labels[0]}, "
                     f"r = {diagram.importances[-1]:.2g} -> {labels[-1]}; {span}")
    return "\n".join(lines)
