"""Tests for saekit.toy.superposition: analyses on hand-built W, the rescaling check, batched training."""

from __future__ import annotations

import math

import pytest
import torch

from saekit.errors import SaekitError
from saekit.toy.superposition import (
    DEDICATED,
    NOT_REPRESENTED,
    PHASES,
    SUPERPOSITION,
    PhaseDiagramConfig,
    TMSTrainConfig,
    classify_feature,
    feature_dimensionality,
    feature_norms,
    frobenius_features_per_dimension,
    interference,
    phase_diagram,
    plot_phase_diagram,
    rescaling_check,
    sample_features,
    tms_forward,
    train_tms,
)


def test_orthogonal_features_have_dimensionality_one_and_no_interference():
    W = torch.eye(3)[:, [2, 0, 1]] * torch.tensor([2.0, 0.5, 1.0])  # orthogonal columns, any norms
    assert torch.allclose(feature_dimensionality(W), torch.ones(3))
    assert torch.allclose(interference(W), torch.zeros(3))
    assert torch.allclose(feature_norms(W), torch.tensor([2.0, 0.5, 1.0]))


def test_antipodal_pair_in_one_dimension_has_dimensionality_half():
    W = torch.tensor([[1.0, -1.0]])
    assert torch.allclose(feature_dimensionality(W), torch.tensor([0.5, 0.5]))
    assert torch.allclose(interference(W), torch.tensor([1.0, 1.0]))


def test_pentagon_and_unrepresented_feature():
    angles = torch.arange(5) * 2 * math.pi / 5
    pentagon = torch.stack([angles.cos(), angles.sin()])  # [2, 5]
    assert torch.allclose(feature_dimensionality(pentagon), torch.full((5,), 0.4), atol=1e-5)
    with_zero = torch.cat([pentagon, torch.zeros(2, 1)], dim=1)
    dims = feature_dimensionality(with_zero)
    assert dims[-1].item() == 0.0 and not torch.isnan(dims).any()
    assert frobenius_features_per_dimension(pentagon).item() == pytest.approx(2.5)


def test_rescaling_changes_frobenius_but_not_dimensionality():
    W = torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 1.0]])
    rows = rescaling_check(W, [0.5, 1.0, 3.0])
    frobenius = [row.frobenius_features_per_dimension for row in rows]
    assert frobenius == pytest.approx([0.375, 1.5, 13.5])  # ||W||_F^2 = 3, m = 2, times c^2
    for row in rows:
        assert row.dimensionality == pytest.approx([0.5, 0.5, 1.0])
        assert row.total_dimensionality == pytest.approx(2.0)
    with pytest.raises(SaekitError):
        rescaling_check(W.unsqueeze(0), [1.0])


def test_classify_feature_thresholds():
    W = torch.tensor([
        [[1.0, 0.1]],  # feature 2 tiny: not represented
        [[0.1, 1.0]],  # feature 2 alone: dedicated
        [[1.0, -1.0]],  # antipodal: superposition
    ])
    phases = [PHASES[int(i)] for i in classify_feature(W, 1)]
    assert phases == [NOT_REPRESENTED, DEDICATED, SUPERPOSITION]


def test_sample_features_density_and_range():
    density = torch.tensor([[0.1, 1.0]])
    x = sample_features(density, 50_000, torch.Generator().manual_seed(0))
    assert x.shape == (1, 2, 50_000)
    assert (x[0, 0] > 0).float().mean().item() == pytest.approx(0.1, abs=0.01)
    assert x[0, 1].mean().item() == pytest.approx(0.5, abs=0.01)  # dense U[0, 1]
    assert x.max().item() <= 1.0 and x.min().item() >= 0.0


def test_batched_training_learns_an_identity_when_there_is_room():
    density = torch.full((2, 3), 0.5)
    importance = torch.ones(2, 3)
    models = train_tms(density, importance, m_hidden=3, config=TMSTrainConfig(steps=300, batch_size=256))
    assert models.W.shape == (2, 3, 3) and models.loss.shape == (2,)
    assert models.loss.max().item() < 0.01  # 3 features in 3 dims: near-perfect reconstruction
    x = sample_features(density, 8)
    assert tms_forward(models.W, models.b, x).shape == x.shape


def test_phase_diagram_clear_corners(tmp_path):
    """Dense second feature: important -> dedicated dimension; unimportant -> not represented."""
    config = PhaseDiagramConfig(densities=[1.0], importances=[0.1, 10.0], seeds=3,
                                train=TMSTrainConfig(steps=400, batch_size=512))
    diagram = phase_diagram(config)
    assert diagram.labels() == [[NOT_REPRESENTED, DEDICATED]]
    assert diagram.norm[0, 0].item() < 0.2 and diagram.norm[0, 1].item() > 0.8
    plot_phase_diagram(diagram, tmp_path / "phase.png")
    assert (tmp_path / "phase.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_tms_rejects_mismatched_shapes():
    with pytest.raises(SaekitError, match="density and importance"):
        train_tms(torch.ones(2, 3), torch.ones(2, 2), m_hidden=1)
