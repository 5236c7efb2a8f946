"""Gemma Scope fixtures, read by SAELens's own Gemma Scope loaders, without network.

    scripts/interop/.anchors-venv/bin/python scripts/interop/gemma_scope_worker.py make OUT

Builds small random Gemma Scope dictionaries laid out as the hub repositories are (Gemma Scope 1:
``gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_41/params.npz``, an MLP SAE and a transcoder; Gemma
Scope 2: ``gemma-scope-2-270m-pt/resid_post/layer_5_width_16k_l0_small/params.safetensors`` + ``config.json``,
an MLP SAE, a transcoder and an affine (skip) transcoder) under ``OUT/<case>/``. The same files are put in
a Hugging Face cache under a temporary HF_HOME (``models--google--<repo>/snapshots/<sha>/...``) and loaded
with HF_HUB_OFFLINE=1 through SAELens's own loaders (``gemma_2_sae_huggingface_loader``,
``gemma_2_transcoder_huggingface_loader``, ``gemma_3_sae_huggingface_loader``) handed to
``SAE.load_from_disk`` as its converter. Two things are given to the loaders: Gemma Scope 1's loaders take
d_in / d_sae from the real model names (2304 for 2b...), so the toy sizes come in as ``cfg_overrides``;
and Gemma Scope 2's reads the tensor shapes with an HTTP request for the file's header
(``get_safetensors_tensor_shapes``), replaced by reading the same header from the cached file.
SAELens's latents and reconstructions (``sae(x)``, skip path included) go to ``OUT/<case>/expected.safetensors``
and SAELens's config (architecture, hooks, model) to ``OUT/<case>/case.json``, which the saekit tests read.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

D, M, TOKENS = 16, 48, 24
SHA = "0123456789abcdef0123456789abcdef01234567"


def _params(seed: int, d_out: int = D) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"W_enc": rng.normal(0, 0.3, (D, M)).astype(np.float32),
            "b_enc": rng.normal(0, 0.2, M).astype(np.float32),
            "W_dec": (rng.normal(0, 1, (M, d_out)) * rng.uniform(0.2, 3, (M, 1))).astype(np.float32),
            "b_dec": rng.normal(0, 1, d_out).astype(np.float32),
            "threshold": rng.uniform(0.05, 0.6, M).astype(np.float32)}


# case: (repo id, folder in the repo, Gemma Scope version, loader name, extra)
CASES = {
    "scope1_res": ("google/gemma-scope-2b-pt-res", "layer_12/width_16k/average_l0_41", 1, "gemma_2", {}),
    "scope1_mlp": ("google/gemma-scope-9b-it-mlp", "layer_3/width_16k/average_l0_20", 1, "gemma_2",
                   {"lower_case": True, "unit_scaling_factor": True}),
    "scope1_transcoder": ("google/gemma-scope-2b-pt-transcoders", "layer_5/width_16k/average_l0_30", 1,
                          "gemma_2_transcoder", {}),
    "scope2_res": ("google/gemma-scope-2-270m-pt", "resid_post/layer_5_width_16k_l0_small", 2, "gemma_3",
                   {"config": {"model_name": "gemma-v3-270m-pt", "hf_hook_point_in": "model.layers.5.output"}}),
    "scope2_mlp": ("google/gemma-scope-2-1b-it", "mlp_out_all/layer_7_width_16k_l0_big", 2, "gemma_3",
                   {"config": {"model_name": "gemma-v3-1b-it",
                               "hf_hook_point_in": "model.layers.7.post_feedforward_layernorm.output"}}),
    "scope2_transcoder": ("google/gemma-scope-2-270m-pt", "transcoder/layer_9_width_16k_l0_small", 2, "gemma_3",
                          {"config": {"model_name": "gemma-v3-270m-pt", "affine_connection": False}, "d_out": 20}),
    "scope2_transcoder_affine": ("google/gemma-scope-2-270m-pt", "transcoder_all/layer_9_width_16k_l0_small_affine",
                                 2, "gemma_3", {"config": {"model_name": "gemma-v3-270m-pt",
                                                           "affine_connection": True}, "skip": True}),
}


def _scope2_config(folder: Path, extra: dict) -> dict:
    layer = folder.name.split("_")[1]
    config = {"architecture": "jump_relu", "width": M, **extra}
    if folder.parent.name.startswith("transcoder"):
        config.update(hf_hook_point_in=f"model.layers.{layer}.pre_feedforward_layernorm.output",
                      hf_hook_point_out=f"model.layers.{layer}.post_feedforward_layernorm.output")
    return config


def _write_case(folder: Path, version: int, seed: int, extra: dict) -> None:
    """The dictionary's files as the hub holds them."""
    folder.mkdir(parents=True, exist_ok=True)
    params = _params(seed, extra.get("d_out", D))
    if version == 1:
        if extra.get("lower_case"):
            params = {("w_" + k[2:] if k.startswith("W_") else k): v for k, v in params.items()}
        if extra.get("unit_scaling_factor"):
            params["scaling_factor"] = np.ones(M, dtype=np.float32)
        np.savez(folder / "params.npz", **params)
        return
    tensors = {k.lower(): torch.from_numpy(v) for k, v in params.items()}
    if extra.get("skip"):
        g = torch.Generator().manual_seed(seed)
        tensors["affine_skip_connection"] = torch.randn(D, tensors["w_dec"].shape[1], generator=g) / 4
    save_file(tensors, str(folder / "params.safetensors"))
    (folder / "config.json").write_text(json.dumps(_scope2_config(folder, extra["config"])))


