"""Express a spliced-in dictionary's loss as the training compute a compute-optimal model needs to reach it.

Splicing a sparse autoencoder into a language model raises next-token cross-entropy from ``L_clean`` to
``L_spliced``. With a Chinchilla-style scaling law ``L(N, D) = E + A / N**alpha + B / D**beta`` (``N``
parameters, ``D`` training tokens), the loss along the compute-optimal frontier (``C = 6 N D``) obeys
``L - E  proportional to  C**(-gamma)`` with ``gamma = alpha * beta / (alpha + beta)``, so the spliced model
performs like one trained with

    fraction = ((L_spliced - E) / (L_clean - E)) ** (-1 / gamma)

of the compute that reaches ``L_clean``. The answer depends strongly on the irreducible loss ``E``, so this
module also reports how the fraction moves when ``E`` does and a parameter-equivalent at the original model's
token count. To use a law fitted to one's own model family, see :mod:`saekit.evaluation.scaling_fit`.
"""

from __future__ import annotations

import argparse
import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from saekit.errors import SaekitError
from saekit.render import markdown_code, markdown_inline, markdown_table

__all__ = [
    "PRESETS",
    "ComputeNotReported",
    "EffectiveCompute",
    "LawLike",
    "ParameterEquivalent",
    "ScalingLaw",
    "SensitivityRow",
    "compute_fraction",
    "effective_compute_report",
    "format_report_markdown",
    "get_law",
    "law_name",
    "parameter_equivalent",
    "sensitivity_to_E",
]

_CONSTANT_NAMES = ("E", "A", "B", "alpha", "beta")
_DEFAULT_E_SCALES = (0.8, 0.9, 1.0, 1.1, 1.2)
_HUBER_DELTA = 1e-3
_MIN_FIT_ROWS = 5


@dataclass(frozen=True)
class ScalingLaw:
    """A parametric loss law ``L(N, D) = E + A / N**alpha + B / D**beta``.

    ``N`` is the number of parameters (counted as in the source fit) and ``D`` the number of
    training tokens. ``source`` cites where the constants come from.
    """

    name: str
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    source: str = ""

    def __post_init__(self) -> None:
        for key in _CONSTANT_NAMES:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise SaekitError(
                    f"scaling law {self.name!r}: constant {key}={value!r} is not a finite number; "
                    "give E, A, B, alpha, beta as numbers"
                )
        if self.E < 0:
            raise SaekitError(
                f"scaling law {self.name!r}: E={self.E} is negative; E is a loss floor, use E >= 0"
            )
        for key in ("A", "B", "alpha", "beta"):
            if getattr(self, key) <= 0:
                raise SaekitError(
                    f"scaling law {self.name!r}: {key}={getattr(self, key)} must be > 0 "
                    "(the law needs loss to fall with parameters and tokens)"
                )

    def loss(self, params: float, tokens: float) -> float:
        """Predicted loss of a model with ``params`` parameters trained on ``tokens`` tokens."""
        params = _positive(params, "params")
        tokens = _positive(tokens, "tokens")
        return self.E + self.A / params**self.alpha + self.B / tokens**self.beta

    @property
    def gamma(self) -> float:
        """Exponent of the compute-optimal frontier: ``L - E`` scales as ``C**(-gamma)``."""
        return self.alpha * self.beta / (self.alpha + self.beta)

    def constants(self) -> dict[str, float]:
        """The five constants as a plain dict (the shape :func:`get_law` accepts)."""
        return {key: float(getattr(self, key)) for key in _CONSTANT_NAMES}


@dataclass(frozen=True)
class SensitivityRow:
    """The compute fraction with the law's floor set to ``E`` (:func:`sensitivity_to_E`)."""

    E: float
    compute_fraction: float


@dataclass(frozen=True)
class ParameterEquivalent:
    """What :func:`parameter_equivalent` finds; ``params_equivalent`` and ``params_ratio`` are None with a
    ``reason`` where no parameter count reaches the shifted loss."""

    params: float
    tokens: float
    degradation: float
    law_loss: float
    target_loss: float
    loss_floor_at_tokens: float
    params_equivalent: float | None = None
    params_ratio: float | None = None
    reason: str | None = None


@dataclass(frozen=True)
class EffectiveCompute:
    """Everything about one (clean, spliced) loss pair (:func:`effective_compute_report`); its fields, in
    order, are the keys of ``effective_compute`` in ``metrics.json``."""

    law: ScalingLaw  # name, the five constants (as floats) and source
    gamma: float
    loss_clean: float
    loss_spliced: float
    degradation: float
    compute_fraction: float
    sensitivity: tuple[SensitivityRow, ...]
    parameter_equivalent: ParameterEquivalent | None
    statement: str


