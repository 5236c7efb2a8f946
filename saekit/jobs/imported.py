"""Imported dictionaries as runs: a dictionary in any format saekit reads becomes a run directory.

Every command that takes a run (evaluate, generate, report, analyze, dashboard, explain) also takes
an imported dictionary by name: a local path in any format (detected, or ``FORMAT:PATH``), or
``hf:REPO[:PATH]`` resolved by ``huggingface_hub`` from the local cache first (offline), then the hub.

Importing writes a run directory (``runs/imported/<name>-<fingerprint>/`` unless told otherwise):

- ``config.json``: a run config with the model, the sites, the dictionary's architecture and width,
  and saekit's default data settings (or the ones given), so evaluation and analysis read the same
  held-out split a native run would;
- ``dictionary/``: the dictionary as saekit saves it, its source recording the format it came from;
- ``activation_stats.safetensors``: the mean activation of each written site over the training split
  (what mean-ablation baselines need; a native run records it while training);
- ``imported.json``: where it came from, the files' fingerprint, the conventions folded on reading.

The directory is written whole or not at all. Naming the same files with the same settings again
finds the same directory, so ``analyze`` then ``dashboard`` share one analysis. The model and site
come from the file's metadata or from flags; a dictionary whose widths or layer do not fit the
model fails in one line, before any weights load.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from saekit.activations.source import ActivationSource
from saekit.activations.spec import ActivationSpec
from saekit.dictionaries.base import Dictionary
from saekit.dictionaries.formats.detect import READ_FORMATS, read_dictionaries, split_prefix
from saekit.dictionaries.registry import save_dictionary, written_sites
from saekit.errors import SaekitError
from saekit.io import check_disjoint, read_json, replace_directory, write_json
from saekit.locks import exclusive
from saekit.models.loading import DEFAULT_MODEL, LoadedModel, load_model_config, model_sizes
from saekit.models.sites import parse_site
from saekit.provenance import fingerprint_files, fingerprint_json
from saekit.rundir import DICTIONARY_DIR, is_run_dir, save_activation_means, write_run_config
from saekit.settings import setting
from saekit.training.config import TrainConfig, run_name
from saekit.training.run import dictionary_source

IMPORT_RECORD = "imported.json"
LOCKS_DIR = ".locks"  # one writer per import: IMPORTS_DIR/.locks/<name>/
DEFAULT_IMPORTS_DIR = Path("runs") / "imported"
# Names the embedded default model goes by in other libraries' files.
DEFAULT_MODEL_NAMES = {"default", "smollm2-135m-instruct", "huggingfacetb/smollm2-135m-instruct"}


@dataclass
class ImportSettings:
    """What an imported dictionary's files may not say: its model and sites, where the run goes.

    Commands taking a run take these as ``--import-*`` flags (``saekit.cli.imports``); ``saekit import`` has its
    own names for them (``--model``, ``--site``, ``--runs-dir``...)."""

    model: str | None = setting(None, "the model it was trained on, where the file names none or another name for "
                                "it (default, a local Hugging Face directory, or a hub id)", flag="import_model")
    site: str | None = setting(None, "the site it reads, blocks.N.KIND, where the file says none",
                               flag="import_site")
    target_site: str | None = setting(None, "a transcoder's target site, with --import-site",
                                      flag="import_target_site")
    imports_dir: Path = setting(DEFAULT_IMPORTS_DIR, "where imported dictionaries' run directories go")
    name: str | None = setting(None, "the run directory's name (none: the source's name and a fingerprint of the "
                               "import)", flag="import_name")
    stats_tokens: int = setting(16_384, "training-split tokens for the activation means of the mean-ablation "
                                "baseline", flag="import_stats_tokens", minimum=1)


def split_hub_name(name: str) -> tuple[str | None, str | None]:
    """``[FORMAT:]hf:REPO[:PATH]`` -> (FORMAT, 'REPO[:PATH]'); (None, None) when not a hub name."""
    match = re.fullmatch(r"(?:([\w-]+):)?hf:(.+)", name)
    if match is None or (match.group(1) and match.group(1) not in READ_FORMATS):
        return None, None
    return match.group(1), match.group(2)


def resolve_hub(spec: str) -> Path:
    """``REPO[:PATH]`` -> a local directory from the Hugging Face cache (offline first), else from the hub."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo, _, subpath = spec.partition(":")
    subpath = subpath.strip("/")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise SaekitError(f"hf:{spec}: a hub name is hf:OWNER/REPO[:PATH], e.g. hf:google/gemma-scope-2b-pt-res:"
                          "layer_12/width_16k/average_l0_82")
    if any(part in ("..", ".") for part in subpath.split("/")) or "\\" in subpath:
        raise SaekitError(f"hf:{spec}: the PATH inside a hub repository may not hold '..' or '.' parts; name a "
                          "folder of the repository, e.g. layer_12/width_16k")
    patterns = [f"{subpath}/*"] if subpath else None
    # The cache first, so a cached dictionary never touches the network; the hub only when allowed.
    for local_only in (True,) if constants.HF_HUB_OFFLINE else (True, False):
        try:
            snapshot = Path(snapshot_download(repo, allow_patterns=patterns, local_files_only=local_only))
        except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError):
            continue
        found = snapshot / subpath
        if found.exists():  # inside the snapshot: PATH has no '..' parts (its files link to the cache's blobs)
            _require_complete(spec, found, snapshot)
            return found
    reason = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the hub could not be reached"
    include = f" --include '{subpath}/*'" if subpath else ""
    raise SaekitError(f"hf:{spec} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and {reason}; "
                      f"fetch it on a connected machine with `hf download {repo}{include}` and copy the cache over")


