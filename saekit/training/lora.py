"""LoRA adapters on the model around a frozen dictionary: this module's one job is training them.

Chen, Engels, Tegmark 2025 ("Low-Rank Adapting Models for Sparse Autoencoder Features", code
matchten/LoRA-Models-for-SAEs): freeze a trained dictionary, splice it into the model, and fine-tune
low-rank adapters (peft LoRA, r 64, alpha 32, dropout 0.1 in the paper) on the attention and MLP
projections of the layers after its site so the spliced model's next-token distribution approaches the
clean model's. :func:`train_adapter` does that for any run directory (imported ones too):

- the dictionary is loaded from ``RUN/dictionary`` (folded: raw activations in and out), frozen and in
  eval mode; it reads and writes the sites its saved source names;
- the model gets peft LoRA layers on ``AdapterSettings.modules`` of ``AdapterSettings.layers`` (by
  default every layer after the dictionary's first read site, and the family's attention and MLP
  projections, :data:`FAMILY_MODULES`); the model's own weights stay frozen and untouched, and the LoRA
  layers are removed again (``unload``) when training ends, so a shared ``LoadedModel`` comes back as it was;
- per step: whole contexts drawn, seeded, from the run's training split (a resumed run draws exactly the
  contexts it would have); the clean logits with the adapters DISABLED (the reference is the original
  model, ``disable_adapter``); the spliced logits with the adapters ENABLED and the dictionary spliced in
  *inside that same forward*: the dictionary reads the adapted model's own activation at its read site
  (what the adapted model will be used with: identical to the clean activation when no adapted layer
  comes before the site, which is the default) and its reconstruction replaces the write site, BOS kept
  clean, through the splice the evaluation uses too (``saekit.training.splicing``). Loss: ``next_token_kl``
  (KL(original clean || adapted spliced) at the evaluation's positions); Adam on the LoRA parameters only.
  LoRA dropout is drawn after seeding torch with (seed, step), so a resume replays it exactly.

It writes ``RUN/adapters/NAME/``: ``adapter_model.safetensors`` + ``adapter_config.json`` (peft's
``save_pretrained``, safetensors), ``log.jsonl`` (one line per step), ``checkpoint.safetensors`` (LoRA
weights, Adam state, step, the settings; safetensors + JSON metadata, written atomically) and
``settings.json``. :func:`attached_adapter` puts a saved adapter on a model for the evaluation
(``saekit.evaluation.adapted``) and takes it off again.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saekit.dictionaries.base import Dictionary
from saekit.dictionaries.registry import dictionary_fingerprint, load_dictionary, read_sites, written_sites
from saekit.errors import SaekitError
from saekit.io import read_json, write_json
from saekit.locks import exclusive
from saekit.models.architecture import LAYOUTS
from saekit.models.hooks import recording_prefix, resumed_at
from saekit.models.loading import DEFAULT_MODEL, LoadedModel, layer_count, load_model_config
from saekit.models.sites import parse_site
from saekit.rundir import CHECKPOINT_FILE, DICTIONARY_DIR, LOG_FILE
from saekit.settings import SEED, check_rules, non_empty, setting, to_dict
from saekit.training.checkpoint import load_checkpoint, optimizer_tensors, restore_optimizer, save_checkpoint
from saekit.training.config import TrainConfig, layer_range, load_run_config, run_name
from saekit.training.model_loop import contexts_per_step, step_contexts
from saekit.training.objectives import next_token_kl
from saekit.training.run import truncate_log
from saekit.training.splicing import splice_targets, spliced_context

ADAPTERS_DIR = "adapters"  # RUN/adapters/NAME/
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # peft's file names
ADAPTER_CONFIG = "adapter_config.json"
SETTINGS_FILE = "settings.json"
DEFAULT_NAME = "lora"

_LLAMA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# The attention and MLP projections of each family (the linear modules inside a block), by model_type.
FAMILY_MODULES: dict[str, tuple[str, ...]] = {
    **{name: _LLAMA_MODULES for name in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "olmo", "olmo2")},
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    "gpt2": ("c_attn", "c_proj", "c_fc"),
    "gpt_neox": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
}
DEFAULT_MODEL_TYPE = "llama"  # the embedded default model (SmolLM2), known without parsing its GGUF file


def _module_name(value: str) -> str | None:
    return non_empty(value) or (None if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value) else
                                "a module attribute name such as q_proj")


@dataclass
class AdapterSettings:
    """What LoRA adapters are trained around a frozen dictionary, and how (see the module doc)."""

    rank: int = setting(64, "LoRA rank r (Chen et al. 2025: 64)", minimum=1)
    alpha: float = setting(32.0, "LoRA alpha; the update is scaled by alpha / rank (Chen et al. 2025: 32)", above=0)
    dropout: float = setting(0.1, "LoRA dropout on the adapters' input (Chen et al. 2025: 0.1)", minimum=0, below=1)
    layers: str | None = setting(None, "the model layers that get adapters, FIRST-LAST (none: every layer after the "
                                 "dictionary's site)", check=layer_range, invalid=("3", "5-2"), none="after",
                                 metavar="FIRST-LAST")
    modules: tuple[str, ...] = setting((), "the linear modules inside each adapted layer, comma-separated (none: "
                                       "the family's attention and MLP projections, e.g. q_proj,k_proj,v_proj,"
                                       "o_proj,gate_proj,up_proj,down_proj for Llama)", check=_module_name,
                                       invalid=("", "self_attn.q_proj"))
    train_tokens: int = setting(1_048_576, "training tokens (non-BOS positions of whole contexts)", minimum=1)
    batch_size: int = setting(4096, "tokens per step, rounded up to whole contexts of the run's context length",
                              minimum=1)
    lr: float = setting(1e-4, "Adam learning rate of the LoRA parameters (constant)", above=0)
    seed: int = setting(0, "seed of the LoRA initialisation, the context order and the dropout", **SEED)
    checkpoint_every: int = setting(50, "steps between checkpoints (a killed run resumes from the last)", minimum=1)

    def __post_init__(self) -> None:
        self.modules = tuple(self.modules)

    def validate(self) -> AdapterSettings:
        check_rules(self, "lora settings")
        return self

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


# ---- what gets adapted, decided before the model loads -----------------------------------------
@dataclass(frozen=True)
class AdapterPlan:
    """A run's dictionary, where it reads and writes, and which modules of which layers get adapters."""

    run_dir: Path
    config: TrainConfig
    source: dict[str, Any]
    model_type: str
    layers: tuple[int, ...]
    modules: tuple[str, ...]

    @property
    def reads(self) -> list[str]:
        return read_sites(self.source)

    @property
    def writes(self) -> list[str]:
        return written_sites(self.source)

    @property
    def first_changed_layer(self) -> int:
        """The first block whose computation the splice or an adapter changes."""
        return min(*self.layers, *(parse_site(site).layer for site in (*self.reads, *self.writes)))

    def target_pattern(self) -> str:
        """peft ``target_modules`` as a regular expression over full module names: these modules of these layers."""
        blocks = re.escape(LAYOUTS[self.model_type].blocks) if self.model_type in LAYOUTS else r"[\w.]*layers"
        layers = "|".join(str(layer) for layer in self.layers)
        modules = "|".join(re.escape(module) for module in self.modules)
        return rf"(.*\.)?{blocks}\.({layers})\.(.*\.)?({modules})"


