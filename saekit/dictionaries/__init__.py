"""Sparse dictionaries (SAEs and transcoders) behind one interface; see ``base`` for the shared maths.

Architectures by registry name: ``relu`` (ReLU + L1), ``gated`` (Gated SAE), ``gated_rescale`` (the
gated ablation: ReLU with a learned per-latent rescaling), ``topk`` (optionally with the auxiliary-K
loss), ``batchtopk``, ``jumprelu`` and ``matryoshka_batchtopk`` (BatchTopK whose nested latent prefixes each
reconstruct the input); over a range of layers (``crosslayer``): ``clt_topk`` and ``clt_jumprelu``
(cross-layer transcoders) and ``crosscoder`` (one latent space over several layers).
"""

from saekit.dictionaries.base import Dictionary, DictionaryConfig, DictionaryOutput
from saekit.dictionaries.matryoshka import MatryoshkaBatchTopKDictionary
from saekit.dictionaries.registry import ARCHITECTURES, build_dictionary, load_dictionary, save_dictionary

__all__ = [
    "ARCHITECTURES",
    "Dictionary",
    "DictionaryConfig",
    "DictionaryOutput",
    "MatryoshkaBatchTopKDictionary",
    "build_dictionary",
    "load_dictionary",
    "save_dictionary",
]
