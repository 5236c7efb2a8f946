"""saekit: sparse dictionary learning on language-model activations.

The subpackages are the pipeline's stages, in order: ``data`` (text -> token contexts), ``models``
(load a causal LM, name and hook its activation sites), ``activations`` (stream and cache activations),
``dictionaries`` (SAE and transcoder architectures), ``training``, ``evaluation``, ``toy`` (synthetic
ground truth). See ARCHITECTURE.md.
"""

__version__ = "0.1.0"
