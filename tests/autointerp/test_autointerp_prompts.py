"""Prompt templates: packaged files, their hashes, a replacement directory, and bad templates."""

import hashlib
from pathlib import Path

import pytest

import saekit
from saekit.autointerp.prompts import PROMPT_NAMES, load_prompts, parse_template
from saekit.errors import SaekitError


def test_packaged_prompts_load_with_their_file_hashes():
    prompts = load_prompts()
    assert sorted(prompts) == sorted(PROMPT_NAMES)
    for name, template in prompts.items():
        data = (Path(saekit.__file__).parent / "prompts" / f"{name}.txt").read_bytes()
        assert template.sha256 == hashlib.sha256(data).hexdigest() and template.system and template.user
    messages = prompts["detect"].render(explanation="fires on cats", text="a cat sat")
    assert [role for role, _ in messages] == ["system", "user"] and "a cat sat" in messages[1][1]


def test_prompt_directory_replaces_the_packaged_templates(tmp_path):
    for name in PROMPT_NAMES:
        (tmp_path / f"{name}.txt").write_text("[user]\nSay $$5 about: $examples $explanation $text\n")
    custom = load_prompts(tmp_path)
    assert custom["explain"].render(examples="E", explanation="X", text="T") == (("user", "Say $5 about: E X T"),)
    assert custom["explain"].sha256 != load_prompts()["explain"].sha256
    with pytest.raises(SaekitError, match="placeholder"):
        custom["detect"].render(explanation="only this")
    (tmp_path / "fuzz.txt").unlink()
    with pytest.raises(SaekitError, match="fuzz.txt"):
        load_prompts(tmp_path)
    with pytest.raises(SaekitError, match=r"no \[user\] section"):
        parse_template("x", "[system]\nhello\n", "x.txt")
