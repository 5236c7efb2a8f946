"""Activation-site names: ``blocks.{layer}.{kind}``, parsed and validated against a model."""

from __future__ import annotations

import re
from dataclasses import dataclass

from saekit.errors import SaekitError
from saekit.site_kinds import SITE_KINDS

SITE_DESCRIPTIONS = {
    "resid_pre": "residual stream entering the block",
    "attn_out": "attention output (its update to the residual stream)",
    "mlp_in": "MLP input, after the pre-MLP norm",
    "mlp_act": "MLP hidden activations (input of the down projection)",
    "mlp_out": "MLP output (its update to the residual stream)",
    "resid_post": "residual stream leaving the block",
}
_SITE_PATTERN = re.compile(r"^blocks\.(\d+)\.([a-z_]+)$")


@dataclass(frozen=True, order=True)
class Site:
    layer: int
    kind: str

    @property
    def name(self) -> str:
        return f"blocks.{self.layer}.{self.kind}"

    def __str__(self) -> str:
        return self.name


def parse_site(name: str, n_layers: int | None = None) -> Site:
    """Parse ``blocks.{i}.{kind}``; with ``n_layers``, also check the layer exists."""
    match = _SITE_PATTERN.match(name.strip())
    if not match or match.group(2) not in SITE_KINDS:
        raise SaekitError(
            f"unknown site {name!r}; use blocks.<layer>.<kind> with kind one of {', '.join(SITE_KINDS)}"
        )
    site = Site(int(match.group(1)), match.group(2))
    if n_layers is not None and not 0 <= site.layer < n_layers:
        raise SaekitError(
            f"layer {site.layer} in site {name!r} is out of range: the model has layers 0..{n_layers - 1}"
        )
    return site
