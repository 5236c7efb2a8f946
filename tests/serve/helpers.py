"""What the explorer's tests share besides fixtures: the offline encoder they compare the API with."""

from __future__ import annotations

import torch

from saekit.models.hooks import capture

EVIL = "<img src=x onerror=\"document.title='PWNED'\"><b>bold</b>"


def offline_latents(run, prompt: str) -> torch.Tensor:
    """[S, width]: the run's dictionary encoding the captured site activations of BOS + prompt."""
    ids = run.loaded.prompt_ids(prompt)
    site = run.read_sites[0]
    with torch.no_grad():
        x = capture(run.loaded.adapter, ids[None], [site])[site].float()
        return run.dictionary.encode(x)[0]