def _model_type(spec: str) -> str:
    if spec == DEFAULT_MODEL:
        return DEFAULT_MODEL_TYPE
    return str(getattr(load_model_config(spec), "model_type", None))


def first_layer_after(site: str) -> int:
    """The first layer whose block runs after ``site``: its own layer for ``resid_pre``, else the next."""
    parsed = parse_site(site)
    return parsed.layer if parsed.kind == "resid_pre" else parsed.layer + 1


def plan_adapter(run_dir: str | Path, settings: AdapterSettings) -> AdapterPlan:
    """Check everything that can be checked without the model's weights; a bad input is one line.

    A run directory without a saved dictionary, layers beyond the model, and module names the model's
    family does not have are refused here, before any model loads.
    """
    run_dir = Path(run_dir)
    settings.validate()
    if not run_dir.is_dir():
        raise SaekitError(f"run directory not found: {run_dir}")
    if not (run_dir / DICTIONARY_DIR / "config.json").is_file():
        raise SaekitError(f"{run_dir} holds no dictionary ({DICTIONARY_DIR}/ is missing); train the run to the end or "
                          "import a dictionary first")
    config = load_run_config(run_dir)
    source = read_json(run_dir / DICTIONARY_DIR / "config.json", "dictionary config").get("source", {})
    if not source.get("site") and not source.get("sites"):
        raise SaekitError(f"{run_dir / DICTIONARY_DIR / 'config.json'} names no site the dictionary reads")
    n_layers = layer_count(config.data.model)
    model_type = _model_type(config.data.model)
    if settings.layers is None:
        first = first_layer_after(read_sites(source)[0])
        if n_layers is not None and first >= n_layers:
            raise SaekitError(f"no layer of {config.data.model} comes after the dictionary's site "
                              f"{read_sites(source)[0]}; name the layers to adapt with --layers FIRST-LAST")
        last = (n_layers - 1) if n_layers is not None else first
        layers = tuple(range(first, last + 1))
    else:
        low, high = (int(part) for part in settings.layers.split("-"))
        if n_layers is not None and high >= n_layers:
            raise SaekitError(f"--layers {settings.layers} goes beyond the model: {config.data.model} has {n_layers} "
                              f"layers, 0-{n_layers - 1}")
        layers = tuple(range(low, high + 1))
    family = FAMILY_MODULES.get(model_type)
    modules = settings.modules or family
    if modules is None:
        raise SaekitError(f"no default LoRA modules are known for the {model_type!r} family; name them with "
                          "--modules (the linear modules inside a block)")
    if family is not None:
        unknown = [module for module in modules if module not in family]
        if unknown:
            raise SaekitError(f"--modules {','.join(unknown)}: the {model_type} family has no such module; its "
                              f"attention and MLP projections are {','.join(family)}")
    return AdapterPlan(run_dir, config, source, model_type, layers, tuple(modules))


