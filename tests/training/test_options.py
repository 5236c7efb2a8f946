"""Typed architecture options: one dataclass per architecture, resolved in one place, shown in --help.

The options a config states (``extra``: ``--extra KEY=VALUE``, sweep grids, ``dictionary.extra`` in a
config file) become the architecture's options dataclass in ``resolve_options`` alone; what reads them
gets typed fields. Old files (``extra`` as it was, a cross-layer dictionary's ``extra["layers"]``) still
load. The fault sweep over every option of every architecture is in tests/reliability/test_config_faults.py.
"""

from __future__ import annotations

import re
from dataclasses import FrozenInstanceError, fields

import pytest
import torch

from saekit.cli import build_parser, main
from saekit.dictionaries.base import DictionaryConfig, DictionaryOptions, DictionarySettings, resolve_options
from saekit.dictionaries.batchtopk import BatchTopKOptions
from saekit.dictionaries.jumprelu import JumpReLUOptions
from saekit.dictionaries.matryoshka import MatryoshkaOptions
from saekit.dictionaries.registry import ARCHITECTURES, build_dictionary
from saekit.dictionaries.topk import TopKOptions
from saekit.errors import SaekitError
from saekit.settings import flat_fields, help_line
from saekit.training.config import TrainConfig
from saekit.training.run import dictionary_config
from saekit.training.sweep import grid_configs, parse_grid


# ---- the options, typed ----------------------------------------------------------------------------
def test_the_defaults_are_those_the_architectures_always_had():
    """Numerics must not move: these are the defaults of the ``EXTRA_DEFAULTS`` the dataclasses replace."""
    assert DictionaryOptions() == DictionaryOptions(orthogonality_coefficient=0.0, skip_connection=False)
    assert TopKOptions().aux_k == 0 and TopKOptions().aux_k_coefficient == 1 / 32
    assert BatchTopKOptions().threshold_momentum == 0.9 and MatryoshkaOptions().group_sizes is None
    assert (JumpReLUOptions().threshold_init_fraction, JumpReLUOptions().bandwidth_fraction) == (1.0, 0.5)
    assert {name: cls.OPTIONS.__name__ for name, cls in ARCHITECTURES.items()} == {
        "relu": "DictionaryOptions", "gated": "DictionaryOptions", "gated_rescale": "DictionaryOptions",
        "topk": "TopKOptions", "batchtopk": "BatchTopKOptions", "jumprelu": "JumpReLUOptions",
        "matryoshka_batchtopk": "MatryoshkaOptions", "clt_topk": "TopKOptions", "clt_jumprelu": "JumpReLUOptions",
        "crosscoder": "DictionaryOptions"}


@pytest.mark.parametrize(("extra", "expected"), [
    ({"aux_k": 256.0, "skip_connection": 1}, {"aux_k": 256, "skip_connection": True}),  # a sweep grid's numbers
    ({"aux_k": "64", "skip_connection": "yes"}, {"aux_k": 64, "skip_connection": True}),  # text, as a flag's
    ({"threshold_momentum": 0, "group_sizes": "16, 16,32"}, {"threshold_momentum": 0.0, "group_sizes": (16, 16, 32)}),
    ({"group_sizes": 64}, {"group_sizes": (64,)}), ({"group_sizes": [32.0, 32]}, {"group_sizes": (32, 32)}),
    ({"group_sizes": "none"}, {"group_sizes": None}),
])
def test_options_are_read_as_flags_grids_and_old_files_write_them(extra, expected):
    options = DictionaryConfig("matryoshka_batchtopk", 16, 64, k=4, extra=extra).options
    assert isinstance(options, MatryoshkaOptions)
    for name, value in expected.items():
        assert getattr(options, name) == value and type(getattr(options, name)) is type(value)


