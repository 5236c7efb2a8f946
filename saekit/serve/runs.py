"""The runs a server holds: each run's dictionary, its model (loaded once per distinct model), explanations,
and dashboard folder, addressed by name so no request ever names a file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from saekit.activations.spec import DataConfig
from saekit.autointerp.pipeline import scores_for_dashboard
from saekit.dictionaries.base import Dictionary
from saekit.dictionaries.registry import load_dictionary, read_sites, written_sites
from saekit.errors import SaekitError
from saekit.models.loading import LoadedModel
from saekit.models.sites import Site
from saekit.rundir import DASHBOARD_DIR, DICTIONARY_DIR, is_run_dir
from saekit.training.config import load_run_config


@dataclass
class ServedRun:
    """One run as the server sees it."""

    name: str
    run_dir: Path
    model_id: str  # what a request's ``model`` field must say
    loaded: LoadedModel
    dictionary: Dictionary
    read_sites: list[Site]
    write_sites: list[Site]
    explanations: dict[int, str]
    dashboard: Path | None

    @property
    def width(self) -> int:
        return self.dictionary.config.width

    @property
    def can_steer(self) -> bool:
        """Steering adds one decoder row at one site: a cross-layer run writes several and is refused."""
        return len(self.write_sites) == 1

    def summary(self) -> dict:
        """What ``GET /v1/runs`` says about the run (no file paths)."""
        return {"name": self.name, "model": self.model_id, "width": self.width,
                "sites": [site.name for site in self.read_sites],
                "writes": [site.name for site in self.write_sites], "steerable": self.can_steer,
                "explained": len(self.explanations), "dashboard": self.dashboard is not None}


def model_id(spec: str) -> str:
    """A model's name on the wire: a local directory's own name (never its path), else the spec as given."""
    return Path(spec).name if Path(spec).expanduser().exists() else spec


def explanations_of(run_dir: Path) -> dict[int, str]:
    """Each explained latent's explanation (the LLM's, else the baseline's); {} before ``saekit explain``."""
    found = {}
    for latent, entry in scores_for_dashboard(run_dir).items():
        text = entry.get("explanation") or entry.get("baseline")
        if text:
            found[latent] = str(text)
    return found


def model_key(data: DataConfig, device: str) -> tuple:
    """What decides a loaded model: runs (and graph transcoders) with equal keys share one copy."""
    return (data.model, data.model_dtype, data.randomize_weights, data.randomization_seed, device)


def _load_one(run_dir: Path, models: dict[tuple, LoadedModel]) -> ServedRun:
    if not is_run_dir(run_dir):
        raise SaekitError(f"{run_dir} is not a saekit run directory (no config.json beside a dictionary); give "
                          "the directory saekit train or saekit quickstart wrote")
    if not (run_dir / DICTIONARY_DIR).is_dir():
        raise SaekitError(f"{run_dir} has no dictionary yet; let saekit train finish, then serve it")
    config = load_run_config(run_dir)
    key = model_key(config.data, config.run.device)
    if key not in models:
        models[key] = config.data.load_model(config.run.device)
    loaded = models[key]
    dictionary, source = load_dictionary(run_dir / DICTIONARY_DIR, config.run.device)
    dashboard = run_dir / DASHBOARD_DIR
    return ServedRun(
        name=run_dir.name, run_dir=run_dir, model_id=model_id(config.data.model), loaded=loaded,
        dictionary=dictionary.eval().requires_grad_(False),
        read_sites=[loaded.adapter.site(name) for name in read_sites(source)],
        write_sites=[loaded.adapter.site(name) for name in written_sites(source)],
        explanations=explanations_of(run_dir),
        dashboard=dashboard.resolve() if (dashboard / "index.html").is_file() else None)


def load_runs(run_dirs: list[Path], models: dict[tuple, LoadedModel] | None = None) -> dict[str, ServedRun]:
    """Every run by its directory's name; runs on the same model share one loaded copy of it."""
    models = {} if models is None else models
    runs: dict[str, ServedRun] = {}
    for run_dir in run_dirs:
        run = _load_one(Path(run_dir), models)
        if run.name in runs:
            raise SaekitError(f"two runs are named {run.name!r} ({runs[run.name].run_dir} and {run_dir}); "
                              "serve runs whose directories have different names")
        runs[run.name] = run
    if not runs:
        raise SaekitError("no run to serve; give one or more run directories")
    return runs
