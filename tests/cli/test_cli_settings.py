"""The settings-generated flags of every subcommand: range errors name the flag (one line, exit 1, before any model
loads or anything is written), and the defaults the CLI parses equal the job dataclasses' own.

The cases are generated from the settings schema (each generated flag's Rule gives values it refuses), except the
few named ones that pin the messages the issue asked for.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import run_cli

from saekit.analysis.analyze import AnalysisConfig
from saekit.autointerp.pipeline import AutointerpConfig
from saekit.circuits.attribution import AttributionConfig
from saekit.cli import build_parser
from saekit.cli.analysis import analysis_config
from saekit.cli.autointerp import config_from_args, settings_from_args
from saekit.cli.circuits import Interventions, graph_job
from saekit.cli.convert import ConvertSettings
from saekit.cli.imports import ImportCommand, _settings
from saekit.dashboard.neuronpedia_upload import UploadConfig
from saekit.jobs.circuits import GraphJob, SteerJob
from saekit.jobs.control import ControlConfig
from saekit.jobs.dashboard import DashboardSettings
from saekit.jobs.imported import ImportSettings
from saekit.jobs.sweep import SweepSettings
from saekit.models import loading
from saekit.settings import DEST_PREFIX, NOT_GIVEN, FlatField, from_args
from saekit.training.config import TrainConfig


class _NoLoading:
    @staticmethod
    def from_pretrained(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"model loaded: from_pretrained{args}")


@pytest.fixture(autouse=True)
def no_model_loads(monkeypatch):
    for name in ("AutoModelForCausalLM", "AutoTokenizer", "AutoConfig"):
        monkeypatch.setattr(loading, name, _NoLoading)


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def fillers(parser: argparse.ArgumentParser) -> list[str]:
    """Positionals (a missing path) and required options (a real choice, or text), so the command parses."""
    args: list[str] = []
    for action in parser._actions:
        if action.option_strings and action.required:
            args += [action.option_strings[0], list(action.choices)[-1] if action.choices else "a prompt"]
    for action in parser._actions:
        if not action.option_strings and not isinstance(action, argparse._SubParsersAction):
            args.append(list(action.choices)[-1] if action.choices else "no-such-run")
    return args


def generated(parser: argparse.ArgumentParser) -> list[FlatField]:
    """The settings add_flags gave the parser, Train settings aside (their messages are ``command line: ...``)."""
    return [spec for key, specs in parser._defaults.items()
            if key.startswith("settings-of:") and not key.endswith(".TrainConfig") for spec in specs]


def flag_text(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(flag_text, value))
    return "none" if value is None else str(value)


COMMANDS = subcommands()
RANGE_CASES = [pytest.param(command, spec, value, id=f"{command} {spec.flag}={flag_text(value)}")
               for command, parser in COMMANDS.items() for spec in generated(parser)
               if spec.rule is not None and not spec.choices  # argparse refuses a choice while parsing
               for value in spec.rule.invalid_examples(spec.annotation)[:2]]


def test_the_generated_commands_are_the_issues():
    with_settings = {command for command, parser in COMMANDS.items() if generated(parser)}
    assert {"analyze", "dashboard", "explain", "control", "attribute", "steer", "convert", "import",
            "sweep"} <= with_settings
    assert len(RANGE_CASES) > 20


def _refusal(argv: list[str], capsys, workdir: Path) -> str:
    code, err, out = run_cli(argv, capsys)
    assert code == 1, f"exit {code}: {err!r}"
    assert "Traceback" not in err and out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert sorted(workdir.iterdir()) == [], "a refused command wrote files"
    return lines[0]


@pytest.mark.parametrize(("command", "spec", "value"), RANGE_CASES)
def test_a_value_out_of_range_names_the_flag(command, spec, value, capsys, workdir):
    parser = COMMANDS[command]
    line = _refusal([command, *fillers(parser), f"{spec.flag}={flag_text(value)}"], capsys, workdir)
    assert line.startswith(f"saekit: error: {spec.flag} must be {spec.rule.problem(value)}, got "), line


@pytest.mark.parametrize(("argv", "flag"), [
    (["attribute", "t", "--prompt", "p", "--node-threshold", "1.5"], "--node-threshold must be > 0 and <= 1"),
    (["attribute", "t", "--prompt", "p", "--logit-probability", "0"], "--logit-probability must be > 0 and <= 1"),
    (["analyze", "no-such-run", "--tokens", "0"], "--tokens must be >= 1"),
    (["analyze", "no-such-run", "--max-memory-gb", "-1"], "--max-memory-gb must be > 0"),
    (["dashboard", "no-such-run", "--batch-contexts", "0"], "--batch-contexts must be >= 1"),
    (["explain", "no-such-run", "--latents", "0"], "--latents must be >= 1"),
    (["explain", "no-such-run", "--top-logprobs", "21"], "--top-logprobs must be >= 0 and <= 20"),
    (["control", "no-such-run", "--analysis-tokens", "0"], "--analysis-tokens must be >= 1"),
    (["steer", "no-such-dir", "--prompt", "p", "--top", "0"], "--top must be >= 1"),
    (["import", "no-such-source", "--stats-tokens", "0"], "--stats-tokens must be >= 1"),
    (["evaluate", "no-such-run", "--import-stats-tokens", "0"], "--import-stats-tokens must be >= 1"),
    (["sweep", "--grid", "topk:k=8", "--widths", "64,0"], "--widths must be >= 1"),
])
def test_named_range_errors(argv, flag, capsys, workdir):
    line = _refusal(argv, capsys, workdir)
    assert line.startswith(f"saekit: error: {flag}, got "), line
    assert "_" not in line.split(" must ")[0], line  # the flag, not the field's name


def test_a_wrong_type_is_refused_while_parsing_naming_the_flag(capsys, workdir):
    code, err, _ = run_cli(["attribute", "t", "--prompt", "p", "--node-threshold", "high"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "argument --node-threshold: expected float" in err, err


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_the_defaults_the_cli_parses_are_the_jobs():
    """No flags given: each command's settings are its job dataclass's defaults (read from the class)."""
    attribute = parse("attribute", "t", "--prompt", "p")
    assert graph_job(attribute) == GraphJob() and graph_job(attribute).attribution == AttributionConfig()
    steer = parse("steer", "t", "--prompt", "p")
    assert from_args(SteerJob, steer) == SteerJob() and from_args(Interventions, steer).latent == ()
    for command in ("analyze", "dashboard"):
        assert analysis_config(parse(command, "r")) == AnalysisConfig()
    assert from_args(DashboardSettings, parse("dashboard", "r")) == DashboardSettings()
    assert config_from_args(parse("explain", "r")) == AutointerpConfig()
    assert settings_from_args(parse("control", "r")).control() == ControlConfig()
    for command in ("analyze", "dashboard", "explain", "evaluate", "generate", "report"):
        assert _settings(parse(command, "r")) == ImportSettings()
    imported = from_args(ImportCommand, parse("import", "src"))
    defaults = ImportSettings()
    assert (imported.runs_dir, imported.name, imported.stats_tokens) == \
        (defaults.imports_dir, defaults.name, defaults.stats_tokens)
    assert from_args(SweepSettings, parse("sweep", "--grid", "topk:k=8")) == SweepSettings()
    convert = parse("convert", "src", "--to", "saelens", "out")
    assert from_args(ConvertSettings, convert) == ConvertSettings()
    assert from_args(UploadConfig, convert) == UploadConfig()


def test_every_generated_flag_defaults_to_nothing_given():
    """A flag not given leaves the dataclass's default: argparse's own default is NOT_GIVEN (None for a repeatable
    flag, a list once given), so that ``--api-key-env none`` is a value."""
    for command, parser in COMMANDS.items():
        args = parser.parse_known_args(fillers(parser))[0]
        assert all(getattr(args, DEST_PREFIX + spec.flat) in (NOT_GIVEN, None) for spec in generated(parser)), command
    explain = config_from_args(parse("explain", "r", "--api-key-env", "none", "--max-cost", "none"))
    assert explain.backend.openai.api_key_env is None and explain.backend.openai.max_cost_usd is None


def test_flags_reach_the_settings():
    job = graph_job(parse("attribute", "t", "--prompt", "p", "--node-threshold", "0.5", "--max-feature-nodes",
                          "100", "--max-memory-gb", "none"))
    assert job.node_threshold == 0.5 and job.attribution.max_feature_nodes == 100
    assert job.attribution.max_memory_gb is None and job.edge_threshold == GraphJob().edge_threshold
    steer = parse("steer", "t", "--prompt", "p", "--latent", "1:2=ablate", "--latent", "3:4=scale:2")
    assert from_args(Interventions, steer).latent == ("1:2=ablate", "3:4=scale:2")
    assert analysis_config(parse("analyze", "r", "--latents", "all")).latents is None
    assert analysis_config(parse("analyze", "r", "--latents", "7")).latents == 7
    dashboard = from_args(DashboardSettings, parse("dashboard", "r", "--no-neuronpedia", "--max-latents", "3"))
    assert dashboard == DashboardSettings(max_latents=3, neuronpedia=False)
    sweep = from_args(SweepSettings, parse("sweep", "--grid", "g", "--widths", "64,128", "--resume"))
    assert sweep.widths == (64, 128) and sweep.resume and sweep.runs_dir == Path("runs")
    imported = _settings(parse("analyze", "r", "--imports-dir", "elsewhere", "--import-model", "m"))
    assert imported.imports_dir == Path("elsewhere") and imported.model == "m"


def test_the_train_flags_are_not_taken_for_another_class():
    """sweep has its own settings beside the run config's: each class reads only its own flags."""
    from saekit.settings import flags_given

    args = parse("sweep", "--grid", "g", "--widths", "64", "--k", "16")
    assert flags_given(args, TrainConfig) == {"k": 16}
    assert flags_given(args, SweepSettings) == {"widths": (64,)}