def adapter_dir(run_dir: str | Path, name: str) -> Path:
    """``RUN/adapters/NAME``, the name checked as a run name is (relative, printable, no '..')."""
    problem = run_name(name)
    if problem is not None:
        raise SaekitError(f"--name must be {problem}, got {name!r}")
    return Path(run_dir) / ADAPTERS_DIR / name


# ---- peft on the model -------------------------------------------------------------------------
def _check_modules_exist(loaded: LoadedModel, plan: AdapterPlan) -> None:
    """Families without a known module table (and odd checkpoints) are checked against the loaded model."""
    pattern = re.compile(plan.target_pattern())
    found = {name.rsplit(".", 1)[-1] for name, _ in loaded.model.named_modules() if pattern.fullmatch(name)}
    missing = [module for module in plan.modules if module not in found]
    if missing:
        raise SaekitError(f"--modules {','.join(missing)}: layers {plan.layers[0]}-{plan.layers[-1]} of "
                          f"{loaded.name} have no such module")


@contextmanager
def _peft_model(loaded: LoadedModel, build) -> Iterator[Any]:  # build(model) -> PeftModel
    """The model with LoRA layers injected (in place) for the block; removed again after it, whatever happens."""
    model = loaded.model
    requires = {name: p.requires_grad for name, p in model.named_parameters()}
    training = model.training
    peft_model = build(model)
    try:
        yield peft_model
    finally:
        peft_model.base_model.unload()  # the original modules back, unmerged: the weights were never changed
        for attribute in ("peft_config", "_hf_peft_config_loaded"):
            if attribute in vars(model):
                delattr(model, attribute)
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(requires.get(name, False))
        model.train(training)


