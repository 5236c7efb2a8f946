"""SAELens format: the reader reproduces SAELens's math (written out here from its format, and SAELens's own
outputs in fixtures it saved itself), SAELens loads what the writer writes to the same outputs (fixtures
checked by SAELens), normalisations are folded or refused, and bad inputs give one clear line and write
nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from format_helpers import one_line, pickle_only, refusal
from safetensors.torch import load_file, save_file

from saekit.dictionaries.base import DictionaryConfig
from saekit.dictionaries.formats import read_saelens, write_saelens
from saekit.dictionaries.registry import build_dictionary
from saekit.errors import SaekitError

D_IN, WIDTH, D_OUT = 16, 64, 12
FIXTURES = Path(__file__).parent.parent / "fixtures" / "interop" / "saelens"
TRANSCODERS = ("transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def _weights(architecture: str, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    d_out = D_OUT if architecture in TRANSCODERS else D_IN
    tensors = {"W_enc": torch.randn(D_IN, WIDTH, generator=g) / 4, "b_enc": torch.randn(WIDTH, generator=g) / 10,
               # non-unit decoder norms on purpose
               "W_dec": torch.randn(WIDTH, d_out, generator=g) * (0.5 + torch.rand(WIDTH, 1, generator=g)),
               "b_dec": torch.randn(d_out, generator=g) / 10}
    if "jumprelu" in architecture:
        tensors["threshold"] = 0.1 + torch.rand(WIDTH, generator=g) / 5
    if architecture == "gated":
        tensors.update(b_gate=tensors.pop("b_enc"), r_mag=torch.randn(WIDTH, generator=g) / 3,
                       b_mag=torch.randn(WIDTH, generator=g) / 10)
    if "skip" in architecture:
        tensors["W_skip"] = torch.randn(d_out, D_IN, generator=g) / 4
    return tensors


def _write(directory: Path, architecture: str, cfg_extra: dict | None = None, tensors=None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tensors = tensors if tensors is not None else _weights(architecture)
    save_file(tensors, str(directory / "sae_weights.safetensors"))
    cfg = {"architecture": architecture, "d_in": D_IN, "d_sae": WIDTH, "hook_name": "blocks.14.hook_resid_post",
           "model_name": "toy", "apply_b_dec_to_input": True, "normalize_activations": "none"}
    if architecture in TRANSCODERS:
        cfg.update(d_out=D_OUT, apply_b_dec_to_input=False, hook_name="blocks.2.ln2.hook_normalized",
                   metadata={"hook_name_out": "blocks.2.hook_mlp_out"})
    cfg.update(cfg_extra or {})
    (directory / "cfg.json").write_text(json.dumps(cfg))
    return directory


def _reference(tensors, cfg, x):
    """SAELens's forward, written from its documented conventions."""
    transcoder = cfg["architecture"] in TRANSCODERS
    sae_in = x - tensors["b_dec"] if cfg.get("apply_b_dec_to_input", True) and not transcoder else x
    if cfg["architecture"] == "gated":
        gate = (sae_in @ tensors["W_enc"] + tensors["b_gate"]) > 0
        z = gate * (sae_in @ (tensors["W_enc"] * tensors["r_mag"].exp()) + tensors["b_mag"]).relu()
        return z, z @ tensors["W_dec"] + tensors["b_dec"]
    pre = sae_in @ tensors["W_enc"] + tensors["b_enc"]
    norms = tensors["W_dec"].norm(dim=1)
    if cfg.get("rescale_acts_by_decoder_norm"):
        pre = pre * norms
    if cfg["architecture"] in ("standard", "transcoder", "skip_transcoder"):
        z = pre.relu()
    elif cfg["architecture"] == "topk":
        top = pre.topk(cfg["k"], dim=-1)
        z = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    else:
        z = pre.relu() * (pre > tensors["threshold"])
    out = (z / norms if cfg.get("rescale_acts_by_decoder_norm") else z) @ tensors["W_dec"] + tensors["b_dec"]
    if "W_skip" in tensors:
        out = out + x @ tensors["W_skip"].T
    return z, out


