"""saekit-written circuit-tracer directories, checked with circuit-tracer's own loaders and math.

    .venv/bin/python scripts/interop/circuit_tracer_worker.py make OUT        # saekit's venv
    scripts/interop/.ct-venv/bin/python scripts/interop/circuit_tracer_worker.py check OUT

``make`` builds small random saekit transcoders (a 2-layer JumpReLU skip PLT set, a 3-layer JumpReLU
CLT; circuit-tracer 0.5.0 ignores a CLT's skip, so saekit writes none), writes each with saekit's
``write_circuit_tracer`` to ``OUT/<case>/transcoders`` and saves fixed inputs with saekit's latents
and reconstructions to ``OUT/<case>/saekit.safetensors``.

``check`` (in a venv with ``pip install circuit-tracer``) loads each directory the way circuit-tracer
loads a locally cached transcoder set (``load_transcoder_from_hub`` with ``cache_dir``: config.yaml +
layer/W_enc/W_dec files), with lazy and eager weights, computes circuit-tracer's encode/decode,
compares them with saekit's, saves circuit-tracer's outputs to ``OUT/<case>/expected.safetensors``
(what the saekit test reads back), and builds a tiny random TransformerLens ReplacementModel on each:
the hook names resolve, ``mlp.hook_in`` is the MLP's input (after the norm and its weight), the
cached features equal the transcoders applied to it, and ``attribute`` builds a graph. Exits
non-zero on any mismatch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

D, M, TOKENS, TOL = 16, 48, 24, 1e-5


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def make(out: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from saekit.dictionaries.base import DictionaryConfig
    from saekit.dictionaries.formats.circuit_tracer import write_circuit_tracer
    from saekit.dictionaries.registry import build_dictionary

    def randomise(dictionary, seed):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            dictionary.W_dec.mul_(1.5 + torch.rand(dictionary.W_dec.shape[0], 1, generator=g))
            dictionary.b_enc.copy_(torch.randn(dictionary.b_enc.shape, generator=g) / 10)
            dictionary.b_dec.copy_(torch.randn(dictionary.b_dec.shape, generator=g))
            dictionary.log_threshold.copy_(torch.rand(dictionary.log_threshold.shape, generator=g) * 2 - 4)
            dictionary.calibrated.fill_(1.0)
            if dictionary.W_skip is not None:
                dictionary.W_skip.copy_(torch.randn(dictionary.W_skip.shape, generator=g) / 4)
        return dictionary.eval()

    inputs = {f"inputs_{i}": torch.randn(TOKENS, D, generator=torch.Generator().manual_seed(100 + i))
              for i in range(3)}
    torch.manual_seed(0)
    plts = [randomise(build_dictionary(DictionaryConfig(architecture="jumprelu", d_in=D, width=M, d_out=D,
                                                        extra={"skip_connection": True})), seed) for seed in (1, 2)]
    sources = [{"model": "gpt2", "site": f"blocks.{i}.mlp_in", "target_site": f"blocks.{i}.mlp_out"} for i in (0, 1)]
    write_circuit_tracer(out / "plt_jumprelu_skip" / "transcoders", plts, sources, scan="saekit-fixture")
    saved = {}
    with torch.no_grad():
        for i, plt in enumerate(plts):
            x = inputs[f"inputs_{i}"]
            z = plt.encode(x)
            saved.update({f"inputs_{i}": x, f"latents_{i}": z, f"reconstruction_{i}": plt.reconstruct(x, z)})
    save_file(saved, str(out / "plt_jumprelu_skip" / "saekit.safetensors"))

    layers = 3
    clt = randomise(build_dictionary(DictionaryConfig(architecture="clt_jumprelu", d_in=layers * D, width=layers * M,
                                                      d_out=layers * D,
                                                      extra={"layers": layers})), 3)
    source = {"model": "gpt2", "site": "blocks.0.mlp_in", "target_site": "blocks.0.mlp_out", "layers": "0-2",
              "sites": [f"blocks.{i}.mlp_in" for i in range(layers)],
              "target_sites": [f"blocks.{i}.mlp_out" for i in range(layers)]}
    write_circuit_tracer(out / "clt_jumprelu" / "transcoders", clt, source)
    with torch.no_grad():
        xs = [inputs[f"inputs_{i}"] for i in range(layers)]
        zs = [clt.encode_layer(i, xs[i]) for i in range(layers)]
        saved = {f"inputs_{i}": xs[i] for i in range(layers)}
        saved.update({f"latents_{i}": zs[i] for i in range(layers)})
        saved.update({f"reconstruction_{j}": clt.decode_layer(j, zs, xs[j]) for j in range(layers)})
    save_file(saved, str(out / "clt_jumprelu" / "saekit.safetensors"))
    print("made", sorted(p.name for p in out.iterdir()))


def _tiny_tokenizer():
    """A local 40-word tokenizer (no download): t1..t39, with <bos> as token 0."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel({"<bos>": 0, **{f"t{i}": i for i in range(1, 40)}}, unk_token="t1"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<bos>", unk_token="t1")