def _require_complete(spec: str, found: Path, snapshot: Path) -> None:
    """Refuse a snapshot whose download stopped midway: its files are links to blobs, and a link whose
    blob is missing, or a blob still ``.incomplete``, means the files on disk are not the repository's."""
    missing = [p for p in ([found] if found.is_file() else found.rglob("*")) if p.is_symlink() and not p.exists()]
    partial = list((snapshot.parent.parent / "blobs").glob("*.incomplete"))
    if missing or partial:
        repo, _, subpath = spec.partition(":")
        include = f" --include '{subpath.strip('/')}/*'" if subpath.strip("/") else ""
        raise SaekitError(f"hf:{spec} is only partly downloaded ({len(missing)} files missing, {len(partial)} "
                          f"incomplete in the cache); finish it with `hf download {repo}{include}`")


def resolve_source(name: str) -> tuple[str | None, Path, str]:
    """(format named or None, local path, the name as given) for a local or ``hf:`` dictionary name."""
    fmt, hub = split_hub_name(name)
    if hub is not None:
        return fmt, resolve_hub(hub), name
    fmt, path = split_prefix(name)
    return fmt, path, name


def _source_files(path: Path) -> list[Path]:
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


def model_name(recorded: Any, override: str | None, where: str) -> str:
    """The saekit model spec: the override, else the file's (the embedded default's names map to 'default')."""
    if override:
        return override
    if not isinstance(recorded, str) or not recorded.strip():
        raise SaekitError(f"{where} names no model; pass --import-model (e.g. default, a local Hugging Face "
                          "directory or a hub id)")
    return DEFAULT_MODEL if recorded.strip().lower() in DEFAULT_MODEL_NAMES else recorded


def _sites(source: dict[str, Any], settings: ImportSettings, count: int, where: str) -> dict[str, Any]:
    """The run config's site settings for one dictionary: from the flags (one dictionary), else its source."""
    if settings.site is not None:
        if count != 1:
            raise SaekitError(f"{where} holds {count} dictionaries; --import-site names the site of one")
        return {"site": settings.site, "target_site": settings.target_site, "layers": None}
    if not source.get("site"):
        raise SaekitError(f"{where} does not say which site it reads; pass --import-site blocks.N.KIND "
                          "(and --import-target-site for a transcoder)")
    sites = {"site": source["site"], "target_site": source.get("target_site"), "layers": None}
    if len(source.get("sites") or []) > 1:
        sites["layers"] = source.get("layers") or "{}-{}".format(parse_site(source["sites"][0]).layer,
                                                                 parse_site(source["sites"][-1]).layer)
    return sites


