"""Activations of a model's training contexts, as a deterministic sequence of chunks, cached on disk.

Chunk ``i`` holds the activations of training contexts ``[i*C, (i+1)*C)`` at every requested site,
BOS positions and outlier-norm tokens removed (rows aligned across sites, so an SAE's input and a
transcoder's target stay paired). A chunk is read from the cache when present and computed (then
written atomically as safetensors) otherwise, so a run can stop anywhere and the next run, or a
resumed one, sees exactly the same data. The model is loaded only if some chunk must be computed.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saekit.activations.prefetch import prefetched
from saekit.activations.spec import CACHE_FORMAT_VERSION, ActivationSpec, DataConfig
from saekit.data.contexts import iter_contexts
from saekit.data.corpus import Document, load_corpus, split_documents
from saekit.errors import SaekitError
from saekit.io import load_tensors, read_json, remove_stale_temporaries, save_tensors, write_json
from saekit.models.hooks import capture
from saekit.models.loading import LoadedModel


@dataclass
class CorpusSplit:
    train: list[Document]
    eval: list[Document]


def load_split(data: DataConfig) -> CorpusSplit:
    train, evaluation = split_documents(load_corpus(data.corpus, data.text_field), data.eval_fraction, data.seed)
    return CorpusSplit(train, evaluation)


def contexts_for(loaded: LoadedModel, docs: list[Document], data: DataConfig, seed: int) -> Iterator[Tensor]:
    return iter_contexts(docs, loaded.tokenizer, data.context_length, loaded.bos_token_id,
                         loaded.eos_token_id, seed=seed)


def token_mask(activations: dict[str, Tensor], exclude_bos: bool, outlier_norm_factor: float | None) -> Tensor:
    """[batch, seq] mask of positions kept for training: not BOS, not an outlier at any site."""
    first = next(iter(activations.values()))
    keep = torch.ones(first.shape[:2], dtype=torch.bool, device=first.device)
    if exclude_bos:
        keep[:, 0] = False
    if outlier_norm_factor is not None:
        for value in activations.values():
            norms = value.norm(dim=-1)
            keep &= norms <= outlier_norm_factor * norms[keep].median()
    return keep


class ActivationSource:
    """The chunk sequence for one :class:`ActivationSpec`, backed by an optional cache directory."""

    def __init__(self, spec: ActivationSpec, cache_root: str | Path | None,
                 load: Callable[[], LoadedModel], model_batch_contexts: int = 16) -> None:
        self.spec = spec
        self.cache_dir = Path(cache_root) / spec.key() if cache_root is not None else None
        self._load = load
        self._loaded: LoadedModel | None = None
        self.model_batch_contexts = model_batch_contexts
        self._contexts: Iterator[Tensor] | None = None
        self._next_context = 0
        # What computing chunks cost (cache reads excluded): the forward-only rate a run reports.
        self.forward_tokens = 0
        self.forward_seconds = 0.0
        if self.cache_dir is not None:
            self._claim_cache_dir()

    def _claim_cache_dir(self) -> None:
        """Record the spec in the entry's manifest, or check it is the recorded one (a copied-in entry is not)."""
        manifest_path = self.cache_dir / "manifest.json"
        manifest = {"format_version": CACHE_FORMAT_VERSION, **self.spec.manifest()}
        if manifest_path.is_file():
            recorded = read_json(manifest_path, "activation cache manifest")
            if recorded != json.loads(json.dumps(manifest)):
                raise SaekitError(f"activation cache entry {self.cache_dir} holds activations of other settings "
                                  f"than this run's; delete that directory (it is rebuilt) or choose another "
                                  "--cache-dir")
        else:
            write_json(manifest_path, manifest)
        remove_stale_temporaries(self.cache_dir)

    @property
    def loaded(self) -> LoadedModel:
        if self._loaded is None:
            self._loaded = self._load()
        return self._loaded

    def chunk_path(self, index: int) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"chunk_{index:06d}.safetensors"

    def chunk(self, index: int) -> dict[str, Tensor]:
        path = self.chunk_path(index)
        if path is not None and path.is_file():
            activations = load_tensors(path, "activation cache chunk")
        else:
            activations = self._compute(index)
            if path is not None:
                save_tensors(path, activations)
        return activations

    def chunks(self, start: int = 0, progress: bool = True, prefetch: int = 0,
               step: int = 1) -> Iterator[dict[str, Tensor]]:
        """Chunks ``start, start + step, ...`` without end; with ``prefetch`` > 0, that many are made ahead.

        Prefetching runs the model (or the cache read) on a background thread while the caller trains
        on the chunk it has, so the two overlap; the sequence is the same either way. ``step`` lets a
        process of a group read only its own share of the chunks.
        """
        indices = itertools.count(start, step)
        produced = (self.chunk(index) for index in indices)
        if prefetch > 0:
            produced = prefetched(produced, prefetch)
        with tqdm(desc="activation chunks", unit="chunk", disable=not progress) as bar:
            for chunk in produced:
                yield chunk
                bar.update()

    def _contexts_at(self, first: int, count: int) -> Tensor:
        if self._contexts is not None and first > self._next_context:  # skipping ahead: another rank's share
            self._next_context += sum(1 for _ in islice(self._contexts, first - self._next_context))
        if self._contexts is None or self._next_context != first:
            data = self.spec.data
            self._contexts = islice(contexts_for(self.loaded, load_split(data).train, data, data.seed), first, None)
            self._next_context = first
        rows = list(islice(self._contexts, count))
        self._next_context += len(rows)
        if len(rows) < count:
            raise SaekitError(
                f"training corpus {self.spec.data.corpus!r} ran out after {self._next_context} contexts of "
                f"{self.spec.data.context_length} tokens; ask for fewer training tokens or give a larger corpus"
            )
        return torch.stack(rows)

    @torch.no_grad()
    def _compute(self, index: int) -> dict[str, Tensor]:
        count = self.spec.data.contexts_per_chunk
        contexts = self._contexts_at(index * count, count)
        started = time.perf_counter()
        adapter = self.loaded.adapter
        sites = [adapter.site(name) for name in self.spec.sites]
        parts: dict[str, list[Tensor]] = {name: [] for name in self.spec.sites}
        for batch in contexts.split(self.model_batch_contexts):
            captured = capture(adapter, batch.to(self.loaded.device), sites)
            by_name = {site.name: captured[site] for site in sites}
            keep = token_mask(by_name, self.spec.data.exclude_bos, self.spec.data.outlier_norm_factor)
            for name, value in by_name.items():
                parts[name].append(value[keep].float())  # left on the model's device: the dictionary trains there
        chunk = {name: torch.cat(values) for name, values in parts.items()}
        if chunk and next(iter(chunk.values())).device.type == "cuda":
            torch.cuda.synchronize()  # so the time below is the forward's, not its launch's
        self.forward_seconds += time.perf_counter() - started
        self.forward_tokens += contexts.numel()
        return chunk
