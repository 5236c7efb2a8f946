"""saekit's SCR and TPP against SAEBench's own ``scr_and_tpp`` code (sae-bench 0.6.0) on the same activations,
SAE and probes: the fixture was written by ``scripts/interop/compare_saebench_scr_tpp.py`` running SAEBench's
functions (see its docstring for which) in SAEBench's venv. This test needs only saekit.

saekit's ``scr_from_pooled`` / ``tpp_from_tasks`` run on saekit's pooled features with SAEBench's trained probes,
so nothing random is left: the selected latents must be the same, and the accuracies and metrics equal to 1e-6.
The latent effects are float32 sums taken in another order (SAEBench shuffles the rows and pools per batch), so
they are compared relative to their scale (1e-5).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from saekit.io import load_tensors
from saekit.probing.ablation import latent_effects, masked_positions_shift
from saekit.probing.probes import BinaryTask
from saekit.probing.scr_tpp import QUADRANTS, scr_binary_tasks, scr_from_pooled, tpp_from_tasks

FIXTURE = Path(__file__).parents[1] / "fixtures" / "saebench_scr_tpp"
TOLERANCE = 1e-6  # accuracies and metrics: deterministic once the probes are shared
EFFECT_RTOL = 1e-5  # float32 sums in another order
QUADRANT_NAMES = {(True, True): "tt", (True, False): "tf", (False, True): "ft", (False, False): "ff"}
SCR_KEYS = {"target": "professor / nurse", "spurious": "male / female", "biased": "male_professor / female_nurse"}
BIASED_ON = {"target": f"{SCR_KEYS['biased']} probe on {SCR_KEYS['target']} data",
             "spurious": f"{SCR_KEYS['biased']} probe on {SCR_KEYS['spurious']} data"}
DIRECTIONS = {1: "spurious", 2: "target"}  # direction -> the probe whose latents are ablated


@dataclass
class Fixture:
    """The fixture's inputs (saekit's features, the SAE, TPP's splits) and SAEBench's outputs."""

    tensors: dict[str, Tensor]
    meta: dict[str, Any]
    expected: dict[str, Any]
    saebench: dict[str, Tensor]  # SAEBench's probes and latent effects

    @classmethod
    def load(cls, root: Path = FIXTURE) -> Fixture:
        return cls(load_tensors(root / "inputs.safetensors", "SCR/TPP fixture inputs"),
                   json.loads((root / "inputs.json").read_text()), json.loads((root / "saebench.json").read_text()),
                   load_tensors(root / "saebench.safetensors", "SAEBench's SCR/TPP outputs"))

    @property
    def decoder(self) -> Tensor:
        return self.tensors["sae.W_dec"]

    def masked_positions_term(self, kept: Tensor) -> Tensor:
        """[rows, width]: what SAEBench's ablation adds to each row's pooled latents from the row's zeroed (BOS and
        pad) positions, (masked / kept) x f(0); see ``compare_saebench_scr_tpp.KNOWN_DIFFERENCE``."""
        return masked_positions_shift(kept, self.meta["context_length"], self.tensors["sae.latents_of_zero"])

    def probe(self, prefix: str) -> nn.Linear:
        weight = self.saebench[f"{prefix}.weight"]
        probe = nn.Linear(weight.shape[1], 1)
        probe.weight.data.copy_(weight)
        probe.bias.data.copy_(self.saebench[f"{prefix}.bias"])
        return probe.requires_grad_(False)

    def scr_tasks(self, key: str, masked_positions: bool = False) -> dict[str, BinaryTask]:
        """saekit's three SCR tasks on the fixture's pooled features (``key``: "raw" or "sae"); with
        ``masked_positions`` the test latents carry SAEBench's masked-position term."""
        pooled: dict[str, dict[tuple[bool, bool], dict[str, Tensor]]] = {}
        for split in ("train", "test"):
            pooled[split] = {}
            for quadrant in QUADRANTS:
                q = QUADRANT_NAMES[quadrant]
                values = self.tensors[f"scr.{split}.{key}.{q}"]
                if masked_positions and key == "sae" and split == "test":
                    values = values + self.masked_positions_term(self.tensors[f"scr.{split}.kept.{q}"])
                pooled[split][quadrant] = {key: values}
        return scr_binary_tasks(pooled, key)

    def tpp_tasks(self, masked_positions: bool = False) -> tuple[list[BinaryTask], list[BinaryTask]]:
        """saekit's one-vs-rest tasks (raw, latents) from the saved rows and splits."""
        test_sae = self.tensors["tpp.test.sae"]
        if masked_positions:
            test_sae = test_sae + self.masked_positions_term(self.tensors["tpp.test.kept"])
        features = {"raw": {"train": self.tensors["tpp.train.raw"], "test": self.tensors["tpp.test.raw"]},
                    "sae": {"train": self.tensors["tpp.train.sae"], "test": test_sae}}
        tasks: dict[str, list[BinaryTask]] = {"raw": [], "sae": []}
        for label in self.meta["classes"]:
            train_i, test_i = self.tensors[f"tpp.{label}.train_index"], self.tensors[f"tpp.{label}.test_index"]
            for key, by_split in features.items():
                tasks[key].append(BinaryTask(label, by_split["train"][train_i], self.tensors[f"tpp.{label}.train_y"],
                                             by_split["test"][test_i], self.tensors[f"tpp.{label}.test_y"]))
        return tasks["raw"], tasks["sae"]


