"""Run in a venv with eai-sparsify: build small random sparse coders with sparsify's own classes, save
them with save_to_disk, and store fixed inputs with sparsify's own latents and reconstructions.

    python sparsify_worker.py OUT_DIR
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from sparsify import SparseCoder, SparseCoderConfig

D_IN, WIDTH, K = 32, 128, 16


def main(out: Path) -> None:
    cases = {"topk_sae": ("layers.14", {}), "skip_transcoder": ("layers.14.mlp",
                                                              {"transcode": True, "skip_connection": True})}
    inputs = torch.randn(32, D_IN, generator=torch.Generator().manual_seed(1234))
    for seed, (name, (hookpoint, options)) in enumerate(cases.items()):
        g = torch.Generator().manual_seed(seed)
        coder = SparseCoder(D_IN, SparseCoderConfig(num_latents=WIDTH, k=K, **options))
        with torch.no_grad():
            for parameter in coder.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=g) / 8)
            coder.W_dec.mul_(0.5 + torch.rand(WIDTH, 1, generator=g))  # non-unit decoder norms
            top_acts, top_indices, _ = coder.encode(inputs)
            latents = torch.zeros(inputs.shape[0], WIDTH).scatter(-1, top_indices, top_acts)
            reconstruction = coder(inputs).sae_out
        coder.save_to_disk(out / name / hookpoint)
        save_file({"inputs": inputs, "latents": latents, "reconstruction": reconstruction.contiguous()},
                  str(out / name / "expected.safetensors"))
        print(name, "ok")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
