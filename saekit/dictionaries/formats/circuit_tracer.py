"""circuit-tracer format: reading and writing the transcoder directories that circuit-tracer (PyPI
``circuit-tracer`` 0.5.0; decoderesearch/circuit-tracer, formerly safety-research/circuit-tracer) loads
for attribution graphs: a set of per-layer transcoders (PLTs) or one cross-layer transcoder (CLT).

Layout (one directory; layer i is model block i, and the layers must be 0..L-1 with none missing):

- ``config.yaml``: ``model_kind`` (``transcoder_set`` or ``cross_layer_transcoder``), ``model_name``,
  ``feature_input_hook``, ``feature_output_hook`` and optionally ``scan`` (read with ``yaml.safe_load``).
- transcoder set: ``layer_{i}.safetensors`` with ``W_enc`` [m, d] (used as ``F.linear``: x @ W_enc.T),
  ``W_dec`` [m, d], ``b_enc`` [m], ``b_dec`` [d], optionally ``activation_function.threshold`` [m]
  (JumpReLU; absent: ReLU) and ``W_skip`` [d, d] (applied as x @ W_skip.T). Every layer has the same
  m and either all or none have a skip.
- cross-layer transcoder: ``W_enc_{i}.safetensors`` with ``W_enc_{i}`` [m, d], ``b_enc_{i}`` [m],
  ``b_dec_{i}`` [d] (layer i's output bias), optionally ``threshold_{i}`` [m] (JumpReLU; absent: ReLU)
  and ``W_skip_{i}`` [d, d] (applied *untransposed*, x_i @ W_skip_i), and ``W_dec_{i}.safetensors``
  with ``W_dec_{i}`` [m, L - i, d]: latent c of layer i writes ``W_dec_{i}[c, j - i]`` into layer j >= i.
  circuit-tracer 0.5.0's ``load_clt`` never reads ``W_skip_{i}`` (its ``to_safetensors`` writes them
  and GitHub main loads them): the reader applies them (with a note), the writer refuses a skip CLT.

Math (both kinds): pre = x @ W_enc.T + b_enc (the decoder bias is never subtracted from the input),
JumpReLU z = pre * (pre > threshold) (strict), ReLU z = max(pre, 0); a PLT outputs z @ W_dec + b_dec
[+ x @ W_skip.T], a CLT's layer j outputs b_dec_j + sum_{i<=j} z_i @ W_dec_i[:, j - i] [+ x_j @ W_skip_j].
This is saekit's transcoder math exactly (saekit's W_enc and W_skip are the transposes of the PLT
ones, its JumpReLU stores log thresholds, its CLT packs the same decoders as ``decoder_block(i)``), so
the weights are copied, never refitted. circuit-tracer 0.5.0 has no TopK loader (its ``TopK`` module
is never chosen by ``load_relu_transcoder`` or ``load_clt``): TopK and CLT-TopK are refused when
writing; reading a ReLU CLT is refused (saekit's CLTs are clt_jumprelu and clt_topk), as are
non-positive JumpReLU thresholds (saekit stores log thresholds). A PLT whose thresholds are all zero
reads as ReLU (the same function).

Site mapping. circuit-tracer names hooks relative to ``blocks.{i}``; its TransformerLens backend
loads the model with ``fold_ln=False`` and wraps each MLP with ``hook_in``/``hook_out`` hook points,
and its nnsight backend maps the same names onto HF modules:

- ``mlp.hook_in`` (the MLP's input: the pre-MLP norm's output, weight included) = ``blocks.{i}.mlp_in``.
- ``mlp.hook_out`` (the MLP module's output) = ``blocks.{i}.mlp_out``.
- ``hook_mlp_out`` = ``blocks.{i}.mlp_out`` except in Gemma 2/3, where it follows the post-MLP norm
  (refused there).
- ``hook_resid_mid`` (the residual before the pre-MLP norm) and ``ln2.hook_normalized`` (the norm's
  output before its weight, with fold_ln=False) have no saekit site: refused.

The writer names ``mlp.hook_in`` / ``mlp.hook_out``: exact in the TransformerLens backend for every
model, and mapped by the nnsight backend for Llama, Qwen3 and GPT-OSS (not Gemma 2). circuit-tracer
zeroes the first position's features during attribution; that is its runtime choice, not the format.

Handing a written directory ``PARENT/NAME`` to circuit-tracer: it is the layout of circuit-tracer's
local transcoder cache, so ``load_transcoder_from_hub("NAME", cache_dir="PARENT")`` loads it, and
``ReplacementModel.from_pretrained(model, "NAME")`` does with ``CIRCUIT_TRACER_CACHE_DIR=PARENT``.
config.yaml carries no ``transcoders:`` list (the reader refuses one: such lists point at remote or
Gemma Scope files). ``scripts/interop/circuit_tracer_worker.py`` checks saekit-written files with
circuit-tracer 0.5.0's own loaders, encode/decode and ``attribute``.

Read (2026-12): circuit_tracer/transcoder/single_layer_transcoder.py, cross_layer_transcoder.py and
activation_functions.py, circuit_tracer/utils/hf_utils.py, caching.py and tl_nnsight_mapping.py,
circuit_tracer/replacement_model/replacement_model_transformerlens.py (circuit-tracer 0.5.0 wheel
from PyPI; decoderesearch/circuit-tracer and safety-research/circuit-tracer on GitHub).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from saekit.dictionaries.base import Dictionary, DictionaryConfig
from saekit.dictionaries.crosslayer import CrossLayerTranscoder
from saekit.dictionaries.formats.common import PICKLE_SUFFIXES, load_weights
from saekit.dictionaries.registry import build_dictionary, read_sites, written_sites
from saekit.dictionaries.validate import check_tensors, stated
from saekit.errors import SaekitError
from saekit.io import load_tensors, replace_directory, save_tensors, write_text

CONFIG_FILE = "config.yaml"
SET_KIND, CLT_KIND = "transcoder_set", "cross_layer_transcoder"
INPUT_HOOK, OUTPUT_HOOK = "mlp.hook_in", "mlp.hook_out"
THRESHOLD = "activation_function.threshold"
_INPUT_HOOKS = {"mlp.hook_in": "mlp_in"}
_OUTPUT_HOOKS = {"mlp.hook_out": "mlp_out", "hook_mlp_out": "mlp_out"}
_NO_SITE = {
    "hook_resid_mid": "the residual stream before the pre-MLP norm",
    "ln2.hook_normalized": "the pre-MLP norm's output before its weight (circuit-tracer loads with fold_ln=False)",
}
_POST_MLP_NORM = re.compile(r"gemma-?[23](?![0-9.]*b)", re.IGNORECASE)  # Gemma 2/3, not gemma-2b (Gemma 1)


# ---- reading --------------------------------------------------------------------------------------

def _config(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise SaekitError(f"circuit-tracer directory not found: {path}")
    if not (path / CONFIG_FILE).is_file():
        raise SaekitError(f"{path} is not a circuit-tracer directory: {CONFIG_FILE} not found")
    try:
        config = yaml.safe_load((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise SaekitError(f"{path / CONFIG_FILE} is not readable YAML ({' '.join(str(err).split())})") from err
    if not isinstance(config, dict):
        raise SaekitError(f"{path / CONFIG_FILE} is not a YAML mapping")
    return config


def _sites(config: dict[str, Any], path: Path) -> tuple[str, str, list[str]]:
    """(input kind, output kind, notes) of the config's hooks; one line when a hook has no saekit site."""
    hook_in, hook_out = config.get("feature_input_hook"), config.get("feature_output_hook")
    if not isinstance(hook_in, str) or not isinstance(hook_out, str):
        raise SaekitError(f"{path}: config.yaml needs feature_input_hook and feature_output_hook names, got "
                          f"{hook_in!r} and {hook_out!r}")
    if hook_in in _NO_SITE:
        raise SaekitError(f"{path}: feature_input_hook {hook_in!r} is {_NO_SITE[hook_in]}; saekit has no such site "
                          "(its mlp_in is the MLP's input, after the norm and its weight)")
    if hook_in not in _INPUT_HOOKS:
        raise SaekitError(f"{path}: feature_input_hook {hook_in!r} has no saekit site; saekit maps "
                          f"{', '.join(_INPUT_HOOKS)}")
    if hook_out not in _OUTPUT_HOOKS:
        raise SaekitError(f"{path}: feature_output_hook {hook_out!r} has no saekit site; saekit maps "
                          f"{', '.join(_OUTPUT_HOOKS)}")
    model = config.get("model_name")
    notes = []
    if hook_out == "hook_mlp_out":
        if isinstance(model, str) and _POST_MLP_NORM.search(model):
            raise SaekitError(f"{path}: feature_output_hook 'hook_mlp_out' of {model} follows the post-MLP norm; "
                              "saekit's mlp_out is the MLP's own output (mlp.hook_out)")
        notes.append("hook_mlp_out read as mlp_out (the same for models without a post-MLP norm)")
    return _INPUT_HOOKS[hook_in], _OUTPUT_HOOKS[hook_out], notes


