"""The authors' official checkpoints (scu-zjz/DiffIML) in our names: numerics, strictness, safe reading, the CLI.

The official network is restated in `official_diffiml.py` (plain torch + diffusers), random, and saved the way
IMDL-BenCo's `misc.save_model` and the LightVAE trainer save it.
"""

from __future__ import annotations

import argparse

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from diffiml_cli.checkpoint import load_state_strict
from diffiml_cli.cli.app import app
from diffiml_cli.errors import DiffimlError
from diffiml_cli.models.build import build_localizer, load_model
from diffiml_cli.models.condition_encoder import ConditionEncoder
from diffiml_cli.models.denoiser import Denoiser
from diffiml_cli.models.mask_vae import MaskVAE
from diffiml_cli.models.official_weights import (PARTS, convert_official, map_official_state, official_config,
                                                 read_official_pth)
from diffiml_cli.presets import get_preset
from official_diffiml import random_official

pytestmark = pytest.mark.slow  # two MiT-b3 builds (ours is timm's slow init): about 20 s on two busy cores

MAPPABLE = ("encoder", "denoiser", "vae.encoder")  # the parts the numerical tests below check one by one
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
TOLERANCE = dict(rtol=1e-4, atol=1e-4)  # float rounding through 28 blocks is ~1e-5; a misplaced tensor is O(1)


@pytest.fixture(scope="module")
def official():
    """The official DiffIML, random, at out_shape 8: the official encoder's fixed output size for 64^2 inputs."""
    return random_official(out_shape=8)


