"""MiT (SegFormer) weights in transformers' names, mapped onto timm's pvt_v2: numerics, coverage, Hub ids."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from conftest import FAKE_REVISION, add_to_fake_hub
from diffiml_cli.config import ConditionEncoderConfig
from diffiml_cli.errors import DiffimlError
from diffiml_cli.models.backbone_weights import load_backbone_weights
from diffiml_cli.models.condition_encoder import ConditionEncoder
from diffiml_cli.models.segformer_weights import pvt_v2_depths, segformer_to_timm_pvt_v2
from diffiml_cli.presets import get_preset

transformers = pytest.importorskip("transformers")

# transformers' SegformerConfig values of nvidia/mit-b0 (timm's pvt_v2_b0 with mlp_ratios 4) and mit-b3.
MIT_B0 = dict(
    depths=[2, 2, 2, 2],
    hidden_sizes=[32, 64, 160, 256],
    num_attention_heads=[1, 2, 5, 8],
    sr_ratios=[8, 4, 2, 1],
    mlp_ratios=[4, 4, 4, 4],
    patch_sizes=[7, 3, 3, 3],
    strides=[4, 2, 2, 2],
)
MIT_B3 = dict(MIT_B0, depths=[3, 4, 18, 3], hidden_sizes=[64, 128, 320, 512])
MIT_B0_ENCODER = ConditionEncoderConfig(backbone="pvt_v2_b0", layer_norm_eps=1e-5)  # mlp_ratios 4 by default


@pytest.fixture(scope="module")
def mit_b0(tmp_path_factory):
    """A random MiT-b0 SegformerModel (eval) and a directory holding it as `save_pretrained` writes it."""
    torch.manual_seed(0)
    model = transformers.SegformerModel(transformers.SegformerConfig(**MIT_B0)).eval()
    with torch.no_grad():  # LayerNorms start at (1, 0): perturb everything so a swapped name shows
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    directory = tmp_path_factory.mktemp("mit-b0")
    model.save_pretrained(directory, safe_serialization=True)
    return model, directory


@pytest.fixture(scope="module")
def mit_b0_encoder():
    """One MiT-b0-shaped condition encoder (eval), shared because timm's pvt_v2 init is slow on CPU;
    every test that uses it loads a full set of backbone weights first."""
    return ConditionEncoder(MIT_B0_ENCODER).eval()


def test_mapped_mit_b0_matches_transformers_at_every_stage(mit_b0, mit_b0_encoder):
    model, directory = mit_b0
    saved_names = load_file(directory / "model.safetensors")
    assert "encoder.block.0.0.attention.self.key.weight" in saved_names  # the Hub's (transformers 4) names
    encoder = mit_b0_encoder
    load_backbone_weights(encoder, str(directory))
    image = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = encoder.backbone(image)
        theirs = model(pixel_values=image, output_hidden_states=True).hidden_states
    shapes = [(2, 32, 16, 16), (2, 64, 8, 8), (2, 160, 4, 4), (2, 256, 2, 2)]
    assert [tuple(x.shape) for x in ours] == [tuple(x.shape) for x in theirs] == shapes
    # Same ops in the same order: equal to float rounding. timm's own LayerNorm eps (1e-6) would be 1e-5 off.
    for stage, (a, b) in enumerate(zip(ours, theirs)):
        assert (a - b).abs().max().item() < 3e-6, stage
    layer_norms = [m for m in encoder.backbone.modules() if isinstance(m, torch.nn.LayerNorm)]
    try:
        for norm in layer_norms:
            norm.eps = 1e-6
        with torch.no_grad():
            assert (encoder.backbone(image)[0] - theirs[0]).abs().max().item() > 3e-6
    finally:
        for norm in layer_norms:
            norm.eps = 1e-5


def test_mit_b3_names_cover_the_paper_encoder_backbone(tmp_path):
    model = transformers.SegformerForImageClassification(transformers.SegformerConfig(**MIT_B3))
    model.save_pretrained(tmp_path, safe_serialization=True)
    state = load_file(tmp_path / "model.safetensors")  # segformer.encoder.* plus classifier.*
    with torch.device("meta"):  # shapes and names only: skips timm's slow random init of 44M parameters
        encoder = ConditionEncoder(get_preset("paper").encoder)
    expected = encoder.backbone.state_dict()
    assert pvt_v2_depths(expected) == (3, 4, 18, 3)
    mapped = segformer_to_timm_pvt_v2(state, pvt_v2_depths(expected))
    assert sorted(mapped) == sorted(expected) and len(expected) == 572
    assert all(mapped[key].shape == expected[key].shape for key in expected)
    assert sum(t.numel() for t in mapped.values()) == sum(t.numel() for t in expected.values()) == 44_072_128
    layer_norms = [m for m in encoder.backbone.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(layer_norms) == 4 + 28 * 2 + 25 + 4 and all(m.eps == 1e-5 for m in layer_norms)


def test_hub_ids_read_the_offline_cache_with_or_without_the_segformer_prefix(mit_b0, mit_b0_encoder, tmp_path):
    model, directory = mit_b0
    encoder = mit_b0_encoder
    reference = segformer_to_timm_pvt_v2(load_file(directory / "model.safetensors"), (2, 2, 2, 2))

    classifier = transformers.SegformerForImageClassification(transformers.SegformerConfig(**MIT_B0))
    classifier.segformer.load_state_dict(model.state_dict())
    classifier.save_pretrained(tmp_path / "prefixed", safe_serialization=True)
    add_to_fake_hub("nvidia/mit-b0-test", {"model.safetensors": tmp_path / "prefixed" / "model.safetensors"})
    # Some Hub repositories hold only a pickle `pytorch_model.bin` (here without the prefix).
    torch.save(load_file(directory / "model.safetensors"), tmp_path / "pytorch_model.bin")
    add_to_fake_hub("nvidia/mit-b0-bin-test", {"pytorch_model.bin": tmp_path / "pytorch_model.bin"})

    hub_ids = ("nvidia/mit-b0-test", f"nvidia/mit-b0-test@{FAKE_REVISION}", "nvidia/mit-b0-bin-test")
    for source in (*hub_ids, str(tmp_path / "pytorch_model.bin")):
        with torch.no_grad():
            for tensor in encoder.backbone.state_dict().values():
                tensor.zero_()
        load_backbone_weights(encoder, source)
        for key, tensor in encoder.backbone.state_dict().items():
            assert torch.equal(tensor, reference[key]), (source, key)


def test_offline_missing_repository_names_the_source_and_a_local_copy(mit_b0_encoder):
    with pytest.raises(DiffimlError) as error:
        load_backbone_weights(mit_b0_encoder, "nvidia/mit-b5")
    message = str(error.value)
    assert "\n" not in message and "nvidia/mit-b5" in message and "hf download nvidia/mit-b5" in message


def test_mit_weights_refuse_other_backbones_and_other_depths(mit_b0):
    _, directory = mit_b0
    with pytest.raises(DiffimlError, match="pvt_v2 backbone"):
        other = ConditionEncoder(ConditionEncoderConfig(backbone="test_efficientnet", backbone_kwargs=()))
        load_backbone_weights(other, str(directory))
    state = load_file(directory / "model.safetensors")
    with pytest.raises(DiffimlError, match="no tensor encoder.block.0.2"):
        segformer_to_timm_pvt_v2(state, (3, 2, 2, 2))
    with pytest.raises(DiffimlError, match="unused"):
        segformer_to_timm_pvt_v2(state, (2, 1, 2, 2))