def _numbered(path: Path, stem: str) -> int:
    """How many ``{stem}{i}.safetensors`` files, checked to be 0..n-1; pickles in their place are refused."""
    pattern = re.compile(rf"{re.escape(stem)}(\d+)\.safetensors")
    found = sorted(int(m.group(1)) for p in path.iterdir() if (m := pattern.fullmatch(p.name)))
    if not found:
        pickles = sorted(p.name for p in path.iterdir() if p.name.startswith(stem) and p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise SaekitError(f"{path} holds {', '.join(pickles)} but no {stem}N.safetensors; saekit never "
                              "unpickles: convert the weights to safetensors first")
        raise SaekitError(f"{path} is not a circuit-tracer directory: no {stem}0.safetensors")
    if found != list(range(len(found))):
        missing = sorted(set(range(found[-1] + 1)) - set(found))
        raise SaekitError(f"{path}: {stem}{missing[0]}.safetensors is missing (circuit-tracer needs layers "
                          f"0..{found[-1]} without gaps)")
    return len(found)


def _log_threshold(threshold: Tensor, path: Path) -> Tensor:
    threshold = threshold.double()
    if not bool((threshold > 0).all()):
        raise SaekitError(f"{path}: JumpReLU thresholds must be positive (saekit stores log thresholds)")
    return threshold.log()


def _source(config: dict[str, Any], path: Path, kind_in: str, kind_out: str, layer: int, notes: list[str],
            **more: Any) -> dict[str, Any]:
    return {"model": config.get("model_name"), "site": f"blocks.{layer}.{kind_in}",
            "target_site": f"blocks.{layer}.{kind_out}", **more, "format": "circuit_tracer",
            "model_kind": config.get("model_kind"), "feature_input_hook": config.get("feature_input_hook"),
            "feature_output_hook": config.get("feature_output_hook"), "scan": config.get("scan"),
            "notes": list(notes)}


def read_circuit_tracer_transcoders(directory: str | Path) -> list[tuple[Dictionary, dict[str, Any]]]:
    """A circuit-tracer transcoder set -> one (saekit transcoder in eval mode, source) per layer, layer 0 first."""
    path = Path(directory)
    config = _config(path)
    if config.get("model_kind") != SET_KIND:
        raise SaekitError(f"{path}: model_kind is {config.get('model_kind')!r}, not {SET_KIND!r}")
    kind_in, kind_out, notes = _sites(config, path)
    if "transcoders" in config:
        raise SaekitError(f"{path}: config.yaml lists its weights under 'transcoders' (remote or Gemma Scope files); "
                          "saekit reads only layer_N.safetensors beside config.yaml")
    layers = _numbered(path, "layer_")
    loaded, width, d_model, skip = [], None, None, None
    for layer in range(layers):
        file = path / f"layer_{layer}.safetensors"
        tensors = load_tensors(file, "circuit-tracer transcoder weights")
        for name in ("b_enc", "b_dec"):
            if name not in tensors or tensors[name].dim() != 1:
                raise SaekitError(f"{file} has no 1-d tensor {name!r} (found {sorted(tensors)})")
        m, d = tensors["b_enc"].shape[0], tensors["b_dec"].shape[0]
        check_tensors(file, tensors, {"W_enc": (m, d), "W_dec": (m, d), "b_enc": (m,), "b_dec": (d,)},
                      stated("b_enc and b_dec", d_transcoder=m, d_model=d),
                      optional={THRESHOLD: (m,), "W_skip": (d, d)})
        if width is not None and (m, d) != (width, d_model):
            raise SaekitError(f"{file}: {m} latents of width {d} but layer 0 has {width} of width {d_model} "
                              "(circuit-tracer needs one d_transcoder for every layer)")
        if skip is not None and ("W_skip" in tensors) != skip:
            raise SaekitError(f"{file}: W_skip in some layers only (all or none must have it)")
        width, d_model, skip = m, d, "W_skip" in tensors
        loaded.append((file, tensors))
    result = []
    for layer, (file, tensors) in enumerate(loaded):
        weights = {"W_enc": tensors["W_enc"].double().T, "b_enc": tensors["b_enc"].double(),
                   "W_dec": tensors["W_dec"].double(), "b_dec": tensors["b_dec"].double()}
        if skip:
            weights["W_skip"] = tensors["W_skip"].double().T
        threshold = tensors.get(THRESHOLD)
        architecture = "relu" if threshold is None or not bool(threshold.any()) else "jumprelu"
        layer_notes = list(notes)
        if architecture == "jumprelu":
            weights["log_threshold"] = _log_threshold(threshold, file)
        elif threshold is not None:
            layer_notes.append("JumpReLU thresholds all zero: read as ReLU")
        dictionary = build_dictionary(DictionaryConfig(architecture=architecture, d_in=d_model, width=width,
                                                       d_out=d_model, extra={"skip_connection": skip}))
        load_weights(dictionary, weights)
        if architecture == "jumprelu":
            dictionary.calibrated.fill_(1.0)
        result.append((dictionary, _source(config, path, kind_in, kind_out, layer, layer_notes)))
    return result


def read_circuit_tracer_clt(directory: str | Path) -> tuple[Dictionary, dict[str, Any]]:
    """A circuit-tracer cross-layer transcoder -> (saekit clt_jumprelu in eval mode, source with sites lists)."""
    path = Path(directory)
    config = _config(path)
    if config.get("model_kind") != CLT_KIND:
        raise SaekitError(f"{path}: model_kind is {config.get('model_kind')!r}, not {CLT_KIND!r}")
    kind_in, kind_out, notes = _sites(config, path)
    layers = _numbered(path, "W_enc_")
    encoders, decoders = [], []
    for layer in range(layers):
        file = path / f"W_enc_{layer}.safetensors"
        tensors = load_tensors(file, "circuit-tracer CLT encoder")
        for name in (f"b_enc_{layer}", f"b_dec_{layer}"):
            if name not in tensors or tensors[name].dim() != 1:
                raise SaekitError(f"{file} has no 1-d tensor {name!r} (found {sorted(tensors)})")
        m, d = tensors[f"b_enc_{layer}"].shape[0], tensors[f"b_dec_{layer}"].shape[0]
        if layer == 0:
            width, d_model = m, d
            skip, jump = f"W_skip_{layer}" in tensors, f"threshold_{layer}" in tensors
            if not jump:
                raise SaekitError(f"{path}: a ReLU CLT (no threshold_N) has no saekit architecture; saekit reads "
                                  "JumpReLU CLTs as clt_jumprelu")
        expected = {f"W_enc_{layer}": (width, d_model), f"b_enc_{layer}": (width,), f"b_dec_{layer}": (d_model,)}
        if jump:
            expected[f"threshold_{layer}"] = (width,)
        if skip:
            expected[f"W_skip_{layer}"] = (d_model, d_model)
        layer0 = stated("layer 0's b_enc_0 and b_dec_0", d_transcoder=width, d_model=d_model)
        check_tensors(file, tensors, expected, layer0)
        dec_file = path / f"W_dec_{layer}.safetensors"
        if not dec_file.is_file():
            raise SaekitError(f"{path}: W_dec_{layer}.safetensors is missing")
        dec = load_tensors(dec_file, "circuit-tracer CLT decoder")
        check_tensors(dec_file, dec, {f"W_dec_{layer}": (width, layers - layer, d_model)},
                      f"{layers} layers and {layer0}")
        encoders.append(tensors)
        decoders.append(dec[f"W_dec_{layer}"].double())
    dictionary = build_dictionary(DictionaryConfig(architecture="clt_jumprelu", d_in=layers * d_model,
                                                   width=layers * width, d_out=layers * d_model, layers=layers,
                                                   extra={"skip_connection": skip}))
    assert isinstance(dictionary, CrossLayerTranscoder)
    weights = {
        "W_enc": torch.cat([t[f"W_enc_{i}"].double().T for i, t in enumerate(encoders)], dim=1),
        "b_enc": torch.cat([t[f"b_enc_{i}"].double() for i, t in enumerate(encoders)]),
        "b_dec": torch.cat([t[f"b_dec_{i}"].double() for i, t in enumerate(encoders)]),
        "log_threshold": torch.cat([_log_threshold(t[f"threshold_{i}"], path / f"W_enc_{i}.safetensors")
                                    for i, t in enumerate(encoders)]),
        # decoder_block(i) is [m, (L - i) d]: W_dec_i's rows flattened, blocks stacked in layer order.
        "W_dec": torch.cat([w.reshape(-1, d_model) for w in decoders]),
    }
    if skip:
        weights["W_skip"] = torch.cat([t[f"W_skip_{i}"].double() for i, t in enumerate(encoders)], dim=1)
    load_weights(dictionary, weights)
    dictionary.calibrated.fill_(1.0)
    if skip:
        notes = [*notes, "W_skip_N applied (circuit-tracer 0.5.0's load_clt ignores them; later versions apply them)"]
    sites = [f"blocks.{i}.{kind_in}" for i in range(layers)]
    targets = [f"blocks.{i}.{kind_out}" for i in range(layers)]
    source = _source(config, path, kind_in, kind_out, 0, notes, layers=f"0-{layers - 1}", sites=sites,
                     target_sites=targets)
    return dictionary, source


def read_circuit_tracer(directory: str | Path) -> list[tuple[Dictionary, dict[str, Any]]]:
    """Either kind: a transcoder set -> one (dictionary, source) per layer; a CLT -> one entry over all layers."""
    path = Path(directory)
    kind = _config(path).get("model_kind")
    if kind == SET_KIND:
        return read_circuit_tracer_transcoders(path)
    if kind == CLT_KIND:
        return [read_circuit_tracer_clt(path)]
    raise SaekitError(f"{path}: model_kind {kind!r} is not {SET_KIND!r} or {CLT_KIND!r}")


# ---- writing --------------------------------------------------------------------------------------

def _f32(tensor: Tensor) -> Tensor:
    return tensor.detach().float().cpu().contiguous()


def _model_name(model_name: str | None, sources: Sequence[dict[str, Any]]) -> str:
    name = model_name or next((s.get("model") for s in sources if s.get("model")), None)
    if not isinstance(name, str) or not name:
        raise SaekitError("circuit-tracer's config.yaml needs the model name: pass model_name= (or a source with "
                          "'model')")
    return name


def _check_sites(source: dict[str, Any], layers: range, what: str) -> None:
    if not source.get("site") and not source.get("sites"):
        return
    reads, writes = read_sites(source), written_sites(source)
    want_in = [f"blocks.{i}.mlp_in" for i in layers]
    want_out = [f"blocks.{i}.mlp_out" for i in layers]
    if reads != want_in or writes != want_out:
        raise SaekitError(f"{what} reads {reads} and writes {writes}; circuit-tracer needs "
                          f"blocks.i.mlp_in -> blocks.i.mlp_out for layers {layers.start}..{layers.stop - 1}")


def _config_text(kind: str, model_name: str, scan: str | None) -> str:
    config: dict[str, Any] = {"model_kind": kind, "model_name": model_name, "feature_input_hook": INPUT_HOOK,
                              "feature_output_hook": OUTPUT_HOOK}
    if scan is not None:
        config["scan"] = scan
    return yaml.safe_dump(config, sort_keys=False)


def write_circuit_tracer_transcoders(directory: str | Path, transcoders: Sequence[Dictionary],
                                     sources: Sequence[dict[str, Any]] | None = None, *,
                                     model_name: str | None = None, scan: str | None = None) -> Path:
    """Write per-layer saekit transcoders (``transcoders[i]``: blocks.i.mlp_in -> blocks.i.mlp_out; relu or
    jumprelu, with or without skip) as a circuit-tracer transcoder set; the directory appears only when complete."""
    transcoders = list(transcoders)
    sources = list(sources) if sources is not None else [{} for _ in transcoders]
    if not transcoders:
        raise SaekitError("a circuit-tracer transcoder set needs at least one transcoder (layer 0)")
    if len(sources) != len(transcoders):
        raise SaekitError(f"{len(transcoders)} transcoders but {len(sources)} sources")
    first = transcoders[0].config
    tensors = []
    for layer, (dictionary, source) in enumerate(zip(transcoders, sources)):
        config = dictionary.config
        what = f"transcoder {layer}"
        if config.architecture not in ("relu", "jumprelu"):
            raise SaekitError(f"{what} is {config.architecture!r}; circuit-tracer loads per-layer transcoders as "
                              "ReLU or JumpReLU only (saekit writes relu and jumprelu)")
        if not config.is_transcoder or config.d_in != config.output_dim:
            raise SaekitError(f"{what} is not a transcoder of equal input and output width (d_in={config.d_in}, "
                              f"d_out={config.d_out}); circuit-tracer's transcoders map d_model to d_model")
        if (config.d_in, config.width) != (first.d_in, first.width):
            raise SaekitError(f"{what} has d_in={config.d_in}, width={config.width} but transcoder 0 has "
                              f"d_in={first.d_in}, width={first.width} (circuit-tracer needs one size for all)")
        if (dictionary.W_skip is None) != (transcoders[0].W_skip is None):
            raise SaekitError(f"{what}: skip connections in some transcoders only (all or none must have one)")
        _check_sites(source, range(layer, layer + 1), what)
        layer_tensors = {"W_enc": _f32(dictionary.W_enc.T), "W_dec": _f32(dictionary.W_dec),
                         "b_enc": _f32(dictionary.b_enc), "b_dec": _f32(dictionary.b_dec)}
        if config.architecture == "jumprelu":
            layer_tensors[THRESHOLD] = _f32(dictionary.threshold)
        if dictionary.W_skip is not None:
            layer_tensors["W_skip"] = _f32(dictionary.W_skip.T)
        tensors.append(layer_tensors)
    text = _config_text(SET_KIND, _model_name(model_name, sources), scan)

    def build(tmp: Path) -> None:
        for layer, layer_tensors in enumerate(tensors):
            save_tensors(tmp / f"layer_{layer}.safetensors", layer_tensors)
        write_text(tmp / CONFIG_FILE, text)

    return replace_directory(directory, build)


def write_circuit_tracer_clt(directory: str | Path, clt: Dictionary, source: dict[str, Any] | None = None, *,
                             model_name: str | None = None, scan: str | None = None) -> Path:
    """Write a saekit clt_jumprelu (no skip) over layers 0..L-1 (mlp_in -> mlp_out) as a circuit-tracer
    cross-layer transcoder; the directory appears only when complete."""
    source = source or {}
    config = clt.config
    if config.architecture != "clt_jumprelu" or not isinstance(clt, CrossLayerTranscoder):
        raise SaekitError(f"architecture {config.architecture!r} has no circuit-tracer CLT form; circuit-tracer's "
                          "CLTs are ReLU or JumpReLU (saekit writes clt_jumprelu)")
    layers, m, d = clt.layers, clt.latents_per_layer, clt.layer_input_width
    if clt.layer_output_width != d:
        raise SaekitError(f"the CLT reads width {d} but writes {clt.layer_output_width}; circuit-tracer's CLTs map "
                          "d_model to d_model")
    if clt.W_skip is not None:
        raise SaekitError("circuit-tracer 0.5.0's load_clt ignores W_skip_N files, so this CLT's skip connection "
                          "would be dropped silently; saekit writes CLTs without skip only")
    _check_sites(source, range(layers), "the CLT")
    threshold = clt.threshold
    tensors = []
    for i in range(layers):
        latents, outputs = clt.layer_slice(i, m), clt.layer_slice(i, d)
        encoder = {f"W_enc_{i}": _f32(clt.W_enc[:, latents].T), f"b_enc_{i}": _f32(clt.b_enc[latents]),
                   f"b_dec_{i}": _f32(clt.b_dec[outputs]), f"threshold_{i}": _f32(threshold[latents])}
        decoder = {f"W_dec_{i}": _f32(clt.decoder_block(i).reshape(m, layers - i, d))}
        tensors.append((encoder, decoder))
    text = _config_text(CLT_KIND, _model_name(model_name, [source]), scan)

    def build(tmp: Path) -> None:
        for i, (encoder, decoder) in enumerate(tensors):
            save_tensors(tmp / f"W_enc_{i}.safetensors", encoder)
            save_tensors(tmp / f"W_dec_{i}.safetensors", decoder)
        write_text(tmp / CONFIG_FILE, text)

    return replace_directory(directory, build)


def write_circuit_tracer(directory: str | Path, dictionaries: Dictionary | Sequence[Dictionary],
                         sources: dict[str, Any] | Sequence[dict[str, Any]] | None = None, *,
                         model_name: str | None = None, scan: str | None = None) -> Path:
    """One CLT (a Dictionary) -> :func:`write_circuit_tracer_clt`; per-layer transcoders (a sequence, layer 0
    first) -> :func:`write_circuit_tracer_transcoders`."""
    if isinstance(dictionaries, Dictionary):
        if sources is not None and not isinstance(sources, dict):
            raise SaekitError("a CLT takes one source dict")
        return write_circuit_tracer_clt(directory, dictionaries, sources, model_name=model_name, scan=scan)
    if isinstance(sources, dict):
        raise SaekitError("per-layer transcoders take one source dict per layer")
    return write_circuit_tracer_transcoders(directory, dictionaries, sources, model_name=model_name, scan=scan)