def run_config(dictionary: Dictionary, source: dict[str, Any], settings: ImportSettings, count: int, where: str,
               base: TrainConfig | None = None) -> TrainConfig:
    """The run config an imported dictionary is evaluated and analysed under."""
    config = dictionary.config
    base = base or TrainConfig()
    flat = {"model": model_name(source.get("model"), settings.model, where),
            **_sites(source, settings, count, where), "architecture": config.architecture, "width": config.width,
            "k": config.k, "l1_coefficient": config.l1_coefficient, "l0_coefficient": config.l0_coefficient}
    flat["extra"] = dict(config.extra)
    return base.updated(**flat).validate()


def check_fits(dictionary: Dictionary, config: TrainConfig, where: str) -> None:
    """The dictionary's widths and layers fit the model (read from its config file, no weights loaded)."""
    sizes = model_sizes(load_model_config(config.data.model))
    n_layers, d_model = sizes.layers, sizes.d_model
    widths = {"mlp_act": sizes.d_mlp}
    reads, writes = config.input_sites, config.output_sites
    for name in (*reads, *writes):
        if parse_site(name).layer >= n_layers:
            raise SaekitError(f"{where} reads or writes {name}, but {config.data.model} has {n_layers} layers "
                              "(0-{}); pass --import-model for the model it was trained on".format(n_layers - 1))
    for sites, width, what in ((reads, dictionary.config.d_in, "input"),
                               (writes, dictionary.config.output_dim, "output")):
        expected = sum(widths.get(parse_site(name).kind, d_model) for name in sites)
        if width != expected:
            raise SaekitError(f"{where} has {what} width {width}, but {', '.join(sites)} of {config.data.model} "
                              f"{'is' if len(sites) == 1 else 'are'} {expected} wide; pass --import-model for the "
                              "model it was trained on (or --import-site for the site it reads)")


@torch.no_grad()
def activation_means(config: TrainConfig, sites: list[str], tokens: int,
                     loaded: LoadedModel) -> dict[str, torch.Tensor]:
    """Mean activation of each site over ``tokens`` training-split tokens (BOS and outliers dropped, as in training)."""
    source = ActivationSource(ActivationSpec(config.data, tuple(sites)), config.run.cache_dir, lambda: loaded,
                              config.run.model_batch_contexts)
    sums: dict[str, torch.Tensor] = {}
    seen = 0
    with tqdm(total=tokens, desc="activation means", unit="tok") as bar:
        for chunk in source.chunks(progress=False):
            for site in sites:
                sums[site] = sums.get(site, 0) + chunk[site].double().sum(dim=0)
            rows = int(chunk[sites[0]].shape[0])
            seen += rows
            bar.update(rows)
            if seen >= tokens:
                break
    return {site: total / max(seen, 1) for site, total in sums.items()}


def _run_name(given: str, path: Path, settings: ImportSettings, fingerprint: str) -> str:
    """The given name, else the source's name and the import's fingerprint (same import, same name).

    A hub name gives its repository and path (``hf:google/gemma-scope-2b-pt-res:layer_12/width_16k`` ->
    ``gemma-scope-2b-pt-res-layer_12-width_16k-<fp>``); a local path its last two components."""
    if settings.name:
        if (problem := run_name(settings.name)) is not None:
            raise SaekitError(f"--name: {problem}, got {settings.name!r}")
        return settings.name
    hub = split_hub_name(given)[1]
    parts = hub.split("/", 1)[1].replace(":", "/").split("/") if hub else [path.parent.name, path.name]
    return (re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(p for p in parts if p)).strip("-.") or "dictionary") \
        + f"-{fingerprint[:8]}"


def _child_name(index: int, site: str, sites: list[str | None]) -> str:
    """A set's member folder: its site, as ``--sites`` runs are named (numbered where two share a site)."""
    return site if sites.count(site) == 1 else f"{index:02d}-{site}"


