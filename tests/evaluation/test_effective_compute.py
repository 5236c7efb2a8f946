"""Tests for saekit.evaluation.effective_compute: the compute-fraction formula, its inverses, law names."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from saekit.errors import SaekitError
from saekit.evaluation.effective_compute import (
    PRESETS,
    EffectiveCompute,
    ScalingLaw,
    compute_fraction,
    effective_compute_report,
    format_report_markdown,
    get_law,
    law_name,
    parameter_equivalent,
    sensitivity_to_E,
)
from saekit.settings import from_dict, to_dict

CHINCHILLA = PRESETS["chinchilla"]


# --- compute_fraction -------------------------------------------------------------------------------


def test_chinchilla_check_case():
    assert compute_fraction("chinchilla", 3.00, 3.10) == pytest.approx(0.62, abs=0.01)


def test_gamma_and_a_hand_computed_case():
    gamma = 0.34 * 0.28 / (0.34 + 0.28)
    assert CHINCHILLA.gamma == pytest.approx(0.15355, abs=1e-5)
    assert CHINCHILLA.gamma == pytest.approx(gamma, rel=1e-12)
    # loss - E goes from 0.81 to 1.01: fraction = (1.01 / 0.81) ** (-1 / gamma), about 0.238
    expected = (1.01 / 0.81) ** (-1.0 / gamma)
    assert expected == pytest.approx(0.2376, abs=1e-3)
    assert compute_fraction(CHINCHILLA, 2.50, 2.70) == pytest.approx(expected, rel=1e-9)


def test_besiroglu_preset_differs_from_chinchilla():
    besiroglu = get_law("besiroglu")
    gamma = 0.3478 * 0.3658 / (0.3478 + 0.3658)
    expected = ((3.10 - 1.8172) / (3.00 - 1.8172)) ** (-1.0 / gamma)
    assert compute_fraction(besiroglu, 3.00, 3.10) == pytest.approx(expected, rel=1e-9)
    assert abs(expected - compute_fraction(CHINCHILLA, 3.00, 3.10)) > 0.01


def test_equal_losses_give_one_and_improvement_gives_more_than_one():
    assert compute_fraction(CHINCHILLA, 3.0, 3.0) == pytest.approx(1.0, abs=1e-12)
    assert compute_fraction(CHINCHILLA, 3.0, 2.9) > 1.0


def test_fraction_decreases_as_spliced_loss_grows():
    fractions = [compute_fraction(CHINCHILLA, 3.0, spliced) for spliced in np.linspace(3.0, 4.5, 31)]
    assert all(later < earlier for earlier, later in zip(fractions[:-1], fractions[1:], strict=True))
    assert fractions[-1] < 0.01


@pytest.mark.parametrize("loss_clean", [1.69, 1.5])
def test_clean_loss_at_or_below_floor_raises(loss_clean):
    with pytest.raises(SaekitError, match="floor E"):
        compute_fraction(CHINCHILLA, loss_clean, 3.0)


def test_spliced_loss_below_floor_raises():
    with pytest.raises(SaekitError, match="spliced loss"):
        compute_fraction(CHINCHILLA, 3.0, 1.6)


# --- parameter_equivalent ---------------------------------------------------------------------------


def test_parameter_equivalent_reproduces_shifted_loss():
    params, tokens = 1.35e8, 2e12
    result = parameter_equivalent(CHINCHILLA, 3.0, 3.1, params, tokens)
    target = CHINCHILLA.loss(params, tokens) + 0.1
    assert result.target_loss == pytest.approx(target, rel=1e-12)
    assert CHINCHILLA.loss(result.params_equivalent, tokens) == pytest.approx(target, rel=1e-10)
    assert 0 < result.params_ratio < 1
    assert result.params_ratio == pytest.approx(result.params_equivalent / params, rel=1e-12)
    assert result.reason is None


def test_parameter_equivalent_no_degradation_is_ratio_one():
    result = parameter_equivalent(CHINCHILLA, 3.0, 3.0, 1e9, 2e10)
    assert result.params_ratio == pytest.approx(1.0, rel=1e-9)


def test_parameter_equivalent_improvement_needs_more_params():
    result = parameter_equivalent(CHINCHILLA, 3.0, 2.99, 1e8, 1e10)
    assert result.params_ratio > 1.0


def test_parameter_equivalent_below_floor_returns_none_with_reason():
    params, tokens = 1e8, 1e10
    law_loss = CHINCHILLA.loss(params, tokens)
    floor = CHINCHILLA.E + CHINCHILLA.B / tokens**CHINCHILLA.beta
    # an improvement larger than the whole parameter term pushes the target below the floor
    improvement = (law_loss - floor) + 0.01
    result = parameter_equivalent(CHINCHILLA, 3.0, 3.0 - improvement, params, tokens)
    assert result.params_equivalent is None
    assert result.params_ratio is None
    assert "floor" in result.reason
    assert result.loss_floor_at_tokens == pytest.approx(floor)


def test_parameter_equivalent_rejects_bad_counts():
    with pytest.raises(SaekitError, match="params"):
        parameter_equivalent(CHINCHILLA, 3.0, 3.1, 0, 1e10)


# --- sensitivity_to_E -------------------------------------------------------------------------------


def test_sensitivity_default_grid_matches_and_varies():
    rows = sensitivity_to_E(CHINCHILLA, 3.0, 3.1)
    assert [row.E for row in rows] == pytest.approx([1.69 * s for s in (0.8, 0.9, 1.0, 1.1, 1.2)])
    middle = rows[2]
    assert middle.E == pytest.approx(CHINCHILLA.E)
    assert middle.compute_fraction == pytest.approx(compute_fraction(CHINCHILLA, 3.0, 3.1), rel=1e-12)
    fractions = [row.compute_fraction for row in rows]
    # a higher floor makes the same 0.1 nat gap a larger relative step, so the fraction falls
    assert all(later < earlier - 0.01 for earlier, later in zip(fractions[:-1], fractions[1:], strict=True))


def test_sensitivity_default_grid_drops_floors_above_the_loss():
    rows = sensitivity_to_E(CHINCHILLA, 2.0, 2.05)
    assert len(rows) == 4  # 1.2 * 1.69 = 2.028 is not below the clean loss 2.0
    assert max(row.E for row in rows) < 2.0


def test_sensitivity_explicit_values():
    rows = sensitivity_to_E(CHINCHILLA, 3.0, 3.1, E_values=[0.0, 1.0])
    assert rows[0].compute_fraction == pytest.approx((3.1 / 3.0) ** (-1 / CHINCHILLA.gamma))
    with pytest.raises(SaekitError, match="floor E"):
        sensitivity_to_E(CHINCHILLA, 3.0, 3.1, E_values=[3.5])


# --- get_law ----------------------------------------------------------------------------------------


def test_get_law_from_dict():
    law = get_law({"E": 2.0, "A": 100, "B": 200, "alpha": 0.3, "beta": 0.2, "name": "mine"})
    assert isinstance(law, ScalingLaw)
    assert law.name == "mine"
    assert law.loss(1e6, 1e6) == pytest.approx(2.0 + 100 / 1e6**0.3 + 200 / 1e6**0.2)
    assert law.gamma == pytest.approx(0.3 * 0.2 / 0.5)


def test_get_law_unknown_name_lists_presets():
    with pytest.raises(SaekitError, match="chinchilla") as info:
        get_law("kaplan-2031")
    assert "besiroglu" in str(info.value)


@pytest.mark.parametrize(
    "constants, pattern",
    [
        ({"E": 2.0, "A": 100, "B": 200, "alpha": 0.3}, "missing"),
        ({"E": 2.0, "A": 100, "B": 200, "alpha": 0.3, "beta": "x"}, "not a number"),
        ({"E": 2.0, "A": 100, "B": 200, "alpha": -0.3, "beta": 0.2}, "alpha"),
        ({"E": 2.0, "A": 100, "B": 200, "Alpha": 0.3, "beta": 0.2}, "unknown keys"),
    ],
)
def test_get_law_bad_constants(constants, pattern):
    with pytest.raises(SaekitError, match=pattern):
        get_law(constants)


# --- law_name ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [("chinchilla", "chinchilla"), (" Besiroglu ", "besiroglu")])
def test_law_name_accepts_what_get_law_accepts(text, expected):
    assert law_name(text) == expected
    assert get_law(law_name(text)) is get_law(text) is PRESETS[expected]


def test_law_name_rejects_typo_with_suggestion_and_valid_names():
    with pytest.raises(argparse.ArgumentTypeError) as info:
        law_name("chinchila")
    message = str(info.value)
    assert "'chinchila'" in message
    assert "did you mean 'chinchilla'?" in message
    assert "besiroglu, chinchilla" in message
    assert "\n" not in message


def test_law_name_without_close_match_has_no_suggestion():
    with pytest.raises(argparse.ArgumentTypeError) as info:
        law_name("kaplan")
    assert "did you mean" not in str(info.value)
    assert "besiroglu, chinchilla" in str(info.value)


def test_law_name_fails_argparse_before_anything_runs():
    parser = argparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--law", type=law_name, default="chinchilla")
    assert parser.parse_args([]).law == "chinchilla"
    assert parser.parse_args(["--law", "BESIROGLU"]).law == "besiroglu"
    with pytest.raises(argparse.ArgumentError, match="did you mean 'chinchilla'"):
        parser.parse_args(["--law", "chinchila"])


def test_get_law_typo_suggests_too():
    with pytest.raises(SaekitError, match="did you mean 'besiroglu'"):
        get_law("besiroglou")


# --- report -----------------------------------------------------------------------------------------


def test_report_is_json_and_consistent():
    report = effective_compute_report("chinchilla", 3.0, 3.1, params=1.35e8, tokens=2e12)
    data = to_dict(report)
    json.dumps(data, allow_nan=False)
    assert list(data) == ["law", "gamma", "loss_clean", "loss_spliced", "degradation", "compute_fraction",
                          "sensitivity", "parameter_equivalent", "statement"]
    assert list(data["law"]) == ["name", "E", "A", "B", "alpha", "beta", "source"]
    assert list(data["sensitivity"][0]) == ["E", "compute_fraction"]
    assert from_dict(EffectiveCompute, json.loads(json.dumps(data)), "report") == report
    assert report.compute_fraction == pytest.approx(compute_fraction(CHINCHILLA, 3.0, 3.1))
    assert report.gamma == pytest.approx(CHINCHILLA.gamma)
    assert report.law.E == 1.69 and "Hoffmann" in report.law.source
    assert report.degradation == pytest.approx(0.1)
    assert report.parameter_equivalent.params_ratio < 1
    assert report.statement.startswith(
        "Spliced loss 3.100 equals a compute-optimal model trained with 0.62x the compute "
        "of one reaching 3.000 (law: chinchilla, E=1.69"
    )
    assert "\n" not in report.statement


def test_report_accepts_a_law_object_and_records_its_constants():
    law = ScalingLaw("mine", E=2.0, A=100.0, B=200.0, alpha=0.3, beta=0.2, source="my notes")
    report = effective_compute_report(law, 3.0, 3.1)
    assert to_dict(report)["law"] == {"name": "mine", "E": 2.0, "A": 100.0, "B": 200.0, "alpha": 0.3, "beta": 0.2,
                                      "source": "my notes"}
    assert report.compute_fraction == pytest.approx((1.1 / 1.0) ** (-1 / (0.3 * 0.2 / 0.5)), rel=1e-12)
    assert "(law: mine, E=2," in report.statement


def test_report_without_params_and_with_only_one():
    report = effective_compute_report("besiroglu", 3.0, 3.1)
    assert report.parameter_equivalent is None
    with pytest.raises(SaekitError, match="both params and tokens"):
        effective_compute_report("besiroglu", 3.0, 3.1, params=1e8)


def test_markdown_has_fraction_law_and_table():
    report = effective_compute_report("chinchilla", 3.0, 3.1, params=1.35e8, tokens=2e12)
    text = format_report_markdown(report)
    assert "**0.62x**" in text
    assert "`chinchilla`" in text
    assert "| E | compute fraction |" in text
    for row in report.sensitivity:
        assert f"| {row.E:.4g} |" in text
    assert "Parameter equivalent" in text
    with pytest.raises(SaekitError, match="effective_compute_report"):
        format_report_markdown({"statement": "x"})