CASES = [
    ("standard", {}),
    ("standard", {"apply_b_dec_to_input": False}),
    ("topk", {"k": 8}),
    ("topk", {"activation_fn_kwargs": {"k": 8}, "rescale_acts_by_decoder_norm": True}),
    ("jumprelu", {}),
    ("jumprelu", {"apply_b_dec_to_input": False}),
    ("gated", {}),
    ("gated", {"apply_b_dec_to_input": False}),
    ("transcoder", {}),
    ("skip_transcoder", {}),
    ("jumprelu_transcoder", {}),
    ("jumprelu_skip_transcoder", {}),
]


@pytest.mark.parametrize(("architecture", "extra"), CASES)
def test_reader_matches_saelens_math(tmp_path, architecture, extra):
    tensors = _weights(architecture)
    directory = _write(tmp_path / "sae", architecture, extra, tensors)
    dictionary, source = read_saelens(directory)
    if architecture in TRANSCODERS:
        assert (source["site"], source["target_site"]) == ("blocks.2.mlp_in", "blocks.2.mlp_out")
        assert dictionary.config.d_out == D_OUT and (dictionary.W_skip is not None) == ("skip" in architecture)
    else:
        assert (source["site"], source["target_site"], source["model"]) == ("blocks.14.resid_post", None, "toy")
    x = torch.randn(32, D_IN, generator=torch.Generator().manual_seed(1))
    cfg = {"architecture": architecture, **extra}
    if "activation_fn_kwargs" in extra:
        cfg["k"] = extra["activation_fn_kwargs"]["k"]
    z, out = _reference(tensors, cfg, x)
    assert 0 < float((z > 0).float().mean()) < 1
    with torch.no_grad():
        result = dictionary(x)
    assert _rel(result.latents, z) <= 1e-5
    assert _rel(result.reconstruction, out) <= 1e-5
    if not extra.get("rescale_acts_by_decoder_norm"):  # weights kept as they are: no renormalisation
        assert torch.allclose(dictionary.W_dec, tensors["W_dec"])


def _fixture_dirs(root: Path = FIXTURES):
    return sorted(p for p in root.glob("*") if (p / "expected.safetensors").is_file()) if root.is_dir() else []


# What SAELens's hooks must become (the sites of the cases scripts/interop/saelens_worker.py builds).
FIXTURE_SITES = {
    "gated": ("gated", "blocks.2.resid_pre", None),
    "gated_no_bdec_in": ("gated", "blocks.14.resid_post", None),
    "transcoder": ("relu", "blocks.3.mlp_in", "blocks.3.mlp_out"),  # ln2.hook_normalized -> hook_mlp_out
    "skip_transcoder": ("relu", "blocks.4.mlp_in", "blocks.4.mlp_out"),  # mlp.hook_in -> hook_mlp_out
    "jumprelu_transcoder": ("jumprelu", "blocks.5.mlp_in", "blocks.5.mlp_out"),
    "jumprelu_skip_transcoder": ("jumprelu", "blocks.6.mlp_in", "blocks.6.mlp_in"),  # no hook_name_out: the input
    "standard_scaled": ("relu", "blocks.14.resid_post", None),
    "topk_whitened": ("topk", "blocks.7.resid_post", None),
}


@pytest.mark.parametrize("fixture", _fixture_dirs(), ids=lambda p: p.name)
def test_reader_reproduces_anchor_fixture(fixture):
    expected = load_file(str(fixture / "expected.safetensors"))
    dictionary, source = read_saelens(fixture / "sae")
    with torch.no_grad():
        result = dictionary(expected["inputs"])
    assert _rel(result.latents, expected["latents"]) <= 1e-5
    assert _rel(result.reconstruction, expected["reconstruction"]) <= 1e-5
    if fixture.name in FIXTURE_SITES:
        kind, site, target = FIXTURE_SITES[fixture.name]
        assert (dictionary.config.architecture, source["site"], source["target_site"]) == (kind, site, target)
        assert (dictionary.W_skip is not None) == ("skip" in fixture.name)