def lora_config(plan: AdapterPlan, settings: AdapterSettings):  # -> peft.LoraConfig
    from peft import LoraConfig

    return LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout, bias="none",
                      target_modules=plan.target_pattern(), fan_in_fan_out=plan.model_type == "gpt2")


@contextmanager
def attached_adapter(loaded: LoadedModel, directory: str | Path) -> Iterator[Any]:
    """A saved adapter on ``loaded.model`` (enabled) for the block; the model comes back unadapted after it."""
    from peft import PeftModel

    directory = Path(directory)
    for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
        if not (directory / name).is_file():
            raise SaekitError(f"adapter file not found: {directory / name}; train it with saekit lora")
    with _peft_model(loaded, lambda model: PeftModel.from_pretrained(model, str(directory))) as peft_model:
        peft_model.eval()
        yield peft_model


def frozen_dictionary(plan: AdapterPlan, loaded: LoadedModel) -> Dictionary:
    """The run's dictionary on the model's device, frozen and in eval mode, its sites checked against the model."""
    dictionary, _ = load_dictionary(plan.run_dir / DICTIONARY_DIR, loaded.device)
    for name in (*plan.reads, *plan.writes):
        loaded.adapter.site(name)
    return dictionary.eval().requires_grad_(False)


# ---- training ----------------------------------------------------------------------------------
def total_steps(config: TrainConfig, settings: AdapterSettings) -> int:
    tokens_per_step = contexts_per_step(settings.batch_size, config.data.context_length) * \
        (config.data.context_length - 1)
    return max(1, math.ceil(settings.train_tokens / tokens_per_step))


def training_contexts(loaded: LoadedModel, config: TrainConfig, settings: AdapterSettings,
                      first_step: int) -> Iterator[Tensor]:
    """Each step's whole contexts from the run's training split, in the seed's order, from step ``first_step``."""
    return step_contexts(loaded, config.data, settings.batch_size, settings.seed, first_step)


def _checkpoint(path: Path, names: list[str], parameters: list[Tensor], optimizer: torch.optim.Optimizer,
                step: int, identity: dict[str, Any]) -> None:
    tensors = {f"lora.{name}": parameter.detach() for name, parameter in zip(names, parameters)}
    state, meta = optimizer_tensors(optimizer, names)
    tensors.update(state)
    save_checkpoint(path, tensors, {"step": step, "optimizer": meta, **identity})


def _restore(path: Path, names: list[str], parameters: list[Tensor], optimizer: torch.optim.Optimizer,
             identity: dict[str, Any]) -> int:
    tensors, meta = load_checkpoint(path)
    if {key: meta.get(key) for key in identity} != identity:
        raise SaekitError(f"checkpoint {path} was written with other lora settings or another dictionary; resume "
                          "with the settings it was started with, or choose another --name")
    with torch.no_grad():
        for name, parameter in zip(names, parameters):
            parameter.copy_(tensors[f"lora.{name}"])
    restore_optimizer(optimizer, names, tensors, meta["optimizer"])
    return int(meta["step"])


