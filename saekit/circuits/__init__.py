"""Circuits: transcoders in place of every MLP on one prompt, attribution graphs, and interventions.

- :mod:`.transcoders`: the per-layer transcoders (or one CLT) that replace the MLPs, loaded from runs.
- :mod:`.replacement`: the local replacement model of a prompt (frozen attention patterns and norm
  scales, error terms), linear in its nodes.
- :mod:`.attribution`: the attribution graph (direct effects between nodes) and its pruning.
- :mod:`.interventions`: clamping, scaling and ablating latents in the real model with the
  transcoders spliced in.
"""
