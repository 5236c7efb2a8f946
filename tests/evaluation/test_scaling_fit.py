"""Tests for saekit.evaluation.scaling_fit: reading a (params, tokens, loss) table and fitting a law to it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from saekit.errors import SaekitError
from saekit.evaluation.effective_compute import PRESETS, ScalingLaw, effective_compute_report
from saekit.evaluation.scaling_fit import fit_scaling_law, law_from_table, load_table, resolve_law

TRUE_LAW = ScalingLaw("truth", E=1.9, A=600.0, B=900.0, alpha=0.36, beta=0.31)


def _table(law, rng, noise):
    return [
        (n, d, law.loss(n, d) * math.exp(rng.normal(0.0, noise)))
        for n in np.logspace(7, 10, 6)
        for d in np.logspace(9, 12, 5)
    ]


def _write_csv(path, rows):
    # repr of a Python float round-trips exactly, so the file holds the law's losses to the last bit
    lines = ["params,tokens,loss"] + [f"{float(n)!r},{float(d)!r},{float(loss)!r}" for n, d, loss in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _one_line_error(call, *args):
    with pytest.raises(SaekitError) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- fit_scaling_law --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    return fit_scaling_law(_table(TRUE_LAW, rng, 1e-4), name="fam")


def test_fit_recovers_constants(fitted):
    assert fitted.name == "fam"
    assert fitted.E == pytest.approx(TRUE_LAW.E, abs=0.05)
    assert fitted.alpha == pytest.approx(TRUE_LAW.alpha, abs=0.05)
    assert fitted.beta == pytest.approx(TRUE_LAW.beta, abs=0.05)
    assert "30" in fitted.source


def test_fit_predicts_held_out_points(fitted):
    rng = np.random.default_rng(1)
    for _ in range(20):
        n, d = 10 ** rng.uniform(7, 10), 10 ** rng.uniform(9, 12)
        assert fitted.loss(n, d) == pytest.approx(TRUE_LAW.loss(n, d), rel=0.01)


def test_fit_needs_five_rows():
    rows = _table(TRUE_LAW, np.random.default_rng(0), 0.0)[:4]
    with pytest.raises(SaekitError, match="at least 5"):
        fit_scaling_law(rows)


def test_fit_needs_spread():
    rows = [(1e8, d, TRUE_LAW.loss(1e8, d)) for d in np.logspace(9, 12, 6)]
    with pytest.raises(SaekitError, match="two parameter counts"):
        fit_scaling_law(rows)


# --- load_table -------------------------------------------------------------------------------------


def test_load_table_roundtrip(tmp_path):
    path = tmp_path / "family.csv"
    path.write_text("# my models\nparams,tokens,loss\n1e8,2e9,3.5\n\n4e8,8e9,3.1\n", encoding="utf-8")
    assert load_table(path) == [(1e8, 2e9, 3.5), (4e8, 8e9, 3.1)]


def test_load_table_column_order_and_extra_columns(tmp_path):
    path = tmp_path / "family.csv"
    path.write_text("Loss,model,tokens,params\n3.5,a,2e9,1e8\n", encoding="utf-8")
    assert load_table(path) == [(1e8, 2e9, 3.5)]


@pytest.mark.parametrize("text, message", [
    ("params,tokens,loss\n1e8,2e9,3.5\n4e8,lots,3.1\n", r"family\.csv:3: tokens"),  # a bad row names its line
    ("params,tokens,loss\n1e8,2e9,-3.5\n", r":2: loss"),  # a negative loss
    ("params,tokens,loss\n1e8,2e9\n", r":2: row has 2 fields"),  # a short row
    ("n,d,loss\n1e8,2e9,3.5\n", "params, tokens"),  # a bad header
])
def test_load_table_rejects_bad_rows_and_headers(tmp_path, text, message):
    path = tmp_path / "family.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SaekitError, match=message):
        load_table(path)


# --- law_from_table ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def family_csv(tmp_path_factory):
    rows = _table(TRUE_LAW, np.random.default_rng(0), 0.0)
    return _write_csv(tmp_path_factory.mktemp("family") / "family.csv", rows)


@pytest.fixture(scope="module")
def table_law(family_csv):
    return law_from_table(family_csv)


def test_law_from_table_recovers_the_generating_constants(table_law, family_csv):
    assert table_law.name == "fit:family.csv"
    # noise-free losses on a 6 x 5 grid pin every constant down; A and B are exp of fitted logs, so looser
    for key in ("E", "alpha", "beta"):
        assert getattr(table_law, key) == pytest.approx(getattr(TRUE_LAW, key), rel=1e-4), key
    for key in ("A", "B"):
        assert getattr(table_law, key) == pytest.approx(getattr(TRUE_LAW, key), rel=1e-3), key
    assert table_law.source.startswith(f"{family_csv}: fitted by saekit to 30")


def test_report_with_table_law_matches_the_generating_law(table_law):
    # losses chosen so the fraction is far from 1 and sensitive to E and gamma
    ours = effective_compute_report(table_law, 2.6, 2.9, params=1e9, tokens=2e10)
    truth = effective_compute_report(TRUE_LAW, 2.6, 2.9, params=1e9, tokens=2e10)
    assert truth.compute_fraction == pytest.approx(((2.9 - 1.9) / (2.6 - 1.9)) ** (-1 / TRUE_LAW.gamma))
    assert ours.compute_fraction == pytest.approx(truth.compute_fraction, rel=1e-5)
    assert ours.parameter_equivalent.params_ratio == pytest.approx(
        truth.parameter_equivalent.params_ratio, rel=1e-3
    )
    assert ours.law.name == "fit:family.csv"
    assert ours.law.E == table_law.E and ours.law.beta == table_law.beta
    assert "(law: fit:family.csv, E=1.9," in ours.statement


def test_resolve_law_prefers_the_table(family_csv, table_law):
    assert resolve_law("chinchilla", None) is PRESETS["chinchilla"]
    assert resolve_law("Besiroglu", None) is PRESETS["besiroglu"]
    assert resolve_law("chinchilla", str(family_csv)).constants() == pytest.approx(table_law.constants())
    with pytest.raises(SaekitError, match="did you mean 'chinchilla'"):
        resolve_law("chinchila", None)


def test_law_from_table_missing_file(tmp_path):
    path = tmp_path / "nope.csv"
    message = _one_line_error(law_from_table, path)
    assert str(path) in message and "No such file" in message


def test_law_from_table_bad_header(tmp_path):
    path = tmp_path / "family.csv"
    path.write_text("size,tokens,loss\n1e8,2e9,3.5\n", encoding="utf-8")
    message = _one_line_error(law_from_table, path)
    assert f"{path}:1: header lacks column(s) params" in message


def test_law_from_table_too_few_rows(tmp_path):
    path = _write_csv(tmp_path / "small.csv", _table(TRUE_LAW, np.random.default_rng(0), 0.0)[:3])
    message = _one_line_error(law_from_table, path)
    assert message.startswith(f"scaling table {path}: ")
    assert "at least 5" in message and "got 3" in message


def test_law_from_table_empty_and_header_only(tmp_path):
    path = tmp_path / "family.csv"
    path.write_text("# nothing yet\n", encoding="utf-8")
    assert "is empty" in _one_line_error(law_from_table, path)
    path.write_text("params,tokens,loss\n", encoding="utf-8")
    assert "has a header but no rows" in _one_line_error(law_from_table, path)


@pytest.mark.parametrize("bad", ["nan", "inf", "-1e8"])
def test_law_from_table_non_finite_value_names_the_line(tmp_path, bad):
    rows = _table(TRUE_LAW, np.random.default_rng(0), 0.0)
    path = _write_csv(tmp_path / "family.csv", rows)
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[4] = f"{bad},{lines[4].split(',', 1)[1]}"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    message = _one_line_error(law_from_table, path)
    assert f"{path}:5: params value '{bad}'" in message


def test_law_from_table_fit_failure_names_the_file(tmp_path):
    # loss that rises with model size: no law with alpha > 0 fits it
    grid = [(n, d) for n in np.logspace(7, 10, 6) for d in np.logspace(9, 12, 5)]
    rows = [(n, d, 2.0 + 0.1 * math.log(n) + 100.0 / d**0.3) for n, d in grid]
    path = _write_csv(tmp_path / "odd.csv", rows)
    message = _one_line_error(law_from_table, path)
    assert message.startswith(f"scaling table {path}: scaling-law fit found no law")
