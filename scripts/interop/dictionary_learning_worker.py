"""dictionary_learning fixtures, written by dictionary_learning itself, and saekit's reading of them checked.

    scripts/interop/.anchors-venv/bin/python scripts/interop/dictionary_learning_worker.py make OUT
    .venv/bin/python scripts/interop/dictionary_learning_worker.py check OUT

``make`` (in a venv with ``pip install dictionary-learning``) builds one small dictionary of each class
with dictionary_learning's own trainers and classes (activation_dim 32, dict_size 128): ReLU
(``AutoEncoder``), TopK (``AutoEncoderTopK``), BatchTopK (``BatchTopKSAE``), JumpReLU
(``JumpReluAutoEncoder``), gated (``GatedAutoEncoder``) and Matryoshka BatchTopK
(``MatryoshkaBatchTopKSAE``), with random non-unit decoders, biases and thresholds. Each is saved as
``trainSAE`` saves a trainer: ``OUT/<case>/config.json`` = ``{"trainer": trainer.config, "buffer":
buffer.config}`` and ``OUT/<case>/ae.pt`` = ``torch.save`` of the state dict. Two more cases are trained
for a few steps by ``trainSAE`` itself with ``normalize_activations=True`` (a BatchTopK whose inference
threshold is set, and an April-update standard SAE whose decoder norms are free), so its own layout
(``OUT/<case>/trainer_0/``) and its norm-factor folding are what saekit reads. Every case is then
loaded back with dictionary_learning's ``utils.load_dictionary`` (what its users call), and fixed
inputs with its ``encode`` latents and ``forward`` reconstructions go to ``expected.safetensors`` beside
``ae.pt``. ``OUT/full_pickle/ae.pt`` is a whole module ``torch.save``'d (a full pickle), which saekit
must refuse.

``check`` (in saekit's venv) reads every case with ``read_dictionary_learning`` and prints the relative
errors of saekit's latents and reconstruction against dictionary_learning's; exits non-zero above 1e-5
or if the full pickle is not refused.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

D, F, K, TOKENS, TOL = 32, 128, 8, 24, 1e-5
LM, LAYER = "EleutherAI/pythia-70m-deduped", 3
SUBMODULES = {"relu": "resid_post_layer_3", "topk": "resid_post_layer_3", "batchtopk": "mlp_out_layer_3",
              "jumprelu": "attn_out_layer_3", "gated": "resid_post_layer_3", "matryoshka": "resid_post_layer_3"}



def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def _buffer_config() -> dict:
    """What ``ActivationBuffer.config`` records (trainSAE stores it under "buffer")."""
    return {"d_submodule": D, "io": "out", "n_ctxs": 3000, "ctx_len": 128, "refresh_batch_size": 32,
            "out_batch_size": 64, "device": "cpu"}


def _inputs() -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    return torch.randn(TOKENS, D, generator=g) * 1.5 + torch.randn(D, generator=g)


def _decoder_columns(g: torch.Generator) -> torch.Tensor:
    """[D, F] decoder weight (nn.Linear layout) with column norms spread over [0.5, 1.5]."""
    w = torch.randn(D, F, generator=g)
    return w / w.norm(dim=0, keepdim=True) * (0.5 + torch.rand(F, generator=g))


def _quantile_threshold(pre: torch.Tensor, active: float) -> float:
    """A threshold keeping about ``active`` latents per token of these pre-activations."""
    return float(pre.flatten().quantile(1 - active / pre.shape[-1]))


def _trainer_kwargs(case: str) -> dict:
    return {"steps": 10_000, "activation_dim": D, "dict_size": F, "layer": LAYER, "lm_name": LM,
            "submodule_name": SUBMODULES[case], "device": "cpu", "seed": 0}


@torch.no_grad()
def _random_cases(x: torch.Tensor) -> dict:
    """case -> trainer whose ``ae`` holds random weights (the trainer gives the exact config.json)."""
    from dictionary_learning.trainers import (
        BatchTopKTrainer,
        GatedSAETrainer,
        JumpReluTrainer,
        StandardTrainer,
        TopKTrainer,
    )
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKTrainer

    g = torch.Generator().manual_seed(0)
    trainers = {}

    relu = StandardTrainer(**_trainer_kwargs("relu"))
    ae = relu.ae
    ae.encoder.weight.copy_(torch.randn(F, D, generator=g) / D**0.5)
    ae.encoder.bias.copy_(torch.randn(F, generator=g) * 0.3 - 0.8)
    ae.bias.copy_(torch.randn(D, generator=g) * 0.5)
    ae.decoder.weight.copy_(_decoder_columns(g))
    trainers["relu"] = relu

    for case, cls in (("topk", TopKTrainer), ("batchtopk", BatchTopKTrainer)):
        trainer = cls(k=K, **_trainer_kwargs(case))
        ae = trainer.ae
        ae.encoder.weight.copy_(torch.randn(F, D, generator=g) / D**0.5)
        ae.encoder.bias.copy_(torch.randn(F, generator=g) * 0.3)
        ae.b_dec.copy_(torch.randn(D, generator=g) * 0.5)
        ae.decoder.weight.copy_(_decoder_columns(g))
        pre = torch.relu(ae.encoder(x - ae.b_dec))
        # TopK's default encode ignores its stored threshold (set here to prove it); BatchTopK's uses it.
        ae.threshold.fill_(_quantile_threshold(pre, 1.5 * K if case == "batchtopk" else 2.0))
        trainers[case] = trainer

    jump = JumpReluTrainer(**_trainer_kwargs("jumprelu"))
    ae = jump.ae
    ae.W_enc.copy_(torch.randn(D, F, generator=g) / D**0.5)
    ae.b_enc.copy_(torch.randn(F, generator=g) * 0.3)
    ae.b_dec.copy_(torch.randn(D, generator=g) * 0.5)
    ae.W_dec.copy_(_decoder_columns(g).T)
    pre = x @ ae.W_enc + ae.b_enc
    base = max(_quantile_threshold(pre, 12.0), 0.05)
    ae.threshold.copy_(base * (0.5 + torch.rand(F, generator=g)))
    trainers["jumprelu"] = jump

    gated = GatedSAETrainer(**_trainer_kwargs("gated"))
    ae = gated.ae
    ae.encoder.weight.copy_(torch.randn(F, D, generator=g) / D**0.5)
    ae.decoder_bias.copy_(torch.randn(D, generator=g) * 0.5)
    ae.gate_bias.copy_(torch.randn(F, generator=g) * 0.3 - 0.8)
    ae.mag_bias.copy_(torch.randn(F, generator=g) * 0.3)
    ae.r_mag.copy_(torch.randn(F, generator=g) * 0.4)
    ae.decoder.weight.copy_(_decoder_columns(g))
    trainers["gated"] = gated

    matryoshka = MatryoshkaBatchTopKTrainer(k=K, group_fractions=[0.125, 0.125, 0.25, 0.5],
                                            **_trainer_kwargs("matryoshka"))
    ae = matryoshka.ae
    ae.W_enc.copy_(torch.randn(D, F, generator=g) / D**0.5)
    ae.b_enc.copy_(torch.randn(F, generator=g) * 0.3)
    ae.b_dec.copy_(torch.randn(D, generator=g) * 0.5)
    ae.W_dec.copy_(_decoder_columns(g).T)
    ae.threshold.fill_(_quantile_threshold(torch.relu((x - ae.b_dec) @ ae.W_enc + ae.b_enc), 1.5 * K))
    trainers["matryoshka"] = matryoshka
    return trainers


def _save_like_train_sae(directory: Path, trainer) -> None:
    """What trainSAE writes for one trainer: config.json at the start, ae.pt (state dict) at the end."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "config.json", "w") as f:
        json.dump({"trainer": trainer.config, "buffer": _buffer_config()}, f, indent=4)
    torch.save({k: v.cpu() for k, v in trainer.ae.state_dict().items()}, directory / "ae.pt")