@dataclass(frozen=True)
class ComputeNotReported:
    """Why an evaluation reports no effective compute (e.g. the clean loss is below the law's floor ``E``):
    ``{"error": why}`` in ``metrics.json``."""

    error: str


PRESETS: dict[str, ScalingLaw] = {
    "chinchilla": ScalingLaw(
        name="chinchilla",
        E=1.69,
        A=406.4,
        B=410.7,
        alpha=0.34,
        beta=0.28,
        source=(
            "Hoffmann et al. 2022, 'Training Compute-Optimal Large Language Models' (arXiv:2203.15556), "
            "Approach 3 parametric fit (MassiveText, SentencePiece tokenizer)"
        ),
    ),
    "besiroglu": ScalingLaw(
        name="besiroglu",
        E=1.8172,
        A=482.01,
        B=2085.43,
        alpha=0.3478,
        beta=0.3658,
        source=(
            "Besiroglu et al. 2024, 'Chinchilla Scaling: A replication attempt' (arXiv:2404.10102), "
            "refit of Hoffmann et al.'s Approach 3 on data reconstructed from their figure"
        ),
    ),
}

LawLike = ScalingLaw | str | Mapping[str, Any]


def get_law(name_or_constants: LawLike) -> ScalingLaw:
    """Return a preset law by name, or build one from a dict of ``E, A, B, alpha, beta``.

    A dict may also carry ``name`` and ``source``; any other key is rejected so typos (``Alpha``) are
    not silently ignored. A :class:`ScalingLaw` is returned unchanged.
    """
    if isinstance(name_or_constants, ScalingLaw):
        return name_or_constants
    if isinstance(name_or_constants, str):
        key = _preset_key(name_or_constants)
        if key is None:
            raise SaekitError(f"{_unknown_law(name_or_constants)} or give a dict of E, A, B, alpha, beta")
        return PRESETS[key]
    if isinstance(name_or_constants, Mapping):
        given = dict(name_or_constants)
        unknown = sorted(set(given) - set(_CONSTANT_NAMES) - {"name", "source"})
        if unknown:
            raise SaekitError(
                f"scaling-law constants have unknown keys {unknown}; use exactly E, A, B, alpha, beta "
                "(plus optional name, source)"
            )
        missing = [key for key in _CONSTANT_NAMES if key not in given]
        if missing:
            raise SaekitError(
                f"scaling-law constants are missing {missing}; give all of E, A, B, alpha, beta"
            )
        values: dict[str, float] = {}
        for key in _CONSTANT_NAMES:
            value = given[key]
            if isinstance(value, bool):
                value = None
            try:
                values[key] = float(value)
            except (TypeError, ValueError):
                raise SaekitError(
                    f"scaling-law constant {key}={given[key]!r} is not a number; give E, A, B, alpha, beta "
                    "as numbers"
                ) from None
        return ScalingLaw(
            name=str(given.get("name", "custom")),
            source=str(given.get("source", "user-supplied constants")),
            **values,
        )
    raise SaekitError(
        f"cannot make a scaling law from {type(name_or_constants).__name__}; "
        f"pass a preset name ({', '.join(sorted(PRESETS))}) or a dict of E, A, B, alpha, beta"
    )


def law_name(text: str) -> str:
    """Argparse ``type=`` for ``--law``: the canonical preset name, or an error listing the valid ones.

    Accepts exactly what :func:`get_law` accepts as a name, so a typo fails while parsing arguments,
    before any model is loaded or evaluated.
    """
    key = _preset_key(text)
    if key is None:
        raise argparse.ArgumentTypeError(f"{_unknown_law(text)}, or fit your own with --law-table")
    return key


def _preset_key(text: str) -> str | None:
    """The :data:`PRESETS` key that ``text`` names (case and surrounding spaces ignored), else ``None``."""
    key = text.strip().lower()
    return key if key in PRESETS else None