def test_a_built_dictionary_holds_its_options_resolved_once(monkeypatch):
    calls = []
    original = ARCHITECTURES["clt_topk"].check_shape.__func__

    def counted(cls, *args):
        calls.append(args)
        original(cls, *args)
    monkeypatch.setattr(ARCHITECTURES["clt_topk"], "check_shape", classmethod(counted))
    clt = build_dictionary(DictionaryConfig("clt_topk", 8, 16, d_out=8, k=2, layers=2, extra={"aux_k_coefficient": 1}))
    assert len(calls) == 1 and isinstance(clt.options, TopKOptions) and clt.options.aux_k_coefficient == 1.0
    with pytest.raises(FrozenInstanceError):
        clt.options.aux_k = 3


def test_settings_and_built_config_resolve_the_same_options():
    settings = DictionarySettings(architecture="jumprelu", extra={"threshold_init_fraction": 2})
    built = settings.build_config(d_in=16, d_out=None)
    assert settings.options_for(1) == built.options == JumpReLUOptions(threshold_init_fraction=2.0)
    assert resolve_options("jumprelu", {"threshold_init_fraction": 2}) == built.options


@pytest.mark.parametrize(("architecture", "extra", "layers", "refusal"), [
    ("jumprelu", {"threshold_init_fraction": 0}, 1,
     "architecture 'jumprelu': extra setting 'threshold_init_fraction' must be > 0, got 0"),
    ("jumprelu", {"bandwidth_fraction": "wide"}, 1,
     "architecture 'jumprelu': extra setting 'bandwidth_fraction' must be float, got 'wide'"),
    ("batchtopk", {"threshold_momentum": 1}, 1,
     "architecture 'batchtopk': extra setting 'threshold_momentum' must be >= 0 and < 1, got 1"),
    ("topk", {"aux_k": -4}, 1, "architecture 'topk': extra setting 'aux_k' must be >= 0, got -4"),
    ("relu", {"orthogonality_coefficient": float("nan")}, 1,
     "architecture 'relu': extra setting 'orthogonality_coefficient' must be a finite number >= 0, got nan"),
    ("relu", {"aux_k": 4}, 1, "architecture 'relu' does not understand extra settings ['aux_k']; it accepts "
                              "['orthogonality_coefficient', 'skip_connection']"),
    ("clt_topk", {"aux_k": 4}, 2, "architecture 'clt_topk' does not support ['aux_k'] over several layers"),
    ("topk", {}, 2, "architecture 'topk' reads one site; it cannot span 2 layers"),
])
def test_a_bad_option_is_one_line_naming_it(architecture, extra, layers, refusal):
    with pytest.raises(SaekitError) as err:
        resolve_options(architecture, extra, layers)
    assert str(err.value).startswith(refusal) and "\n" not in str(err.value), err.value


def test_a_bad_option_on_the_command_line_is_refused_before_any_model_loads(tmp_path, capsys):
    # The model path does not exist: had the option passed, the refusal would name the model instead.
    argv = ["train", "--architecture", "jumprelu", "--extra", "threshold_init_fraction=0", "--model",
            str(tmp_path / "no-model"), "--runs-dir", str(tmp_path / "runs")]
    assert main(argv) == 1
    assert capsys.readouterr().err == ("saekit: error: architecture 'jumprelu': extra setting "
                                       "'threshold_init_fraction' must be > 0, got 0\n")
    assert not (tmp_path / "runs").exists()


# ---- old files and callers ----------------------------------------------------------------------------
def test_a_dictionary_config_from_before_the_layer_count_was_a_field_loads():
    old = {"architecture": "clt_topk", "d_in": 8, "width": 16, "d_out": 8, "k": 2,
           "extra": {"layers": 2, "skip_connection": True}}
    config = DictionaryConfig.from_dict(old)
    assert config.layers == 2 and config.extra == {"skip_connection": True}
    assert DictionaryConfig.from_dict(config.to_dict()) == config  # written again in the new form
    assert DictionaryConfig("crosscoder", 8, 16, extra={"layers": 2.0}).layers == 2  # a caller not yet moved
    with pytest.raises(SaekitError, match="layers=3 but extra layers=2; state it once"):
        DictionaryConfig("crosscoder", 12, 16, layers=3, extra={"layers": 2})
    with pytest.raises(SaekitError, match="dictionary config: layers must be >= 1, got 0"):
        DictionaryConfig("crosscoder", 12, 16, extra={"layers": 0})