def _imdlbenco_checkpoint(state: dict[str, torch.Tensor]) -> dict:
    """What IMDL-BenCo's misc.save_model writes: weights, AdamW state, epoch, AMP scaler and the argparse args."""
    optimizer = {"state": {0: {"step": torch.tensor(10.0), "exp_avg": torch.zeros(3)}},
                 "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "weight_decay": 0.05, "params": [0]}]}
    args = argparse.Namespace(model="DiffIML", image_size=512, if_resizing=True, save_epochs="5,10", lr=1e-4)
    return {"model": state, "optimizer": optimizer, "epoch": 59, "scaler": {"scale": 65536.0}, "args": args}


@pytest.fixture(scope="module")
def official_files(official, tmp_path_factory):
    """(diffiml_best.pth, light_vae_weights.pth) as the official training scripts save them."""
    folder = tmp_path_factory.mktemp("official")
    torch.save(_imdlbenco_checkpoint(official.state_dict()), folder / "diffiml_best.pth")
    torch.save({"model": official.vae.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "epoch": 39},
               folder / "light_vae_weights.pth")
    return folder / "diffiml_best.pth", folder / "light_vae_weights.pth"


@pytest.fixture(scope="module")
def mapped(official_files):
    return map_official_state(read_official_pth(official_files[0]), parts=MAPPABLE)


def _part(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {name.removeprefix(prefix): tensor for name, tensor in state.items() if name.startswith(prefix)}


def test_reading_unwraps_imdlbenco_checkpoints_and_ddp_prefixes(official, official_files, tmp_path):
    expected = official.state_dict()
    localizer_state = read_official_pth(official_files[0])  # beside "model": optimizer, epoch, scaler, args
    assert list(localizer_state) == list(expected) and len(expected) == 730
    assert all(torch.equal(localizer_state[name], tensor) for name, tensor in expected.items())
    vae_state = read_official_pth(official_files[1], "vae_pth")
    assert len(vae_state) == 47 and all(torch.equal(t, expected[f"vae.{name}"]) for name, t in vae_state.items())
    torch.save({"state_dict": {f"module.{name}": tensor for name, tensor in expected.items()}}, tmp_path / "ddp.pth")
    assert list(read_official_pth(tmp_path / "ddp.pth")) == list(expected)


def test_the_condition_equals_the_official_encoders(official, mapped):
    config = official_config()
    encoder = ConditionEncoder(config.encoder).eval()
    load_state_strict(encoder, _part(mapped, "encoder."), "official extractor")
    image = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = encoder(image)  # normalises [0, 1] images itself; IMDL-BenCo's loader hands in normalised ones
        theirs = official.extractor((image - IMAGENET_MEAN) / IMAGENET_STD)
    assert ours.shape == (2, 128, 8, 8)
    torch.testing.assert_close(ours, theirs, **TOLERANCE)
    # Each of our LayerNorms runs at the epsilon of the official norm its weight came from (1e-6 and 1e-5 both);
    # mapped from the module's own state dict, the weights are the official storage itself.
    sources = map_official_state(official.state_dict(), parts=("encoder",))
    official_eps = {m.weight.data_ptr(): m.eps for m in official.modules() if isinstance(m, nn.LayerNorm)}
    ours_eps = {name: m.eps for name, m in encoder.backbone.named_modules() if isinstance(m, nn.LayerNorm)}
    theirs_eps = {name: official_eps[sources[f"encoder.backbone.{name}.weight"].data_ptr()] for name in ours_eps}
    assert ours_eps == theirs_eps and set(ours_eps.values()) == {1e-5, 1e-6}


def test_one_denoiser_step_equals_the_official_unets(official, mapped):
    denoiser = Denoiser(official_config().denoiser).eval()
    load_state_strict(denoiser, _part(mapped, "denoiser."), "official unet")
    generator = torch.Generator().manual_seed(1)
    x_t, condition = torch.randn(2, 8, 8, 8, generator=generator), torch.randn(2, 128, 8, 8, generator=generator)
    t = torch.tensor([999, 125])
    with torch.no_grad():
        torch.testing.assert_close(denoiser(x_t, t, condition), official.unet(x_t, t, condition), **TOLERANCE)


def test_the_light_vae_encoder_maps_exactly_with_zero_biases(official, mapped):
    vae = MaskVAE(official_config().vae).eval()
    load_state_strict(vae.encoder, _part(mapped, "vae.encoder."), "official LightVAE encoder")
    mask = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(vae.encode(mask), official.vae.encoder(mask), rtol=1e-6, atol=1e-6)
    zero = {name for name, tensor in mapped.items() if name.endswith("bias") and not tensor.any()}
    assert zero == {"denoiser.condition_fuse.bias", *(f"vae.encoder.{i}.0.bias" for i in range(3))}


def test_the_mapped_parts_fill_every_tensor_of_ours(mapped):
    with torch.device("meta"):
        ours = build_localizer(official_config()).state_dict()
    assert sorted(mapped) == sorted(name for name in ours if name.startswith(tuple(f"{p}." for p in MAPPABLE)))
    assert all(mapped[name].shape == ours[name].shape for name in mapped) and len(mapped) == 707
    assert set(PARTS) == {*MAPPABLE, "vae.decoder"}


def test_a_whole_conversion_decodes_as_the_official_light_vae(official, official_files):
    localizer_pth, vae_pth = official_files
    for arguments in ((localizer_pth,), (localizer_pth, vae_pth)):  # a matching vae_pth is checked, then the same
        state, config = convert_official(*arguments)
        assert config.vae.decoder_layout == "official"
        localizer = build_localizer(config).eval()
        load_state_strict(localizer, state, "converted")
        latent = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            torch.testing.assert_close(localizer.vae.decode(latent), official.vae.decoder(latent), rtol=1e-5, atol=1e-5)
    without_vae = {name: t for name, t in official.state_dict().items() if not name.startswith("vae.")}
    with pytest.raises(DiffimlError, match="pass the official light_vae_weights.pth as `vae_pth`"):
        map_official_state(without_vae)
    assert set(map_official_state(without_vae, read_official_pth(vae_pth, "vae_pth"))) == set(
        convert_official(localizer_pth)[0])
    other_vae = {name: t + 1 if name == "decoder.0.weight" else t for name, t in official.vae.state_dict().items()}
    with pytest.raises(DiffimlError, match="`vae_pth` is not the LightVAE inside `localizer_pth`: decoder.0.weight"):
        map_official_state(official.state_dict(), other_vae)


def test_a_missing_extra_or_misshapen_official_tensor_is_named(official):
    state = official.state_dict()
    missing = {name: t for name, t in state.items() if name != "extractor.linear_c2.bias"}
    with pytest.raises(DiffimlError, match=r"has no tensor extractor\.linear_c2\.bias \(for our encoder"):
        map_official_state(missing, parts=MAPPABLE)
    extra = state | {"extractor.backbone.block3.18.norm1.weight": torch.ones(320)}
    with pytest.raises(DiffimlError, match=r"extractor\.backbone\.block3\.18\.norm1\.weight \(320,\) has no place"):
        map_official_state(extra, parts=MAPPABLE)
    misshapen = state | {"unet.concat.weight": torch.zeros(128, 128, 3, 3)}
    with pytest.raises(DiffimlError, match=r"unet\.concat\.weight has shape \(128, 128, 3, 3\)"):
        map_official_state(misshapen, parts=MAPPABLE)
    with pytest.raises(DiffimlError, match="unknown `parts`"):
        map_official_state(state, parts=("unet",))
    with pytest.raises(DiffimlError, match="would go unused"):
        map_official_state(state, official.vae.state_dict(), parts=("encoder",))


_UNPICKLED: list[str] = []


def _record_unpickling() -> str:
    _UNPICKLED.append("ran")
    return "payload"


class _Payload:
    """An object whose unpickling would run code: torch.load(weights_only=True) must refuse to rebuild it."""

    def __reduce__(self):
        return (_record_unpickling, ())


def test_a_pickle_holding_other_objects_is_refused_unrun(official, tmp_path):
    torch.save({"model": {"unet.concat.weight": torch.zeros(1)}, "hook": _Payload()}, tmp_path / "bad.pth")
    with pytest.raises(DiffimlError, match=r"^`vae_pth` .*bad\.pth: refused by torch\.load\(weights_only=True\)"):
        read_official_pth(tmp_path / "bad.pth", "vae_pth")
    assert _UNPICKLED == []
    torch.save({"epoch": 3}, tmp_path / "empty.pth")
    with pytest.raises(DiffimlError, match="no state dict of tensors"):
        read_official_pth(tmp_path / "empty.pth")
    with pytest.raises(DiffimlError, match="no such file"):
        convert_official(tmp_path / "absent.pth")


def test_cli_convert_writes_nothing_when_a_tensor_has_no_place(official, tmp_path):
    state = {name: t for name, t in official.state_dict().items() if name != "vae.decoder.1.weight"}
    torch.save({"model": state}, tmp_path / "broken.pth")
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "broken.pth"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "vae.decoder.1.weight" in result.output and not (tmp_path / "out").exists()


def test_cli_convert_writes_a_checkpoint_that_localize_loads(official_files, tmp_path):
    result = CliRunner().invoke(app, ["convert", str(official_files[0]), "--out", str(tmp_path / "converted")])
    assert result.exit_code == 0, result.output
    _, config = load_model(tmp_path / "converted")
    assert config.vae.decoder_layout == "official" and config.encoder.backbone == "pvt_v2_b3"


def test_cli_convert_saves_what_load_official_returns_as_a_checkpoint(monkeypatch, tmp_path):
    config = get_preset("test")
    torch.manual_seed(0)
    localizer = build_localizer(config).eval()
    received = []
    monkeypatch.setattr("diffiml_cli.models.official_weights.load_official",
                        lambda *arguments: received.append(arguments) or (localizer, config))
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "best.pth"), "--out", str(tmp_path / "out"),
                                      "--vae", str(tmp_path / "vae.pth")])
    assert result.exit_code == 0, result.output
    assert received == [(tmp_path / "best.pth", tmp_path / "vae.pth")]
    loaded, loaded_config = load_model(tmp_path / "out")
    assert loaded_config == config
    assert all(torch.equal(tensor, localizer.state_dict()[name]) for name, tensor in loaded.state_dict().items())
