import pytest

from saekit.errors import SaekitError
from saekit.models.sites import SITE_KINDS, Site, parse_site


def test_parse_every_kind():
    for kind in SITE_KINDS:
        assert parse_site(f"blocks.3.{kind}", n_layers=4) == Site(3, kind)
        assert parse_site(f"blocks.3.{kind}").name == f"blocks.3.{kind}"


@pytest.mark.parametrize("name", ["blocks.1.resid", "layer.1.resid_pre", "blocks.x.mlp_out", "blocks.1"])
def test_unknown_site_is_one_clear_line(name):
    with pytest.raises(SaekitError, match="unknown site") as info:
        parse_site(name)
    assert "\n" not in str(info.value)


def test_layer_out_of_range():
    with pytest.raises(SaekitError, match=r"out of range: the model has layers 0\.\.29"):
        parse_site("blocks.30.resid_post", n_layers=30)