def test_normalised_checkpoints_fold_their_statistics():
    """SAELens's checkpoints keep the statistics beside cfg.json; without them the same weights are wrong."""
    for name in ("standard_scaled", "topk_whitened"):
        _, source = read_saelens(FIXTURES / name / "sae")
        assert any("normalize_activations" in note for note in source["notes"])
    cfg = json.loads((FIXTURES / "standard_scaled" / "sae" / "cfg.json").read_text())
    assert cfg["normalize_activations"] == "expected_average_only_in"
    scale = json.loads((FIXTURES / "standard_scaled" / "sae" / "activation_scaler.json").read_text())["scaling_factor"]
    expected = load_file(str(FIXTURES / "standard_scaled" / "expected.safetensors"))
    # The same factor given explicitly (where a hub release keeps it: SAELens's pretrained_saes.yaml) agrees.
    dictionary, _ = read_saelens(FIXTURES / "standard_scaled" / "sae", norm_scaling_factor=scale)
    with torch.no_grad():
        assert _rel(dictionary(expected["inputs"]).reconstruction, expected["reconstruction"]) <= 1e-5
        wrong, _ = read_saelens(FIXTURES / "standard_scaled" / "sae", norm_scaling_factor=2 * scale)
        assert _rel(wrong(expected["inputs"]).reconstruction, expected["reconstruction"]) > 1e-2


def test_scaling_factor_fold_matches_saelens_training_math(tmp_path):
    """expected_average_only_in: SAELens trains on s * x and divides the output by s."""
    tensors = _weights("jumprelu")
    directory = _write(tmp_path / "sae", "jumprelu", {"normalize_activations": "expected_average_only_in"}, tensors)
    (directory / "activation_scaler.json").write_text(json.dumps({"scaling_factor": 0.25, "has_whitening": False}))
    x = 4 * torch.randn(32, D_IN, generator=torch.Generator().manual_seed(3))
    z, out = _reference(tensors, {"architecture": "jumprelu"}, 0.25 * x)
    dictionary, _ = read_saelens(directory)
    with torch.no_grad():
        result = dictionary(x)
    assert _rel(result.latents, z) <= 1e-5 and _rel(result.reconstruction, out / 0.25) <= 1e-5


@pytest.mark.parametrize("case", sorted(p.name for p in _fixture_dirs(FIXTURES / "from_saekit")))
def test_saekit_written_files_give_saelens_the_same_function(case):
    """SAELens loaded what write_saelens wrote (scripts/interop/saelens_worker.py check) and its outputs are
    saekit's; reading the files back gives them too."""
    folder = FIXTURES / "from_saekit" / case
    expected, written = load_file(str(folder / "expected.safetensors")), load_file(str(folder / "saekit.safetensors"))
    assert _rel(expected["reconstruction"], written["reconstruction"]) <= 1e-5
    assert _rel(expected["latents"], written["latents"]) <= 1e-5
    dictionary, _ = read_saelens(folder / "sae")
    with torch.no_grad():
        result = dictionary(expected["inputs"])
    assert _rel(result.latents, expected["latents"]) <= 1e-5
    assert _rel(result.reconstruction, expected["reconstruction"]) <= 1e-5


WRITABLE = [  # saekit architecture, transcoder, skip -> SAELens architecture
    ("relu", False, False, "standard"), ("topk", False, False, "topk"), ("jumprelu", False, False, "jumprelu"),
    ("batchtopk", False, False, "jumprelu"), ("matryoshka_batchtopk", False, False, "jumprelu"),
    ("gated", False, False, "gated"), ("gated_rescale", False, False, "standard"),
    ("relu", True, False, "transcoder"), ("relu", True, True, "skip_transcoder"),
    ("jumprelu", True, False, "jumprelu_transcoder"), ("batchtopk", True, True, "jumprelu_skip_transcoder"),
]


def _random_dictionary(architecture: str, transcoder: bool, skip: bool):
    torch.manual_seed(0)
    extra = {"skip_connection": skip}
    if architecture == "matryoshka_batchtopk":
        extra["group_sizes"] = [16, 48]
    dictionary = build_dictionary(DictionaryConfig(architecture=architecture, d_in=D_IN, width=WIDTH, k=8,
                                                   d_out=D_OUT if transcoder else None, extra=extra)).eval()
    with torch.no_grad():
        dictionary.W_dec.mul_(2.0)
        dictionary.b_dec.normal_()
        dictionary.b_enc.normal_(0, 0.1)
        for name in ("r_mag", "b_mag", "r_scale"):
            if hasattr(dictionary, name):
                getattr(dictionary, name).normal_(0, 0.3)
        if hasattr(dictionary, "threshold") and architecture != "jumprelu":
            dictionary.threshold.fill_(0.2)
        if skip:
            dictionary.W_skip.normal_(0, 0.3)
    return dictionary


