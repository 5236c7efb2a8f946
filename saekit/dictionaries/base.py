"""The dictionary interface every architecture implements: encode, decode, forward with loss terms.

A dictionary maps an input activation x (d_in) to sparse latents z (width) and reconstructs a target
(d_out; the input itself for an SAE, another site for a transcoder):

    pre   = (x - b_pre) @ W_enc + b_enc       b_pre = b_dec for an SAE (tied), 0 for a transcoder
    z     = activation(pre)                   architecture-specific (TopK, ReLU, JumpReLU, ...)
    x_hat = z @ W_dec + b_dec [+ x @ W_skip]  rows of W_dec are unit-norm feature directions;
                                              the linear skip is optional (transcoders)

Architectures subclass :class:`Dictionary` and override ``activation`` and ``sparsity_losses`` (and
``auxiliary_losses`` / ``fold_thresholds`` when they need them); everything else (initialisation,
decoder-norm constraint, the optional skip connection and decoder orthogonality penalty, folding the
input scaling into the weights, loss assembly) is shared here.

Each architecture names the one sparsity setting it reads (``SPARSITY_SETTING``: ``k``,
``l1_coefficient`` or ``l0_coefficient``, all typed fields of :class:`DictionaryConfig`). Its other
settings are its *options*: a frozen dataclass (``Dictionary.OPTIONS``, a subclass of
:class:`DictionaryOptions`, which holds those every architecture takes) whose fields are declared with
:func:`saekit.settings.setting` (type, default, allowed range, help). A config states only the options
the user set, as the ``extra`` object (``--extra KEY=VALUE``, sweep grids, ``dictionary.extra`` in a config
file: old files stay valid); :func:`resolve_options` is the one place that turns it into the typed
options, refusing an unknown key, a value of another type or one out of range in one line naming the
key, so a typo cannot silently train with the default. ``DictionaryConfig.options`` and
``DictionarySettings.options_for`` call it; a built dictionary keeps the result as ``self.options``.
``saekit train --help`` lists every architecture's options from the same fields.

What a dictionary reads and writes is its :class:`Span` (``Dictionary.SPAN``): one site, a causal range
of layers (a cross-layer transcoder: layer i's latents read site i and write sites i..L-1) or an acausal
one (a crosscoder: every latent reads and writes every site). The rest of saekit asks the class (its
``SPAN``, ``layers``, ``latents_per_layer``, ``writers``, ``encode_layer``, ``decode_layer``,
``decoder_into``, ``training_metrics``) and never tests an architecture's name or class, so a new
multi-site dictionary touches its own module and the registry only (``tests/test_stages.py`` keeps it so).

State updates inside ``forward`` (BatchTopK's inference threshold, JumpReLU's threshold calibration)
happen only when the module is in training mode *and* autograd is on (:attr:`Dictionary.learning`),
so evaluating under ``torch.no_grad()`` never moves them. Call ``.eval()`` for inference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from saekit.dictionaries.losses import orthogonality_penalty, squared_error
from saekit.dictionaries.sparse import SparseLatents
from saekit.errors import SaekitError
from saekit.settings import checked_value, copy_setting, flat_index, from_dict, loose_value, setting, to_dict


def known_architecture(name: str) -> str | None:
    """A :class:`~saekit.settings.Rule` check: a registered architecture name."""
    from saekit.dictionaries.registry import ARCHITECTURES  # the registry imports this module

    return None if name in ARCHITECTURES else f"one of {', '.join(sorted(ARCHITECTURES))}"


def architecture_class(name: str) -> type[Dictionary]:
    """The class registered as ``name``; an unknown name is a one-line error listing the known ones."""
    from saekit.dictionaries.registry import ARCHITECTURES  # the registry imports this module

    if name not in ARCHITECTURES:
        raise SaekitError(f"unknown architecture {name!r}; choose one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name]


@dataclass(frozen=True)
class DictionaryOptions:
    """The options every architecture takes; an architecture with options of its own subclasses this."""

    orthogonality_coefficient: float = setting(
        0.0, "weight of the decoder orthogonality penalty, the mean squared cosine between different decoder rows "
        "(0 = off)", minimum=0)
    skip_connection: bool = setting(False, "add a linear skip path x @ W_skip, initialised to zero, to the "
                                    "reconstruction (a skip transcoder)")


def resolve_options(architecture: str, extra: Mapping[str, Any], layers: int = 1,
                    width: int | None = None) -> DictionaryOptions:
    """``architecture``'s typed options from the ``extra`` a config states: the one place they are built.

    Each value is read as :func:`saekit.settings.loose_value` reads it (text as a flag's, 0/1 for a bool,
    256.0 for 256: what ``--extra`` and sweep grids write, and old config files hold), then checked against
    its field's type and rule; the architecture then checks the options against the layer count and, once
    known, the width (``Dictionary.check_shape``). Every refusal is one line naming the key as given.
    """
    cls = architecture_class(architecture)
    specs = flat_index(cls.OPTIONS)
    unknown = sorted(set(extra) - set(specs))
    if unknown:
        raise SaekitError(f"architecture {architecture!r} does not understand extra settings {unknown}; it accepts "
                          f"{sorted(specs)} (saekit train --help describes them)")
    values = {key: checked_value(specs[key], loose_value(given, specs[key].annotation),
                                 f"architecture {architecture!r}: extra setting {key!r}", shown=given)
              for key, given in extra.items()}
    options = cls.OPTIONS(**values)
    cls.check_shape(architecture, options, layers, width)
    return options


@dataclass
class DictionaryConfig:
    """Shape and sparsity settings of one built dictionary (what ``dictionary/config.json`` holds).

    Each architecture reads one sparsity setting, named by its ``SPARSITY_SETTING``; the others are
    carried but unused.
    """

    architecture: str = setting(help="the architecture's registered name", check=known_architecture,
                                invalid=("banana",))
    d_in: int = setting(help="input width", minimum=1)
    width: int = setting(help="number of latents", minimum=1)
    d_out: int | None = setting(None, "None: an SAE reconstructing its own input; set (even = d_in): a transcoder",
                                minimum=1)
    k: int = setting(32, "TopK family: active latents per token", minimum=1)
    l1_coefficient: float = setting(
        0.1, "ReLU and gated family: weight of the decoder-norm-weighted L1, in units of inputs scaled to "
        "E||x||^2 = 1 (Anthropic's lambda / sqrt(d)); on the default model 0.1 gives L0 ~ 140, 5 collapsed to 0.6",
        minimum=0)
    l0_coefficient: float = setting(1e-3, "JumpReLU: weight of the mean L0 (reconstruction is ~ FVU at this scale)",
                                    minimum=0)
    extra: dict[str, Any] = setting(help="the architecture options that were set, by name (the rest keep their "
                                    "defaults); typed by the architecture's options dataclass (``options``)",
                                    factory=dict)
    layers: int = setting(1, "the layers a cross-layer dictionary spans (d_in, d_out and width count all of them); "
                          "1 for one site", minimum=1)

    def __post_init__(self) -> None:
        # Dictionaries saved before the layer count was a field state it as extra["layers"], and so do callers
        # not yet moved to ``layers=``; the count divides sizes everywhere, so a bad one is refused here.
        extra = dict(self.extra)
        stated = extra.pop("layers", self.layers)
        spec = flat_index(DictionaryConfig)["layers"]
        stated = checked_value(spec, loose_value(stated, int), "dictionary config: layers", shown=stated)
        if self.layers not in (1, stated):
            raise SaekitError(f"dictionary config: layers={self.layers} but extra layers={stated}; state it once")
        self.layers, self.extra = stated, extra

    @property
    def options(self) -> DictionaryOptions:
        """The architecture's typed options, checked against this dictionary's layer count and width."""
        return resolve_options(self.architecture, self.extra, self.layers, self.width)

    @property
    def is_transcoder(self) -> bool:
        # An explicit d_out marks a transcoder even at equal width (MLP in -> MLP out): its input and
        # target are different sites, so the decoder bias must not be subtracted from the input.
        return self.d_out is not None

    @property
    def output_dim(self) -> int:
        return self.d_out if self.d_out is not None else self.d_in

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DictionaryConfig:
        return from_dict(cls, upgrade_sparsity(data), "dictionary config")


@dataclass
class DictionarySettings:
    """The ``dictionary`` section of a run config: what to build once the activation widths are known."""

    architecture: str = copy_setting(DictionaryConfig, "architecture", default="topk",
                                     help="relu, gated, gated_rescale, topk, batchtopk, jumprelu, "
                                     "matryoshka_batchtopk, or over a layer range clt_topk, clt_jumprelu, crosscoder "
                                     "(each one's options are listed below)")
    expansion_factor: int = setting(8, "width = this x the input width, unless width is set", minimum=1)
    width: int | None = copy_setting(DictionaryConfig, "width", default=None,
                                     help="number of latents (overrides expansion_factor)")
    k: int = copy_setting(DictionaryConfig, "k")
    l1_coefficient: float = copy_setting(DictionaryConfig, "l1_coefficient")
    l0_coefficient: float = copy_setting(DictionaryConfig, "l0_coefficient")
    extra: dict[str, Any] = copy_setting(DictionaryConfig, "extra", help="an architecture option as KEY=VALUE (repeat "
                                         "the flag); each architecture's options are listed below")

    def options_for(self, layers: int = 1) -> DictionaryOptions:
        """The architecture's typed options for a run over ``layers`` layers (checked against the width if set)."""
        return resolve_options(self.architecture, self.extra, layers, self.width)

    def build_config(self, d_in: int, d_out: int | None, layers: int = 1) -> DictionaryConfig:
        """The built dictionary's config; ``d_out`` set (even to d_in) makes a transcoder; ``layers`` > 1 a
        cross-layer one (d_in and d_out then count every layer)."""
        return DictionaryConfig(architecture=self.architecture, d_in=d_in,
                                width=self.width or self.expansion_factor * d_in, d_out=d_out, k=self.k,
                                l1_coefficient=self.l1_coefficient, l0_coefficient=self.l0_coefficient,
                                extra=dict(self.extra), layers=layers)


