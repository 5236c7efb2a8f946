"""A cross-layer transcoder against per-layer transcoders of the same budget, both spliced into every MLP at once:
ΔCE, per-layer FVU and L0 in the spliced model beside each layer's training FVU, as a JSON and a markdown table.

It reads what ``saekit evaluate`` wrote (the runs' training logs for the training FVU), so the figures are the
evaluation's own; run the two evaluations first:

    saekit evaluate runs/clt30 --generations 0                          # writes runs/clt30/metrics.json
    saekit evaluate runs/tc30/blocks.*.mlp_in --generations 0 --out runs/joint-tc30
    python benchmarks/crosslayer_joint.py --clt runs/clt30 --per-layer runs/joint-tc30 --out benchmarks/results/NAME
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from saekit.io import write_json, write_text
from saekit.render import markdown_table

LAYER = re.compile(r"blocks\.(\d+)\.mlp_out")


def _last_log(run_dir: Path) -> dict[str, Any]:
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    return json.loads(next(line for line in reversed(lines) if '"fvu"' in line))


def _per_layer(metrics: dict[str, Any]) -> dict[int, dict[str, float]]:
    return {int(LAYER.fullmatch(site).group(1)): {"spliced_fvu": rec["fvu"], "l0": rec["l0_mean"],
                                                  "dead_fraction": rec["dead_fraction"]}
            for site, rec in metrics["reconstruction"].items()}


def summarise(clt_dir: Path, per_layer_dir: Path) -> dict[str, Any]:
    """The two evaluations side by side (see the module docstring)."""
    clt, joint = (json.loads((d / "metrics.json").read_text()) for d in (clt_dir, per_layer_dir))
    clt_layers, tc_layers = _per_layer(clt), _per_layer(joint)
    clt_log = _last_log(clt_dir)
    for layer, row in clt_layers.items():
        row["training_fvu"] = clt_log[f"fvu_layer_{layer}"]
    for run, alone in joint["alone"].items():
        (site,) = alone["reconstruction"]
        row = tc_layers[int(LAYER.fullmatch(site).group(1))]
        row["training_fvu"] = _last_log(Path(run))["fvu"]
        row["alone_delta_ce"] = alone["losses"]["delta_ce_spliced"]
    losses = {name: {key: m["losses"][key] for key in ("ce_clean", "delta_ce_spliced", "kl_spliced", "delta_ce_mean",
                                                       "delta_ce_zero")}
              for name, m in (("clt", clt), ("per_layer", joint))}
    return {"contexts": clt["eval_contexts"], "context_length": clt["context_length"], "losses": losses,
            "layers": {"clt": clt_layers, "per_layer": tc_layers}}


def _pm(value: Any) -> str:
    return f"{value['mean']:.3f} ± {value['se']:.3f}" if isinstance(value, dict) else f"{value:.3f}"


def render(summary: dict[str, Any]) -> str:
    """The markdown tables: the losses, then each layer."""
    losses = summary["losses"]
    rows = [[label, *[_pm(losses[name][key]) for name in ("clt", "per_layer")]]
            for label, key in (("clean CE", "ce_clean"), ("ΔCE, all 30 MLPs spliced", "delta_ce_spliced"),
                               ("KL, all 30 MLPs spliced", "kl_spliced"),
                               ("ΔCE, all 30 MLPs mean-ablated", "delta_ce_mean"),
                               ("ΔCE, all 30 MLPs zero-ablated", "delta_ce_zero"))]
    clt, tc = summary["layers"]["clt"], summary["layers"]["per_layer"]
    layer_rows = [[str(layer), f"{clt[layer]['training_fvu']:.3f}", f"{clt[layer]['spliced_fvu']:.3f}",
                   f"{clt[layer]['dead_fraction']:.2f}", f"{tc[layer]['training_fvu']:.3f}",
                   f"{tc[layer]['spliced_fvu']:.3f}", f"{tc[layer]['dead_fraction']:.2f}",
                   _pm(tc[layer]["alone_delta_ce"])] for layer in sorted(clt)]
    return "\n".join([
        f"Held out: {summary['contexts']} contexts of {summary['context_length']} tokens, the same for both.", "",
        markdown_table(["", "cross-layer (CLT)", "per-layer"], rows), "",
        "Per layer: FVU of the MLP output in training (clean inputs, last step) and in the joint splice (each layer "
        "reading the spliced model), the share of latents dead on the held-out tokens, and for the per-layer set "
        "the ΔCE of that layer's transcoder spliced alone. L0 is 16 at every layer for both (TopK).", "",
        markdown_table(["layer", "CLT train FVU", "CLT spliced FVU", "CLT dead", "per-layer train FVU",
                        "per-layer spliced FVU", "per-layer dead", "per-layer alone ΔCE"], layer_rows), ""])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clt", type=Path, required=True, help="the CLT run (evaluated: metrics.json inside)")
    parser.add_argument("--per-layer", type=Path, required=True, help="the joint evaluation of the per-layer runs")
    parser.add_argument("--out", type=Path, required=True, help="results path without suffix (.json and .md)")
    args = parser.parse_args()
    summary = summarise(args.clt, args.per_layer)
    write_json(args.out.with_suffix(".json"), summary)
    write_text(args.out.with_suffix(".md"), render(summary))
    print(render(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
