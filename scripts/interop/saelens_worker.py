"""SAELens fixtures, both directions, made and checked with SAELens's own code.

    scripts/interop/.anchors-venv/bin/python scripts/interop/saelens_worker.py anchor OUT   # (or just: ... OUT)
    .venv/bin/python scripts/interop/saelens_worker.py make OUT                             # saekit's venv
    scripts/interop/.anchors-venv/bin/python scripts/interop/saelens_worker.py check OUT

``anchor`` builds small random SAEs with SAELens's own classes (standard, topk, jumprelu, gated, the four
transcoder kinds) and saves each with SAELens's ``save_model`` to ``OUT/<case>/sae``, with fixed inputs and
SAELens's latents and reconstructions in ``OUT/<case>/expected.safetensors``. Two cases are SAELens
training checkpoints whose inputs were normalised (``expected_average_only_in`` with its
``activation_scaler.json``; ``covariance_whitening`` with SAELens's own whitening estimate, saved by
``ActivationScaler.save``): their expected outputs are SAELens's training path, unscale(sae(scale(x))),
checked here against SAELens's own folds (``fold_activation_norm_scaling_factor`` / ``_whitening``).

``make`` builds small random saekit dictionaries of every SAELens-writable architecture (relu, topk,
jumprelu, batchtopk as jumprelu, gated, gated_rescale as standard, transcoder, skip transcoder, JumpReLU
skip transcoder), writes each with ``write_saelens`` to ``OUT/from_saekit/<case>/sae`` and saves fixed inputs
with saekit's latents and reconstructions to ``OUT/from_saekit/<case>/saekit.safetensors``.

``check`` loads each of those with SAELens's ``SAE.load_from_disk``, checks the class is the one the
architecture names and that SAELens's latents and reconstructions (``sae(x)``, skip path included) equal
saekit's (relative error <= 1e-5), and saves SAELens's outputs to ``expected.safetensors`` (what the saekit
tests read back). Exits non-zero on any mismatch.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

D_IN, WIDTH = 32, 128  # the first five cases (kept as they were first made)
D, M, D_OUT, TOKENS, TOL = 16, 32, 20, 16, 1e-5


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def _dense(t: torch.Tensor) -> torch.Tensor:
    return (t.to_dense() if t.is_sparse else t).contiguous()


# ---- anchor: SAELens saves, SAELens computes ------------------------------------------------------------
def _randomize(sae, seed: int, width: int = WIDTH) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(sae.W_enc.shape, generator=g) / 8)
        if getattr(sae, "b_enc", None) is not None:
            sae.b_enc.copy_(torch.randn(sae.b_enc.shape, generator=g) / 10)
        scale = 0.5 + torch.rand(width, 1, generator=g)  # non-unit decoder norms
        sae.W_dec.copy_(torch.randn(sae.W_dec.shape, generator=g) / 8 * scale)
        sae.b_dec.copy_(torch.randn(sae.b_dec.shape, generator=g) / 10)
        if hasattr(sae, "threshold"):
            sae.threshold.copy_(0.05 + torch.rand(width, generator=g) / 5)


def _randomize_more(sae, seed: int) -> None:
    """The parameters the first five cases lack: gated biases and scales, a skip path."""
    g = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        if hasattr(sae, "b_gate"):
            sae.b_gate.copy_(torch.randn(M, generator=g) / 10)
            sae.r_mag.copy_(torch.randn(M, generator=g) / 3)
            sae.b_mag.copy_(torch.randn(M, generator=g) / 10)
        if hasattr(sae, "W_skip"):
            sae.W_skip.copy_(torch.randn(sae.W_skip.shape, generator=g) / 4)


def _first_cases(md):
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

    return {
        "standard": StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=WIDTH, metadata=md())),
        "standard_no_bdec_in": StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=WIDTH, apply_b_dec_to_input=False,
                                                             metadata=md())),
        "topk": TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=WIDTH, k=16, metadata=md())),
        "topk_rescaled": TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=WIDTH, k=16, rescale_acts_by_decoder_norm=True,
                                               metadata=md(hook_name="blocks.14.hook_mlp_out"))),
        "jumprelu": JumpReLUSAE(JumpReLUSAEConfig(d_in=D_IN, d_sae=WIDTH, metadata=md())),
    }


def _new_cases(md):
    from sae_lens import (
        GatedSAE,
        GatedSAEConfig,
        JumpReLUSkipTranscoder,
        JumpReLUSkipTranscoderConfig,
        JumpReLUTranscoder,
        JumpReLUTranscoderConfig,
        SkipTranscoder,
        SkipTranscoderConfig,
        Transcoder,
        TranscoderConfig,
    )

    def tc(cls, in_hook, out_hook=None):
        meta = md(hook_name=in_hook, **({"hook_name_out": out_hook} if out_hook else {}))
        return cls(d_in=D, d_sae=M, d_out=D_OUT, apply_b_dec_to_input=False, metadata=meta)

    return {
        "gated": GatedSAE(GatedSAEConfig(d_in=D, d_sae=M, metadata=md(hook_name="blocks.2.hook_resid_pre"))),
        "gated_no_bdec_in": GatedSAE(GatedSAEConfig(d_in=D, d_sae=M, apply_b_dec_to_input=False, metadata=md())),
        "transcoder": Transcoder(tc(TranscoderConfig, "blocks.3.ln2.hook_normalized", "blocks.3.hook_mlp_out")),
        "skip_transcoder": SkipTranscoder(tc(SkipTranscoderConfig, "blocks.4.mlp.hook_in", "blocks.4.hook_mlp_out")),
        "jumprelu_transcoder": JumpReLUTranscoder(tc(JumpReLUTranscoderConfig, "blocks.5.hook_mlp_in",
                                                     "blocks.5.hook_mlp_out")),
        "jumprelu_skip_transcoder": JumpReLUSkipTranscoder(tc(JumpReLUSkipTranscoderConfig, "blocks.6.hook_mlp_in")),
    }


def _save(folder: Path, sae, inputs: torch.Tensor, latents: torch.Tensor, reconstruction: torch.Tensor) -> None:
    sae.save_model(folder / "sae")
    save_file({"inputs": inputs, "latents": _dense(latents), "reconstruction": _dense(reconstruction)},
              str(folder / "expected.safetensors"))


def _normalised_cases(out: Path, md) -> None:
    """SAELens training checkpoints with normalised inputs: weights unfolded, the statistics beside them."""
    from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.activation_scaler import ActivationScaler

    g = torch.Generator().manual_seed(77)
    mixing = torch.randn(D, D, generator=g) * (0.2 + 3 * torch.rand(D, generator=g))  # correlated, anisotropic
    offset = torch.randn(D, generator=g) * 2
    inputs = torch.randn(TOKENS, D, generator=g) @ mixing + offset
    batches = iter([torch.randn(256, D, generator=g) @ mixing + offset for _ in range(8)])
    cases = {
        "standard_scaled": (StandardTrainingSAE(StandardTrainingSAEConfig(
            d_in=D, d_sae=M, normalize_activations="expected_average_only_in", metadata=md())),
            ActivationScaler()),
        "topk_whitened": (TopKTrainingSAE(TopKTrainingSAEConfig(
            d_in=D, d_sae=M, k=8, apply_b_dec_to_input=False, rescale_acts_by_decoder_norm=True,
            normalize_activations="covariance_whitening", metadata=md(hook_name="blocks.7.hook_resid_post"))),
            ActivationScaler()),
    }
    for seed, (name, (sae, scaler)) in enumerate(cases.items(), start=50):
        _randomize(sae, seed, M)
        sae.eval()
        if name == "standard_scaled":
            scaler.estimate_scaling_factor(D, batches, n_batches_for_norm_estimate=4)
        else:
            scaler.estimate_whitening(D, batches, n_batches_for_norm_estimate=4)
        with torch.no_grad():  # SAELens's training path: the SAE sees scaled inputs, the output is unscaled
            latents = _dense(sae.encode(scaler.scale(inputs)))
            reconstruction = scaler.unscale(_dense(sae.decode(latents)))
            folded = copy.deepcopy(sae)
            if scaler.scaling_factor is not None:
                folded.fold_activation_norm_scaling_factor(scaler.scaling_factor)
            else:
                w = scaler.whitening
                folded.fold_activation_whitening(w.mean.float(), w.matrix.float(), w.inverse_matrix.float())
            z, r = _dense(folded.encode(inputs)), _dense(folded.decode(_dense(folded.encode(inputs))))
        errors = (_rel(z, latents), _rel(r, reconstruction))
        if max(errors) > 1e-4:
            sys.exit(f"{name}: SAELens's own fold disagrees with its training path ({errors})")
        _save(out / name, sae, inputs, latents, reconstruction)
        scaler.save(str(out / name / "sae" / "activation_scaler.json"))
        print(f"{name} ok; SAELens's fold vs training path: latents {errors[0]:.1e}, reconstruction {errors[1]:.1e}")


def anchor(out: Path) -> None:
    from sae_lens.saes.sae import SAEMetadata

    meta = {"hook_name": "blocks.14.hook_resid_post", "model_name": "toy-model"}
    md = lambda **kw: SAEMetadata(**{**meta, **kw})  # noqa: E731
    inputs = torch.randn(32, D_IN, generator=torch.Generator().manual_seed(1234))
    for seed, (name, sae) in enumerate(_first_cases(md).items()):
        _randomize(sae, seed)
        sae.eval()
        with torch.no_grad():
            latents = sae.encode(inputs)
            reconstruction = sae.decode(latents)
        _save(out / name, sae, inputs, latents, reconstruction)
        print(name, "ok")
    small = torch.randn(TOKENS, D, generator=torch.Generator().manual_seed(4321)) * 2
    for seed, (name, sae) in enumerate(_new_cases(md).items(), start=10):
        _randomize(sae, seed, M)
        _randomize_more(sae, seed)
        sae.eval()
        with torch.no_grad():
            latents = sae.encode(small)
            reconstruction = sae(small)  # the skip path is in forward, not decode
        if not 0 < float((latents > 0).float().mean()) < 1:
            sys.exit(f"{name}: degenerate latents")
        _save(out / name, sae, small, latents, reconstruction)
        print(name, "ok", type(sae).__name__)
    _normalised_cases(out, md)


# ---- make: saekit writes ----------------------------------------------------------------------------------
CASES = {  # case: (saekit architecture, transcoder, skip, SAELens class it must load as)
    "relu": ("relu", False, False, "StandardSAE"),
    "topk": ("topk", False, False, "TopKSAE"),
    "jumprelu": ("jumprelu", False, False, "JumpReLUSAE"),
    "batchtopk": ("batchtopk", False, False, "JumpReLUSAE"),
    "gated": ("gated", False, False, "GatedSAE"),
    "gated_rescale": ("gated_rescale", False, False, "StandardSAE"),
    "transcoder": ("relu", True, False, "Transcoder"),
    "skip_transcoder": ("relu", True, True, "SkipTranscoder"),
    "jumprelu_skip_transcoder": ("jumprelu", True, True, "JumpReLUSkipTranscoder"),
}


def _saekit_dictionary(architecture: str, transcoder: bool, skip: bool, seed: int):
    from saekit.dictionaries.base import DictionaryConfig
    from saekit.dictionaries.registry import build_dictionary

    torch.manual_seed(seed)
    dictionary = build_dictionary(DictionaryConfig(architecture=architecture, d_in=D, width=M, k=8,
                                                   d_out=D_OUT if transcoder else None,
                                                   extra={"skip_connection": skip}))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        dictionary.W_dec.mul_(0.5 + 2 * torch.rand(M, 1, generator=g))  # non-unit decoder norms
        dictionary.b_enc.copy_(torch.randn(M, generator=g) / 10)
        dictionary.b_dec.copy_(torch.randn(dictionary.b_dec.shape, generator=g) / 2)
        if architecture == "jumprelu":
            dictionary.log_threshold.copy_(torch.rand(M, generator=g) * 2 - 3)
            dictionary.calibrated.fill_(1.0)
        if architecture == "batchtopk":
            dictionary.threshold.fill_(0.15)
        if architecture == "gated":
            dictionary.r_mag.copy_(torch.randn(M, generator=g) / 3)
            dictionary.b_mag.copy_(torch.randn(M, generator=g) / 10)
        if architecture == "gated_rescale":
            dictionary.r_scale.copy_(torch.randn(M, generator=g) / 3)
        if skip:
            dictionary.W_skip.copy_(torch.randn(dictionary.W_skip.shape, generator=g) / 4)
    return dictionary.eval()


def make(out: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from saekit.dictionaries.formats.saelens import write_saelens

    inputs = torch.randn(TOKENS, D, generator=torch.Generator().manual_seed(99)) * 2
    for seed, (name, (architecture, transcoder, skip, _)) in enumerate(CASES.items(), start=1):
        dictionary = _saekit_dictionary(architecture, transcoder, skip, seed)
        layer = seed
        source = {"model": "toy-model", "site": f"blocks.{layer}.{'mlp_in' if transcoder else 'resid_post'}",
                  "target_site": f"blocks.{layer}.mlp_out" if transcoder else None}
        folder = out / "from_saekit" / name
        write_saelens(folder / "sae", dictionary, source)
        with torch.no_grad():
            result = dictionary(inputs)
        save_file({"inputs": inputs, "latents": result.latents.contiguous(),
                   "reconstruction": result.reconstruction.contiguous()}, str(folder / "saekit.safetensors"))
        print("made", name)


# ---- check: SAELens loads what saekit wrote -----------------------------------------------------------------
def check(out: Path) -> None:
    from sae_lens import SAE

    failures = []
    for name, (*_, class_name) in CASES.items():  # _ = (architecture, transcoder, skip)
        folder = out / "from_saekit" / name
        saved = load_file(str(folder / "saekit.safetensors"))
        sae = SAE.load_from_disk(folder / "sae")
        sae.eval()
        with torch.no_grad():
            latents = _dense(sae.encode(saved["inputs"]))
            reconstruction = _dense(sae(saved["inputs"]))
        errors = (_rel(latents, saved["latents"]), _rel(reconstruction, saved["reconstruction"]))
        hooks = (sae.cfg.metadata.hook_name, sae.cfg.metadata.hook_name_out)
        layer = hooks[0].split(".")[1]
        wanted = (f"blocks.{layer}.hook_mlp_in", f"blocks.{layer}.hook_mlp_out") if _[1] else \
            (f"blocks.{layer}.hook_resid_post", None)
        firing = float((latents > 0).float().mean())
        good = max(errors) <= TOL and type(sae).__name__ == class_name and hooks == wanted and 0 < firing < 1
        status = "ok" if good else f"MISMATCH (hooks {hooks}, firing {firing:.2f})"
        print(f"{name:26s} {type(sae).__name__:24s} latents {errors[0]:.1e}  reconstruction {errors[1]:.1e}  {status}")
        if status != "ok":
            failures.append(name)
        save_file({"inputs": saved["inputs"], "latents": latents, "reconstruction": reconstruction},
                  str(folder / "expected.safetensors"))
    if failures:
        sys.exit(f"SAELens disagrees with saekit on {failures}")


if __name__ == "__main__":
    if len(sys.argv) == 2:  # the original form: saelens_worker.py OUT
        anchor(Path(sys.argv[1]))
    else:
        {"anchor": anchor, "make": make, "check": check}[sys.argv[1]](Path(sys.argv[2]))