class _Activations:
    """An activation source for trainSAE: endless random batches (offset, not unit-norm) with a buffer config."""

    def __init__(self, seed: int, draws: int = 0) -> None:
        self.seed, self.draws = seed, draws  # seed: the distribution (its mean); draws: which samples

    @property
    def config(self) -> dict:
        return _buffer_config()

    def __iter__(self):
        mean = torch.randn(D, generator=torch.Generator().manual_seed(self.seed)) * 2
        g = torch.Generator().manual_seed(1000 * self.draws + self.seed)
        while True:
            yield torch.randn(64, D, generator=g) * 3 + mean


def _train_cases(out: Path) -> dict[Path, torch.Tensor]:
    """Two dictionaries trained by trainSAE itself (normalize_activations=True): folder -> test inputs
    (a fresh batch of the training distribution, raw: the saved weights take unnormalised activations)."""
    from dictionary_learning.trainers import BatchTopKTrainer
    from dictionary_learning.trainers.standard import StandardTrainerAprilUpdate
    from dictionary_learning.training import trainSAE

    steps = 60
    common = {"steps": steps, "activation_dim": D, "dict_size": F, "layer": LAYER, "lm_name": LM,
              "device": "cpu", "seed": 0, "warmup_steps": 5, "submodule_name": "resid_post_layer_3"}
    runs = {"batchtopk_trainsae": {"trainer": BatchTopKTrainer, "k": K, "threshold_start_step": 10,
                                   "threshold_beta": 0.8, "lr": 3e-3},
            "standard_april_trainsae": {"trainer": StandardTrainerAprilUpdate, "sparsity_warmup_steps": 5,
                                        "l1_penalty": 1.0, "lr": 3e-3}}
    folders = {}
    for seed, (case, options) in enumerate(runs.items()):
        torch.manual_seed(seed)
        trainSAE(data=_Activations(seed), trainer_configs=[{**common, **options}], steps=steps,
                 save_dir=str(out / case), normalize_activations=True, device="cpu")
        folders[out / case / "trainer_0"] = next(iter(_Activations(seed, draws=1)))[:TOKENS]
    return folders


