"""Matryoshka BatchTopK dictionary (Bussmann et al., ICML 2025): nested prefixes that each reconstruct.

The latents are split into consecutive groups of sizes ``extra["group_sizes"]`` (summing to the
width); prefix j is the latents [0, m_j), m_j the sum of the first j + 1 group sizes, so the last
prefix is the whole dictionary. Every prefix reconstructs the target on its own,

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
numbers are refused when the config is checked, sizes that do not sum to the width when the
dictionary is built (the width is known only then).

Everything else is :class:`~saekit.dictionaries.batchtopk.BatchTopKDictionary`'s: the batch-level
top-k selection over all latents (not per group), the inference threshold and its EMA, the sparse
training forward and the dense threshold path. The prefix errors are computed from whichever form
the forward produced: from the sparse entries (decoding those below m_j, never building dense
latents) or from the dense latents.
"""

from __future__ import annotations

from dataclasses import replace
from itertools import accumulate
from typing import Any, ClassVar

from torch import Tensor

from saekit.dictionaries.base import DictionaryConfig, DictionaryOutput
from saekit.dictionaries.batchtopk import BatchTopKDictionary
from saekit.dictionaries.losses import squared_error
from saekit.dictionaries.sparse import SparseLatents
from saekit.errors import SaekitError

GROUP_SIZES = "group_sizes"
DEFAULT_PREFIXES = 5  # prefixes width/16 ... width when group_sizes is not given
PREFIX_LOSS = "reconstruction_prefix_{}"


def default_group_sizes(width: int, prefixes: int = DEFAULT_PREFIXES) -> list[int]:
    """Group sizes whose prefixes double up to ``width``: ends width >> (prefixes - 1), ..., width >> 1, width."""
    ends = sorted({width >> shift for shift in range(prefixes) if width >> shift >= 1})
    return [end - start for start, end in zip([0, *ends[:-1]], ends)]


def parse_group_sizes(value: Any, architecture: str = "matryoshka_batchtopk") -> list[int] | None:
    """``extra["group_sizes"]`` as a list of positive whole numbers (None: the default); else one-line error.

    Accepts a list or tuple of whole numbers (256.0 is 256, as sweep grids write numbers), a single
    whole number (one group: plain BatchTopK) and the command line's comma-separated text ("64,64,128").
    """
    if value is None:
        return None
    items = value
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",")]
        try:
            items = [float(part) for part in items]
        except ValueError:
            items = None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        items = [value]
    elif not isinstance(value, (list, tuple)):
        items = None
    whole = items is not None and len(items) > 0 and all(
        not isinstance(item, bool) and isinstance(item, (int, float)) and float(item).is_integer() and item > 0
        for item in items)
    if not whole:
        raise SaekitError(
            f"architecture {architecture!r}: extra setting {GROUP_SIZES!r} must be a list of positive whole "
            f"numbers summing to the width (e.g. [64, 64, 128, 256] for width 512, or 64,64,128,256 on the "
            f"command line), or left out for prefixes doubling up to the width; got {value!r}")
    return [int(item) for item in items]


def check_group_sizes(sizes: list[int], width: int, architecture: str = "matryoshka_batchtopk") -> list[int]:
    """``sizes`` if they sum to ``width``, else a one-line error saying how to fix them."""
    if sum(sizes) != width:
        raise SaekitError(
            f"architecture {architecture!r}: extra setting {GROUP_SIZES!r} {sizes} sums to {sum(sizes)}, not "
            f"the width {width}; give group sizes that add up to the width, or leave {GROUP_SIZES!r} out for "
            f"prefixes doubling up to the width ({default_group_sizes(width)})")
    return sizes


class MatryoshkaBatchTopKDictionary(BatchTopKDictionary):
    """BatchTopK whose nested latent prefixes each reconstruct the target; the loss sums their errors."""

    EXTRA_DEFAULTS: ClassVar[dict[str, Any]] = {
        **BatchTopKDictionary.EXTRA_DEFAULTS,
        GROUP_SIZES: None,  # None: five prefixes doubling up to the width (see the module docstring)
    }

    def __init__(self, config: DictionaryConfig) -> None:
        super().__init__(config)
        sizes = self.options[GROUP_SIZES]
        self.group_sizes = check_group_sizes(sizes, config.width, config.architecture) if sizes is not None \
            else default_group_sizes(config.width)
        self.prefix_ends: list[int] = list(accumulate(self.group_sizes))  # m_0 < m_1 < ... < m_{n-1} = width

    @classmethod
    def resolve_options(cls, architecture: str, extra: dict[str, Any]) -> dict[str, Any]:
        options = super().resolve_options(architecture, extra)
        options[GROUP_SIZES] = parse_group_sizes(options[GROUP_SIZES], architecture)
        return options

    @classmethod
    def check_width(cls, options: dict[str, Any], width: int) -> None:
        if options[GROUP_SIZES] is not None:
            check_group_sizes(options[GROUP_SIZES], width)

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
