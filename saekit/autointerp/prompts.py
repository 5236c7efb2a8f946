"""Prompt templates: read from text files (``saekit/prompts/*.txt`` or a directory given), render, hash.

A template file has a ``[system]`` section and a ``[user]`` section; ``$name`` placeholders are
filled with :class:`string.Template` (a literal dollar sign is written ``$$``). Each template's
sha256 (of the file's bytes) goes into the manifest so scores can be tied to the exact prompts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template

from saekit.errors import SaekitError

PROMPT_NAMES = ("explain", "detect", "fuzz", "intruder")
Messages = tuple[tuple[str, str], ...]  # (role, content) pairs


@dataclass(frozen=True)
class PromptTemplate:
    """One chat prompt: system and user templates, and the sha256 of the file they came from."""

    name: str
    system: str
    user: str
    sha256: str
    source: str

    def render(self, **values: str) -> Messages:
        try:
            system = Template(self.system).substitute(values)
            user = Template(self.user).substitute(values)
        except (KeyError, ValueError) as err:
            raise SaekitError(f"prompt {self.source} needs a value for placeholder {err}") from err
        messages = (("user", user),) if not system.strip() else (("system", system), ("user", user))
        return messages


def parse_template(name: str, text: str, source: str) -> PromptTemplate:
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for line in text.splitlines():
        header = line.strip().lower()
        if header in ("[system]", "[user]"):
            current = header[1:-1]
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
    if "user" not in sections:
        raise SaekitError(f"prompt file {source} has no [user] section")
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return PromptTemplate(name, "\n".join(sections.get("system", [])).strip(), "\n".join(sections["user"]).strip(),
                          digest, source)


def load_prompts(directory: str | Path | None = None) -> dict[str, PromptTemplate]:
    """The templates of :data:`PROMPT_NAMES` from ``directory``, or those shipped in ``saekit/prompts``."""
    out = {}
    for name in PROMPT_NAMES:
        if directory is None:
            resource = resources.files("saekit").joinpath("prompts", f"{name}.txt")
            source = f"saekit/prompts/{name}.txt"
            if not resource.is_file():
                raise SaekitError(f"the packaged prompt {source} is missing; reinstall saekit")
            text = resource.read_text(encoding="utf-8")
        else:
            path = Path(directory) / f"{name}.txt"
            if not path.is_file():
                raise SaekitError(f"prompt file not found: {path} (a prompt directory needs {', '.join(PROMPT_NAMES)})")
            text, source = path.read_text(encoding="utf-8"), str(path)
        out[name] = parse_template(name, text, source)
    return out
