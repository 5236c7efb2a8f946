"""Fixtures shared by the dictionary tests: single-threaded torch and small random dictionaries."""

from __future__ import annotations

import pytest
import torch

from saekit.dictionaries import Dictionary, DictionaryConfig, build_dictionary


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """These tests run many tiny matmuls: a second thread only adds synchronisation, and on a shared
    2-core machine an oversubscribed thread pool made training steps 10-40x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def make_dictionary():
    return make


@pytest.fixture
def perturbed():
    return perturb


def make(architecture: str, d_in: int = 16, width: int = 64, seed: int = 0, **kwargs) -> Dictionary:
    """A small dictionary with a fixed seed (``kwargs`` go to DictionaryConfig)."""
    torch.manual_seed(seed)
    return build_dictionary(DictionaryConfig(architecture=architecture, d_in=d_in, width=width, **kwargs))


@torch.no_grad()
def perturb(dictionary: Dictionary, scale: float = 0.1, seed: int = 1) -> Dictionary:
    """Move every parameter off its initial value so tests cannot pass on zeros (thresholds excluded)."""
    generator = torch.Generator().manual_seed(seed)
    for name, parameter in dictionary.named_parameters():
        if name != "log_threshold":
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    dictionary.normalize_decoder()
    return dictionary