def _unknown_law(text: str) -> str:
    """One line saying ``text`` is no preset, with a close match if there is one, then the valid names."""
    close = difflib.get_close_matches(text.strip().lower(), list(PRESETS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown scaling law {text!r}{hint}; use one of {', '.join(sorted(PRESETS))}"


def compute_fraction(law: LawLike, loss_clean: float, loss_spliced: float) -> float:
    """Compute that reaches ``loss_spliced`` compute-optimally, as a fraction of that reaching ``loss_clean``.

    ``fraction = ((loss_spliced - E) / (loss_clean - E)) ** (-1 / gamma)``. A spliced loss at or below the
    clean loss gives a fraction >= 1. Both losses must lie above the law's floor ``E``.
    """
    law = get_law(law)
    loss_clean = _finite(loss_clean, "loss_clean")
    loss_spliced = _finite(loss_spliced, "loss_spliced")
    return _fraction(law.E, law.gamma, loss_clean, loss_spliced, law.name)


def parameter_equivalent(
    law: LawLike, loss_clean: float, loss_spliced: float, params: float, tokens: float
) -> ParameterEquivalent:
    """Parameter count that, at the original token count, loses as much as the spliced model.

    A law's absolute loss rarely matches a particular model (different tokenizer and data), so the
    measured degradation ``loss_spliced - loss_clean`` is added to the law's own loss at ``(params,
    tokens)`` and the law is inverted at ``tokens`` for that shifted loss. If the shifted loss is at or
    below the law's floor at ``tokens`` (``E + B / tokens**beta``), no parameter count reaches it and
    ``params_equivalent`` / ``params_ratio`` are ``None`` with a ``reason``.
    """
    law = get_law(law)
    loss_clean = _finite(loss_clean, "loss_clean")
    loss_spliced = _finite(loss_spliced, "loss_spliced")
    params = _positive(params, "params")
    tokens = _positive(tokens, "tokens")
    degradation = loss_spliced - loss_clean
    law_loss = law.loss(params, tokens)
    target = law_loss + degradation
    floor = law.E + law.B / tokens**law.beta
    result = ParameterEquivalent(params=params, tokens=tokens, degradation=degradation, law_loss=law_loss,
                                 target_loss=target, loss_floor_at_tokens=floor)
    excess = target - floor
    if excess <= 0:
        return replace(result, reason=(
            f"shifted loss {target:.4f} is at or below the law's floor {floor:.4f} at {tokens:.3g} tokens, "
            "so no parameter count reaches it"
        ))
    try:
        equivalent = (law.A / excess) ** (1.0 / law.alpha)
    except OverflowError:
        equivalent = math.inf
    if not math.isfinite(equivalent):
        return replace(result, reason=(
            f"shifted loss {target:.4f} is so close to the law's floor {floor:.4f} that the parameter count "
            "overflows"
        ))
    return replace(result, params_equivalent=equivalent, params_ratio=equivalent / params)


def sensitivity_to_E(
    law: LawLike, loss_clean: float, loss_spliced: float, E_values: Sequence[float] | None = None
) -> list[SensitivityRow]:
    """Compute fraction for several values of the floor ``E``, other constants fixed.

    The default grid is ``law.E * [0.8, 0.9, 1.0, 1.1, 1.2]``, dropping values not below both losses (the
    formula needs ``E < loss``). Explicit ``E_values`` must all be valid. Rows are in grid order.
    """
    law = get_law(law)
    loss_clean = _finite(loss_clean, "loss_clean")
    loss_spliced = _finite(loss_spliced, "loss_spliced")
    if E_values is None:
        ceiling = min(loss_clean, loss_spliced)
        grid = [law.E * scale for scale in _DEFAULT_E_SCALES]
        grid = [value for value in grid if value < ceiling]
        if not grid:
            _fraction(law.E, law.gamma, loss_clean, loss_spliced, law.name)  # raises with the reason
    else:
        grid = []
        for value in E_values:
            value = _finite(value, "E value")
            if value < 0:
                raise SaekitError(f"E value {value} is negative; E is a loss floor, use values >= 0")
            grid.append(value)
        if not grid:
            raise SaekitError("E_values is empty; pass at least one E or None for the default grid")
    return [SensitivityRow(value, _fraction(value, law.gamma, loss_clean, loss_spliced, law.name)) for value in grid]


def effective_compute_report(
    law: LawLike,
    loss_clean: float,
    loss_spliced: float,
    params: float | None = None,
    tokens: float | None = None,
) -> EffectiveCompute:
    """Everything about one (clean, spliced) loss pair (its JSON form: ``saekit.settings.to_dict``).

    ``law`` is anything :func:`get_law` takes: a preset name, a dict of constants, or a :class:`ScalingLaw`
    such as :func:`saekit.evaluation.scaling_fit.law_from_table` returns. Losses at or below its floor ``E``
    raise :class:`SaekitError` (a property of the data, so callers may report it instead of a number).
    Fields: ``law`` (name, constants, source), ``gamma``, ``loss_clean``, ``loss_spliced``, ``degradation``,
    ``compute_fraction``, ``sensitivity`` (see :func:`sensitivity_to_E`), ``parameter_equivalent`` (only
    when both ``params`` and ``tokens`` are given, else ``None``) and a one-line ``statement``.
    """
    law = get_law(law)
    if (params is None) != (tokens is None):
        raise SaekitError(
            "give both params and tokens (the original model's size and training tokens) or neither"
        )
    fraction = compute_fraction(law, loss_clean, loss_spliced)
    sensitivity = sensitivity_to_E(law, loss_clean, loss_spliced)
    equivalent = (
        parameter_equivalent(law, loss_clean, loss_spliced, params, tokens)
        if params is not None and tokens is not None
        else None
    )
    fractions = [row.compute_fraction for row in sensitivity]
    spread = ""
    if len(sensitivity) > 1:
        spread = (
            f"; E in [{sensitivity[0].E:.3g}, {sensitivity[-1].E:.3g}] gives "
            f"{_fmt_fraction(min(fractions))}x-{_fmt_fraction(max(fractions))}x"
        )
    statement = (
        f"Spliced loss {float(loss_spliced):.3f} equals a compute-optimal model trained with "
        f"{_fmt_fraction(fraction)}x the compute of one reaching {float(loss_clean):.3f} "
        f"(law: {law.name}, E={law.E:.4g}, gamma={law.gamma:.4g}{spread})."
    )
    return EffectiveCompute(
        law=replace(law, **law.constants()),  # the constants as floats, as the JSON has always held them
        gamma=law.gamma,
        loss_clean=float(loss_clean),
        loss_spliced=float(loss_spliced),
        degradation=float(loss_spliced) - float(loss_clean),
        compute_fraction=fraction,
        sensitivity=tuple(sensitivity),
        parameter_equivalent=equivalent,
        statement=statement,
    )


def format_report_markdown(report: EffectiveCompute) -> str:
    """A short markdown section for a report from :func:`effective_compute_report`."""
    if not isinstance(report, EffectiveCompute):
        raise SaekitError(f"cannot format {type(report).__name__}; pass what effective_compute_report returns")
    law = report.law
    lines = [
        "### Effective compute",
        "",
        markdown_inline(report.statement),
        "",
        f"- Compute fraction: **{_fmt_fraction(report.compute_fraction)}x**",
        (
            f"- Law {markdown_code(law.name)}: L(N, D) = {law.E:.4g} + {law.A:.4g}/N^{law.alpha:.4g} "
            f"+ {law.B:.4g}/D^{law.beta:.4g} (gamma = {report.gamma:.4g})"
        ),
    ]
    if law.source:
        lines.append(f"- Source: {markdown_inline(law.source)}")
    equivalent = report.parameter_equivalent
    if equivalent is not None:
        if equivalent.params_equivalent is None or equivalent.params_ratio is None:
            lines.append(f"- Parameter equivalent: none ({markdown_inline(equivalent.reason or '')})")
        else:
            lines.append(
                f"- Parameter equivalent at {equivalent.tokens:.3g} tokens: "
                f"{equivalent.params_equivalent:.3g} params "
                f"({equivalent.params_ratio:.3g}x the original {equivalent.params:.3g})"
            )
    rows = [(f"{row.E:.4g}", _fmt_fraction(row.compute_fraction)) for row in report.sensitivity]
    lines += ["", markdown_table(("E", "compute fraction"), rows, align=("right", "right"))]
    return "\n".join(lines) + "\n"


def _fraction(E: float, gamma: float, loss_clean: float, loss_spliced: float, law_name: str) -> float:
    if loss_clean <= E:
        raise SaekitError(
            f"the law's floor E={E:.4g} ({law_name}) is at or above the clean loss {loss_clean:.4g}; "
            "pick another law or fit one to your model family"
        )
    if loss_spliced <= E:
        raise SaekitError(
            f"the law's floor E={E:.4g} ({law_name}) is at or above the spliced loss {loss_spliced:.4g}; "
            "pick another law or fit one to your model family"
        )
    log_fraction = -math.log((loss_spliced - E) / (loss_clean - E)) / gamma
    if log_fraction > 700:
        raise SaekitError(
            f"compute fraction overflows (log fraction {log_fraction:.1f}); the losses sit too close to the "
            f"floor E={E:.4g}, pick another law or fit one"
        )
    return math.exp(log_fraction)


def _finite(value: Any, label: str) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise SaekitError(f"{label}={value!r} is not a finite number; pass a number")
    return number


def _positive(value: Any, label: str) -> float:
    number = _finite(value, label)
    if number <= 0:
        raise SaekitError(f"{label}={value!r} must be > 0; pass a positive count")
    return number


def _fmt_fraction(value: float) -> str:
    return f"{value:.2f}" if value >= 0.1 else f"{value:.2g}"
