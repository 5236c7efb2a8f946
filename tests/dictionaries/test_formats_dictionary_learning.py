"""dictionary_learning format: the reader reproduces fixtures written and evaluated by dictionary_learning
itself (scripts/interop/dictionary_learning_worker.py), names sites only where config.json is unambiguous,
and refuses bad inputs (and any pickled object) in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from format_helpers import one_line, refusal
from safetensors.torch import load_file

from saekit.dictionaries.formats.dictionary_learning import (
    dictionary_learning_folders,
    is_dictionary_learning,
    load_state_dict,
    read_dictionary_learning,
)
from saekit.errors import SaekitError

FIXTURES = Path(__file__).parent.parent / "fixtures" / "interop" / "dictionary_learning"
# fixture folder -> (saekit architecture, site read from config.json)
CASES = {
    "relu": ("relu", "blocks.3.resid_post"),
    "topk": ("topk", "blocks.3.resid_post"),
    "batchtopk": ("batchtopk", "blocks.3.mlp_out"),
    "jumprelu": ("jumprelu", "blocks.3.attn_out"),
    "gated": ("gated", "blocks.3.resid_post"),
    "matryoshka": ("matryoshka_batchtopk", "blocks.3.resid_post"),
    "batchtopk_trainsae/trainer_0": ("batchtopk", "blocks.3.resid_post"),
    "standard_april_trainsae/trainer_0": ("relu", "blocks.3.resid_post"),
}


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def test_every_fixture_is_covered():
    found = {p.parent.relative_to(FIXTURES).as_posix() for p in FIXTURES.rglob("expected.safetensors")}
    assert found == set(CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_reader_reproduces_dictionary_learning(case):
    folder = FIXTURES / case
    expected = load_file(str(folder / "expected.safetensors"))
    dictionary, source = read_dictionary_learning(folder)
    architecture, site = CASES[case]
    assert (dictionary.config.architecture, source["site"], source["target_site"]) == (architecture, site, None)
    assert source["model"] == "EleutherAI/pythia-70m-deduped" and source["format"] == "dictionary-learning"
    assert not dictionary.training
    with torch.no_grad():
        result = dictionary(expected["inputs"])
        encoded = dictionary.encode(expected["inputs"])
    assert _rel(result.latents, expected["latents"]) <= 1e-5
    assert _rel(encoded, expected["latents"]) <= 1e-5
    assert _rel(result.reconstruction, expected["reconstruction"]) <= 1e-5
    assert 1 <= float((expected["latents"] > 0).sum(-1).float().mean()) < dictionary.config.width / 2


def test_conventions_are_carried():
    """What the fixtures test only through their values, named: k, non-unit decoders, thresholds, groups."""
    topk, _ = read_dictionary_learning(FIXTURES / "topk")
    assert topk.config.k == 8
    batch, _ = read_dictionary_learning(FIXTURES / "batchtopk")
    stored = load_state_dict(FIXTURES / "batchtopk" / "ae.pt")
    assert float(batch.threshold) == pytest.approx(float(stored["threshold"]))
    jump, _ = read_dictionary_learning(FIXTURES / "jumprelu")
    norms = jump.W_dec.detach().norm(dim=1)
    assert float(norms.min()) < 0.9 and float(norms.max()) > 1.1  # kept as stored, never renormalised
    relu, source = read_dictionary_learning(FIXTURES / "relu")
    assert torch.allclose(relu.W_dec.norm(dim=1), torch.ones(128), atol=1e-5)  # as load_dictionary normalises
    assert any("load_dictionary" in note for note in source["notes"])
    matryoshka, _ = read_dictionary_learning(FIXTURES / "matryoshka")
    assert matryoshka.options.group_sizes == (16, 16, 32, 64)


def test_checkpoint_file_and_trainer_folders(tmp_path):
    trainer = tmp_path / "trainer_0"
    (trainer / "checkpoints").mkdir(parents=True)
    shutil.copy(FIXTURES / "topk" / "config.json", trainer / "config.json")
    shutil.copy(FIXTURES / "topk" / "ae.pt", trainer / "checkpoints" / "ae_100.pt")
    dictionary, source = read_dictionary_learning(trainer / "checkpoints" / "ae_100.pt")
    assert source["weights_file"] == "ae_100.pt" and dictionary.config.architecture == "topk"
    assert not is_dictionary_learning(trainer)
    assert dictionary_learning_folders(FIXTURES / "batchtopk_trainsae") == [FIXTURES / "batchtopk_trainsae" /
                                                                            "trainer_0"]


def _copy(tmp_path: Path, case: str = "topk", trainer: dict | None = None, buffer: dict | None = None,
          tensors: dict | None = None) -> Path:
    """A copy of a fixture folder with config.json fields and state-dict tensors replaced."""
    folder = tmp_path / case.replace("/", "_")
    shutil.copytree(FIXTURES / case, folder)
    (folder / "expected.safetensors").unlink()
    config = json.loads((folder / "config.json").read_text())
    config["trainer"].update(trainer or {})
    config["buffer"].update(buffer or {})
    (folder / "config.json").write_text(json.dumps(config))
    if tensors:
        state = load_state_dict(folder / "ae.pt")
        state.update(tensors)
        torch.save(state, folder / "ae.pt")
    return folder


@pytest.mark.parametrize(("submodule", "layer", "site"), [
    ("mlp_in_layer_5", 5, "blocks.5.mlp_in"), ("resid_post_layer_5", 4, None), ("layer_5", 5, None),
    (None, 5, None)])
def test_site_only_where_unambiguous(tmp_path, submodule, layer, site):
    folder = _copy(tmp_path, trainer={"submodule_name": submodule, "layer": layer})
    _, source = read_dictionary_learning(folder)
    assert source["site"] == site
    if site is None:
        assert any("pass the site" in note for note in source["notes"])
        assert read_dictionary_learning(folder, site="blocks.5.resid_post")[1]["site"] == "blocks.5.resid_post"


@pytest.mark.parametrize(("change", "needle"), [
    ({"trainer": {"dict_class": "AutoEncoderNew"}}, "not supported"),
    ({"trainer": {"dict_class": "Banana"}}, "not supported"),
    ({"trainer": {"activation_dim": 33}}, "shape"),
    ({"trainer": {"dict_size": 0}}, "'dict_size'"),
    ({"trainer": {"k": 9}}, "k=8 in the state dict"),
    ({"buffer": {"io": "in_and_out"}}, "transcoder"),
    ({"tensors": {"encoder.bias": torch.zeros(127)}}, "shape"),
    ({"tensors": {"extra": torch.zeros(3)}}, "cannot place"),
])
def test_bad_input_is_one_line(tmp_path, change, needle):
    folder = _copy(tmp_path, **change)
    assert needle in refusal(read_dictionary_learning, folder)


def test_unset_and_non_positive_thresholds_are_refused(tmp_path):
    unset = _copy(tmp_path, "batchtopk", tensors={"threshold": torch.tensor(-1.0)})
    assert "never set" in refusal(read_dictionary_learning, unset)
    threshold = load_state_dict(FIXTURES / "jumprelu" / "ae.pt")["threshold"].clone()
    threshold[3] = 0.0
    zero = _copy(tmp_path, "jumprelu", tensors={"threshold": threshold})
    assert "positive" in refusal(read_dictionary_learning, zero)


def test_missing_config_and_weights(tmp_path):
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    shutil.copy(FIXTURES / "topk" / "ae.pt", no_config / "ae.pt")
    assert "config.json not found" in refusal(read_dictionary_learning, no_config)
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(FIXTURES / "topk" / "config.json", no_weights / "config.json")
    (no_weights / "ae.safetensors").write_bytes(b"")
    assert "ae.pt not found (found ae.safetensors" in refusal(read_dictionary_learning, no_weights)
    no_trainer = _copy(tmp_path)
    (no_trainer / "config.json").write_text(json.dumps({"dict_class": "AutoEncoderTopK"}))
    assert "'trainer'" in refusal(read_dictionary_learning, no_trainer)


def test_full_pickle_is_refused_by_weights_only():
    assert "will not unpickle" in refusal(read_dictionary_learning, FIXTURES / "full_pickle")


def test_non_torch_files_are_refused(tmp_path):
    with pytest.raises(SaekitError) as excinfo:
        read_dictionary_learning(FIXTURES / "topk" / "config.json")
    assert "not a dictionary_learning .pt file" in one_line(excinfo)
    garbage = _copy(tmp_path)
    (garbage / "ae.pt").write_text("hello, not a torch file")
    assert "not a torch file" in refusal(read_dictionary_learning, garbage)
    a_list = _copy(tmp_path, "relu")
    torch.save([torch.zeros(2)], a_list / "ae.pt")
    assert "not a state dict" in refusal(read_dictionary_learning, a_list)


def test_bad_site_override_is_one_line():
    with pytest.raises(SaekitError) as excinfo:
        read_dictionary_learning(FIXTURES / "topk", site="layers.3")
    assert "not a saekit site" in one_line(excinfo)
