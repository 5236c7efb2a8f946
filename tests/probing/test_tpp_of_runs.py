"""TPP of several runs from one pooling pass and probes trained once (``tpp_of_runs``, what ``saekit reliability
--tpp`` uses) equals TPP of each run alone (``tpp_run``)."""

from __future__ import annotations

from saekit.probing.scr_tpp import RemovalSettings, tpp_of_runs, tpp_run
from saekit.probing.sparse_probing import ProbeSettings, pool_runs

from .test_sparse_probing import labelled_jsonl, labelled_rows  # noqa: F401  (the fixture and its rows)


def test_tpp_of_runs_equals_each_run_alone(probe_run_dir, tiny_loaded, labelled_jsonl):  # noqa: F811
    probe = ProbeSettings(context_length=12, train_per_class=30, test_per_class=8).validate()
    # lr 0.1: the tiny model's activations are ~0.005 in scale, SAEBench's 1e-3 leaves every score at 0
    removal = RemovalSettings(n_values=(2, 20, 100), probe_epochs=10, probe_lr=0.1).validate()
    pooled = pool_runs([probe_run_dir, probe_run_dir], str(labelled_jsonl), probe, tiny_loaded)
    together = tpp_of_runs(pooled, probe, removal)
    alone = tpp_run(probe_run_dir, str(labelled_jsonl), probe, removal, tiny_loaded).metrics
    assert together == [alone, alone]
    assert any(value != 0 for value in alone.values())  # a comparison of non-trivial scores
