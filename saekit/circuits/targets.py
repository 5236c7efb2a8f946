"""What an attribution graph explains: its target nodes, each one quantity of the replacement model.

- :class:`LogitTarget`: a token's logit at the last position minus the mean logit there (circuit-tracer's
  logit node; the top logits by default, or any token chosen with ``--target-token``);
- :class:`LogitDifference`: one token's logit minus another's at the last position (``--target-diff``,
  e.g. " Paris" minus " London"; the mean logit cancels);
- :class:`LatentTarget`: a latent's pre-activation at a position (``--target-latent LAYER:LATENT@POS``;
  what a latent node's incoming edges explain).

Every target is measured in the same unit in the replacement model (attribution), in the real model
(the ablation checks) and by ``saekit steer``: a logit minus the mean logit, a difference of logits, or a
pre-activation. Parsing checks the user's targets against the tokenizer and the transcoders (one line
each) before the clean run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from saekit.circuits.transcoders import TranscoderSet
from saekit.errors import SaekitError

_LATENT = re.compile(r"^(\d+):(\d+)@(\d+)$")


@dataclass(frozen=True)
class LogitTarget:
    """A token's logit at the last position, minus the mean logit there (circuit-tracer's logit node)."""

    token: int

    def value(self, output: Any, copy: int, last: int) -> Tensor:
        row = output.logits[copy, last]
        return row[self.token] - row.mean()

    def measured(self, logits: Tensor, pre_activations: dict[int, Tensor]) -> float:
        """The same quantity from the real model's last-position logits [V]."""
        return float(logits[self.token] - logits.mean())

    def record(self) -> dict[str, Any]:
        return {"kind": "token", "token": self.token}


@dataclass(frozen=True)
class LogitDifference:
    """One token's logit minus another's at the last position."""

    positive: int
    negative: int

    def value(self, output: Any, copy: int, last: int) -> Tensor:
        row = output.logits[copy, last]
        return row[self.positive] - row[self.negative]

    def measured(self, logits: Tensor, pre_activations: dict[int, Tensor]) -> float:
        return float(logits[self.positive] - logits[self.negative])

    def record(self) -> dict[str, Any]:
        return {"kind": "difference", "token": self.positive, "negative": self.negative}


@dataclass(frozen=True)
class LatentTarget:
    """A latent's pre-activation at a position: what a feature node's incoming edges explain."""

    layer: int
    position: int
    latent: int

    def value(self, output: Any, copy: int, last: int) -> Tensor:
        return output.pre_activations[self.layer][copy, self.position, self.latent]

    def measured(self, logits: Tensor, pre_activations: dict[int, Tensor]) -> float:
        return float(pre_activations[self.layer][self.position, self.latent])

    def record(self) -> dict[str, Any]:
        return {"kind": "latent", "token": -1, "layer": self.layer, "position": self.position, "latent": self.latent}


Target = LogitTarget | LogitDifference | LatentTarget

UNITS = {"token": "logit minus the mean logit at the last position",
         "difference": "logit minus logit at the last position",
         "latent": "the latent's pre-activation"}


def from_record(record: dict[str, Any]) -> Target:
    """The target a graph file's ``settings['targets']`` entry describes."""
    if record["kind"] == "token":
        return LogitTarget(int(record["token"]))
    if record["kind"] == "difference":
        return LogitDifference(int(record["token"]), int(record["negative"]))
    return LatentTarget(int(record["layer"]), int(record["position"]), int(record["latent"]))


def label(target: Target, tokenizer: Any) -> str:
    """How the report and the page name a target: 'Paris', 'Paris' - 'London', L3#17@5."""
    def text(token: int) -> str:
        return repr(tokenizer.decode([token]))
    if isinstance(target, LogitTarget):
        return text(target.token)
    if isinstance(target, LogitDifference):
        return f"{text(target.positive)} - {text(target.negative)}"
    return f"L{target.layer}#{target.latent}@{target.position}"


def single_token(tokenizer: Any, text: str, flag: str) -> int:
    """The one vocabulary id of ``text``; one line if the tokenizer makes it several pieces or none."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = ", ".join(repr(tokenizer.decode([i])) for i in ids) or "nothing"
        raise SaekitError(f"{flag} {text!r} is {len(ids)} tokens ({pieces}); a target must be one token, e.g. "
                          f"{tokenizer.decode(ids[:1])!r} (mind the leading space)")
    return int(ids[0])


def parse_latent(text: str, transcoders: TranscoderSet) -> LatentTarget:
    """``LAYER:LATENT@POSITION``, checked against the transcoders (position: :func:`check_positions`)."""
    match = _LATENT.match(text.strip())
    if match is None:
        raise SaekitError(f"cannot read --target-latent {text!r}; write LAYER:LATENT@POSITION, e.g. 3:17@5")
    layer, latent, position = map(int, match.groups())
    if layer not in transcoders.layers:
        raise SaekitError(f"--target-latent {text}: layer {layer} has no transcoder (they replace layers "
                          f"{transcoders.layers[0]}-{transcoders.layers[-1]})")
    if latent >= transcoders.width(layer):
        raise SaekitError(f"--target-latent {text}: layer {layer} has {transcoders.width(layer)} latents "
                          f"(0-{transcoders.width(layer) - 1})")
    return LatentTarget(layer, position, latent)


def parse_targets(tokens: tuple[str, ...], differences: tuple[str, ...], latents: tuple[LatentTarget, ...],
                  tokenizer: Any) -> list[Target]:
    """The explicit targets the flags name, in the order tokens, differences, latents (empty: the top logits).

    ``differences``: ``A|B`` for the logit of A minus that of B (split at the first ``|``)."""
    targets: list[Target] = [LogitTarget(single_token(tokenizer, text, "--target-token")) for text in tokens]
    for text in differences:
        if "|" not in text:
            raise SaekitError(f"cannot read --target-diff {text!r}; write POSITIVE|NEGATIVE, e.g. ' Paris| London'")
        positive, negative = text.split("|", 1)
        targets.append(LogitDifference(single_token(tokenizer, positive, "--target-diff"),
                                       single_token(tokenizer, negative, "--target-diff")))
    return targets + list(latents)


def check_positions(targets: list[Target], n_positions: int) -> None:
    """One line for a latent target outside the prompt or at BOS (no latent nodes there)."""
    for target in targets:
        if isinstance(target, LatentTarget) and not 1 <= target.position < n_positions:
            raise SaekitError(f"--target-latent {target.layer}:{target.latent}@{target.position}: the position must "
                              f"be 1-{n_positions - 1} (the prompt has {n_positions} tokens with BOS; BOS has no "
                              "latents)")
