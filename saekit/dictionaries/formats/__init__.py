"""Reading and writing dictionaries in other toolkits' on-disk formats (safetensors + JSON only).

- :mod:`.saelens`: a directory with ``cfg.json`` + ``sae_weights.safetensors``.
- :mod:`.sparsify`: one folder per hookpoint with ``cfg.json`` + ``sae.safetensors``.
- :mod:`.circuit_tracer`: a transcoder set (``config.yaml`` + ``layer_{i}.safetensors``) or a
  cross-layer transcoder (``W_enc_{i}.safetensors`` / ``W_dec_{i}.safetensors``).
- :mod:`.gemma_scope`: Gemma Scope's ``params.npz`` and Gemma Scope 2's ``params.safetensors`` + ``config.json``
  (read only, never unpickled).
- :mod:`.dictionary_learning`: a dictionary_learning trainer folder, ``config.json`` + ``ae.pt`` (read
  only; the state dict through ``torch.load(weights_only=True)``, never a full unpickle).

:mod:`.table` holds the one table of them (how each is detected, read and written); :mod:`.detect` names a
path's format from it and reads any.

Each reader returns a saekit :class:`~saekit.dictionaries.base.Dictionary` (built through the
registry) and a ``source`` dict (model, saekit site, target site, notes on conventions).
"""

from saekit.dictionaries.formats.circuit_tracer import (
    read_circuit_tracer,
    read_circuit_tracer_clt,
    read_circuit_tracer_transcoders,
    write_circuit_tracer,
    write_circuit_tracer_clt,
    write_circuit_tracer_transcoders,
)
from saekit.dictionaries.formats.dictionary_learning import read_dictionary_learning
from saekit.dictionaries.formats.gemma_scope import read_gemma_scope
from saekit.dictionaries.formats.saelens import read_saelens, write_saelens
from saekit.dictionaries.formats.sparsify import read_sparsify, write_sparsify

__all__ = ["read_circuit_tracer", "read_circuit_tracer_clt", "read_circuit_tracer_transcoders",
           "read_dictionary_learning", "read_gemma_scope", "read_saelens",
           "read_sparsify", "write_circuit_tracer", "write_circuit_tracer_clt", "write_circuit_tracer_transcoders",
           "write_saelens", "write_sparsify"]
