"""The explorer's settings: where it listens, who may call it, and how large one request may be."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from saekit.errors import SaekitError
from saekit.settings import check_rules, setting, to_dict

LOOPBACK = "127.0.0.1"


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; any other name or address is reachable from elsewhere."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class ServeSettings:
    """What ``saekit serve`` binds and how much one request may ask for (each limit has its own 4xx message)."""

    host: str = setting(LOOPBACK, "address to bind; anything but loopback needs --token")
    port: int = setting(8000, "TCP port to listen on", minimum=1, maximum=65535)
    token: str | None = setting(None, "bearer token every request must carry (Authorization: Bearer TOKEN); "
                                "required off loopback", none="none")
    max_prompt_tokens: int = setting(256, "longest prompt, in tokens (BOS not counted)", minimum=1)
    max_latents: int = setting(64, "most latents one request may ask for (numResults, topK, steering features; "
                               "a graph's target logits, max_n_logits)", minimum=1)
    max_new_tokens: int = setting(64, "most tokens one steering request may generate", minimum=1)
    max_graph_prompt_tokens: int = setting(32, "longest prompt for an attribution graph, in tokens (BOS not "
                                           "counted); a graph's memory grows with the square of it", minimum=1)
    graph_max_memory_gb: float | None = setting(None, "refuse a graph whose estimated peak memory is over this many "
                                                "GB (none: 90% of the memory free when it is asked for)", above=0,
                                                none="none")
    max_body_bytes: int = setting(65_536, "largest request body, in bytes", minimum=256)
    embeddings: bool = setting(True, "search explanations by embedding (all-MiniLM-L6-v2) when it is installed; "
                               "off: plain text match only")

    def validate(self) -> ServeSettings:
        check_rules(self, "serve settings")
        if self.token is not None and not self.token.strip():
            raise SaekitError("--token is empty; give a secret string, or leave the flag out on loopback")
        if not is_loopback(self.host) and not self.token:
            raise SaekitError(f"--host {self.host} is reachable from other machines; give --token SECRET so only "
                              "callers holding it are served, or bind 127.0.0.1")
        return self

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)
