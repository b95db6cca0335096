"""ImageNet backbone initialisation: the EfficientNet-Lite0 key map is checked by classifying a photo."""

from __future__ import annotations

import cv2
import pytest
import timm
import torch

from diffiml_cli.config import ConditionEncoderConfig
from diffiml_cli.errors import DiffimlError
from diffiml_cli.models.backbone_weights import efficientnet_lite0_file, efficientnet_lite0_to_timm, load_backbone_weights
from diffiml_cli.models.condition_encoder import ConditionEncoder
from diffiml_cli.presets import get_preset


def test_efficientnet_lite0_weights_classify_chelsea_the_cat():
    skimage_data = pytest.importorskip("skimage.data")
    state = torch.load(efficientnet_lite0_file(), map_location="cpu", weights_only=True)
    classifier = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    classifier.load_state_dict(efficientnet_lite0_to_timm(state), strict=True)
    photo = cv2.resize(skimage_data.chelsea(), (224, 224), interpolation=cv2.INTER_AREA)
    x = (torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        top1 = classifier(x).argmax(-1).item()
    assert 281 <= top1 <= 285  # the ImageNet cat classes; this file gives 285, "Egyptian cat"


def test_tiny_preset_encoder_loads_the_bundled_weights_into_every_backbone_tensor():
    encoder = ConditionEncoder(get_preset("tiny").encoder)
    before = {k: v.clone() for k, v in encoder.backbone.state_dict().items()}
    load_backbone_weights(encoder, "efficientnet-lite0")
    changed = [k for k, v in encoder.backbone.state_dict().items() if "num_batches" not in k and not torch.equal(v, before[k])]
    assert len(changed) == len([k for k in before if "num_batches" not in k])


def test_weights_for_another_backbone_are_refused():
    encoder = ConditionEncoder(ConditionEncoderConfig(backbone="test_efficientnet", backbone_kwargs=()))
    with pytest.raises(DiffimlError, match="do not fit"):
        load_backbone_weights(encoder, "efficientnet-lite0")
    with pytest.raises(DiffimlError, match="could not be loaded"):
        load_backbone_weights(encoder, "timm/not-a-real-model")  # offline in tests: a clear error
