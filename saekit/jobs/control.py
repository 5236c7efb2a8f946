"""The randomized-weights control: the same recipe on a re-initialised model, explained and scored alike.

An SAE trained on a transformer with random weights should be much less interpretable; if its
automated scores barely differ from the real run's, the scorer is being fooled (single-token
features are the usual culprit). :func:`randomized_control` trains the run's recipe on the
randomized model (name ``NAME-randomized``; its config's data section says ``randomize_weights``,
so its activations get their own cache key, and evaluating it loads the randomized model), analyses it with
that model, explains and scores both runs with the same backend, and writes the side-by-side
``RUN_DIR/autointerp/control.md`` (and its data, ``control-comparison.json``: not the twin's own
``control.json``, the marker saying how it was made). Both are analysed over the same number of
tokens: the real run's existing analysis sets it (else ``analysis_tokens``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saekit.analysis.analyze import AnalysisConfig, analyze_run
from saekit.analysis.store import ANALYSIS_DIR, MANIFEST, store_exists
from saekit.autointerp.backends import Backend, make_backend
from saekit.autointerp.pipeline import (
    AUTOINTERP_DIR,
    EXPLAINERS,
    EXPLANATION_SCORERS,
    METRICS,
    AutointerpConfig,
    load_scores,
    run_autointerp,
)
from saekit.errors import SaekitError
from saekit.io import read_json, write_json, write_text
from saekit.jobs.explain import ExplainSettings
from saekit.models.loading import LoadedModel
from saekit.render import markdown_inline, markdown_table
from saekit.rundir import CHECKPOINT_FILE, CONTROL_MARKER, DICTIONARY_DIR
from saekit.settings import NON_EMPTY, SEED, copy_setting, setting
from saekit.training.config import TrainConfig, load_run_config
from saekit.training.run import train_run

CONTROL_REPORT = "control.md"  # in RUN_DIR/autointerp: the side-by-side comparison
CONTROL_COMPARISON = "control-comparison.json"  # ... and its data (the twin's CONTROL_MARKER is another file)


@dataclass
class ControlConfig:
    """How the control run is made and scored."""

    suffix: str = setting("-randomized", "the control run's name: the real run's name and this", **NON_EMPTY)
    randomization_seed: int = setting(0, "seed of the re-initialised weights", **SEED)
    analysis_tokens: int = setting(32_768, "tokens streamed to analyse each run (when an analysis is missing)",
                                   minimum=1)
    autointerp: AutointerpConfig = field(default_factory=AutointerpConfig)
    progress: bool = setting(True, "show progress bars")


@dataclass(frozen=True)
class ControlSettings(ExplainSettings):
    """The settings of ``saekit control``: those of ``explain`` and the control's own."""

    analysis_tokens: int = copy_setting(ControlConfig, "analysis_tokens")

    def control(self) -> ControlConfig:
        """The :class:`ControlConfig` these settings make (the autointerp part validated)."""
        return ControlConfig(analysis_tokens=self.analysis_tokens, autointerp=self.autointerp())


def control_train_config(config: TrainConfig, suffix: str = "-randomized", seed: int = 0) -> TrainConfig:
    """The same recipe under a new name, on the model with re-initialised weights."""
    return config.updated(name=config.name + suffix, randomize_weights=True, randomization_seed=seed)


def runs_root(run_dir: Path, config: TrainConfig) -> Path:
    """The runs directory a run's name is relative to (names may hold '/', e.g. NAME/SITE)."""
    root = run_dir
    for _ in Path(config.name).parts:
        root = root.parent
    return root


def train_control(run_dir: str | Path, config: ControlConfig, randomized: LoadedModel) -> Path:
    """Train (or resume, or reuse) the randomized-weights twin of ``run_dir``; returns its directory."""
    run_dir = Path(run_dir)
    real = load_run_config(run_dir)
    twin = control_train_config(real, config.suffix, config.randomization_seed)
    control_dir = runs_root(run_dir, real) / twin.name
    marker = {"randomized_weights": True, "randomization_seed": config.randomization_seed,
              "control_of": str(run_dir), "model": real.data.model}
    marker_path = control_dir / CONTROL_MARKER
    if marker_path.is_file():
        found = read_json(marker_path, "control marker")
        found.pop("cache_dir", None)  # older markers named the suffixed cache directory the key replaces
        if found != marker:
            raise SaekitError(f"{control_dir} holds a control made differently; delete it to rebuild the control")
    elif control_dir.is_dir() and any(control_dir.iterdir()):
        raise SaekitError(f"{control_dir} exists and is not a randomized control; move it or rename the run")
    if not (control_dir / DICTIONARY_DIR).is_dir():
        write_json(marker_path, marker)
        resume = (control_dir / CHECKPOINT_FILE).is_file()
        train_run(twin, runs_root(run_dir, real), resume=resume, loaded=randomized, progress=config.progress)
    return control_dir


def _cell(summary: dict[str, Any], explainer: str, scorer: str, metric: str) -> str:
    entry = ((summary["explainers"].get(explainer) or {}).get("scorers", {}).get(scorer) or {}).get(metric)
    return "n/a" if not entry or entry.get("mean") is None else f"{entry['mean']:.3f}"