def import_dictionary(name: str, settings: ImportSettings | None = None,
                      base: TrainConfig | None = None) -> list[Path]:
    """Run directories for every dictionary ``name`` holds, writing them on first use (see module docstring)."""
    settings = settings or ImportSettings()
    fmt, path, given = resolve_source(name)
    fmt, found = read_dictionaries(path, fmt)
    if not found:
        raise SaekitError(f"{given} holds no dictionary")
    files = fingerprint_files(*_source_files(path))
    fingerprint = fingerprint_json({"files": files, "format": fmt, "settings": [settings.model, settings.site,
                                    settings.target_site, settings.stats_tokens], "base": base and base.to_dict()})
    parent = settings.imports_dir / _run_name(given, path, settings, fingerprint)
    check_disjoint(parent, [path], "--imports-dir")
    planned = []
    sites = [source.get("site") for _, source in found]
    for index, (dictionary, source) in enumerate(found):
        where = given if len(found) == 1 else f"{given} (dictionary {index})"
        config = run_config(dictionary, source, settings, len(found), where, base)
        check_fits(dictionary, config, where)
        record = {"source": given, "path": str(path.resolve()), "format": fmt, "index": index,
                  "files_fingerprint": files, "notes": source.get("notes", []),
                  "stats_tokens": settings.stats_tokens, "config": config.to_dict()}
        run_dir = parent if len(found) == 1 else parent / _child_name(index, config.site, sites)
        record["fingerprint"] = fingerprint_json({k: v for k, v in record.items() if k not in ("path", "source")})
        relative = run_dir.relative_to(settings.imports_dir)
        planned.append((dictionary, source, config.updated(name=f"imported/{relative}"), record, run_dir))
    loaded = None
    with exclusive(settings.imports_dir / LOCKS_DIR / parent.name, "import"):
        for dictionary, source, config, record, run_dir in planned:
            if _already_imported(run_dir, record):
                continue
            loaded = loaded or config.data.load_model(config.run.device)
            _write_run(run_dir, dictionary, source, config, record, loaded)
    return [run_dir for *_, run_dir in planned]


def _already_imported(run_dir: Path, record: dict[str, Any]) -> bool:
    """True when ``run_dir`` holds this very import; a directory holding anything else is refused."""
    if not run_dir.exists():
        return False
    recorded = read_json(run_dir / IMPORT_RECORD, "import record") if (run_dir / IMPORT_RECORD).is_file() else None
    if recorded is None or recorded.get("fingerprint") != record["fingerprint"]:
        raise SaekitError(f"{run_dir} already exists and holds something else than this import; name the import "
                          "otherwise (saekit import --name) or remove it")
    return True


def _write_run(run_dir: Path, dictionary: Dictionary, source: dict[str, Any], config: TrainConfig,
               record: dict[str, Any], loaded: LoadedModel) -> None:
    # What a native run's dictionary records (no training, so unit scales), plus where the weights came from.
    saved = {**dictionary_source(config), "imported": {"format": record["format"], "source": record["source"],
                                                       "notes": source.get("notes", [])}}
    means = activation_means(config, written_sites(saved), record["stats_tokens"], loaded)

    def build(tmp: Path) -> None:
        write_run_config(tmp, config.to_dict())
        save_dictionary(tmp / DICTIONARY_DIR, dictionary, saved)
        save_activation_means(tmp, means)
        write_json(tmp / IMPORT_RECORD, record)

    run_dir.parent.mkdir(parents=True, exist_ok=True)
    replace_directory(run_dir, build)


def resolve_runs(names: list[str], settings: ImportSettings | None = None) -> list[Path]:
    """Each name as run directories: a saekit run as it is, anything else imported (see :func:`import_dictionary`)."""
    runs: list[Path] = []
    for name in names:
        if split_hub_name(name)[1] is None:  # a local name: a run is used as it is
            fmt, path = split_prefix(name)
            if fmt is None and not path.exists():
                raise SaekitError(f"run directory not found: {path}")
            if is_run_dir(path):
                runs.append(path)
                continue
        runs.extend(import_dictionary(name, settings))
    return runs


def single_run(name: str, settings: ImportSettings | None = None) -> Path:
    """One run directory for a command that works on one dictionary."""
    runs = resolve_runs([name], settings)
    if len(runs) != 1:
        raise SaekitError(f"{name} holds {len(runs)} dictionaries; this command takes one: name one of "
                          f"{', '.join(str(r) for r in runs[:3])}{', ...' if len(runs) > 3 else ''}")
    return runs[0]

