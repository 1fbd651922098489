"""Prefix mappers: output shapes, rebuilding from options(), registration."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from helpers_lm import english_pack, make_registries

from polycap.errors import BadInput
from polycap.model.mapping import LinearMapper, MLPMapper, TransformerMapper

CLIP, LM, PREFIX = 12, 16, 5


def rebuilt(mapper: torch.nn.Module) -> torch.nn.Module:
    """A mapper of the same class from options(), with the original's weights loaded."""
    copy = type(mapper)(CLIP, LM, PREFIX, **mapper.options())
    copy.load_state_dict(mapper.state_dict(), strict=True)
    return copy.eval()


@pytest.mark.parametrize(
    "mapper",
    [
        MLPMapper(CLIP, LM, PREFIX),
        MLPMapper(CLIP, LM, PREFIX, hidden_size=7),
        TransformerMapper(CLIP, LM, PREFIX, num_layers=2, num_heads=4),
        TransformerMapper(CLIP, LM, PREFIX, clip_length=3, num_layers=1, num_heads=2),
        LinearMapper(CLIP, LM, PREFIX),
    ],
    ids=["mlp", "mlp-hidden", "transformer", "transformer-clip-length", "linear"],
)
def test_shape_and_rebuild_from_options(mapper: torch.nn.Module) -> None:
    mapper.eval()
    features = torch.randn(3, CLIP)
    out = mapper(features)
    assert out.shape == (3, PREFIX, LM)
    assert torch.equal(rebuilt(mapper)(features), out)
    assert mapper.options() == rebuilt(mapper).options()


def test_mlp_defaults_follow_clipcap() -> None:
    mapper = MLPMapper(CLIP, LM, PREFIX)
    assert mapper.options() == {"hidden_size": LM * PREFIX // 2}
    assert isinstance(mapper.net[1], torch.nn.Tanh)


def test_transformer_outputs_prefix_positions_only() -> None:
    mapper = TransformerMapper(CLIP, LM, PREFIX, clip_length=2, num_layers=1, num_heads=2).eval()
    assert mapper.options()["clip_length"] == 2
    assert mapper.prefix_const.shape == (PREFIX, LM)
    features = torch.randn(2, CLIP)
    # images differ -> prefixes differ (the constant attends to the mapped features)
    out = mapper(features)
    assert not torch.allclose(out[0], out[1])
    # gradients reach the learned constant
    out.sum().backward()
    assert mapper.prefix_const.grad is not None


def test_bad_options_are_one_line_errors() -> None:
    with pytest.raises(BadInput, match="num_heads=3 must divide"):
        TransformerMapper(CLIP, LM, PREFIX, num_heads=3)
    with pytest.raises(BadInput, match="prefix_length"):
        MLPMapper(CLIP, LM, 0)


def test_builtin_mappers_are_registered() -> None:
    mappers = make_registries(english_pack()).mappers
    assert mappers.names() == ["linear", "mlp", "transformer"]
    assert isinstance(mappers.get("linear")(CLIP, LM, PREFIX), LinearMapper)
    assert isinstance(mappers.get("mlp")(CLIP, LM, PREFIX), MLPMapper)
    built = mappers.get("transformer")(CLIP, LM, PREFIX, num_layers=1, num_heads=2)
    assert isinstance(built, TransformerMapper)


def test_registering_mappers_does_not_import_torch() -> None:
    code = (
        "import sys; import polycap.builtin.mappers as m; "
        "m.register_mappers(lambda name, item: None); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