def comparison(real: dict[str, Any], control: dict[str, Any]) -> dict[str, Any]:
    """Side-by-side means: {row label: {"chance", "real": {explainer}, "randomized": {explainer}}}."""
    rows: dict[str, Any] = {}
    for scorer in EXPLANATION_SCORERS:
        for metric in METRICS:
            cells = {side: {e: _cell(s, e, scorer, metric) for e in EXPLAINERS}
                     for side, s in (("real", real), ("randomized", control))}
            if all(v == "n/a" for side in cells.values() for v in side.values()):
                continue
            rows[f"{scorer} {metric.replace('_', ' ')}"] = {"chance": "-" if metric == "f1" else "0.5", **cells}
    if "intruder" in real and "intruder" in control:
        def value(s: dict[str, Any]) -> str:
            entry = s["intruder"]["accuracy"]
            return "n/a" if entry["mean"] is None else f"{entry['mean']:.3f}"
        rows["intruder accuracy"] = {"chance": f"{real['intruder']['chance']:.3f}",
                                     "real": {"llm": value(real), "baseline": "-"},
                                     "randomized": {"llm": value(control), "baseline": "-"}}
    return rows


def comparison_markdown(rows: dict[str, Any], real_model: str, control_dir: Path, real: dict[str, Any],
                        control: dict[str, Any]) -> str:
    """``control.md``: the run path and the scoring model's name are data, escaped by :mod:`saekit.render`."""
    lines = [
        "# Randomized-weights control", "",
        f"The same recipe trained on the model with re-initialised weights ({markdown_inline(control_dir)}); both "
        f"runs explained and scored by **{markdown_inline(real_model)}**. If the randomized control scores about "
        "as well as the real run, the scorers are being fooled (often by single-token features) and the real "
        "scores mean little.",
        f"Latents scored: real {real['latents']}, randomized {control['latents']}.", "",
        markdown_table(
            ("scorer / metric", "chance", "real: LLM", "real: baseline", "randomized: LLM", "randomized: baseline"),
            [(label, row["chance"], row["real"]["llm"], row["real"]["baseline"], row["randomized"]["llm"],
              row["randomized"]["baseline"]) for label, row in rows.items()]),
    ]
    lines += ["", "The intruder test needs no explanation (its row is under the LLM columns). "
                  "The baseline explains by most frequent activating tokens, with no LLM.", ""]
    return "\n".join(lines)


def _analysis_tokens(real_analysis: Path, config: ControlConfig) -> int:
    """Tokens to analyse the control with: as many as the real run's existing analysis used (equal terms)."""
    if store_exists(real_analysis):
        return int(read_json(real_analysis / MANIFEST, "analysis manifest")["config"]["tokens"])
    return config.analysis_tokens


def randomized_control(run_dir: str | Path, config: ControlConfig | None = None, backend: Backend | None = None,
                       explainer_model: LoadedModel | None = None, subject: LoadedModel | None = None) -> Path:
    """Train, analyse, explain and score the control; score the real run too; write the comparison.

    ``subject`` is the run's real model (loaded if needed); ``explainer_model`` the local backend's
    model (it may be the same object when the run uses the default model). Returns the report path.
    """
    config = config or ControlConfig()
    run_dir = Path(run_dir)
    real = load_run_config(run_dir)
    analysis = AnalysisConfig(tokens=_analysis_tokens(run_dir / ANALYSIS_DIR, config), progress=config.progress)
    twin_data = control_train_config(real, config.suffix, config.randomization_seed).data
    randomized = twin_data.load_model(real.run.device)
    control_dir = train_control(run_dir, config, randomized)
    if not store_exists(control_dir / ANALYSIS_DIR):
        analyze_run(control_dir, randomized, analysis)
    if not store_exists(run_dir / ANALYSIS_DIR):
        subject = subject or real.data.load_model(real.run.device)
        analyze_run(run_dir, subject, analysis)
    own_backend = backend is None
    backend = backend or make_backend(config.autointerp.backend, explainer_model)
    try:
        run_autointerp(run_dir, config.autointerp, backend, subject=subject)
        run_autointerp(control_dir, config.autointerp, backend, subject=randomized)
    finally:
        if own_backend:
            backend.close()
    real_scores, control_scores = load_scores(run_dir), load_scores(control_dir)
    if real_scores is None or control_scores is None:
        raise SaekitError("autointerp scores are missing after scoring; rerun `saekit control`")
    rows = comparison(real_scores["summary"], control_scores["summary"])
    out = run_dir / AUTOINTERP_DIR
    write_json(out / CONTROL_COMPARISON, {"real_run": str(run_dir), "control_run": str(control_dir),
                                        "model": real_scores["model"], "rows": rows,
                                        "real": real_scores["summary"], "randomized": control_scores["summary"]})
    report = out / CONTROL_REPORT
    write_text(report, comparison_markdown(rows, real_scores["model"], control_dir, real_scores["summary"],
                                           control_scores["summary"]))
    return report
