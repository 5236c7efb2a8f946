"""``saekit probe`` end to end on a tiny trained run: pooling, the three feature sets, the files, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from saekit.cli import main
from saekit.data.labelled import load_labelled_file
from saekit.errors import SaekitError
from saekit.models.hooks import capture
from saekit.probing.pooling import pooled_activations, tokenize
from saekit.probing.probes import top_k_mean_diff
from saekit.probing.sparse_probing import (
    ProbeSettings,
    binary_tasks,
    load_probe_inputs,
    pooled_task,
    probe_run,
    random_dictionary,
)

# Two classes whose texts share no words: the raw activations tell them apart, whatever the random weights.
WORDS = {"cat": ("meow purr whiskers kitten", "tabby feline claws"), "dog": ("woof bark puppy leash", "hound fetch")}


def labelled_rows(per_class: int = 40) -> list[dict[str, str]]:
    """``per_class`` distinct texts of each of two labels, words drawn from each label's own vocabulary."""
    rows = []
    for label, (first, second) in WORDS.items():
        a, b = first.split(), second.split()
        for i in range(per_class):
            words = [a[i % len(a)], b[(i // len(a)) % len(b)], a[(i * 3 + 1) % len(a)], f"n{i}"]
            rows.append({"text": " ".join(words), "label": label})
    return rows



@pytest.fixture()
def labelled_jsonl(tmp_path) -> Path:
    path = tmp_path / "pets.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in labelled_rows()))
    return path


SETTINGS = ProbeSettings(k=(1, 2), context_length=8, batch_size=7)


def test_pooling_is_the_mean_over_non_bos_tokens_whatever_the_batch(probe_run_dir, tiny_loaded):
    inputs = load_probe_inputs(probe_run_dir, tiny_loaded)
    texts = ["meow purr whiskers kitten tabby feline claws and more words", "woof", "hound fetch puppy"]
    rows = tokenize(tiny_loaded, texts, context_length=6)
    ids = tiny_loaded.tokenizer(texts, add_special_tokens=False).input_ids
    assert [r.tolist() for r in rows] == [[tiny_loaded.bos_token_id, *t[:5]] for t in ids]
    assert len(rows[0]) == 6 and len(rows[1]) < 6  # cut to the context, and padded in a batch
    encoders = {"sae": inputs.dictionary.encode}
    together = pooled_activations(tiny_loaded, inputs.site, rows, encoders, batch_size=3)
    alone = pooled_activations(tiny_loaded, inputs.site, rows, encoders, batch_size=1)
    site = tiny_loaded.adapter.site(inputs.site)
    for i, row in enumerate(rows):  # one unpadded forward per text, averaged by hand over positions 1..n-1
        acts = capture(tiny_loaded.adapter, row[None], [site])[site][0, 1:].float()
        torch.testing.assert_close(together["raw"][i], acts.mean(0), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(together["sae"][i], inputs.dictionary.encode(acts).mean(0), rtol=1e-5, atol=1e-5)
    for name in together:
        torch.testing.assert_close(together[name], alone[name], rtol=1e-5, atol=1e-5)


def test_random_dictionary_is_seeded_and_untrained(probe_run_dir, tiny_loaded):
    trained = load_probe_inputs(probe_run_dir, tiny_loaded).dictionary
    first, again, other = (random_dictionary(trained, seed) for seed in (42, 42, 7))
    for name, weight in first.state_dict().items():
        assert weight.shape == trained.state_dict()[name].shape
        assert torch.equal(weight, again.state_dict()[name])
    assert not torch.equal(first.state_dict()["W_dec"], trained.state_dict()["W_dec"])
    assert not torch.equal(first.state_dict()["W_dec"], other.state_dict()["W_dec"])


def test_selection_and_scores_follow_the_pooled_features(probe_run_dir, tiny_loaded, labelled_jsonl):
    results = probe_run(probe_run_dir, str(labelled_jsonl), SETTINGS, loaded=tiny_loaded)
    task = load_labelled_file(labelled_jsonl)
    assert results.task["classes"] == ["cat", "dog"] and results.task["train_per_class"] == task.train_per_class
    pooled = pooled_task(load_probe_inputs(probe_run_dir, tiny_loaded), task, SETTINGS)
    for name in ("sae", "llm", "random"):
        for binary, result in zip(binary_tasks(pooled, task, name, SETTINGS.seed), results.classes, strict=True):
            for k in (1, 2):
                assert result.top_k[name][str(k)].features == top_k_mean_diff(binary.train_x, binary.train_y, k)
    # disjoint vocabularies: a probe on all raw activations separates the classes
    assert results.llm_all["accuracy"] == 1.0
    cat, dog = results.classes
    assert cat.top_k["sae"]["1"].features == dog.top_k["sae"]["1"].features  # two classes: mirror-image tasks
    mean = sum(c.top_k["sae"]["2"].accuracy for c in results.classes) / 2
    assert results.mean["sae"]["2"]["accuracy"] == pytest.approx(mean)


def test_cli_writes_results_report_and_saebench_layout(probe_run_dir, labelled_jsonl, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["probe", str(probe_run_dir), "--task", str(labelled_jsonl), "--out", str(out), "--k", "1,2",
                 "--context-length", "8"]) == 0
    results = json.loads((out / "probing.json").read_text())
    saebench = json.loads((out / "sparse_probing_saebench.json").read_text())
    assert saebench["eval_type_id"] == "sparse_probing" and saebench["eval_config"]["k_values"] == [1, 2]
    sae_metrics = saebench["eval_result_metrics"]["sae"]
    assert sae_metrics["sae_top_1_test_accuracy"] == results["mean"]["sae"]["1"]["accuracy"]
    assert saebench["eval_result_metrics"]["llm"]["llm_test_accuracy"] == results["llm_all"]["accuracy"]
    per_class = saebench["eval_result_unstructured"]["pets_results"]["sae_top_2_test_accuracy"]
    assert per_class == {c["label"]: c["top_k"]["sae"]["2"]["accuracy"] for c in results["classes"]}
    assert saebench["eval_result_details"][0]["dataset_name"] == "pets_results"
    report = (out / "probing.md").read_text()
    assert "# Sparse probing: pets" in report and "random dictionary" in report
    assert "sparse probing on pets: dictionary k=1" in capsys.readouterr().out


@pytest.mark.parametrize("rows, task, flags, message", [
    ([{"text": "a b", "label": "x"}, {"text": "c d", "label": "x"}], None, [], "has only the class 'x'"),
    ([{"text": "a b"}], None, [], "row 1 has no 'label' column"),
    (None, None, ["--k", "1,500"], "fewer than k = 500"),
    (None, "no-such-task", [], "unknown task 'no-such-task'"),
])
def test_bad_input_is_one_line_and_writes_nothing(probe_run_dir, labelled_jsonl, tmp_path, capsys, rows, task, flags,
                                                  message):
    if rows is not None:
        labelled_jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out"
    argv = ["probe", str(probe_run_dir), "--task", task or str(labelled_jsonl), "--out", str(out), *flags]
    assert main(argv) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("saekit: error:")]
    assert len(errors) == 1 and message in errors[0]
    assert not out.exists()


def test_probe_run_refuses_k_above_the_probed_width(probe_run_dir, tiny_loaded, tmp_path):
    path = tmp_path / "more.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in labelled_rows(60)))
    with pytest.raises(SaekitError, match="k = 33 is more than the 32 features probed"):  # 32: the raw width
        probe_run(probe_run_dir, str(path), ProbeSettings(k=(33,), train_per_class=40, test_per_class=1),
                  loaded=tiny_loaded)