@pytest.mark.parametrize(("architecture", "transcoder", "skip", "saelens_name"), WRITABLE)
def test_round_trip(tmp_path, architecture, transcoder, skip, saelens_name):
    dictionary = _random_dictionary(architecture, transcoder, skip)
    source = {"site": "blocks.3.mlp_in" if transcoder else "blocks.3.mlp_out", "model": "toy",
              "target_site": "blocks.3.mlp_out" if transcoder else None}
    write_saelens(tmp_path / "out", dictionary, source)
    cfg = json.loads((tmp_path / "out" / "cfg.json").read_text())
    assert cfg["architecture"] == saelens_name
    loaded, back = read_saelens(tmp_path / "out")
    assert (back["site"], back["target_site"]) == (source["site"], source["target_site"])
    x = torch.randn(20, D_IN)
    with torch.no_grad():
        a, b = dictionary(x), loaded(x)
    assert 0 < float((a.latents > 0).float().mean()) < 1
    assert _rel(b.latents, a.latents) <= 1e-5
    assert _rel(b.reconstruction, a.reconstruction) <= 1e-5


@pytest.mark.parametrize(("change", "needle"), [
    ({"architecture": "banana"}, "not supported"),
    ({"architecture": "abstopk"}, "not supported"),
    ({"architecture": "gated"}, "'b_gate'"),
    ({"hook_name": "blocks.3.hook_weird"}, "no saekit site"),
    ({"hook_name": "blocks.3.attn.hook_z"}, "no saekit site"),
    ({"d_in": D_IN + 1}, "shape"),
    ({"d_sae": WIDTH * 2}, "shape"),
    ({"normalize_activations": "expected_average_only_in"}, "scaling factor"),
    ({"normalize_activations": "covariance_whitening"}, "activation_whitening.safetensors"),
    ({"normalize_activations": "constant_norm_rescale"}, "not linear"),
    ({"normalize_activations": "layer_norm"}, "not linear"),
    ({"normalize_activations": "banana"}, "banana"),
    ({"reshape_activations": "hook_z"}, "reshape_activations"),
])
def test_bad_config_is_one_line(tmp_path, change, needle):
    directory = _write(tmp_path / "sae", "standard", None, _weights("standard"))
    cfg = json.loads((directory / "cfg.json").read_text())
    cfg.update(change)
    (directory / "cfg.json").write_text(json.dumps(cfg))
    assert needle in refusal(read_saelens, directory)


@pytest.mark.parametrize(("change", "needle"), [
    ({"d_out": D_OUT + 1}, "shape"),
    ({"d_out": None}, "'d_out'"),
    ({"metadata": {"hook_name_out": "blocks.2.hook_nowhere"}}, "no saekit site"),
    ({"normalize_activations": "expected_average_only_in"}, "transcoder"),
])
def test_bad_transcoder_config_is_one_line(tmp_path, change, needle):
    directory = _write(tmp_path / "sae", "skip_transcoder", change)
    assert needle in refusal(read_saelens, directory)


def test_bad_tensors_are_one_line(tmp_path):
    tensors = _weights("skip_transcoder")
    tensors["W_skip"] = tensors["W_skip"].T.contiguous()  # saekit's layout, not SAELens's
    assert "W_skip has shape" in refusal(read_saelens, _write(tmp_path / "a", "skip_transcoder", None, tensors))
    tensors = _weights("standard")
    tensors["scaling_factor"] = torch.full((WIDTH,), 2.0)
    assert "scaling_factor" in refusal(read_saelens, _write(tmp_path / "b", "standard", None, tensors))
    tensors["scaling_factor"] = torch.ones(WIDTH)  # SAELens drops a factor of ones, and so does saekit
    read_saelens(_write(tmp_path / "c", "standard", None, tensors))
    tensors = _weights("standard")
    tensors["extra"] = torch.zeros(3)
    assert "cannot place" in refusal(read_saelens, _write(tmp_path / "d", "standard", None, tensors))


