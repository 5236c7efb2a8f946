"""Every subcommand's ``--help``: each option has a help line that states its default.

Which options are checked (decided here, once): every optional argument of every subcommand the parser
registers, except ``-h/--help`` itself, a required option (``--prompt``, ``--grid``, ``convert --to``: there is
no default to state), and a switch, a flag taking no value (``--force``, ``--resume``, ``--show-activations``,
``--no-neuronpedia``...; store_true, store_false or store_const), whose default is always that it is off.
Positional arguments (RUN, SRC, OUT...) have no default either. A default is stated as ``[VALUE]`` (the form
:func:`saekit.settings.add_flags` writes) or in words containing "default".
"""

from __future__ import annotations

import argparse
import re

import pytest

from saekit.cli import build_parser
from saekit.settings import DEST_PREFIX, FlatField, help_line

SWITCHES = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction)


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    unique: dict[int, str] = {}
    for name, subparser in sub.choices.items():
        unique.setdefault(id(subparser), name)
    return {name: sub.choices[name] for name in unique.values()}


def checked_options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)
            and not a.required and not isinstance(a, SWITCHES)]


def rendered_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The action's help as --help prints it (%(default)s filled in), on one line."""
    formatter = parser._get_formatter()
    return " ".join(formatter._expand_help(action).split())


COMMANDS = subcommands()
CASES = [pytest.param(command, action.option_strings[-1], id=f"{command} {action.option_strings[-1]}")
         for command, parser in COMMANDS.items() for action in checked_options(parser)]


def test_every_command_expected_is_registered():
    assert {"train", "sweep", "analyze", "dashboard", "explain", "control", "attribute", "steer", "convert",
            "import", "evaluate", "generate", "report", "quickstart", "toy"} <= set(COMMANDS)


@pytest.mark.parametrize(("command", "option"), CASES)
def test_every_option_has_help_stating_its_default(command, option):
    parser = COMMANDS[command]
    action = next(a for a in parser._actions if option in a.option_strings)
    assert action.help and action.help is not argparse.SUPPRESS and action.help.strip(), f"{command} {option}"
    text = rendered_help(parser, action)
    assert re.search(r"\[[^\[\]]+\]", text) or "default" in text.lower(), f"{command} {option}: {text!r}"


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_prints_every_option(command, capsys):
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([command, "--help"])
    assert done.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for action in COMMANDS[command]._actions:
        for option in action.option_strings:
            assert option in out, f"{command} --help does not show {option}"


def _generated(parser: argparse.ArgumentParser) -> list[FlatField]:
    """The settings add_flags gave a parser (its namespace records them per settings class)."""
    return [spec for key, specs in parser._defaults.items() if key.startswith("settings-of:") for spec in specs]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_generated_flag_shows_its_settings_help_and_default(command):
    """A generated flag's help is its setting's: the help line, the default in [] (read from the field)."""
    parser = COMMANDS[command]
    for spec in _generated(parser):
        action = next(a for a in parser._actions if a.dest == DEST_PREFIX + spec.flat)
        assert action.option_strings == [spec.flag]
        assert spec.help.strip(), f"{command} {spec.flag} has no help"
        assert rendered_help(parser, action) == " ".join(help_line(spec).split())
