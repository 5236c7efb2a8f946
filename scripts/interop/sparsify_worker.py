"""sparsify interop both ways: fixtures written by sparsify for saekit's reader, and folders written by
saekit checked with sparsify's own loader.

    scripts/interop/.anchors-venv/bin/python scripts/interop/sparsify_worker.py OUT_DIR      # fixtures
    .venv/bin/python scripts/interop/sparsify_worker.py make OUT                             # saekit's venv
    scripts/interop/.anchors-venv/bin/python scripts/interop/sparsify_worker.py check OUT    # sparsify's venv

``OUT_DIR`` alone (in a venv with eai-sparsify): build small random sparse coders with sparsify's own
classes, save them with save_to_disk, and store fixed inputs with sparsify's own latents and
reconstructions (what tests/dictionaries/test_formats_sparsify.py reads).

``make``: build small random saekit TopK dictionaries (an SAE on ``blocks.14.resid_post``, a
transcoder and a skip transcoder ``blocks.14.mlp_in`` -> ``blocks.14.mlp_out``; non-unit decoders,
random biases), write each with saekit's ``write_sparsify`` to ``OUT/<case>/<hookpoint>`` and save fixed
inputs with saekit's latents and reconstructions to ``OUT/<case>/saekit.safetensors``.

``check``: load every case with sparsify's ``SparseCoder.load_from_disk`` (and the whole of ``OUT/<case>``
with ``SparseCoder.load_many(local=True)``), compare its encode latents and forward output with saekit's,
and exit non-zero above 1e-5 or when the loaded coder is not the kind saekit wrote.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

D_IN, WIDTH, K = 32, 128, 16
TOKENS, TOL = 32, 1e-5



def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def fixtures(out: Path) -> None:
    from sparsify import SparseCoder, SparseCoderConfig

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


# case -> (hookpoint, transcoder, skip connection, saekit source)
SAEKIT_CASES = {
    "saekit_topk_sae": ("layers.14", False, False, {"site": "blocks.14.resid_post"}),
    "saekit_transcoder": ("layers.14.mlp", True, False,
                          {"site": "blocks.14.mlp_in", "target_site": "blocks.14.mlp_out"}),
    "saekit_skip_transcoder": ("layers.14.mlp", True, True,
                               {"site": "blocks.14.mlp_in", "target_site": "blocks.14.mlp_out"}),
}


def make(out: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from saekit.dictionaries.base import DictionaryConfig
    from saekit.dictionaries.formats import write_sparsify
    from saekit.dictionaries.registry import build_dictionary

    for seed, (case, (hookpoint, transcoder, skip, source)) in enumerate(SAEKIT_CASES.items()):
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(100 + seed)
        dictionary = build_dictionary(DictionaryConfig(architecture="topk", d_in=D_IN, width=WIDTH, k=K,
                                                       d_out=D_IN if transcoder else None,
                                                       extra={"skip_connection": skip})).eval()
        with torch.no_grad():
            dictionary.W_enc.copy_(torch.randn(D_IN, WIDTH, generator=g) / D_IN**0.5)
            dictionary.b_enc.copy_(torch.randn(WIDTH, generator=g) / 10)
            dictionary.W_dec.mul_(0.5 + torch.rand(WIDTH, 1, generator=g))  # non-unit decoder norms
            dictionary.b_dec.copy_(torch.randn(D_IN, generator=g) / 2)
            if skip:
                dictionary.W_skip.copy_(torch.randn(D_IN, D_IN, generator=g) / 8)
            x = torch.randn(TOKENS, D_IN, generator=g) + torch.randn(D_IN, generator=g)
            result = dictionary(x)
        write_sparsify(out / case / hookpoint, dictionary, source)
        save_file({"inputs": x, "latents": result.latents.contiguous(),
                   "reconstruction": result.reconstruction.contiguous()}, str(out / case / "saekit.safetensors"))
        print(case, hookpoint, "written")


def check(out: Path) -> None:
    from sparsify import SparseCoder

    problems: list[str] = []
    for case, (hookpoint, transcoder, skip, _) in SAEKIT_CASES.items():
        if not (out / case / "saekit.safetensors").is_file():
            problems.append(f"{case}: not written (run make first)")
            continue
        saekit = load_file(str(out / case / "saekit.safetensors"))
        x = saekit["inputs"]
        coders = {"load_from_disk": SparseCoder.load_from_disk(out / case / hookpoint)}
        coders["load_many"] = SparseCoder.load_many(str(out / case), local=True)[hookpoint]
        for loader, coder in coders.items():
            if (coder.cfg.transcode, coder.W_skip is not None, coder.cfg.k) != (transcoder, skip, K):
                problems.append(f"{case} via {loader}: loaded as transcode={coder.cfg.transcode}, "
                                f"skip={coder.W_skip is not None}, k={coder.cfg.k}")
            with torch.no_grad():
                top_acts, top_indices, _ = coder.encode(x)
                latents = torch.zeros(x.shape[0], coder.num_latents).scatter(-1, top_indices, top_acts)
                reconstruction = coder(x).sae_out
            for name, got in (("latents", latents), ("reconstruction", reconstruction)):
                error = _rel(got, saekit[name])
                print(f"{case} via {loader}: {name} rel. error {error:.2e}")
                if error > TOL:
                    problems.append(f"{case} via {loader}: {name} differs by {error:.2e}")
    print("\n".join(problems) if problems else "all sparsify checks passed")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in ("fixtures", "make", "check"):
        {"fixtures": fixtures, "make": make, "check": check}[sys.argv[1]](Path(sys.argv[2]))
    elif len(sys.argv) == 2:  # the original form: sparsify_worker.py OUT
        fixtures(Path(sys.argv[1]))
    else:
        sys.exit(__doc__)