def _check_replacement_model(transcoders, n_layers: int) -> list[str]:
    """A tiny random TL model (d_model = D) with the transcoders spliced in: hooks resolve, features match."""
    from circuit_tracer.replacement_model.replacement_model_transformerlens import TransformerLensReplacementModel
    from transformer_lens import HookedTransformerConfig

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=n_layers, d_model=D, d_head=4, n_heads=4, d_mlp=32, d_vocab=40, n_ctx=16,
                                  act_fn="gelu", normalization_type="LN", device="cpu", dtype=torch.float32)
    model = TransformerLensReplacementModel.from_config(cfg, transcoders)
    with torch.no_grad():  # non-trivial norm weights, so "after the norm's weight" is tested
        for block in model.blocks:
            block.ln2.w.copy_(1 + torch.rand(D) / 2)
            block.ln2.b.copy_(torch.randn(D) / 5)
    tokens = torch.randint(1, 40, (1, 10), generator=torch.Generator().manual_seed(7))
    tokens[0, 0] = 0
    _, features = model.get_activations(tokens)  # [layers, pos, m]
    names = ("hook_resid_mid", "mlp.hook_in", "ln2.hook_normalized")
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith(names))
    problems = []
    for layer in range(n_layers):
        mlp_in = cache[f"blocks.{layer}.mlp.hook_in"][0]
        with torch.no_grad():
            after_norm = model.blocks[layer].ln2(cache[f"blocks.{layer}.hook_resid_mid"][0])
        if _rel(mlp_in, after_norm) > TOL:
            problems.append(f"mlp.hook_in of layer {layer} is not ln2(resid_mid) (the MLP input)")
        if _rel(cache[f"blocks.{layer}.ln2.hook_normalized"][0], mlp_in) < 1e-3:
            problems.append("ln2.hook_normalized equals mlp.hook_in despite the norm's weight")
        want = transcoders.encode_layer(mlp_in, layer)
        if bool(features[layer, 0].any()):  # circuit-tracer zeroes the first position's features
            problems.append(f"replacement-model features of layer {layer} at position 0 are not zero")
        if _rel(features[layer, 1:], want[1:]) > TOL:
            problems.append(f"replacement-model features of layer {layer} differ from encode_layer(mlp.hook_in)")
    try:
        from circuit_tracer import attribute

        model.tokenizer = _tiny_tokenizer()
        graph = attribute(tokens[0], model, max_n_logits=3, batch_size=16)
        adjacency = graph.adjacency_matrix
        print(f"  attribute: {len(graph.active_features)} active features, adjacency {tuple(adjacency.shape)}")
        if not bool(torch.isfinite(adjacency).all()) or len(graph.active_features) == 0:
            problems.append("attribution graph empty or not finite")
    except Exception as err:  # report, do not hide the other checks
        problems.append(f"attribute failed: {type(err).__name__}: {err}")
    print(f"  TL replacement model: input hook {model.feature_input_hook}, output hook "
          f"{model.original_feature_output_hook}, features {tuple(features.shape)}, "
          f"active {int((features > 0).sum())}")
    return problems


