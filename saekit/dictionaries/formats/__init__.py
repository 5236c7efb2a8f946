"""Reading and writing dictionaries in other toolkits' on-disk formats (safetensors + JSON only).

- :mod:`.saelens`: a directory with ``cfg.json`` + ``sae_weights.safetensors``.
- :mod:`.sparsify`: one folder per hookpoint with ``cfg.json`` + ``sae.safetensors``.

Each reader returns a saekit :class:`~saekit.dictionaries.base.Dictionary` (built through the
registry) and a ``source`` dict (model, saekit site, target site, notes on conventions).
"""

from saekit.dictionaries.formats.saelens import read_saelens, write_saelens
from saekit.dictionaries.formats.sparsify import read_sparsify, write_sparsify

__all__ = ["read_saelens", "read_sparsify", "write_saelens", "write_sparsify"]
