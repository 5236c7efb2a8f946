"""Where each activation site lives inside a Hugging Face causal LM, per architecture family.

An :class:`ArchitectureAdapter` resolves the transformer blocks, attention and MLP modules, the MLP's
down projection, the final norm and the unembedding for Llama-style models (Llama, SmolLM, Mistral,
Qwen2/3, Gemma, OLMo, Phi-3), GPT-2 and GPT-NeoX/Pythia. Everything else in saekit addresses sites
by name through this adapter, so adding an architecture means adding one table row.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from saekit.errors import SaekitError
from saekit.models.sites import Site, parse_site


@dataclass(frozen=True)
class ModuleLayout:
    """Attribute paths of one architecture family (dotted, from the top-level model)."""

    blocks: str
    attention: str
    mlp: str
    down_projection: str  # inside the MLP
    final_norm: str
    unembedding: str


_LLAMA = ModuleLayout("model.layers", "self_attn", "mlp", "down_proj", "model.norm", "lm_head")
LAYOUTS: dict[str, ModuleLayout] = {
    **{name: _LLAMA for name in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "olmo", "olmo2", "phi3")},
    "gpt2": ModuleLayout("transformer.h", "attn", "mlp", "c_proj", "transformer.ln_f", "lm_head"),
    "gpt_neox": ModuleLayout("gpt_neox.layers", "attention", "mlp", "dense_4h_to_h",
                             "gpt_neox.final_layer_norm", "embed_out"),
}


def _get(root: nn.Module, path: str) -> nn.Module:
    module = root
    for part in path.split("."):
        module = getattr(module, part)
    return module


def _in_features(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.in_features
    weight = getattr(module, "weight", None)  # GPT-2's Conv1D stores weight as [in, out]
    if weight is not None and hasattr(module, "nf"):
        return weight.shape[0]
    raise SaekitError(f"cannot read the input width of {type(module).__name__}")


class ArchitectureAdapter:
    """Resolves site names to modules for one loaded model."""

    def __init__(self, model: nn.Module) -> None:
        model_type = getattr(model.config, "model_type", None)
        if model_type not in LAYOUTS:
            raise SaekitError(
                f"architecture {model_type!r} is not supported yet; supported: {', '.join(sorted(LAYOUTS))}"
            )
        self.model = model
        self.model_type = model_type
        self.layout = LAYOUTS[model_type]
        self.blocks: nn.ModuleList = _get(model, self.layout.blocks)

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def d_model(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def d_mlp(self) -> int:
        return _in_features(self.down_projection(0))

    def block(self, layer: int) -> nn.Module:
        return self.blocks[layer]

    def attention(self, layer: int) -> nn.Module:
        return getattr(self.blocks[layer], self.layout.attention)

    def mlp(self, layer: int) -> nn.Module:
        return getattr(self.blocks[layer], self.layout.mlp)

    def down_projection(self, layer: int) -> nn.Module:
        return getattr(self.mlp(layer), self.layout.down_projection)

    def final_norm(self) -> nn.Module:
        return _get(self.model, self.layout.final_norm)

    def unembedding(self) -> nn.Module:
        return _get(self.model, self.layout.unembedding)

    def site(self, name: str) -> Site:
        return parse_site(name, self.n_layers)

    def site_width(self, site: Site | str) -> int:
        site = self.site(site) if isinstance(site, str) else site
        return self.d_mlp if site.kind == "mlp_act" else self.d_model