def _save_adapter(peft_model: Any, out: Path) -> None:
    """peft's adapter_model.safetensors and adapter_config.json, each moved into place complete."""
    tmp = Path(tempfile.mkdtemp(prefix=".adapter-", dir=out))
    try:
        peft_model.save_pretrained(str(tmp), safe_serialization=True)
        for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
            (tmp / name).replace(out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def train_adapter(run_dir: str | Path, settings: AdapterSettings, loaded: LoadedModel | None = None,
                  name: str = DEFAULT_NAME, resume: bool = False, progress: bool = True) -> Path:
    """Train LoRA adapters around the run's frozen dictionary (see the module doc); returns ``RUN/adapters/NAME``."""
    from peft import get_peft_model

    plan = plan_adapter(run_dir, settings)
    out = adapter_dir(plan.run_dir, name)
    checkpoint = out / CHECKPOINT_FILE
    with exclusive(out, "adapter directory"):
        if not resume and (checkpoint.exists() or (out / ADAPTER_WEIGHTS).exists()):
            raise SaekitError(f"{out} already holds an adapter; pass --resume or choose another --name")
        if resume and not checkpoint.exists():
            raise SaekitError(f"no checkpoint at {checkpoint}; start the adapter without --resume")
        config = plan.config
        loaded = loaded or config.data.load_model(config.run.device)
        _check_modules_exist(loaded, plan)
        dictionary = frozen_dictionary(plan, loaded)
        targets = splice_targets(dictionary, [loaded.adapter.site(s) for s in plan.reads],
                                 [loaded.adapter.site(s) for s in plan.writes])
        first_changed = plan.first_changed_layer  # the spliced forward replays the clean one's blocks before it
        identity = {"settings": settings.to_dict(),
                    "dictionary": dictionary_fingerprint(plan.run_dir / DICTIONARY_DIR)}
        write_json(out / SETTINGS_FILE, {**identity, "run": str(plan.run_dir), "layers": list(plan.layers),
                                         "modules": list(plan.modules), "model": loaded.name})
        steps = total_steps(config, settings)

        def build(model):
            torch.manual_seed(settings.seed)  # the LoRA A matrices' initialisation (B starts at zero)
            return get_peft_model(model, lora_config(plan, settings))

        with _peft_model(loaded, build) as peft_model:
            named = [(n, p) for n, p in peft_model.named_parameters() if p.requires_grad]
            names, parameters = [n for n, _ in named], [p for _, p in named]
            optimizer = torch.optim.Adam(parameters, lr=settings.lr)
            step = _restore(checkpoint, names, parameters, optimizer, identity) if resume else 0
            truncate_log(out / LOG_FILE, step)
            dropouts = [m for n, m in peft_model.named_modules() if n.endswith("lora_dropout")]
            contexts = training_contexts(loaded, config, settings, step)
            with open(out / LOG_FILE, "a", encoding="utf-8") as log, \
                    tqdm(total=steps, initial=step, desc=f"lora {name}", unit="step", disable=not progress) as bar:
                while step < steps:
                    input_ids = next(contexts).to(loaded.device)
                    with torch.no_grad(), peft_model.disable_adapter(), \
                            recording_prefix(loaded.adapter, first_changed) as prefix:
                        clean = loaded.model(input_ids=input_ids, use_cache=False).logits
                    torch.manual_seed(settings.seed * 1_000_003 + step)  # this step's dropout, the same on resume
                    for module in dropouts:
                        module.train()
                    try:
                        with resumed_at(loaded.adapter, prefix), \
                                spliced_context(loaded, targets, input_ids=input_ids):
                            logits = loaded.model(input_ids=input_ids, use_cache=False).logits
                    finally:
                        for module in dropouts:
                            module.eval()
                    kl = next_token_kl(clean, logits)
                    optimizer.zero_grad(set_to_none=True)
                    kl.backward()
                    optimizer.step()
                    step += 1
                    record = {"step": step, "tokens": step * input_ids.shape[0] * (input_ids.shape[1] - 1),
                              "kl": kl.item()}
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    bar.update()
                    bar.set_postfix(kl=f"{record['kl']:.4f}")
                    if step % settings.checkpoint_every == 0 or step == steps:
                        _checkpoint(checkpoint, names, parameters, optimizer, step, identity)
            _save_adapter(peft_model, out)
    return out


def read_log(out: Path) -> list[dict]:
    """The adapter's log lines (for tests and reports)."""
    return [json.loads(line) for line in (out / LOG_FILE).read_text(encoding="utf-8").splitlines() if line.strip()]
