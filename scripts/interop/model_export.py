"""saekit's model handed to the anchor libraries: the embedded default model as a plain Hugging Face directory, and
a local Llama directory rebuilt as a TransformerLens ``HookedTransformer``, without any download.

Shared by the comparison scripts and their workers, which run in different venvs: ``export_default_model`` runs in
saekit's venv (it loads the model the way saekit does); ``load_tokenizer``, ``load_hf_llama`` and
``hooked_transformer`` run in an anchor's venv (transformers, transformer_lens; no saekit). Only the standard
library and torch are imported at module level, so either venv can import this file.

Why each step is needed:

- A GGUF-loaded model refuses ``save_pretrained`` (its config carries the quantization), so the dequantized
  weights are copied into a plain model of the same config and saved in float32.
- Model directories written by transformers 5 (saekit's venv) keep the rope base as ``rope_parameters.rope_theta``;
  transformers 4.57 reads only ``rope_theta`` and would fall back to 10000, so the base is carried over by hand
  (SmolLM2 uses 100000). A rope type other than the default (scaling) is refused: TransformerLens' Llama config
  would not reproduce it.
- A ``TokenizersBackend`` tokenizer (transformers 5) is unknown to 4.57: it is rebuilt from tokenizer.json.
- TransformerLens cannot download the config of a local model by name, so the ``HookedTransformer`` is built the
  way ``from_pretrained_no_processing`` builds one (config from the local config.json, weights through its Llama
  converter, no folding or centering), with ``rotary_base`` set from the HF config (TransformerLens' Llama config
  of older releases drops ``rope_theta``).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch


def export_default_model(directory: Path) -> Path:
    """saekit's embedded default model (as ``saekit.models`` loads it: the GGUF dequantized) saved in float32.

    Runs in saekit's venv; an existing export at ``directory`` is reused."""
    from saekit.models.loading import load_model

    if (directory / "config.json").is_file():
        return directory
    loaded = load_model("default", dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained (its config carries the quantization): copy the dequantized
    # weights into a plain model of the same config.
    config = copy.deepcopy(loaded.model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(loaded.model)(config).to(torch.float32)
    plain.load_state_dict(loaded.model.state_dict())
    plain.save_pretrained(directory)
    loaded.tokenizer.save_pretrained(directory)
    return directory


def load_tokenizer(model_dir: Path, scratch: Path) -> Any:
    """The model directory's tokenizer. One saved by transformers 5 (``TokenizersBackend``, unknown to 4.57) is
    rebuilt from its tokenizer.json and the special tokens of its tokenizer_config.json and saved to ``scratch``
    (TransformerLens reloads a tokenizer from its ``name_or_path``)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except ValueError:
        config = json.loads((model_dir / "tokenizer_config.json").read_text())
        special = {name: config[name] for name in ("bos_token", "eos_token", "pad_token", "unk_token")
                   if isinstance(config.get(name), str)}
        PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"), **special).save_pretrained(scratch)
        return AutoTokenizer.from_pretrained(scratch)


def rope_theta(model_dir: Path) -> float:
    """The rope base saved in ``model_dir/config.json`` (either transformers generation's key); refuses scaling."""
    saved = json.loads((model_dir / "config.json").read_text())
    rope = saved.get("rope_parameters") or saved.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise SystemExit(f"{model_dir} uses rope {rope}; TransformerLens' Llama config would not reproduce it")
    return float(rope.get("rope_theta", saved.get("rope_theta", 10000.0)))


def load_hf_llama(model_dir: Path) -> tuple[Any, Any]:
    """(config, model): the local LlamaForCausalLM at ``model_dir`` in float32 with eager attention, its config's
    ``rope_theta`` set from the saved file (transformers 4.57 would read a transformers-5 directory as 10000)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    config.rope_theta = rope_theta(Path(model_dir))
    hf = AutoModelForCausalLM.from_pretrained(model_dir, config=config, torch_dtype=torch.float32,
                                              attn_implementation="eager").eval()
    if type(hf).__name__ != "LlamaForCausalLM":
        raise SystemExit(f"{model_dir} is a {type(hf).__name__}; only Llama models are rebuilt in TransformerLens")
    return config, hf


def hooked_transformer(model_dir: Path, hf: Any, tokenizer: Any, cls: Any = None) -> Any:
    """The HF Llama ``hf`` (loaded from ``model_dir``) as a TransformerLens model of class ``cls`` (default
    ``HookedTransformer``; circuit-tracer passes its replacement model), float32 on the CPU, built as
    ``from_pretrained_no_processing`` would: no LayerNorm folding, no centering, no value-bias folding."""
    from transformer_lens import HookedTransformer
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config, get_pretrained_state_dict

    cfg = get_pretrained_model_config(str(model_dir), fold_ln=False, device="cpu", dtype=torch.float32)
    cfg.rotary_base = rope_theta(Path(model_dir))  # older TransformerLens Llama configs drop rope_theta
    model = (cls or HookedTransformer)(cfg, tokenizer=tokenizer)
    state = get_pretrained_state_dict(str(model_dir), cfg, hf, dtype=torch.float32)
    model.load_and_process_state_dict(state, fold_ln=False, center_writing_weights=False, center_unembed=False,
                                      fold_value_biases=False, refactor_factored_attn_matrices=False)
    return model.eval()