def upgrade_sparsity(data: dict[str, Any]) -> dict[str, Any]:
    """Older files kept JumpReLU's ``l0_coefficient`` in ``extra``; it is a typed field now.

    Anything but a JSON object is returned as it is, for the settings loader to refuse in one line."""
    if not isinstance(data, dict):
        return data
    extra = data.get("extra")
    if not isinstance(extra, dict) or "l0_coefficient" not in extra:
        return dict(data)
    extra = dict(extra)
    return {**data, "l0_coefficient": extra.pop("l0_coefficient"), "extra": extra}


class DictionaryOutput:
    """What a forward pass returns: latents, reconstruction, and named loss terms (``loss`` is the total).

    The TopK family's forward keeps only the active latents (``sparse``); ``latents``, the dense
    [..., width] tensor, is then built on first access (and kept), so callers that need it still get
    it while a training step, which reads only ``firing()`` and ``mean_l0()``, never builds it.
    """

    __slots__ = ("_latents", "reconstruction", "losses", "sparse")

    def __init__(self, latents: Tensor | None, reconstruction: Tensor, losses: dict[str, Tensor],
                 sparse: SparseLatents | None = None) -> None:
        if latents is None and sparse is None:
            raise ValueError("a DictionaryOutput needs dense or sparse latents")
        self._latents = latents
        self.reconstruction = reconstruction
        self.losses = losses
        self.sparse = sparse

    @property
    def latents(self) -> Tensor:
        if self._latents is None:
            self._latents = self.sparse.dense()
        return self._latents

    @property
    def active_values(self) -> Tensor | None:
        """The active latents' values, flat (``sparse.rows`` / ``active_indices`` say where); None if dense."""
        return None if self.sparse is None else self.sparse.values

    @property
    def active_indices(self) -> Tensor | None:
        """The latent index of each active value; None when the forward was dense."""
        return None if self.sparse is None else self.sparse.columns

    def firing(self) -> Tensor:
        """Per latent, the number of tokens on which it is positive (long, [width], on the latents' device)."""
        if self.sparse is not None:
            return self.sparse.firing()
        latents = self._latents.detach()
        return (latents.reshape(-1, latents.shape[-1]) > 0).sum(0)

    def mean_l0(self) -> Tensor:
        """Mean over tokens of the number of positive latents (a float32 scalar tensor)."""
        if self.sparse is not None:
            return self.sparse.mean_l0()
        return (self._latents.detach() > 0).sum(-1).float().mean()