def _cache(hf_home: Path, repo: str, folder_in_repo: str, files: Path) -> None:
    """Put one dictionary's files where huggingface_hub's cache keeps repo ``repo`` at revision main."""
    root = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(SHA)
    target = root / "snapshots" / SHA / folder_in_repo
    target.mkdir(parents=True, exist_ok=True)
    for file in files.iterdir():
        shutil.copy(file, target / file.name)


def _local_shapes(repo_id: str, filename: str) -> dict[str, list[int]]:
    """What SAELens's get_safetensors_tensor_shapes returns, read from the cached file instead of over HTTP."""
    from huggingface_hub import hf_hub_download
    from safetensors import safe_open

    with safe_open(hf_hub_download(repo_id, filename), framework="pt") as f:
        return {name: list(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118


def _load(repo: str, folder_in_repo: str, loader_name: str, overrides: dict):
    from sae_lens import SAE
    from sae_lens.loading import pretrained_sae_loaders as loaders

    loaders.get_safetensors_tensor_shapes = _local_shapes
    loader = loaders.NAMED_PRETRAINED_SAE_LOADERS[loader_name]

    def converter(path, device, cfg_overrides):  # noqa: ARG001  (load_from_disk's converter protocol)
        cfg, state, _ = loader(repo_id=repo, folder_name=folder_in_repo, device=device, force_download=False,
                               cfg_overrides=overrides or None)
        return cfg, state

    return SAE.load_from_disk(".", converter=converter).eval()


def make(out: Path, hf_home: Path) -> None:
    for seed, (name, (repo, folder_in_repo, version, loader_name, extra)) in enumerate(CASES.items()):
        relative = Path(repo.split("/")[1]) / folder_in_repo
        folder = out / name / relative
        _write_case(folder, version, seed, extra)
        _cache(hf_home, repo, folder_in_repo, folder)
        d_out = extra.get("d_out", D)
        overrides = {} if version == 2 else {"d_in": D, "d_sae": M} | ({"d_out": d_out} if "transcoder" in
                                                                         loader_name else {})
        sae = _load(repo, folder_in_repo, loader_name, overrides)
        x = torch.from_numpy(np.random.default_rng(100 + seed).normal(0, 1, (TOKENS, D)).astype(np.float32))
        with torch.no_grad():
            latents, reconstruction = sae.encode(x), sae(x)
        firing = float((latents > 0).float().mean())
        if not 0 < firing < 1:
            sys.exit(f"{name}: degenerate latents ({firing})")
        save_file({"inputs": x, "latents": latents.contiguous(), "reconstruction": reconstruction.contiguous()},
                  str(out / name / "expected.safetensors"))
        meta = sae.cfg.metadata
        case = {"path": relative.as_posix(), "saelens_class": type(sae).__name__,
                "architecture": sae.cfg.architecture(), "hook_name": meta.hook_name,
                "hook_name_out": meta.get("hook_name_out"), "model_name": meta.model_name,
                "d_in": sae.cfg.d_in, "d_sae": sae.cfg.d_sae, "d_out": getattr(sae.cfg, "d_out", sae.cfg.d_in)}
        (out / name / "case.json").write_text(json.dumps(case, indent=2) + "\n")
        print(f"{name:26s} {type(sae).__name__:24s} {meta.hook_name} -> {case['hook_name_out']}  "
              f"{meta.model_name}  firing {firing:.2f}")


if __name__ == "__main__":
    if sys.argv[1:2] != ["make"] or len(sys.argv) != 3:
        sys.exit(__doc__.splitlines()[2])
    home = Path(tempfile.mkdtemp(prefix="gemma-scope-hf-"))
    os.environ.update(HF_HOME=str(home), HF_HUB_OFFLINE="1")  # before huggingface_hub is imported
    try:
        make(Path(sys.argv[2]), home)
    finally:
        shutil.rmtree(home, ignore_errors=True)