def test_old_log_threshold_is_read_as_saelens_does(tmp_path):
    tensors = _weights("jumprelu")
    old = {**tensors, "log_threshold": tensors["threshold"].log()}
    del old["threshold"]
    dictionary, _ = read_saelens(_write(tmp_path / "sae", "jumprelu", None, old))
    torch.testing.assert_close(dictionary.threshold.detach(), tensors["threshold"])


def test_pickle_is_refused(tmp_path):
    directory = pickle_only(tmp_path / "sae", "cfg.json", "sae_weights.pt")
    assert "never unpickles" in refusal(read_saelens, directory)


def test_non_positive_threshold_is_refused(tmp_path):
    tensors = _weights("jumprelu")
    tensors["threshold"][0] = 0.0
    with pytest.raises(SaekitError) as excinfo:
        read_saelens(_write(tmp_path / "sae", "jumprelu", None, tensors))
    assert "positive" in one_line(excinfo)


@pytest.mark.parametrize(("architecture", "d_out", "extra", "source", "needle"), [
    ("crosscoder", None, {"layers": 2}, {"site": "blocks.1.resid_post"}, "no SAELens form"),
    ("topk", D_OUT, {}, {"site": "blocks.1.mlp_in", "target_site": "blocks.1.mlp_out"}, "no topk transcoder"),
    ("gated", D_OUT, {}, {"site": "blocks.1.mlp_in", "target_site": "blocks.1.mlp_out"}, "no gated transcoder"),
    ("relu", None, {"skip_connection": True}, {"site": "blocks.1.resid_post"}, "skip connection"),
    ("relu", D_OUT, {}, {"site": "blocks.1.mlp_in"}, "target site"),
    ("relu", None, {}, {"site": "nowhere"}, "no SAELens hook"),
    ("batchtopk", None, {}, {"site": "blocks.1.resid_post"}, "threshold"),  # never trained: no threshold yet
])
def test_writer_refuses_and_writes_nothing(tmp_path, architecture, d_out, extra, source, needle):
    width = 2 * WIDTH if architecture == "crosscoder" else WIDTH
    d_in = 2 * D_IN if architecture == "crosscoder" else D_IN
    dictionary = build_dictionary(DictionaryConfig(architecture=architecture, d_in=d_in, width=width, d_out=d_out,
                                                   extra=extra))
    with pytest.raises(SaekitError) as excinfo:
        write_saelens(tmp_path / "out", dictionary, source)
    assert needle in one_line(excinfo)
    assert list(tmp_path.iterdir()) == []


def test_whitening_fold_matches_saelens_training_math_for_gated(tmp_path):
    """covariance_whitening: SAELens trains on (x - mean) @ M and maps the output back with M^-1 and mean; the
    gated magnitude path follows the gate through the fold (apply_b_dec_to_input=false moves b_mag too)."""
    tensors = _weights("gated")
    extra = {"normalize_activations": "covariance_whitening", "apply_b_dec_to_input": False}
    directory = _write(tmp_path / "sae", "gated", extra, tensors)
    g = torch.Generator().manual_seed(4)
    matrix = torch.randn(D_IN, D_IN, generator=g) / 4 + torch.eye(D_IN)
    mean = torch.randn(D_IN, generator=g)
    save_file({"mean": mean, "matrix": matrix, "inverse_matrix": torch.linalg.inv(matrix).contiguous()},
              str(directory / "activation_whitening.safetensors"))
    x = torch.randn(32, D_IN, generator=g) * 2 + mean
    z, out = _reference(tensors, {"architecture": "gated", **extra}, (x - mean) @ matrix)
    dictionary, _ = read_saelens(directory)
    with torch.no_grad():
        result = dictionary(x)
    assert 0 < float((z > 0).float().mean()) < 1
    assert _rel(result.latents, z) <= 1e-5
    assert _rel(result.reconstruction, out @ torch.linalg.inv(matrix) + mean) <= 1e-5
