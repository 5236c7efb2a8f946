"""saekit's SCR and TPP against SAEBench's own ``scr_and_tpp`` code (sae-bench 0.6.0), on the same activations,
dictionary and probes, written as a fixture that ``tests/probing/test_saebench_scr_tpp_parity.py`` keeps in CI.

    .venv/bin/python scripts/interop/compare_saebench_scr_tpp.py                  # tiny run, writes the fixture
    .venv/bin/python scripts/interop/compare_saebench_scr_tpp.py --run RUN --out DIR

1. saekit's side (this venv): a run (``--run``, or the tiny 2-layer random Llama with a TopK SAE that
   ``compare_saebench_probing.py`` trains); the SCR mix ``topic-language`` (computing / other x en / foreign,
   ``saekit.data.labelled.spurious_task``) and the TPP task ``language`` (5 classes, ``load_task``). saekit computes
   the per-text features its SCR / TPP read: pooled raw activations and pooled latents (``scr_tpp._pooled_quadrants``,
   ``sparse_probing.pooled_task``), and TPP's one-vs-rest splits (``sparse_probing.binary_tasks``, saved as row
   indices). From the same forward passes (same batches) it saves the per-token site activations [texts, L, d] with
   BOS and padding zeroed, which is how SAEBench's ``get_all_llm_activations(mask_bos_pad_eos_tokens=True)`` hands
   them on, and the folded SAE weights. All to ``inputs.safetensors``.
2. SAEBench's side (``--worker``, run in the side venv ``/work/venvs/sae-bench``; it imports no saekit): the SAE is
   SAEBench's own ``custom_saes.topk_sae.TopKSAE`` loaded with those weights, and these SAEBench functions run on
   exactly those tensors, seeded as ``run_eval_single_sae`` seeds (``random.seed``, ``torch.manual_seed``):

   SCR (the six keys of ``dataset_info.PAIRED_CLASS_KEYS`` filled from the four quadrants, as
   ``dataset_creation.get_spurious_corr_data`` fills them: ``professor / nurse`` = computing, ``male / female`` =
   English, ``male_professor / female_nurse`` = computing-English vs other-foreign):
   ``activation_collection.create_meaned_model_activations``; ``probe_training.train_probe_on_activations``
   (``use_sklearn=False``: SAEBench's torch probe, its config's epochs / lr / batch / L1 / patience);
   ``scr_and_tpp.main.get_probe_test_accuracy`` (clean accuracies); ``get_all_node_effects_for_one_sae``;
   ``select_top_n_features``; ``perform_feature_ablations`` (``ablated_precomputed_activations`` inside);
   ``get_scr_plotting_dict``. That is ``run_eval_single_dataset``'s SCR path call for call, less the dataset
   download and the LLM forward.

   TPP: SAEBench's ``prepare_probe_data`` draws fresh random negatives from the other classes at every call (probe
   training, effects, each accuracy), so its TPP data cannot be matched draw for draw; both sides use saekit's
   one-vs-rest split instead, handed to SAEBench's functions as a two-key dict ``{class: positives, rest:
   negatives}`` (with equal sizes ``prepare_probe_data`` then keeps every row and only shuffles). Per class:
   ``probe_training.prepare_probe_data`` + ``train_probe_gpu`` (what ``train_probe_on_activations`` calls);
   ``get_probe_test_accuracy`` (clean); ``get_effects_per_class_precomputed_acts``; per ablated class and N
   ``select_top_n_features`` and ``ablated_precomputed_activations`` + ``get_probe_test_accuracy`` for every
   class's probe on its own test split; ``create_tpp_plotting_dict`` for the per-class and averaged metrics.

   Written: ``saebench.json`` (clean accuracies, selected latents, ablated accuracies, metrics) and
   ``saebench.safetensors`` (SAEBench's trained probes and its latent effects).
3. The comparison (and the CI test): saekit's ``scr_from_pooled`` / ``tpp_from_tasks`` on saekit's pooled features
   with SAEBench's probes, so everything after probe training is deterministic: clean accuracies, selected latents,
   ablated accuracies and metrics at 1e-6, the latent effects (float32 sums in another order) at 1e-5 relative.
   Printed twice: saekit as it is, and with SAEBench's masked-position term (``KNOWN_DIFFERENCE``) added to the test
   latents, which must match exactly. saekit's own probe training (``ablation.train_probe``: the same AdamW / BCE +
   L1 / best-test-epoch loop) draws its shuffles from its own generator and SAEBench from the global RNG, so the
   probes are not the same draws; their clean accuracies are printed beside SAEBench's, not asserted.

No pickle: safetensors and JSON only. The side venv: ``compare_saebench.setup(Path("/work/venvs/sae-bench"),
"sae-bench==0.6.0")`` (torch 2.13.0 CPU first, then sae-bench's pins with ``--no-deps``).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: the worker runs without saekit
    from torch import Tensor

    from saekit.models.loading import LoadedModel

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "saebench_scr_tpp"
SIDE_PYTHON = Path("/work/venvs/sae-bench/bin/python")
QUADRANTS = {"tt": (True, True), "tf": (True, False), "ft": (False, True), "ff": (False, False)}
REST = "rest"  # the negatives' key in SAEBench's TPP dicts
SCR_KEYS = {  # saekit's task name -> SAEBench's key, and SAEBench's positive / negative quadrants for it
    "target": ("professor / nurse", ("tt", "tf"), ("ft", "ff")),
    "spurious": ("male / female", ("tt", "ft"), ("tf", "ff")),
    "biased": ("male_professor / female_nurse", ("tt",), ("ff",)),
}
NEGATIVE_KEYS = {"professor / nurse": "nurse_data_only", "male / female": "female_data_only",
                 "male_professor / female_nurse": "female_nurse_data_only"}
KNOWN_DIFFERENCE = (
    "SAEBench's ablated_precomputed_activations encodes every position, the zeroed BOS / pad positions too, and "
    "adds decode(f_ablated) - decode(f) there; at a zero input that is -f(0)[A] @ W_dec[A], so each masked position "
    "subtracts the ablated latents' activation on the zero vector (non-zero for a TopK SAE, whose top k of "
    "relu(b_enc - b_dec @ W_enc) fire) from the pooled sum. saekit ablates over the kept tokens only.")
# SAEBench's ScrAndTppEvalConfig defaults, less the sizes (a tiny task here), n_values (the tiny SAE has 128 latents)
# and probe_lr: the tiny random Llama's residual stream is ~0.005 in scale, and AdamW's steps do not scale with the
# input, so at SAEBench's 1e-3 every probe stays at chance (0.5) and every metric is 0, a parity check of nothing;
# 0.1 (one config field, the same on both sides) gives probes of 0.54-0.96.
SETTINGS: dict[str, Any] = {
    "random_seed": 42, "probe_train_batch_size": 16, "probe_test_batch_size": 500, "probe_epochs": 20,
    "probe_lr": 0.1, "probe_l1_penalty": 1e-3, "early_stopping_patience": 20, "sae_batch_size": 125,
    "n_values": [2, 5, 10, 20, 50, 100],
}
# With --run (a real model) the fixture-only overrides above are dropped: both sides run as each tool runs by
# default. SAEBench's ScrAndTppEvalConfig: probe_lr 1e-3, 20 epochs, batch 16, L1 1e-3, patience 20, n_values up to
# 500; saekit's RemovalSettings() defaults are the same numbers (its own probe loop and generator).
DEFAULT_SETTINGS: dict[str, Any] = {"probe_lr": 1e-3, "n_values": [2, 5, 10, 20, 50, 100, 500]}


# ---- SAEBench's side (side venv; no saekit) ------------------------------------------------------------------

def worker(inputs_path: Path, out: Path, seed: int | None = None) -> None:
    """SAEBench's SCR and TPP steps on the saved tensors (see the module docstring); writes ``out`` (JSON) and its
    ``.safetensors`` beside it. ``seed`` replaces the settings' ``random_seed`` (SAEBench's own seed noise)."""
    import sae_bench
    import sae_bench.evals.scr_and_tpp.main as scr_tpp
    import torch
    from sae_bench.custom_saes.topk_sae import TopKSAE
    from sae_bench.evals.sparse_probing import probe_training
    from sae_bench.sae_bench_utils import activation_collection
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(inputs_path))
    meta = json.loads((inputs_path.parent / "inputs.json").read_text())
    w_enc = tensors["sae.W_enc"]
    sae = TopKSAE(w_enc.shape[0], w_enc.shape[1], int(meta["k"]), "saekit-tiny", 1, torch.device("cpu"),
                  torch.float32, hook_name="blocks.1.hook_resid_post")
    sae.load_state_dict({"W_enc": w_enc, "b_enc": tensors["sae.b_enc"], "W_dec": tensors["sae.W_dec"],
                         "b_dec": tensors["sae.b_dec"], "k": sae.k})
    sae.eval()
    n_values = meta["n_values"]
    s = {**SETTINGS, **meta.get("saebench_settings", {})}  # a real run: SAEBench's own defaults (DEFAULT_SETTINGS)
    if seed is not None:
        s["random_seed"] = seed
    saved: dict[str, torch.Tensor] = {}
    results: dict[str, Any] = {"sae_bench_version": getattr(sae_bench, "__version__", "0.6.0"),
                               "settings": s, "n_values": n_values}

    def linear(prefix: str, probe: Any) -> None:
        saved[f"{prefix}.weight"] = probe.net.weight.detach().clone().contiguous()
        saved[f"{prefix}.bias"] = probe.net.bias.detach().clone().contiguous()

    # SCR: run_eval_single_dataset's perform_scr path on the six keys
    random.seed(s["random_seed"])
    torch.manual_seed(s["random_seed"])
    per_token = {}
    for split in ("train", "test"):
        blocks = {q: tensors[f"scr.{split}.tokens.{q}"] for q in QUADRANTS}
        acts = {}
        for key, positive, negative in SCR_KEYS.values():
            acts[key] = torch.cat([blocks[q] for q in positive])
            acts[NEGATIVE_KEYS[key]] = torch.cat([blocks[q] for q in negative])
        per_token[split] = acts
    meaned = {split: activation_collection.create_meaned_model_activations(per_token[split])
              for split in per_token}
    torch.set_grad_enabled(True)
    probes, _ = probe_training.train_probe_on_activations(
        meaned["train"], meaned["test"], select_top_k=None, use_sklearn=False, batch_size=s["probe_train_batch_size"],
        epochs=s["probe_epochs"], lr=s["probe_lr"], perform_scr=True,
        early_stopping_patience=s["early_stopping_patience"], l1_penalty=s["probe_l1_penalty"])
    torch.set_grad_enabled(False)
    chosen = list(NEGATIVE_KEYS)  # list(dataset_info.PAIRED_CLASS_KEYS.keys()), as SAEBench's SCR chooses
    clean = scr_tpp.get_probe_test_accuracy(probes, chosen, meaned["test"], s["probe_test_batch_size"], True)
    effects = scr_tpp.get_all_node_effects_for_one_sae(sae, probes, chosen, True, per_token["train"],
                                                       s["sae_batch_size"])
    ablated = scr_tpp.perform_feature_ablations(probes, sae, s["sae_batch_size"], per_token["test"], effects,
                                                n_values, chosen, s["probe_test_batch_size"], True)
    metrics = scr_tpp.get_scr_plotting_dict(ablated, clean)
    selected = {key: {str(n): _indices(scr_tpp.select_top_n_features(effects[key], n, key)) for n in n_values}
                for key in chosen}
    for key in chosen:
        linear(f"scr.probe.{key}", probes[key])
        saved[f"scr.effects.{key}"] = effects[key].contiguous()
    results["scr"] = {"clean_accuracy": clean, "selected": selected, "metrics": metrics,
                      "ablated_accuracy": {key: {str(n): by_n[n] for n in by_n} for key, by_n in ablated.items()}}

    # TPP: one-vs-rest two-key dicts (saekit's split) through SAEBench's functions
    random.seed(s["random_seed"])
    torch.manual_seed(s["random_seed"])
    classes = meta["classes"]
    tokens = {split: tensors[f"tpp.{split}.tokens"] for split in ("train", "test")}

    def two_key(label: str, split: str, acts: torch.Tensor) -> dict[str, torch.Tensor]:
        index, y = tensors[f"tpp.{label}.{split}_index"], tensors[f"tpp.{label}.{split}_y"]
        return {label: acts[index[y == 1]], REST: acts[index[y == 0]]}

    tpp_probes, tpp_clean, tpp_effects = {}, {}, {}
    for label in classes:
        train_tok, test_tok = two_key(label, "train", tokens["train"]), two_key(label, "test", tokens["test"])
        train_mean = activation_collection.create_meaned_model_activations(train_tok)
        test_mean = activation_collection.create_meaned_model_activations(test_tok)
        torch.set_grad_enabled(True)
        train_x, train_y = probe_training.prepare_probe_data(train_mean, label, False)
        test_x, test_y = probe_training.prepare_probe_data(test_mean, label, False)
        probe, _ = probe_training.train_probe_gpu(
            train_x, train_y, test_x, test_y, dim=train_x.shape[1], batch_size=s["probe_train_batch_size"],
            epochs=s["probe_epochs"], lr=s["probe_lr"], early_stopping_patience=s["early_stopping_patience"],
            l1_penalty=s["probe_l1_penalty"])
        torch.set_grad_enabled(False)
        tpp_probes[label] = probe
        tpp_clean[label] = scr_tpp.get_probe_test_accuracy({label: probe}, [label], test_mean,
                                                           s["probe_test_batch_size"], False)[label]
        tpp_effects[label] = scr_tpp.get_effects_per_class_precomputed_acts(sae, probe, label, train_tok, False,
                                                                            s["sae_batch_size"])
    accuracies: dict[str, dict[int, dict[str, float]]] = {}
    tpp_selected: dict[str, dict[str, list[int]]] = {}
    for ablated_label in classes:
        accuracies[ablated_label], tpp_selected[ablated_label] = {}, {}
        for n in n_values:
            mask = scr_tpp.select_top_n_features(tpp_effects[ablated_label], n, ablated_label)
            tpp_selected[ablated_label][str(n)] = _indices(mask)
            accuracies[ablated_label][n] = {}
            for label in classes:
                test_tok = two_key(label, "test", tokens["test"])
                after = {key: scr_tpp.ablated_precomputed_activations(value, sae, mask, s["sae_batch_size"])
                         for key, value in test_tok.items()}
                accuracies[ablated_label][n][label] = scr_tpp.get_probe_test_accuracy(
                    {label: tpp_probes[label]}, [label], after, s["probe_test_batch_size"], False)[label]
    overall, per_class = scr_tpp.create_tpp_plotting_dict(accuracies, tpp_clean)
    for label in classes:
        linear(f"tpp.probe.{label}", tpp_probes[label])
        saved[f"tpp.effects.{label}"] = tpp_effects[label].contiguous()
    results["tpp"] = {"clean_accuracy": tpp_clean, "selected": tpp_selected, "metrics": overall,
                      "per_class": per_class,
                      "ablated_accuracy": {i: {str(n): by_n[n] for n in by_n} for i, by_n in accuracies.items()}}
    out.write_text(json.dumps(results, indent=2) + "\n")
    save_file(saved, str(out.with_suffix(".safetensors")))
    out.with_suffix(".safetensors").chmod(0o644)  # safetensors writes 0600; the fixture is checked in


def _indices(mask: Any) -> list[int]:
    """The ascending latent indices of a boolean mask (SAEBench's selection format)."""
    return [int(i) for i in mask.nonzero().flatten().tolist()]


# ---- saekit's side --------------------------------------------------------------------------------------------

def per_token(loaded: LoadedModel, site: str, rows: list[Tensor], batch_size: int, context_length: int,
              ) -> tuple[Tensor, Tensor]:
    """[n, context_length, d] site activations of the tokenised ``rows`` with BOS and padding zeroed (as SAEBench's
    masked collection hands them on), batched exactly as ``pooled_activations`` batches, and the kept counts."""
    import torch

    from saekit.models.hooks import capture
    from saekit.probing.pooling import _padded

    point = loaded.adapter.site(site)
    pad_id = loaded.tokenizer.pad_token_id
    pad_id = int(pad_id if pad_id is not None else loaded.bos_token_id)
    special = {loaded.bos_token_id, loaded.eos_token_id, loaded.tokenizer.pad_token_id} - {None}
    out, kept = [], []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            ids, mask = _padded(rows[start:start + batch_size], pad_id)
            acts = capture(loaded.adapter, ids.to(loaded.device), [point], attention_mask=mask.to(loaded.device))[point]
            keep = mask.bool()
            keep[:, 0] = False
            # SAEBench also masks EOS / pad ids inside a text; none may occur there for the two sides to agree
            if any(int(t) in special for t in ids[keep].tolist()):
                raise SystemExit("a text contains a BOS/EOS/pad token id; SAEBench would mask it, saekit not")
            acts = acts.float().cpu() * keep[..., None]
            if bool(((acts.sum(-1) == 0) & keep).any()):
                raise SystemExit("a kept token's activations sum to 0; SAEBench would take it for padding")
            full = torch.zeros(acts.shape[0], context_length, acts.shape[-1])
            full[:, :acts.shape[1]] = acts
            out.append(full)
            kept.append(keep.sum(1))
    return torch.cat(out), torch.cat(kept)


def saekit_inputs(run: Path, loaded: LoadedModel | None, train: int, test: int, context_length: int, run_name: str,
                  overrides: dict[str, Any] | None = None) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors both sides read (``inputs.safetensors``) and their description (``inputs.json``); ``train`` and
    ``test`` are TPP's texts per class, SCR takes half as many per quadrant."""
    import torch

    from saekit.data.labelled import load_task, spurious_task
    from saekit.probing.pooling import tokenize
    from saekit.probing.scr_tpp import QUADRANTS as ORDER
    from saekit.probing.scr_tpp import RemovalSettings, _pooled_quadrants, check_ablatable, usable_n
    from saekit.probing.sparse_probing import ProbeSettings, binary_tasks, load_probe_inputs, pooled_task

    settings = ProbeSettings(train_per_class=train, test_per_class=test, context_length=context_length).validate()
    inputs = load_probe_inputs(run, loaded)
    check_ablatable(inputs)
    dictionary = inputs.dictionary
    wanted = {**SETTINGS, **(overrides or {})}["n_values"]
    n_values = usable_n(RemovalSettings(n_values=tuple(wanted)).validate(), dictionary.config.width)
    tensors: dict[str, Any] = {"sae.W_enc": dictionary.W_enc, "sae.b_enc": dictionary.b_enc,
                               "sae.W_dec": dictionary.W_dec, "sae.b_dec": dictionary.b_dec}
    tensors = {name: value.detach().float().cpu().clone() for name, value in tensors.items()}
    with torch.no_grad():  # saekit's latents of the zero vector: what SAEBench's masked positions encode to
        tensors["sae.latents_of_zero"] = dictionary.encode(torch.zeros(1, dictionary.config.d_in)).float()[0]

    # SCR: the quadrants in saekit's order (scr_tpp.QUADRANTS), pooled by saekit and per token
    mix = spurious_task("topic-language", train // 2, test // 2)
    pooled = _pooled_quadrants(inputs, mix, settings)
    names = {value: key for key, value in QUADRANTS.items()}
    for split, quadrants in (("train", mix.train), ("test", mix.test)):
        texts = [text for quadrant in ORDER for text in quadrants[quadrant]]
        rows = tokenize(inputs.loaded, texts, context_length)
        acts, kept = per_token(inputs.loaded, inputs.site, rows, settings.batch_size, context_length)
        size = len(quadrants[True, True])
        for i, quadrant in enumerate(ORDER):
            q = names[quadrant]
            tensors[f"scr.{split}.tokens.{q}"] = acts[i * size:(i + 1) * size]
            tensors[f"scr.{split}.kept.{q}"] = kept[i * size:(i + 1) * size]
            tensors[f"scr.{split}.raw.{q}"] = pooled[split][quadrant]["raw"]
            tensors[f"scr.{split}.sae.{q}"] = pooled[split][quadrant]["sae"]

    # TPP: every text once (pooled and per token), each class's one-vs-rest split as row indices
    task = load_task("language", train, test)
    pooled_tpp = pooled_task(inputs, task, settings)
    for split, examples in (("train", task.train), ("test", task.test)):
        rows = tokenize(inputs.loaded, [e.text for e in examples], context_length)
        tensors[f"tpp.{split}.tokens"], tensors[f"tpp.{split}.kept"] = per_token(
            inputs.loaded, inputs.site, rows, settings.batch_size, context_length)
        tensors[f"tpp.{split}.raw"] = pooled_tpp[split]["raw"]
        tensors[f"tpp.{split}.sae"] = pooled_tpp[split]["sae"]
    # binary_tasks on the row numbers gives the rows it draws for the features (the draws depend on counts only)
    numbered = {split: {"raw": torch.arange(len(pooled_tpp[split]["raw"]), dtype=torch.float64)[:, None]}
                for split in ("train", "test")}
    for binary, indexed in zip(binary_tasks(pooled_tpp, task, "llm", settings.seed),
                               binary_tasks(numbered, task, "llm", settings.seed), strict=True):
        for split in ("train", "test"):
            index = getattr(indexed, f"{split}_x")[:, 0].long()
            if not torch.equal(tensors[f"tpp.{split}.raw"][index], getattr(binary, f"{split}_x")):
                raise SystemExit("the indexed rows are not binary_tasks' rows")
            tensors[f"tpp.{binary.label}.{split}_index"] = index
            tensors[f"tpp.{binary.label}.{split}_y"] = getattr(binary, f"{split}_y").long()
    meta = {"k": dictionary.config.k, "classes": list(task.classes), "n_values": list(n_values),
            "seed": settings.seed, "context_length": context_length, "batch_size": settings.batch_size,
            "scr_task": mix.describe(), "tpp_task": task.describe(), "run": run_name}
    if overrides:  # a real run only: the fixture's inputs.json stays as it was
        meta["saebench_settings"] = overrides
    return {name: value.contiguous() for name, value in tensors.items()}, meta


def compare(out: Path) -> int:
    """saekit's SCR and TPP on the fixture (SAEBench's probes) against SAEBench's numbers; the mismatches."""
    sys.path.insert(0, str(REPO / "tests" / "probing"))
    from test_saebench_scr_tpp_parity import Fixture, saekit_scr, saekit_tpp, scr_differences, tpp_differences

    fixture = Fixture.load(out)
    mismatches = 0
    for masked in (False, True):
        print("saekit as it is" if not masked else "saekit with SAEBench's masked-position term added to the test "
              "latents (KNOWN_DIFFERENCE)")
        for name, found in (("SCR", scr_differences(fixture, saekit_scr(fixture, masked))),
                            ("TPP", tpp_differences(fixture, saekit_tpp(fixture, masked)))):
            for quantity, (value, ok) in found.items():
                mismatches += masked and not ok
                print(f"  {name} {quantity:>45}: {value:<10.3g} {'ok' if ok else 'DIFFERENT'}")
    own_probe_report(fixture)
    return mismatches


def own_probe_report(fixture: Any) -> None:
    """saekit's own probe training (its generator, SAEBench's settings) beside SAEBench's probes: clean accuracies.
    The two draw different shuffles and initialisations, so these are not expected to be equal."""
    from saekit.probing.ablation import probe_accuracy
    from saekit.probing.scr_tpp import RemovalSettings, train_probes

    s = {**SETTINGS, **fixture.meta.get("saebench_settings", {})}
    settings = RemovalSettings(probe_epochs=s["probe_epochs"], probe_lr=s["probe_lr"],
                               probe_batch_size=s["probe_train_batch_size"], probe_l1=s["probe_l1_penalty"])
    seed = fixture.meta["seed"]
    scr_raw = fixture.scr_tasks("raw")
    ours = train_probes(scr_raw, settings, seed)
    for name, (key, _, _) in SCR_KEYS.items():
        mine = probe_accuracy(ours[name], scr_raw[name].test_x, scr_raw[name].test_y)
        theirs = fixture.expected["scr"]["clean_accuracy"][key]
        print(f"own probe SCR {name:>9}: saekit {mine:.4f} | SAEBench {theirs:.4f}")
    tpp_raw, _ = fixture.tpp_tasks()
    ours = train_probes({task.label: task for task in tpp_raw}, settings, seed)
    for task in tpp_raw:
        mine = probe_accuracy(ours[task.label], task.test_x, task.test_y)
        print(f"own probe TPP {task.label:>9}: saekit {mine:.4f} | SAEBench "
              f"{fixture.expected['tpp']['clean_accuracy'][task.label]:.4f}")



# ---- end to end (--end-to-end): each side its own probes -----------------------------------------------------

END_TO_END_TOLERANCE = 0.04  # SAEBench's own acceptance tolerance for a reimplementation


def quantity_rows(fixture: Any, scr: dict[str, Any], tpp: dict[str, Any]) -> list[dict[str, Any]]:
    """Per quantity: saekit's value (``scr`` / ``tpp`` as ``saekit_scr`` / ``saekit_tpp`` return them), SAEBench's
    (the worker's ``saebench.json``), |difference| (None where one side has no value) and whether within 0.04."""
    from test_saebench_scr_tpp_parity import BIASED_ON, DIRECTIONS
    from test_saebench_scr_tpp_parity import SCR_KEYS as KEYS

    rows: list[dict[str, Any]] = []

    def row(group: str, quantity: str, ours: float | None, theirs: float | None) -> None:
        diff = None if ours is None or theirs is None else abs(ours - theirs)
        within = (ours is None and theirs is None) or (diff is not None and diff <= END_TO_END_TOLERANCE)
        rows.append({"group": group, "quantity": quantity, "saekit": ours, "saebench": theirs, "abs_diff": diff,
                     "within_0.04": within})

    expected, n_values = fixture.expected, [str(n) for n in fixture.meta["n_values"]]
    clean_keys = {"target": KEYS["target"], "spurious": KEYS["spurious"], "biased on biased": KEYS["biased"]}
    clean_keys |= {f"biased on {name}": key for name, key in BIASED_ON.items()}
    for name, key in clean_keys.items():
        row("SCR clean accuracy", f"{name} ({key})", scr["clean"][name], expected["scr"]["clean_accuracy"][key])
    data = {1: BIASED_ON["target"], 2: BIASED_ON["spurious"]}
    for d, name in DIRECTIONS.items():
        for n in n_values:
            row("SCR ablated accuracy", f"dir{d} ({name} latents ablated) N={n}",
                scr["details"]["ablated_accuracy"][f"dir{d}_{n}"],
                expected["scr"]["ablated_accuracy"][KEYS[name]][n][data[d]])
    for key, value in scr["metrics"].items():
        row("SCR metric", key, value, expected["scr"]["metrics"].get(key))
    for label in fixture.meta["classes"]:
        row("TPP clean accuracy", label, tpp["clean"][label], expected["tpp"]["clean_accuracy"][label])
    for label in fixture.meta["classes"]:
        for key, value in tpp["details"]["per_class"][label].items():
            row("TPP per-class score (from ablated accuracies)", f"{label} {key}", value,
                expected["tpp"]["per_class"][label][key])
    for key, value in tpp["metrics"].items():
        row("TPP metric", key, value, expected["tpp"]["metrics"][key])
    return rows


def saebench_as_saekit(other: dict[str, Any], meta: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A second SAEBench run's ``saebench.json`` in the shape ``quantity_rows`` reads for saekit's side, so SAEBench
    at another seed can be held against SAEBench at its own: the noise floor of an end-to-end comparison."""
    from test_saebench_scr_tpp_parity import BIASED_ON, DIRECTIONS
    from test_saebench_scr_tpp_parity import SCR_KEYS as KEYS

    clean_keys = {"target": KEYS["target"], "spurious": KEYS["spurious"], "biased on biased": KEYS["biased"]}
    clean_keys |= {f"biased on {name}": key for name, key in BIASED_ON.items()}
    data = {1: BIASED_ON["target"], 2: BIASED_ON["spurious"]}
    ablated = {f"dir{d}_{n}": other["scr"]["ablated_accuracy"][KEYS[name]][str(n)][data[d]]
               for d, name in DIRECTIONS.items() for n in meta["n_values"]}
    scr = {"clean": {name: other["scr"]["clean_accuracy"][key] for name, key in clean_keys.items()},
           "metrics": other["scr"]["metrics"], "details": {"ablated_accuracy": ablated}}
    tpp = {"clean": other["tpp"]["clean_accuracy"], "metrics": other["tpp"]["metrics"],
           "details": {"per_class": other["tpp"]["per_class"]}}
    return scr, tpp


def end_to_end(out: Path) -> dict[str, Any]:
    """saekit as a user runs it (``scr_run`` / ``tpp_run``'s steps: its own probes from ``train_probes`` with
    ``RemovalSettings()`` defaults; ablation over the kept tokens, and with ``--saebench-masked-positions``) on the
    saved pooled features, against SAEBench's numbers with SAEBench's own probes; beside it the shared-probe
    comparison (saekit with SAEBench's probes, as it is and with the masked-position term). Prints the largest
    |difference| per group, writes ``end_to_end.json``."""
    from dataclasses import asdict

    from test_saebench_scr_tpp_parity import Fixture, saekit_scr, saekit_tpp

    from saekit.probing.scr_tpp import RemovalSettings, scr_from_pooled, tpp_from_tasks, train_probes

    fixture = Fixture.load(out)
    settings = RemovalSettings().validate()
    seed, n_values = fixture.meta["seed"], tuple(fixture.meta["n_values"])
    raw = fixture.scr_tasks("raw")
    scr_probes = train_probes(raw, settings, seed)
    tpp_raw, _ = fixture.tpp_tasks()
    tpp_probes = train_probes({task.label: task for task in tpp_raw}, settings, seed)

    def own(masked_positions: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        """saekit end to end, as ``saekit probe --scr / --tpp [--saebench-masked-positions]`` computes it."""
        sae = fixture.scr_tasks("sae", masked_positions)
        scr = dict(zip(("clean", "metrics", "details"),
                       scr_from_pooled(raw, sae, fixture.decoder, n_values, scr_probes), strict=True))
        tpp_sae = fixture.tpp_tasks(masked_positions)[1]
        tpp = dict(zip(("clean", "metrics", "details"),
                       tpp_from_tasks(tpp_raw, tpp_sae, fixture.decoder, n_values, tpp_probes), strict=True))
        return scr, tpp

    comparisons = {
        "end_to_end": quantity_rows(fixture, *own(False)),
        "end_to_end_masked_positions": quantity_rows(fixture, *own(True)),
        "shared_probes_as_is": quantity_rows(fixture, saekit_scr(fixture), saekit_tpp(fixture)),
        "shared_probes_masked_term": quantity_rows(fixture, saekit_scr(fixture, True), saekit_tpp(fixture, True)),
    }
    for other in sorted(out.glob("saebench_seed*.json")):  # SAEBench against itself at another seed
        seeded = json.loads(other.read_text())
        comparisons[f"saebench_at_seed_{seeded['settings']['random_seed']}"] = quantity_rows(
            fixture, *saebench_as_saekit(seeded, fixture.meta))
    summary: dict[str, dict[str, Any]] = {}
    for mode, rows in comparisons.items():
        summary[mode] = {}
        print(f"{mode}: max |saekit - SAEBench| per group (tolerance {END_TO_END_TOLERANCE})")
        for group in dict.fromkeys(r["group"] for r in rows):
            mine = [r for r in rows if r["group"] == group]
            diffs = [r["abs_diff"] for r in mine if r["abs_diff"] is not None]
            worst = max(diffs) if diffs else None
            ok = all(r["within_0.04"] for r in mine)
            summary[mode][group] = {"max_abs_diff": worst, "all_within_0.04": ok, "quantities": len(mine)}
            shown = "n/a" if worst is None else f"{worst:.4f}"
            print(f"  {group:>46}: {shown:<8} {'within' if ok else 'OUTSIDE'} ({len(mine)} quantities)")
    result = {"tolerance": END_TO_END_TOLERANCE, "meta": fixture.meta,
              "saebench_settings": fixture.expected["settings"], "saekit_settings": asdict(settings),
              "summary": summary, "rows": comparisons}
    (out / "end_to_end.json").write_text(json.dumps(result, indent=2) + "\n")
    return result

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", nargs=2, type=Path, metavar=("INPUTS", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--worker-seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--run", type=Path, help="a run directory (default: a tiny run trained here)")
    parser.add_argument("--train-per-class", type=int, default=24,
                        help="TPP training texts per class; SCR takes half per quadrant [%(default)s]")
    parser.add_argument("--test-per-class", type=int, default=12, help="likewise for the test split [%(default)s]")
    parser.add_argument("--context-length", type=int, default=24, help="tokens per text, BOS included [%(default)s]")
    parser.add_argument("--python", type=Path, default=SIDE_PYTHON, help="SAEBench's venv python [%(default)s]")
    parser.add_argument("--out", type=Path, default=FIXTURE, help="where the fixture goes [%(default)s]")
    parser.add_argument("--compare-only", action="store_true", help="only compare an existing fixture")
    parser.add_argument("--end-to-end", action="store_true",
                        help="also run saekit end to end (its own probes, RemovalSettings() defaults) against "
                             "SAEBench's own-probe numbers, tolerance 0.04; writes end_to_end.json in --out")
    parser.add_argument("--saebench-seed", type=int, action="append", default=[],
                        help="with --end-to-end: also run SAEBench at this random_seed on the same tensors and "
                             "hold it against SAEBench at its own (its seed noise: the floor of an end-to-end "
                             "comparison); repeatable")
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker, seed=args.worker_seed)
        return 0
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(HERE))
    if not args.compare_only:
        from compare_saebench_probing import tiny_run

        from saekit.io import save_tensors

        with tempfile.TemporaryDirectory() as scratch:
            run, loaded = tiny_run(Path(scratch)) if args.run is None else (args.run, None)
            run_name = "compare_saebench_probing.tiny_run" if args.run is None else str(args.run)
            tensors, meta = saekit_inputs(run, loaded, args.train_per_class, args.test_per_class,
                                          args.context_length, run_name, None if args.run is None else DEFAULT_SETTINGS)
        args.out.mkdir(parents=True, exist_ok=True)
        save_tensors(args.out / "inputs.safetensors", tensors)
        (args.out / "inputs.json").write_text(json.dumps(meta, indent=2) + "\n")
        subprocess.run([str(args.python), __file__, "--worker", str(args.out / "inputs.safetensors"),
                        str(args.out / "saebench.json")], check=True, cwd=REPO)
    mismatches = compare(args.out)
    print(f"{mismatches} mismatches; fixture in {args.out}")
    if args.end_to_end:
        for seed in args.saebench_seed:
            subprocess.run([str(args.python), __file__, "--worker", str(args.out / "inputs.safetensors"),
                            str(args.out / f"saebench_seed{seed}.json"), "--worker-seed", str(seed)],
                           check=True, cwd=REPO)
        end_to_end(args.out)
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
