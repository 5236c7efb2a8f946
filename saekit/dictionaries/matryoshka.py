"""Matryoshka BatchTopK dictionary (Bussmann et al., ICML 2025): nested prefixes that each reconstruct.

The latents are split into consecutive groups of sizes ``group_sizes`` (an option of
:class:`MatryoshkaOptions`, summing to the width); prefix j is the latents [0, m_j), m_j the sum of
the first j + 1 group sizes, so the last prefix is the whole dictionary. Every prefix reconstructs
the target on its own,

    x_hat_j = z[:, :m_j] @ W_dec[:m_j] + b_dec [+ x @ W_skip]

and the loss is the **sum** over prefixes of their squared errors (plus BatchTopK's optional
auxiliary-K term and the shared decoder terms). The named terms are ``reconstruction_prefix_0`` ...
``reconstruction_prefix_{n-2}`` for the proper prefixes and ``reconstruction`` for the full one, each
the plain squared error (sum over features, mean over tokens), so ``reconstruction`` means what it
means for every other architecture. Why the sum and not the mean: it is the paper's objective; the
full reconstruction keeps weight 1 whatever the number of groups, so the auxiliary-K coefficient and
the trainer's logs mean the same as for BatchTopK; and Adam does not care about the overall scale.
The early latents get the gradient of every prefix that contains them, which is the point: they
must carry the broad, frequent directions (parents) that every later prefix builds on, rather than
letting a specific latent absorb them.

Default groups (``group_sizes`` unset): five prefixes whose sizes double up to the width, m =
width/16, width/8, width/4, width/2, width (integer division; empty or repeated prefixes of a tiny
width dropped), i.e. groups [w/16, w/16, w/8, w/4, w/2]. A list of whole numbers (or, from the
command line, ``--extra=group_sizes=64,64,128,256``) sets them; sizes that are not positive whole
numbers are refused when the options are read, sizes that do not sum to the width as soon as the
width is known (a run config's, or the one its model gives, before any model loads).

Everything else is :class:`~saekit.dictionaries.batchtopk.BatchTopKDictionary`'s: the batch-level
top-k selection over all latents (not per group), the inference threshold and its EMA, the sparse
training forward and the dense threshold path. The prefix errors are computed from whichever form
the forward produced: from the sparse entries (decoding those below m_j, never building dense
latents) or from the dense latents.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import accumulate

from torch import Tensor

from saekit.dictionaries.base import DictionaryConfig, DictionaryOutput
from saekit.dictionaries.batchtopk import BatchTopKDictionary, BatchTopKOptions
from saekit.dictionaries.losses import squared_error
from saekit.dictionaries.sparse import SparseLatents
from saekit.errors import SaekitError
from saekit.settings import setting

DEFAULT_PREFIXES = 5  # prefixes width/16 ... width when group_sizes is not given
PREFIX_LOSS = "reconstruction_prefix_{}"


def default_group_sizes(width: int, prefixes: int = DEFAULT_PREFIXES) -> list[int]:
    """Group sizes whose prefixes double up to ``width``: ends width >> (prefixes - 1), ..., width >> 1, width."""
    ends = sorted({width >> shift for shift in range(prefixes) if width >> shift >= 1})
    return [end - start for start, end in zip([0, *ends[:-1]], ends)]


def check_group_sizes(sizes: tuple[int, ...], width: int | None, architecture: str = "matryoshka_batchtopk") -> None:
    """Refuse no sizes, or sizes that do not sum to ``width`` (once known), in one line saying how to fix them."""
    if sizes and (width is None or sum(sizes) == width):
        return
    problem = "is empty" if not sizes else f"{list(sizes)} sums to {sum(sizes)}, not the width {width}"
    default = "" if width is None else f" ({default_group_sizes(width)})"
    raise SaekitError(f"architecture {architecture!r}: extra setting 'group_sizes' {problem}; give group sizes that "
                      f"add up to the width, or leave 'group_sizes' out for prefixes doubling up to the width{default}")


@dataclass(frozen=True)
class MatryoshkaOptions(BatchTopKOptions):
    """BatchTopK's options and the nested groups."""

    group_sizes: tuple[int, ...] | None = setting(
        None, "sizes of the nested latent groups, in order, summing to the width, such as 64,64,128,256 (none: five "
        "prefixes doubling up to the width)", minimum=1)


class MatryoshkaBatchTopKDictionary(BatchTopKDictionary):
    """BatchTopK whose nested latent prefixes each reconstruct the target; the loss sums their errors."""

    OPTIONS = MatryoshkaOptions
    options: MatryoshkaOptions

    def __init__(self, config: DictionaryConfig) -> None:
        super().__init__(config)
        sizes = self.options.group_sizes  # already checked against the width (check_shape)
        self.group_sizes = list(sizes) if sizes is not None else default_group_sizes(config.width)
        self.prefix_ends: list[int] = list(accumulate(self.group_sizes))  # m_0 < m_1 < ... < m_{n-1} = width

    @classmethod
    def check_shape(cls, architecture: str, options: MatryoshkaOptions, layers: int, width: int | None) -> None:
        super().check_shape(architecture, options, layers, width)
        if options.group_sizes is not None:
            check_group_sizes(options.group_sizes, width, architecture)

    def prefix_reconstructions(self, x: Tensor, latents: Tensor | SparseLatents) -> list[Tensor]:
        """The reconstructions from the proper prefixes [0, m_j), j < n - 1 (each with b_dec and the skip path)."""
        skipped = self.skip(x)
        offset = self.b_dec if skipped is None else self.b_dec + skipped
        if isinstance(latents, SparseLatents):
            columns = latents.columns
            return [replace(latents, values=latents.values * (columns < end).to(latents.values.dtype))
                    .decode(self.W_dec) + offset for end in self.prefix_ends[:-1]]
        return [latents[..., :end] @ self.W_dec[:end] + offset for end in self.prefix_ends[:-1]]

    def assemble_output(
        self, x: Tensor, target: Tensor | None, pre: Tensor, latents: Tensor | SparseLatents,
        reconstruction: Tensor, *, sparsity_scale: float, dead_mask: Tensor | None,
    ) -> DictionaryOutput:
        """BatchTopK's output with the proper prefixes' squared errors added as terms (and to ``loss``)."""
        output = super().assemble_output(x, target, pre, latents, reconstruction, sparsity_scale=sparsity_scale,
                                         dead_mask=dead_mask)
        if "reconstruction" not in output.losses:  # a transcoder spliced in without its target
            return output
        target = x if target is None else target
        total = output.losses.pop("loss")
        for index, prefix in enumerate(self.prefix_reconstructions(x, latents)):
            if prefix.dtype != x.dtype and x.is_floating_point():  # as the full reconstruction, under autocast
                prefix = prefix.to(x.dtype)
            error = squared_error(prefix, target)
            output.losses[PREFIX_LOSS.format(index)] = error
            total = total + error
        output.losses["loss"] = total
        return output