def test_a_run_passes_its_layer_count_as_a_field_not_an_extra_setting():
    config = TrainConfig.from_flat({"architecture": "clt_topk", "layers": "0-2", "site": "blocks.0.mlp_in",
                                    "target_site": "blocks.0.mlp_out", "extra": {"aux_k_coefficient": 0.5}})
    chunk = {site: torch.zeros(2, 4) for site in config.sites}
    built = dictionary_config(config, chunk)
    assert (built.layers, built.d_in, built.extra) == (3, 12, {"aux_k_coefficient": 0.5})
    assert dictionary_config(TrainConfig(), {"blocks.14.resid_post": torch.zeros(2, 4)}).layers == 1


def test_sweep_grid_options_are_typed_with_the_rest_of_the_point():
    configs = grid_configs(TrainConfig(), parse_grid("topk:aux_k=64,128;jumprelu:threshold_init_fraction=0.5"), [None])
    assert [c.dictionary.extra for c in configs] == [{"aux_k": 64}, {"aux_k": 128}, {"threshold_init_fraction": 0.5}]
    assert configs[2].dictionary.options_for().threshold_init_fraction == 0.5
    with pytest.raises(SaekitError, match="extra setting 'threshold_init_fraction' must be > 0, got 0$"):
        grid_configs(TrainConfig(), parse_grid("jumprelu:threshold_init_fraction=0"), [None])


# ---- --help ------------------------------------------------------------------------------------------
def _help(command: str) -> str:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    return sub.choices[command].format_help()


def _sections(text: str) -> dict[str, str]:
    """The help's groups by heading, each as one line of text (wrapping undone)."""
    groups = [block.split("\n", 1) for block in text.split("\n\n") if "\n" in block]
    return {heading: " ".join(body.split()) for heading, body in groups}


def _names(text: str) -> list[str]:
    return re.split(r", | and ", text)


def _sections_of(architecture: str, sections: dict[str, str]) -> list[str]:
    """The groups a reader of --help looks in for ``architecture``: the one for every architecture, its own,
    and those its own says it also takes."""
    shared = next(h for h in sections if h.startswith("options of every architecture"))
    own = [h for h in sections if h.endswith(" options (and those of every architecture):")
           and architecture in _names(h.split(" options (")[0])]
    if not own:
        listed = re.search(r"Given as --extra KEY=VALUE .*?\. (.*) take only these\.", sections[shared]).group(1)
        assert architecture in _names(listed), f"{architecture} has no heading in --help"
        return [shared]
    also = re.search(r"Also those of (.*?)\.(?: |$)", sections[own[0]])
    named = _names(re.sub(r" \([^)]*\)", "", also.group(1))) if also else []  # "topk (aux_k, ...)" -> "topk"
    extra = [h for h in sections if h.endswith(" options (and those of every architecture):")
             and set(_names(h.split(" options (")[0])) & set(named)]
    return [shared, own[0], *extra]


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_help_shows_every_option_under_its_architecture_with_help_and_default(command):
    sections = _sections(_help(command))
    for architecture, cls in ARCHITECTURES.items():
        text = " ".join(sections[h] for h in _sections_of(architecture, sections))
        for spec in flat_fields(cls.OPTIONS):
            line = f"{spec.flat}=" + r"\S+ " + re.escape(" ".join(help_line(spec).split()))
            assert re.search(line, text), f"{architecture}: {spec.flat} ({help_line(spec)}) not in its --help"
    assert "[0.03125] (>= 0)" in sections[next(h for h in sections if h.startswith("topk and clt_topk options"))]


def test_each_option_is_described_once():
    text = _help("train")
    for options in {cls.OPTIONS for cls in ARCHITECTURES.values()}:
        for spec in fields(options):
            assert len(re.findall(rf"^  {spec.name}=", text, flags=re.M)) == 1, spec.name
