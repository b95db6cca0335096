"""Checkpoints: round trips, strict loading, the offline Hub, and pickle refusal."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

import diffiml_cli
from diffiml_cli.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from diffiml_cli.errors import DiffimlError
from diffiml_cli.inference import Predictor, SamplingOptions
from diffiml_cli.models.build import build_localizer, load_model, load_mask_vae
from diffiml_cli.presets import get_preset


def _predict(localizer, config, images):
    predictor = Predictor(localizer, config.diffusion, device=torch.device("cpu"))
    return predictor.predict(images, SamplingOptions(steps=3, ensemble=2, seed=3)).probability


def test_save_then_load_gives_identical_outputs_and_a_self_describing_file(tmp_path):
    torch.manual_seed(1)
    config = get_preset("test")
    original = build_localizer(config).eval()
    save_checkpoint(tmp_path / "ckpt", original, config)
    loaded, loaded_config = load_model(tmp_path / "ckpt")
    assert loaded_config == config
    images = torch.rand(2, 3, 64, 64)
    assert torch.equal(_predict(original, config, images), _predict(loaded, loaded_config, images))
    with safe_open(tmp_path / "ckpt" / "model.safetensors", framework="pt") as handle:
        header = json.loads(handle.metadata()["diffiml"])
    assert header["model_type"] == "localizer" and header["config"]["image_size"] == 64
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text()) == header
    assert not [p for p in (tmp_path / "ckpt").iterdir() if p.name.endswith(".tmp")]


def test_half_precision_checkpoint_loads_into_fp32(tmp_path):
    config = get_preset("test")
    save_checkpoint(tmp_path, build_localizer(config), config, half=True)
    _, _, state = load_checkpoint(tmp_path)
    assert {t.dtype for t in state.values() if t.is_floating_point()} == {torch.float16}
    localizer, _ = load_model(tmp_path)
    assert next(localizer.parameters()).dtype == torch.float32


def test_loading_is_strict_about_config_and_weights(tmp_path, tiny_checkpoint):
    config = get_preset("test")
    header = json.loads((tiny_checkpoint / "config.json").read_text())
    header["config"]["denoiser"]["layers_per_block"] = 2
    (tmp_path / "config.json").write_text(json.dumps(header))
    state = dict(load_checkpoint(tiny_checkpoint)[2])
    from safetensors.torch import save_file

    save_file(state, tmp_path / "model.safetensors")  # no metadata: config.json beside it is used
    with pytest.raises(DiffimlError, match="config does not match the weights"):
        load_model(tmp_path)
    assert config == load_model(tiny_checkpoint)[1]


def test_mask_vae_loads_from_a_localizer_checkpoint(tiny_checkpoint):
    vae = load_mask_vae(tiny_checkpoint)
    localizer, _ = load_model(tiny_checkpoint)
    assert all(torch.equal(a, b) for a, b in zip(vae.state_dict().values(), localizer.vae.state_dict().values()))


def test_hub_id_resolves_from_the_offline_cache_with_and_without_revision(hub_checkpoint_id, tiny_checkpoint):
    from conftest import FAKE_REVISION

    for source in (hub_checkpoint_id, f"{hub_checkpoint_id}@main", f"{hub_checkpoint_id}@{FAKE_REVISION}"):
        weights = resolve_checkpoint(source)
        assert weights.read_bytes() == (tiny_checkpoint / "model.safetensors").read_bytes()
    localizer, config = load_model(hub_checkpoint_id)
    assert config.image_size == 64


def test_missing_hub_repository_offline_is_one_clear_line():
    with pytest.raises(DiffimlError) as error:
        load_model("nobody/no-such-model@v1")
    message = str(error.value)
    assert "\n" not in message
    assert "nobody/no-such-model" in message and "`checkpoint`" in message


def test_a_path_that_does_not_exist_is_not_mistaken_for_a_hub_id(tmp_path):
    with pytest.raises(DiffimlError, match="not found"):
        resolve_checkpoint(tmp_path / "missing" / "ckpt")


def test_pickle_checkpoints_are_refused_unless_allowed_and_then_loaded_weights_only(tmp_path, tiny_checkpoint):
    _, _, state = load_checkpoint(tiny_checkpoint)
    torch.save(state, tmp_path / "model.pth")
    (tmp_path / "config.json").write_bytes((tiny_checkpoint / "config.json").read_bytes())
    with pytest.raises(DiffimlError, match="`allow_pickle=True`"):
        load_model(tmp_path / "model.pth")
    localizer, _ = load_model(tmp_path / "model.pth", allow_pickle=True)

    class Payload:  # anything but plain tensors is refused by weights_only=True
        def __reduce__(self):
            return (print, ("code ran",))

    torch.save({"x": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(DiffimlError, match="weights_only"):
        load_model(tmp_path / "evil.pth", allow_pickle=True)


def test_truncated_safetensors_is_a_clear_error(tmp_path, tiny_checkpoint):
    data = (tiny_checkpoint / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(DiffimlError, match="safetensors"):
        load_model(tmp_path)


def _pickle_checkpoint(folder, tiny_checkpoint):
    """The tiny checkpoint's weights as `model.pth`, its config.json beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(load_checkpoint(tiny_checkpoint)[2], folder / "model.pth")
    (folder / "config.json").write_bytes((tiny_checkpoint / "config.json").read_bytes())
    return folder / "model.pth"