def check(out: Path) -> None:
    from circuit_tracer.transcoder.activation_functions import JumpReLU
    from circuit_tracer.transcoder.cross_layer_transcoder import CrossLayerTranscoder
    from circuit_tracer.transcoder.single_layer_transcoder import TranscoderSet
    from circuit_tracer.utils.hf_utils import load_transcoder_from_hub

    problems: list[str] = []
    for case in sorted(p for p in out.iterdir() if (p / "saekit.safetensors").is_file()):
        saekit = load_file(str(case / "saekit.safetensors"))
        n = len([k for k in saekit if k.startswith("inputs_")])
        expected: dict[str, torch.Tensor] = {}
        for lazy in (False, True):
            loaded, config = load_transcoder_from_hub("transcoders", device=torch.device("cpu"), dtype=torch.float32,
                                                      lazy_encoder=lazy, lazy_decoder=lazy, cache_dir=str(case))
            hooks = (loaded.feature_input_hook, loaded.feature_output_hook)
            if hooks != ("mlp.hook_in", "mlp.hook_out"):
                problems.append(f"{case.name}: hooks {hooks}")
            xs = [saekit[f"inputs_{i}"] for i in range(n)]
            with torch.no_grad():
                if isinstance(loaded, TranscoderSet):
                    jump = all(isinstance(t.activation_function, JumpReLU) for t in loaded)
                    if not jump or not loaded.skip_connection:
                        problems.append(f"{case.name}: not loaded as JumpReLU skip transcoders")
                    zs = [loaded.encode_layer(xs[i], i) for i in range(n)]
                    ys = [loaded[i].decode(zs[i], xs[i]) for i in range(n)]
                else:
                    assert isinstance(loaded, CrossLayerTranscoder)
                    if not isinstance(loaded.activation_function, JumpReLU) or loaded.W_skip is not None:
                        problems.append(f"{case.name}: CLT not loaded as JumpReLU without skip")
                    zs = [loaded.encode_layer(xs[i], i) for i in range(n)]
                    stacked = torch.stack(zs)
                    recon = loaded.decode(stacked.to_sparse(), torch.stack(xs))
                    if recon.shape != (n, TOKENS, D):
                        problems.append(f"{case.name}: decode shape {tuple(recon.shape)}")
                    ys = list(recon)
                    batched = loaded.encode(torch.stack(xs))
                    if _rel(batched, stacked) > TOL:
                        problems.append(f"{case.name}: CLT encode differs from encode_layer")
            for i in range(n):
                for name, got in ((f"latents_{i}", zs[i]), (f"reconstruction_{i}", ys[i])):
                    error = _rel(got, saekit[name])
                    print(f"{case.name} lazy={lazy} {name}: rel. error {error:.2e}, "
                          f"active {int((zs[i] > 0).sum())}" if name.startswith("latents") else
                          f"{case.name} lazy={lazy} {name}: rel. error {error:.2e}")
                    if error > TOL:
                        problems.append(f"{case.name} lazy={lazy}: {name} differs by {error:.2e}")
                    expected[name] = got.detach().contiguous()
        problems += [f"{case.name}: {p}" for p in _check_replacement_model(loaded, n)]
        expected.update({f"inputs_{i}": saekit[f"inputs_{i}"] for i in range(n)})
        save_file(expected, str(case / "expected.safetensors"))
    if not any(out.iterdir()):
        problems.append(f"nothing to check in {out}")
    print("\n".join(problems) if problems else "all circuit-tracer checks passed")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("make", "check"):
        sys.exit(__doc__)
    {"make": make, "check": check}[sys.argv[1]](Path(sys.argv[2]))