def saekit_scr(fixture: Fixture, masked_positions: bool = False) -> dict[str, Any]:
    """saekit's SCR with SAEBench's probes: clean accuracies, metrics, details, and the latent effects."""
    raw, sae = fixture.scr_tasks("raw"), fixture.scr_tasks("sae", masked_positions)
    probes = {name: fixture.probe(f"scr.probe.{key}") for name, key in SCR_KEYS.items()}
    clean, metrics, details = scr_from_pooled(raw, sae, fixture.decoder, tuple(fixture.meta["n_values"]), probes)
    effects = {name: latent_effects(sae[name].train_x, sae[name].train_y, probes[name].weight, fixture.decoder, True)
               for name in ("target", "spurious")}
    return {"clean": clean, "metrics": metrics, "details": details, "effects": effects}


def saekit_tpp(fixture: Fixture, masked_positions: bool = False) -> dict[str, Any]:
    """saekit's TPP with SAEBench's probes: clean accuracies, metrics, details, and the latent effects."""
    raw, sae = fixture.tpp_tasks(masked_positions)
    probes = {task.label: fixture.probe(f"tpp.probe.{task.label}") for task in raw}
    clean, metrics, details = tpp_from_tasks(raw, sae, fixture.decoder, tuple(fixture.meta["n_values"]), probes)
    effects = {task.label: latent_effects(task.train_x, task.train_y, probes[task.label].weight, fixture.decoder,
                                          False) for task in sae}
    return {"clean": clean, "metrics": metrics, "details": details, "effects": effects}


def _max_diff(pairs: list[tuple[float | None, float | None]]) -> float:
    """The largest |a - b| over the pairs; infinite where one side is missing."""
    worst = 0.0
    for a, b in pairs:
        if a is None or b is None:
            worst = max(worst, 0.0 if a is None and b is None else float("inf"))
        else:
            worst = max(worst, abs(a - b))
    return worst


def _effects_diff(ours: dict[str, Tensor], theirs: dict[str, Tensor]) -> tuple[float, bool]:
    worst, ok = 0.0, True
    for name, value in ours.items():
        other = theirs[name]
        worst = max(worst, float((value - other).abs().max()))
        ok &= bool(torch.allclose(value, other, rtol=EFFECT_RTOL, atol=EFFECT_RTOL * float(other.abs().max())))
    return worst, ok