PUBLIC_LOADERS = {
    "load_localizer": lambda source, **options: diffiml_cli.load_localizer(source, device="cpu", **options),
    "load_model": load_model,
    "load_mask_vae": load_mask_vae,
    "load_checkpoint": load_checkpoint,
}


@pytest.mark.parametrize("loader", PUBLIC_LOADERS)
def test_every_public_loader_refuses_pickle_by_default(tmp_path, tiny_checkpoint, loader):
    weights = _pickle_checkpoint(tmp_path, tiny_checkpoint)
    with pytest.raises(DiffimlError, match="`allow_pickle=True`"):
        PUBLIC_LOADERS[loader](weights)
    PUBLIC_LOADERS[loader](weights, allow_pickle=True)  # asked for: loaded, weights only


@pytest.mark.parametrize("command", ["localize", "evaluate", "calibrate", "benchmark"])
def test_every_command_refuses_pickle_unless_allow_pickle_is_given(tmp_path, tiny_checkpoint, command):
    from PIL import Image
    from typer.testing import CliRunner

    from diffiml_cli.cli.app import app

    weights = _pickle_checkpoint(tmp_path / "ckpt", tiny_checkpoint)
    data = tmp_path / "data"
    for folder in ("Tp", "Gt", "Au"):
        (data / folder).mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(data / "Tp" / "t.png")
    Image.new("L", (32, 32), 255).save(data / "Gt" / "t.png")
    Image.new("RGB", (32, 32)).save(data / "Au" / "a.png")
    target = {"localize": [str(data / "Au" / "a.png")], "evaluate": ["-d", str(data)], "calibrate": ["-d", str(data)],
              "benchmark": []}[command]
    args = [command, *target, "-c", str(weights), "-o", str(tmp_path / "out"), "--device", "cpu"]
    if command == "benchmark":
        args = [command, "-c", str(weights), "--device", "cpu", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "--allow-pickle" in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output


def _with_header(tmp_path, tiny_checkpoint, change, *, in_metadata: bool):
    """A copy of the tiny checkpoint whose diffiml header went through `change`, in the safetensors metadata or
    (without metadata) in config.json beside the weights."""
    from safetensors.torch import save_file

    header = json.loads((tiny_checkpoint / "config.json").read_text())
    change(header)
    state = load_checkpoint(tiny_checkpoint)[2]
    tmp_path.mkdir(parents=True, exist_ok=True)
    if in_metadata:
        save_file(state, tmp_path / "model.safetensors", metadata={"diffiml": json.dumps(header)})
    else:
        save_file(state, tmp_path / "model.safetensors")
        (tmp_path / "config.json").write_text(json.dumps(header))
    return tmp_path


@pytest.mark.parametrize("in_metadata", [True, False], ids=["metadata", "config.json"])
@pytest.mark.parametrize("version", ["2", "0", "1.1", 1, None, "missing"])
def test_a_checkpoint_of_another_format_version_is_refused(tmp_path, tiny_checkpoint, version, in_metadata):
    def change(header):
        if version == "missing":
            del header["format_version"]
        else:
            header["format_version"] = version

    source = _with_header(tmp_path / "ckpt", tiny_checkpoint, change, in_metadata=in_metadata)
    for loader in PUBLIC_LOADERS.values():
        with pytest.raises(DiffimlError, match="checkpoint format"):
            loader(source)
    unchanged = _with_header(tmp_path / "same", tiny_checkpoint, lambda header: None, in_metadata=in_metadata)
    assert load_model(unchanged)[1] == load_model(tiny_checkpoint)[1]
