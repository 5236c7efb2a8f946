"""Forward FLOPs per token of a Hugging Face causal LM, counted from its config.

Used by the benchmarks to turn tokens/s into achieved FLOP/s (and a fraction of the machine's measured
matmul rate), and to state the arithmetic floor of a step that runs the model. Only the matrix products
are counted (2 FLOPs per multiply-add): the q/k/v/o projections, the MLP, attention's scores and values,
and the unembedding. Norms, rotary embeddings, softmax, activations and residual adds are left out; for
the default model they are well under 1% of the total.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn
from transformers import PretrainedConfig

from saekit.models.architecture import LAYOUTS, QUERY_HEAD_NAMES, config_int


@dataclass(frozen=True)
class ForwardFlops:
    """FLOPs per token of one forward, by kind (matrix products only, multiply-add = 2 FLOPs)."""

    projections: float  # q, k, v and o, summed over the layers run
    mlp: float  # the MLP's matrices, summed over the layers run
    attention: float  # scores (q.k) and values (p.v), summed over the layers run
    unembedding: float  # 2 x d x vocab when the whole model runs, else 0
    layers: int  # how many blocks the count covers

    @property
    def weights(self) -> float:
        """FLOPs of products with a weight matrix (everything but attention's scores and values)."""
        return self.projections + self.mlp + self.unembedding

    @property
    def total(self) -> float:
        return self.weights + self.attention

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "weights": self.weights, "total": self.total}


def _text_config(model_or_config: nn.Module | PretrainedConfig) -> PretrainedConfig:
    config = model_or_config if isinstance(model_or_config, PretrainedConfig) else model_or_config.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def is_gated_mlp(model_or_config: nn.Module | PretrainedConfig) -> bool:
    """Whether the MLP has three matrices (gate, up, down) rather than two: the architecture table's row for the
    model's type (:data:`saekit.models.architecture.LAYOUTS`); a type not in it raises ``ValueError``."""
    model_type = _text_config(model_or_config).model_type
    if model_type not in LAYOUTS:
        raise ValueError(f"unknown whether {model_type!r} has a gated MLP; pass gated= explicitly")
    return LAYOUTS[model_type].gated_mlp


def forward_flops_per_token(model_or_config: nn.Module | PretrainedConfig, context_length: int, *,
                            through_layer: int | None = None, from_layer: int = 0, unembedding: bool | None = None,
                            causal: bool = True, gated: bool | None = None) -> ForwardFlops:
    """Forward FLOPs per token of a dense causal LM on contexts of ``context_length`` tokens.

    Blocks ``from_layer`` to ``through_layer`` (inclusive; None: the last block) are counted; the
    unembedding (``2 x d x vocab``) is added when ``unembedding`` is true, which by default it is exactly
    when the count runs to the last block. Per block and token:

    - projections: ``2 d (n_heads hd)`` for q and o each, ``2 d (n_kv_heads hd)`` for k and v each (GQA
      widths from the config; ``hd`` is ``head_dim`` or ``d / n_heads``);
    - MLP: ``3 x 2 d d_ff`` when gated (:func:`is_gated_mlp`), else ``2 x 2 d d_ff``;
    - attention: a token at position t (0-based) scores t + 1 keys and sums t + 1 values, ``2 x 2 n_heads
      hd (t + 1)``, averaged over the context: ``2 n_heads hd (T + 1)`` (the causal half). With
      ``causal=False`` every token attends to all T positions, ``4 n_heads hd T``: that is what
      ``torch.utils.flop_counter.FlopCounterMode`` counts for eager attention's two matmuls and for SDPA
      on a GPU, since it ignores the causal mask. (On a CPU, torch 2.13's counter has no formula for the
      op SDPA dispatches to, ``_scaled_dot_product_flash_attention_for_cpu``, and counts its FLOPs as 0:
      there it agrees with :attr:`ForwardFlops.weights` alone.)

    Only matrix products are counted (see the module docstring). Embedding lookups cost no FLOPs. Mixture
    of experts models are not handled (their MLP is counted as if dense).
    """
    config = _text_config(model_or_config)
    n_layers = config_int(config, "num_hidden_layers", "n_layer", "num_layers")
    d = config_int(config, "hidden_size", "n_embd", "d_model")
    n_heads = config_int(config, *QUERY_HEAD_NAMES)
    vocab = config_int(config, "vocab_size")
    if None in (n_layers, d, n_heads, vocab):
        raise ValueError(f"config of type {config.model_type!r} lacks the layer count, width, heads or vocabulary")
    n_kv = config_int(config, "num_key_value_heads", "n_head_kv") or n_heads
    head_dim = config_int(config, "head_dim") or d // n_heads
    d_ff = config_int(config, "intermediate_size", "n_inner", "ffn_dim") or 4 * d
    last = n_layers - 1 if through_layer is None else through_layer
    if not 0 <= from_layer <= last < n_layers:
        raise ValueError(f"blocks {from_layer}..{last} are not within the model's {n_layers} blocks")
    if context_length < 1:
        raise ValueError("context_length must be at least 1")
    gated = is_gated_mlp(model_or_config) if gated is None else gated
    layers = last - from_layer + 1
    q_width, kv_width = n_heads * head_dim, n_kv * head_dim
    projections = 2 * d * (2 * q_width + 2 * kv_width)
    mlp = (3 if gated else 2) * 2 * d * d_ff
    attention = 2 * n_heads * head_dim * (context_length + 1) if causal else 4 * n_heads * head_dim * context_length
    with_unembedding = (last == n_layers - 1) if unembedding is None else unembedding
    return ForwardFlops(projections=float(layers * projections), mlp=float(layers * mlp),
                        attention=float(layers * attention),
                        unembedding=float(2 * d * vocab) if with_unembedding else 0.0, layers=layers)
