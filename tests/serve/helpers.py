"""What the explorer's tests share besides fixtures: the offline encoder they compare the API with, and the real
uvicorn server on loopback."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import uvicorn

from saekit.models.hooks import capture

EVIL = "<img src=x onerror=\"document.title='PWNED'\"><b>bold</b>"


def offline_latents(run, prompt: str) -> torch.Tensor:
    """[S, width]: the run's dictionary encoding the captured site activations of BOS + prompt."""
    ids = run.loaded.prompt_ids(prompt)
    site = run.read_sites[0]
    with torch.no_grad():
        x = capture(run.loaded.adapter, ids[None], [site])[site].float()
        return run.dictionary.encode(x)[0]


@contextmanager
def served(app) -> Iterator[str]:
    """``app`` on the real uvicorn server, on a free loopback port in a thread; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