def scr_differences(fixture: Fixture, ours: dict[str, Any]) -> dict[str, tuple[float, bool]]:
    """Per quantity: (max abs difference or count of differing selections, within tolerance)."""
    expected = fixture.expected["scr"]
    # saekit's "target" / "spurious" are each probe on its own data; "biased on X" the biased probe on X's data
    theirs_clean = {"target": SCR_KEYS["target"], "spurious": SCR_KEYS["spurious"],
                    "biased on biased": SCR_KEYS["biased"]}
    theirs_clean |= {f"biased on {name}": key for name, key in BIASED_ON.items()}
    clean = _max_diff([(ours["clean"][name], expected["clean_accuracy"][key]) for name, key in theirs_clean.items()])
    n_values = [str(n) for n in fixture.meta["n_values"]]
    selected = sum(ours["details"]["selected"][f"dir{d}_{n}"] != expected["selected"][SCR_KEYS[name]][n]
                   for d, name in DIRECTIONS.items() for n in n_values)
    data = {1: BIASED_ON["target"], 2: BIASED_ON["spurious"]}
    ablated = _max_diff([(ours["details"]["ablated_accuracy"][f"dir{d}_{n}"],
                          expected["ablated_accuracy"][SCR_KEYS[name]][n][data[d]])
                         for d, name in DIRECTIONS.items() for n in n_values])
    theirs_metrics = expected["metrics"]
    metrics = _max_diff([(value, theirs_metrics.get(key)) for key, value in ours["metrics"].items()])
    effects = _effects_diff(ours["effects"], {name: fixture.saebench[f"scr.effects.{SCR_KEYS[name]}"]
                                             for name in ("target", "spurious")})
    return {"clean accuracy (max abs diff)": (clean, clean <= TOLERANCE),
            "selected latents (differing selections)": (float(selected), selected == 0),
            "latent effects (max abs diff)": effects,
            "ablated biased-probe accuracy (max abs diff)": (ablated, ablated <= TOLERANCE),
            "scr metrics (max abs diff)": (metrics, metrics <= TOLERANCE
                                           and set(theirs_metrics) <= set(ours["metrics"]))}


def tpp_differences(fixture: Fixture, ours: dict[str, Any]) -> dict[str, tuple[float, bool]]:
    """Per quantity: (max abs difference or count of differing selections, within tolerance)."""
    expected = fixture.expected["tpp"]
    classes = fixture.meta["classes"]
    clean = _max_diff([(ours["clean"][c], expected["clean_accuracy"][c]) for c in classes])
    selected = sum(ours["details"]["selected"][c][n] != expected["selected"][c][n]
                   for c in classes for n in expected["selected"][c])
    per_class = _max_diff([(value, expected["per_class"][c][key])
                           for c in classes for key, value in ours["details"]["per_class"][c].items()])
    metrics = _max_diff([(value, expected["metrics"][key]) for key, value in ours["metrics"].items()])
    effects = _effects_diff(ours["effects"], {c: fixture.saebench[f"tpp.effects.{c}"] for c in classes})
    return {"clean accuracy (max abs diff)": (clean, clean <= TOLERANCE),
            "selected latents (differing selections)": (float(selected), selected == 0),
            "latent effects (max abs diff)": effects,
            "per-class scores (max abs diff)": (per_class, per_class <= TOLERANCE),
            "tpp metrics (max abs diff)": (metrics, metrics <= TOLERANCE and len(ours["metrics"]) == len(
                expected["metrics"]))}


@pytest.fixture(scope="module")
def fixture() -> Fixture:
    return Fixture.load()


@pytest.mark.parametrize("metric", ["scr", "tpp"])
def test_same_latents_and_metrics_as_saebench(fixture, metric):
    """With SAEBench's masked-position term (``Fixture.masked_positions_term``) added to the test latents, saekit's
    code gives SAEBench's selections, accuracies and metrics exactly."""
    run, differences = (saekit_scr, scr_differences) if metric == "scr" else (saekit_tpp, tpp_differences)
    found = differences(fixture, run(fixture, masked_positions=True))
    assert all(ok for _, ok in found.values()), found


def test_the_known_difference_is_only_the_masked_positions(fixture):
    """saekit as it is (ablation over the kept tokens only) agrees with SAEBench up to the ablation; the fixture's
    TPP scores need the masked-position term, so it keeps exercising that difference."""
    scr = scr_differences(fixture, saekit_scr(fixture))
    tpp = tpp_differences(fixture, saekit_tpp(fixture))
    before_ablation = ("clean accuracy (max abs diff)", "selected latents (differing selections)",
                       "latent effects (max abs diff)")
    assert all(found[key][1] for found in (scr, tpp) for key in before_ablation), (scr, tpp)
    assert not tpp["per-class scores (max abs diff)"][1]
