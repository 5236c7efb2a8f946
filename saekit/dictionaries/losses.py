"""Loss terms shared by several architectures: reconstruction error, weighted L1, decoder orthogonality.

All per-token terms use one reduction, sum over the feature dimension and mean over tokens, so that
with inputs scaled to unit mean squared norm (E||x||^2 = 1, as training runs do) the reconstruction
term is roughly the fraction of unexplained variance and coefficients transfer between models.
"""

from __future__ import annotations

from torch import Tensor


def squared_error(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean over tokens of the summed squared error."""
    return (prediction - target).pow(2).sum(-1).mean()


def weighted_l1(activations: Tensor, decoder_norms: Tensor) -> Tensor:
    """Mean over tokens of sum_i |a_i| * ||d_i||.

    Weighting by the decoder norm makes the penalty invariant to moving scale between a latent and
    its decoder row, so it cannot be dodged by shrinking latents and growing rows.
    """
    return (activations.abs() * decoder_norms).sum(-1).mean()


def orthogonality_penalty(decoder: Tensor) -> Tensor:
    """Mean squared cosine similarity over all ordered pairs of distinct decoder rows.

    With U the row-normalised decoder (n rows of dimension d), the sum of all squared cosines is
    ||U U^T||_F^2 = ||U^T U||_F^2, so it is computed from whichever Gram matrix is smaller:
    O(n d^2) for n > d (the usual case, 16k x 2k costs about as much as one batch of 2k tokens),
    never materialising the n x n matrix. The diagonal (1 per non-zero row) is subtracted.
    """
    n_rows, dim = decoder.shape
    if n_rows < 2:
        return decoder.new_zeros(())
    unit = decoder / decoder.norm(dim=1, keepdim=True).clamp_min(1e-8)
    gram = unit.T @ unit if n_rows > dim else unit @ unit.T
    diagonal = unit.pow(2).sum(1).pow(2).sum()
    return (gram.pow(2).sum() - diagonal) / (n_rows * (n_rows - 1))
