"""Run in a venv with sae-lens: build small random SAEs with SAELens's own classes, save them with
SAELens's save_model, and store fixed inputs with SAELens's own latents and reconstructions.

    python saelens_worker.py OUT_DIR
"""

import sys
from pathlib import Path

import torch
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
from sae_lens.saes.sae import SAEMetadata
from safetensors.torch import save_file

D_IN, WIDTH = 32, 128


def _randomize(sae, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(sae.W_enc.shape, generator=g) / 8)
        sae.b_enc.copy_(torch.randn(sae.b_enc.shape, generator=g) / 10)
        scale = 0.5 + torch.rand(WIDTH, 1, generator=g)  # non-unit decoder norms
        sae.W_dec.copy_(torch.randn(sae.W_dec.shape, generator=g) / 8 * scale)
        sae.b_dec.copy_(torch.randn(sae.b_dec.shape, generator=g) / 10)
        if hasattr(sae, "threshold"):
            sae.threshold.copy_(0.05 + torch.rand(WIDTH, generator=g) / 5)


def main(out: Path) -> None:
    meta = {"hook_name": "blocks.14.hook_resid_post", "model_name": "toy-model"}
    md = lambda **kw: SAEMetadata(**{**meta, **kw})  # noqa: E731
    cases = {
        "standard": StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=WIDTH, metadata=md())),
        "standard_no_bdec_in": StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=WIDTH, apply_b_dec_to_input=False,
                                                             metadata=md())),
        "topk": TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=WIDTH, k=16, metadata=md())),
        "topk_rescaled": TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=WIDTH, k=16, rescale_acts_by_decoder_norm=True,
                                               metadata=md(hook_name="blocks.14.hook_mlp_out"))),
        "jumprelu": JumpReLUSAE(JumpReLUSAEConfig(d_in=D_IN, d_sae=WIDTH, metadata=md())),
    }
    inputs = torch.randn(32, D_IN, generator=torch.Generator().manual_seed(1234))
    for seed, (name, sae) in enumerate(cases.items()):
        _randomize(sae, seed)
        sae.eval()
        with torch.no_grad():
            latents = sae.encode(inputs)
            reconstruction = sae.decode(latents)
        folder = out / name
        sae.save_model(folder / "sae")
        save_file({"inputs": inputs, "latents": latents.contiguous(), "reconstruction": reconstruction.contiguous()},
                  str(folder / "expected.safetensors"))
        print(name, "ok")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
