"""Where each activation site lives inside a Hugging Face causal LM, per architecture family.

An :class:`ArchitectureAdapter` resolves the transformer blocks, attention and MLP modules, the MLP's
down projection, the final norm and the unembedding for Llama-style models (Llama, SmolLM, Mistral,
Qwen2/3, Gemma, Gemma 2, OLMo, OLMo 2, Phi-3), GPT-2 and GPT-NeoX/Pythia. Everything else in saekit
addresses sites by name through this adapter, so adding an architecture means adding one table row.

A row also holds what the local replacement model of a prompt (``saekit/circuits/replacement.py``)
needs to freeze the family's attention and norms: how the values of the attention are made from its
input (a separate value projection, or a slice of a fused q/k/v projection), which norms sit on the
residual path of a block and of what kind (RMSNorm, LayerNorm with bias, Gemma's ``1 + weight``), and
the nonlinearities outside the modules (Gemma 2's final logit softcap). The MLP sites are the MLP
module's input and output for every family: ``mlp_in`` is the output of the norm before the MLP (the
residual stream itself where there is none, OLMo 2), ``mlp_out`` what the MLP returns, before any
norm after it (Gemma 2, OLMo 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from saekit.errors import SaekitError
from saekit.models.sites import Site, parse_site

VALUE_LAYOUTS = ("separate", "fused", "per_head")


@dataclass(frozen=True)
class AttentionLayout:
    """How one attention module turns its input into values and its mixed values into its output.

    ``values`` names the projection that makes the values (called as a module, so GPT-2's Conv1D and
    nn.Linear are alike). Its output is, by ``value_layout``:

    - ``separate``: the values alone, [.., kv_heads * head_dim] (Llama's ``v_proj``);
    - ``fused``: [q | k | v] along the last axis, q being heads * head_dim wide and k and v alike
      (GPT-2's ``c_attn``, Phi-3's ``qkv_proj``);
    - ``per_head``: [.., heads, 3 * head_dim] with each head's q, k, v side by side (GPT-NeoX's
      ``query_key_value``).

    Queries and keys (and with them rotary or learned positions, q/k norms and attention-logit
    softcapping) only shape the pattern, which the replacement model freezes.
    """

    values: str
    output: str
    head_dim: str = "head_dim"  # the attention module's attribute holding the per-head width
    value_layout: str = "separate"

    def __post_init__(self) -> None:
        if self.value_layout not in VALUE_LAYOUTS:
            raise ValueError(f"value_layout {self.value_layout!r} is not one of {VALUE_LAYOUTS}")


@dataclass(frozen=True)
class NormLayout:
    """The norms on a block's residual path (attribute names inside the block, None where absent) and their kind.

    ``kind`` is ``rms`` (x / rms(x)) or ``layer`` (centred, then / std). A norm's scale is its ``weight``
    (``weight_offset + weight``: Gemma stores the scale minus one), its shift its ``bias`` where it has
    one (LayerNorm); a norm without ``weight`` (OLMo's) has neither. ``eps`` is read from the module
    (``variance_epsilon`` or ``eps``); ``fixed_eps`` is for a family whose norm stores none.
    """

    kind: str
    before_attention: str | None
    before_mlp: str | None
    after_attention: str | None = None  # on the attention output, before the residual add (Gemma 2, OLMo 2)
    after_mlp: str | None = None  # on the MLP output, before the residual add (Gemma 2, OLMo 2)
    weight_offset: float = 0.0
    fixed_eps: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("rms", "layer"):
            raise ValueError(f"norm kind {self.kind!r} is not 'rms' or 'layer'")

    @property
    def in_block(self) -> tuple[str, ...]:
        return tuple(name for name in (self.before_attention, self.after_attention, self.before_mlp,
                                       self.after_mlp) if name is not None)


@dataclass(frozen=True)
class ModuleLayout:
    """One architecture family: attribute paths (dotted, from the top-level model) and the replacement model's facts."""

    blocks: str
    attention: str
    mlp: str
    down_projection: str  # inside the MLP
    final_norm: str
    unembedding: str
    attention_layout: AttentionLayout = field(default_factory=lambda: AttentionLayout("v_proj", "o_proj"))
    norms: NormLayout = field(default_factory=lambda: NormLayout("rms", "input_layernorm", "post_attention_layernorm"))
    positions: str = "rotary"  # "learned": a position embedding the model adds to the input embeddings (a constant)
    conv1d: bool = False  # projections are GPT-2 Conv1D modules (weight [in, out]) rather than nn.Linear
    parallel_residual: str | None = None  # config flag: attention and MLP both read the block input (GPT-NeoX)
    attention_softcap: str | None = None  # config attribute: the attention logits' softcap (in the pattern)
    logit_softcap: str | None = None  # config attribute: cap * tanh(logits / cap) after the unembedding
    replacement: bool = True  # whether circuits/replacement.py can build the local replacement model
    gated_mlp: bool = True  # the MLP has gate, up and down matrices (False: up and down only)


_LLAMA = ModuleLayout("model.layers", "self_attn", "mlp", "down_proj", "model.norm", "lm_head")
_GEMMA_NORMS = NormLayout("rms", "input_layernorm", "post_attention_layernorm", weight_offset=1.0)
LAYOUTS: dict[str, ModuleLayout] = {
    **{name: _LLAMA for name in ("llama", "mistral", "qwen2", "qwen3")},
    "gemma": ModuleLayout("model.layers", "self_attn", "mlp", "down_proj", "model.norm", "lm_head",
                          norms=_GEMMA_NORMS),
    "gemma2": ModuleLayout(
        "model.layers", "self_attn", "mlp", "down_proj", "model.norm", "lm_head",
        norms=NormLayout("rms", "input_layernorm", "pre_feedforward_layernorm",
                         after_attention="post_attention_layernorm", after_mlp="post_feedforward_layernorm",
                         weight_offset=1.0),
        attention_softcap="attn_logit_softcapping", logit_softcap="final_logit_softcapping"),
    "olmo": ModuleLayout("model.layers", "self_attn", "mlp", "down_proj", "model.norm", "lm_head",
                         norms=NormLayout("layer", "input_layernorm", "post_attention_layernorm", fixed_eps=1e-5)),
    "olmo2": ModuleLayout("model.layers", "self_attn", "mlp", "down_proj", "model.norm", "lm_head",
                          norms=NormLayout("rms", None, None, after_attention="post_attention_layernorm",
                                           after_mlp="post_feedforward_layernorm")),
    "phi3": ModuleLayout("model.layers", "self_attn", "mlp", "down_proj", "model.norm", "lm_head",
                         attention_layout=AttentionLayout("qkv_proj", "o_proj", value_layout="fused")),
    "gpt2": ModuleLayout("transformer.h", "attn", "mlp", "c_proj", "transformer.ln_f", "lm_head",
                         attention_layout=AttentionLayout("c_attn", "c_proj", value_layout="fused"),
                         norms=NormLayout("layer", "ln_1", "ln_2"), positions="learned", conv1d=True,
                         gated_mlp=False),
    "gpt_neox": ModuleLayout("gpt_neox.layers", "attention", "mlp", "dense_4h_to_h", "gpt_neox.final_layer_norm",
                             "embed_out",
                             attention_layout=AttentionLayout("query_key_value", "dense", head_dim="head_size",
                                                              value_layout="per_head"),
                             gated_mlp=False,
                             norms=NormLayout("layer", "input_layernorm", "post_attention_layernorm"),
                             parallel_residual="use_parallel_residual"),
}


def replacement_families() -> list[str]:
    """The families the local replacement model (attribution graphs) handles."""
    return sorted(name for name, layout in LAYOUTS.items() if layout.replacement)


def replacement_layout(model_type: str | None) -> ModuleLayout:
    """The family's row, or one line saying the local replacement model (attribution graphs) cannot handle it.

    Needs only the config's ``model_type``: callers can check before loading any weights."""
    layout = LAYOUTS.get(model_type)
    if layout is None or not layout.replacement:
        raise SaekitError(f"attribution graphs do not support the {model_type!r} architecture yet; supported: "
                          f"{', '.join(replacement_families())}")
    return layout


def _get(root: nn.Module, path: str) -> nn.Module:
    module = root
    for part in path.split("."):
        module = getattr(module, part)
    return module


def _in_features(module: nn.Module, conv1d: bool = False) -> int:
    if isinstance(module, nn.Linear):
        return module.in_features
    weight = getattr(module, "weight", None)  # GPT-2's Conv1D stores weight as [in, out]
    if weight is not None and (conv1d or hasattr(module, "nf")):
        return weight.shape[0]
    raise SaekitError(f"cannot read the input width of {type(module).__name__}")


QUERY_HEAD_NAMES = ("num_attention_heads", "n_head")  # the config field naming the query heads per layer


def config_int(config: object, *names: str) -> int | None:
    """The first of ``names`` that the (text) config sets, as an int; None when it sets none."""
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    return None


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
    def query_heads(self) -> int:
        """Query heads per attention layer (the text config's)."""
        heads = config_int(self.model.config.get_text_config(), *QUERY_HEAD_NAMES)
        if heads is None:
            raise SaekitError(f"the {self.model_type} config names no head count (num_attention_heads); "
                              "attention attribution cannot split it into heads")
        return heads

    @property
    def d_mlp(self) -> int:
        return _in_features(self.down_projection(0), self.layout.conv1d)

    def block(self, layer: int) -> nn.Module:
        return self.blocks[layer]

    def attention(self, layer: int) -> nn.Module:
        return getattr(self.blocks[layer], self.layout.attention)

    def mlp(self, layer: int) -> nn.Module:
        return getattr(self.blocks[layer], self.layout.mlp)

    def down_projection(self, layer: int) -> nn.Module:
        return getattr(self.mlp(layer), self.layout.down_projection)

    def block_norms(self, layer: int) -> list[nn.Module]:
        """The norms on block ``layer``'s residual path (the row's ``norms``), in the order they run."""
        block = self.blocks[layer]
        missing = [name for name in self.layout.norms.in_block if not hasattr(block, name)]
        if missing:
            raise SaekitError(f"block {layer} of this {self.model_type} model has no {', '.join(missing)}: "
                              "the architecture table's row does not fit it")
        return [getattr(block, name) for name in self.layout.norms.in_block]

    @property
    def parallel_residual(self) -> bool:
        """Whether attention and MLP both read the block's input (GPT-NeoX's ``use_parallel_residual``)."""
        flag = self.layout.parallel_residual
        return bool(flag and getattr(self.model.config, flag, False))

    def final_norm(self) -> nn.Module:
        return _get(self.model, self.layout.final_norm)

    def unembedding(self) -> nn.Module:
        """The row's unembedding, or the model's output embeddings where a transformers version renamed it
        (GPT-NeoX's ``embed_out`` is ``lm_head`` from transformers 5)."""
        try:
            return _get(self.model, self.layout.unembedding)
        except AttributeError:
            found = self.model.get_output_embeddings()
            if found is None:
                raise SaekitError(f"this {self.model_type} model has no {self.layout.unembedding} and no output "
                                  "embeddings") from None
            return found

    def site(self, name: str) -> Site:
        return parse_site(name, self.n_layers)

    def site_width(self, site: Site | str) -> int:
        site = self.site(site) if isinstance(site, str) else site
        return self.d_mlp if site.kind == "mlp_act" else self.d_model