@torch.no_grad()
def _write_expected(directory: Path, x: torch.Tensor) -> str:
    """Load with dictionary_learning's own load_dictionary; save its latents and reconstruction."""
    from dictionary_learning.utils import load_dictionary

    dictionary, config = load_dictionary(str(directory), device="cpu")
    latents = dictionary.encode(x)
    reconstruction = dictionary(x)
    decoded = dictionary.decode(latents)
    assert _rel(decoded, reconstruction) < 1e-6, "forward differs from decode(encode)"
    active = float((latents > 0).sum(-1).float().mean())
    assert 1 <= active < F / 2, f"{directory.name}: mean L0 {active} makes a weak test"
    tensors = {"inputs": x, "latents": latents, "reconstruction": reconstruction}
    save_file({name: value.contiguous() for name, value in tensors.items()}, str(directory / "expected.safetensors"))
    return f"{config['trainer']['dict_class']} L0 {active:.1f}"


def make(out: Path) -> None:
    from dictionary_learning import AutoEncoder

    torch.manual_seed(0)
    x = _inputs()
    folders = {}
    for case, trainer in _random_cases(x).items():
        _save_like_train_sae(out / case, trainer)
        folders[out / case] = x
    folders.update(_train_cases(out))
    for folder, inputs in folders.items():
        print(folder.relative_to(out), _write_expected(folder, inputs))
    # A whole module pickled (what torch.load(weights_only=True) must refuse), beside a valid config.
    pickled = out / "full_pickle"
    pickled.mkdir(parents=True, exist_ok=True)
    (pickled / "config.json").write_text((out / "relu" / "config.json").read_text())
    torch.save(AutoEncoder(D, F), pickled / "ae.pt")
    print("full_pickle: whole AutoEncoder module pickled")


def check(out: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from saekit.dictionaries.formats.dictionary_learning import read_dictionary_learning
    from saekit.errors import SaekitError

    problems = []
    for expected_file in sorted(out.rglob("expected.safetensors")):
        expected = load_file(str(expected_file))
        dictionary, source = read_dictionary_learning(expected_file.parent)
        with torch.no_grad():
            result = dictionary(expected["inputs"])
        errors = {name: _rel(getattr(result, name), expected[name]) for name in ("latents", "reconstruction")}
        name = expected_file.parent.relative_to(out)
        print(f"{name}: saekit {dictionary.config.architecture}, site {source['site']}, "
              + ", ".join(f"{k} rel. error {v:.2e}" for k, v in errors.items()))
        problems += [f"{name}: {k} differs by {v:.2e}" for k, v in errors.items() if v > TOL]
    try:
        read_dictionary_learning(out / "full_pickle")
        problems.append("full_pickle was read")
    except SaekitError as err:
        print(f"full_pickle refused: {err}")
    print("\n".join(problems) if problems else "all dictionary_learning checks passed")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("make", "check"):
        sys.exit(__doc__)
    {"make": make, "check": check}[sys.argv[1]](Path(sys.argv[2]))