class Span(str, Enum):
    """What a dictionary reads and writes: how its latents connect the L sites of its range."""

    SINGLE = "single"  # one site in, one site out: an SAE, or a transcoder of one layer
    CAUSAL = "causal"  # layer i's latents read site i and write sites i..L-1: a cross-layer transcoder
    ACAUSAL = "acausal"  # every latent reads all L sites and writes all L: a crosscoder

    @property
    def over_layers(self) -> bool:
        """Whether the dictionary reads a range of layers (a run names it as ``layers=FIRST-LAST``)."""
        return self is not Span.SINGLE

    @property
    def needs_target(self) -> bool | None:
        """Whether a run must name a target site (True), must not (False), or may (None: an SAE or a transcoder)."""
        return {Span.SINGLE: None, Span.CAUSAL: True, Span.ACAUSAL: False}[self]


class Dictionary(nn.Module):
    """Base class: shared parameters, encoding/decoding and loss assembly."""

    SPAN: ClassVar[Span] = Span.SINGLE  # what it reads and writes (module docstring)
    RESAMPLES: ClassVar[bool] = True  # whether the trainer may resample its dead latents
    LOGIT_DIRECTION_NOTE: ClassVar[str] = "a latent's decoder row"  # what logit_directions gives, for reports
    OPTIONS: ClassVar[type[DictionaryOptions]] = DictionaryOptions  # the options this architecture takes
    SPARSITY_SETTING: ClassVar[str] = "l1_coefficient"  # the DictionaryConfig field that sets the sparsity
    options: DictionaryOptions

    @classmethod
    def fixed_l0(cls) -> bool:
        """Whether the sparsity setting is the L0 itself (the TopK family: ``k``)."""
        return cls.SPARSITY_SETTING == "k"

    W_skip: nn.Parameter | None

    def __init__(self, config: DictionaryConfig) -> None:
        super().__init__()
        if config.width < 1 or config.d_in < 1 or config.output_dim < 1:
            raise SaekitError(f"dictionary sizes must be positive, got d_in={config.d_in} width={config.width}")
        self.config = config
        self.options = config.options
        direction = torch.randn(config.width, config.output_dim)
        direction = direction / direction.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(direction)
        # Tied initialisation (encoder = decoder transpose) when shapes allow: it starts every latent
        # alive and pointed somewhere sensible; a transcoder gets a scaled random encoder instead.
        if config.is_transcoder:
            encoder = torch.randn(config.d_in, config.width) / config.d_in**0.5
        else:
            encoder = direction.T.clone()
        self.W_enc = nn.Parameter(encoder * self.encoder_init_scale())
        self.b_enc = nn.Parameter(torch.zeros(config.width))
        self.b_dec = nn.Parameter(torch.zeros(config.output_dim))
        # Zero start: the skip transcoder begins as a plain transcoder and learns the linear part.
        skip = torch.zeros(config.d_in, config.output_dim) if self.options.skip_connection else None
        self.register_parameter("W_skip", nn.Parameter(skip) if skip is not None else None)

    def encoder_init_scale(self) -> float:
        """Factor on the initial encoder: min(1, 2 d_in / width) (its square root for a transcoder).

        With about half of all latents active (ReLU, gates, a small JumpReLU threshold), a tied
        dictionary reconstructs about (width / 2) / d copies of x, since projections onto many random
        unit rows add up coherently: 4x for an 8x-wide SAE. The first gradients then only shrink
        everything, pushing encoder biases down and killing latents before they learn anything; the
        factor removes that overshoot. TopK-style activations gain too, so every architecture shares
        it: in the planted-feature toy of ``tests/dictionaries/test_dict_recovery.py`` (width 8 d,
        twice the number of true features) the mean max cosine to the true features after 400
        steps was, with and without the factor, ReLU 0.98 / 0.41, TopK 0.98 / 0.86, BatchTopK
        0.86 / 0.62. A transcoder's random encoder sums incoherently, hence the square root. Never
        scales up.
        """
        ratio = 2 * self.config.d_in / self.config.width
        return min(1.0, ratio**0.5 if self.config.is_transcoder else ratio)

    @classmethod
    def check_shape(cls, architecture: str, options: DictionaryOptions, layers: int, width: int | None) -> None:
        """Refuse options that cannot hold over ``layers`` layers at ``width`` latents (None: not known yet; a run
        config checks again once it is, before any model loads). One site unless the architecture is cross-layer."""
        if layers != 1:
            raise SaekitError(f"architecture {architecture!r} reads one site; it cannot span {layers} layers")

    # ---- the architecture-specific part -------------------------------------------------------
    def activation(self, pre: Tensor) -> Tensor:
        """Pre-activations -> latents. Overridden by every architecture."""
        raise NotImplementedError

    def sparsity_losses(self, pre: Tensor, latents: Tensor, sparsity_scale: float) -> dict[str, Tensor]:
        """Extra loss terms (L1, step penalties...). ``sparsity_scale`` ramps from 0 to 1 during warmup."""
        return {}

    def auxiliary_losses(
        self, x: Tensor, target: Tensor, pre: Tensor, latents: Tensor, reconstruction: Tensor,
        dead_mask: Tensor | None,
    ) -> dict[str, Tensor]:
        """Terms that need the whole forward (dead-latent revival, gate training...). None by default."""
        return {}

    def fold_thresholds(self, output_scale: float) -> None:
        """Rescale any learned thresholds/biases in latent units when folding the input scaling."""

    def reset_latent_parameters(self, chosen: Tensor) -> list[tuple[nn.Parameter, tuple[Any, ...]]]:
        """Give resampled latents fresh architecture-specific parameters (gate scales, thresholds...).

        The caller re-initialises the shared W_enc/W_dec/b_enc itself; this resets the rest for the
        latents in the boolean mask ``chosen`` and returns (parameter, index) pairs whose optimizer
        moments the caller should zero at ``index``. Nothing to do for ReLU and TopK.
        """
        return []

    # ---- shared machinery ----------------------------------------------------------------------
    @property
    def learning(self) -> bool:
        """True in a training forward (train mode, autograd on): the only time buffers may change."""
        return self.training and torch.is_grad_enabled()

    @property
    def b_pre(self) -> Tensor:
        """What is subtracted from the input: the decoder bias for an SAE, zero (in d_in) for a transcoder."""
        return self.b_dec.new_zeros(self.config.d_in) if self.config.is_transcoder else self.b_dec

    def pre_activations(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.config.d_in:
            raise SaekitError(
                f"activation width {x.shape[-1]} does not match the dictionary's d_in={self.config.d_in}; "
                "was it trained on another model or site?"
            )
        return (x - self.b_pre) @ self.W_enc + self.b_enc

    def encode(self, x: Tensor) -> Tensor:
        return self.activation(self.pre_activations(x))

    def decode(self, latents: Tensor | SparseLatents) -> Tensor:
        """Latents (dense, or the TopK family's sparse form) -> output space (without the skip connection,
        which needs the input)."""
        if isinstance(latents, SparseLatents):
            return latents.decode(self.W_dec) + self.b_dec
        return latents @ self.W_dec + self.b_dec

    def skip(self, x: Tensor) -> Tensor | None:
        """The linear skip path's contribution to the reconstruction (None when there is none)."""
        return None if self.W_skip is None else x @ self.W_skip

    def reconstruct(self, x: Tensor, latents: Tensor | SparseLatents) -> Tensor:
        decoded = self.decode(latents)
        skipped = self.skip(x)
        return decoded if skipped is None else decoded + skipped

    def forward(
        self, x: Tensor, target: Tensor | None = None, *, sparsity_scale: float = 1.0,
        dead_mask: Tensor | None = None,
    ) -> DictionaryOutput:
        """Latents, reconstruction and loss terms for a batch (any leading dims).

        ``target`` defaults to x for an SAE; ``dead_mask`` (width,) marks latents the trainer considers
        dead, for architectures with a dead-latent loss; ``sparsity_scale`` is the warmup multiplier.
        """
        pre = self.pre_activations(x)
        latents = self.activation(pre)
        return self.assemble_output(x, target, pre, latents, self.reconstruct(x, latents),
                                    sparsity_scale=sparsity_scale, dead_mask=dead_mask)

    def assemble_output(
        self, x: Tensor, target: Tensor | None, pre: Tensor, latents: Tensor | SparseLatents,
        reconstruction: Tensor, *, sparsity_scale: float, dead_mask: Tensor | None,
    ) -> DictionaryOutput:
        """The loss terms and the output of a forward whose latents and reconstruction are computed.

        With sparse latents (the TopK family) the loss hooks get ``latents=None`` and a ``pre`` without
        gradient: the TopK family's hooks read neither, and building the dense latents here would undo
        the point of the sparse forward.
        """
        sparse = latents if isinstance(latents, SparseLatents) else None
        dense = None if sparse is not None else latents
        # Under autocast a low-precision reconstruction would make the losses low precision too.
        if reconstruction.dtype != x.dtype and x.is_floating_point():
            reconstruction = reconstruction.to(x.dtype)
        losses: dict[str, Tensor] = {}
        # A transcoder called without its target (splicing it into a model) has nothing to compare with.
        if target is not None or not self.config.is_transcoder:
            target = x if target is None else target
            losses["reconstruction"] = squared_error(reconstruction, target)
            losses.update(self.auxiliary_losses(x, target, pre, dense, reconstruction, dead_mask))
        losses.update(self.sparsity_losses(pre, dense, sparsity_scale))
        losses.update(self.decoder_losses())
        losses["loss"] = sum(losses.values(), torch.zeros((), device=x.device, dtype=reconstruction.dtype))
        return DictionaryOutput(dense, reconstruction, losses, sparse=sparse)

    def decoder_losses(self) -> dict[str, Tensor]:
        """Penalties on the decoder alone (currently the optional orthogonality term)."""
        coefficient = self.options.orthogonality_coefficient
        if coefficient <= 0:
            return {}
        return {"orthogonality": coefficient * orthogonality_penalty(self.W_dec)}

    def decoder_norms(self) -> Tensor:
        return self.W_dec.norm(dim=1)

    # ---- one layer of its range at a time: what splicing into a model and the circuits read ------------
    # Layers are positions in the dictionary's range (0 for a single-site dictionary). A cross-layer
    # transcoder overrides these; an acausal one has no per-layer encoder and refuses them.
    @property
    def layers(self) -> int:
        """The number of layers (sites) it reads."""
        return self.config.layers

    @property
    def latents_per_layer(self) -> int:
        """The latents each layer's encoder produces (every latent for one site or a shared latent space)."""
        return self.config.width

    def writers(self, layer: int) -> list[int]:
        """The layers whose latents write to ``layer``'s output, in order."""
        self._check_layer(layer)
        return [layer]

    def layer_pre_activations(self, layer: int, x: Tensor) -> Tensor:
        """Layer ``layer``'s latents [..., latents_per_layer] before their activation, from its input alone."""
        self._check_layer(layer)
        return self.pre_activations(x)

    def encode_layer(self, layer: int, x: Tensor) -> Tensor:
        """Layer ``layer``'s latents from its input [..., d_in per layer] alone."""
        self._check_layer(layer)
        return self.encode(x)

    def decoder_into(self, source: int, layer: int) -> Tensor:
        """[latents_per_layer, d_out per layer]: what each latent of layer ``source`` writes to layer ``layer``."""
        self._check_layer(layer)
        self._check_layer(source)
        return self.W_dec

    def decode_layer(self, layer: int, latents: Sequence[Tensor], x: Tensor) -> Tensor:
        """Layer ``layer``'s output from the latents of its :meth:`writers` (in that order) and its input ``x``."""
        self._check_layer(layer)
        return self.reconstruct(x, latents[0])

    def _check_layer(self, layer: int) -> None:
        if layer != 0:
            raise SaekitError(f"a single-site {self.config.architecture} has no layer {layer}")

    def training_metrics(self, latents: Tensor | SparseLatents, reconstruction: Tensor,
                         target: Tensor) -> dict[str, Tensor]:
        """Scalars this dictionary adds to the training log beside loss, fvu and l0 (none for one site)."""
        return {}

    # ---- what each latent writes: read by the analysis (one output layer unless cross-layer) ----
    def output_decoders(self, latent_ids: Tensor) -> Tensor:
        """[n, output layers, d_out per layer]: each latent's decoder into each layer it writes (zero where none)."""
        return self.W_dec[latent_ids][:, None, :]

    def decoder_directions(self) -> Tensor:
        """[width, D]: one direction per latent for decoder geometry (here the decoder rows)."""
        return self.W_dec

    def logit_directions(self, latent_ids: Tensor) -> Tensor:
        """[n, d_out per layer]: the direction whose direct effect on the logits is each latent's logit weight."""
        return self.W_dec[latent_ids]

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Project decoder rows back to unit norm (after an optimizer step)."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def remove_parallel_decoder_gradient(self) -> None:
        """Drop the gradient component along each decoder row, so a step mostly rotates it."""
        if self.W_dec.grad is None:
            return
        parallel = (self.W_dec.grad * self.W_dec).sum(dim=1, keepdim=True)
        self.W_dec.grad.sub_(parallel * self.W_dec)

    @torch.no_grad()
    def fold_input_scale(self, input_scale: float, output_scale: float | None = None) -> None:
        """Fold a training-time scaling (x_train = c_in * x, target_train = c_out * target) into the weights.

        Afterwards the dictionary takes raw activations and returns raw reconstructions, latents are
        divided by c_out and decoder rows stay unit-norm: every pre-activation is divided by c_out,
        so any activation that is positively homogeneous once its thresholds/biases in latent units
        are divided by c_out (``fold_thresholds``) gives latents / c_out. The skip path maps
        c_in * x to c_out * target, so it is multiplied by c_in / c_out.
        """
        c_in = float(input_scale)
        c_out = float(output_scale if output_scale is not None else input_scale)
        if c_in <= 0 or c_out <= 0:
            raise SaekitError(f"input scales must be positive, got c_in={c_in} c_out={c_out}")
        self.W_enc.mul_(c_in / c_out)
        self.b_enc.div_(c_out)
        self.b_dec.div_(c_out)
        if self.W_skip is not None:
            self.W_skip.mul_(c_in / c_out)
        self.fold_thresholds(c_out)
