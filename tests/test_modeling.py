"""MedNetConfig, MedNetModel, MedNetForImageClassification and MedNetBackbone on real images."""

import json

import pytest
import timm
import torch
from safetensors import safe_open
import torch.nn.functional as F
from conftest import data_path
from transformers import AutoBackbone, AutoConfig, AutoModel, AutoModelForImageClassification

from mednet_hf import (
    MedNetBackbone,
    MedNetConfig,
    MedNetForImageClassification,
    MedNetImageProcessor,
    MedNetModel,
)


@pytest.fixture(scope="module")
def pixel_values():
    """Two real chest X-rays at 32 px, gray."""
    paths = [str(data_path("cxr/00000001_000.png")), str(data_path("cxr/00027426_000.png"))]
    return MedNetImageProcessor(image_size=32)(paths, return_tensors="pt").pixel_values


def test_config_validates_and_round_trips(tmp_path):
    with pytest.raises(ValueError, match="variant must be one of"):
        MedNetConfig(variant="rgb")
    with pytest.raises(ValueError, match="takes 1 channel"):
        MedNetConfig(variant="gray", num_channels=3)
    with pytest.raises(ValueError, match="image_mean has 3 value"):
        MedNetConfig(variant="gray", image_mean=[0.5, 0.5, 0.5])
    config = MedNetConfig(architecture="resnet18", variant="color", image_size=64, num_labels=3, out_indices=[2, 4])
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, MedNetConfig)
    assert (loaded.num_channels, loaded.image_size, loaded.num_labels) == (3, 64, 3)
    assert loaded.out_indices == [2, 4]


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="'resnet_nonexistent' is not a timm architecture"):
        MedNetModel(MedNetConfig(architecture="resnet_nonexistent"))


def test_model_outputs_and_stages(tiny_config, pixel_values):
    config = tiny_config()
    model = MedNetModel(config).eval()
    assert config.stage_names == ["act1", "layer1", "layer2", "layer3", "layer4"]
    assert config.hidden_sizes == [64, 64, 128, 256, 512] and config.num_features == 512
    with torch.no_grad():
        out = model(pixel_values, output_hidden_states=True)
        plain = model(pixel_values)
    assert out.last_hidden_state.shape == (2, 512, 1, 1)
    assert out.pooler_output.shape == (2, 512)
    assert [h.shape[1] for h in out.hidden_states] == config.hidden_sizes
    torch.testing.assert_close(out.last_hidden_state, plain.last_hidden_state)  # both paths agree
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state.mean(dim=(2, 3)))
    assert plain.hidden_states is None


def test_wrong_channel_count_is_rejected(tiny_config, pixel_values):
    model = MedNetModel(tiny_config(variant="color"))
    with pytest.raises(ValueError, match=r"expects pixel_values of shape \(batch, 3, height, width\)"):
        model(pixel_values)


@pytest.mark.parametrize(
    "problem_type,num_labels,labels,reference",
    [
        ("single_label_classification", 3, torch.tensor([0, 2]), lambda lo, la: F.cross_entropy(lo, la)),
        ("multi_label_classification", 4, torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1]]), F.binary_cross_entropy_with_logits),
        ("regression", 1, torch.tensor([0.3, -1.2]), lambda lo, la: F.mse_loss(lo.squeeze(-1), la)),
    ],
)
def test_loss_follows_problem_type(tiny_config, pixel_values, problem_type, num_labels, labels, reference):
    model = MedNetForImageClassification(tiny_config(num_labels=num_labels, problem_type=problem_type)).eval()
    out = model(pixel_values, labels=labels)
    assert out.logits.shape == (2, num_labels)
    torch.testing.assert_close(out.loss, reference(out.logits, labels))
    out.loss.backward()
    assert model.timm_model.get_classifier().weight.grad is not None


def test_label_mismatch_is_a_clear_error(tiny_config, pixel_values):
    model = MedNetForImageClassification(tiny_config(num_labels=2, id2label={0: "normal", 1: "pneumonia"}))
    with pytest.raises(ValueError, match=r"labels contain class 5 but the model has num_labels=2"):
        model(pixel_values, labels=torch.tensor([0, 5]))
    multi = MedNetForImageClassification(tiny_config(num_labels=3, problem_type="multi_label_classification"))
    with pytest.raises(ValueError, match=r"multi-label targets must have shape \(batch, 3\)"):
        multi(pixel_values, labels=torch.zeros(2, 5))


def test_save_load_safetensors_only_and_identical_logits(tiny_config, pixel_values, tmp_path):
    model = MedNetForImageClassification(tiny_config(num_labels=2)).eval()
    model.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    assert {"modeling_mednet.py", "configuration_mednet.py"} <= files
    assert "preprocessor_config.json" not in files  # the model never writes (or imports) the processor
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert {"AutoModel", "AutoModelForImageClassification", "AutoBackbone", "AutoImageProcessor"} <= set(auto_map)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values).logits, model(pixel_values).logits, rtol=0, atol=0)
    # The same checkpoint serves the headless model, with the same features.
    base = AutoModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(pixel_values), pre_logits=True)
        torch.testing.assert_close(base(pixel_values).pooler_output, pooled)


def test_new_head_from_a_checkpoint(tiny_config, tmp_path):
    MedNetModel(tiny_config()).save_pretrained(tmp_path)
    clf = AutoModelForImageClassification.from_pretrained(tmp_path, num_labels=5)
    head = clf.timm_model.get_classifier()
    assert head.out_features == 5 and head.weight.abs().sum() > 0
    clf.reset_classifier(2, id2label={0: "a", 1: "b"})
    assert clf.timm_model.get_classifier().out_features == 2 and clf.config.label2id == {"a": 0, "b": 1}


def test_backbone_feature_maps_match_config_channels(tiny_config, pixel_values, tmp_path):
    config = tiny_config(out_indices=[1, 2, 3, 4])
    backbone = AutoBackbone.from_config(config).eval()
    assert isinstance(backbone, MedNetBackbone)
    with torch.no_grad():
        maps = backbone(pixel_values).feature_maps
    assert backbone.channels == [config.hidden_sizes[i] for i in config.out_indices] == [64, 128, 256, 512]
    assert [m.shape[1] for m in maps] == backbone.channels
    assert [m.shape[-1] for m in maps] == [8, 4, 2, 1]  # strides 4, 8, 16, 32 at 32 px

    # A classification checkpoint loads into the backbone, which then returns the model's own stage outputs.
    clf = MedNetForImageClassification(tiny_config(num_labels=2)).eval()
    clf.save_pretrained(tmp_path)
    loaded = MedNetBackbone.from_pretrained(tmp_path, out_features=["layer2", "layer4"]).eval()
    with torch.no_grad():
        stages = clf(pixel_values, output_hidden_states=True).hidden_states
        maps = loaded(pixel_values).feature_maps
    torch.testing.assert_close(maps[0], stages[2])
    torch.testing.assert_close(maps[1], stages[4])


def test_variant_conversion_uses_timm_first_conv_rule(tiny_config, pixel_values):
    gray = MedNetForImageClassification(tiny_config(num_labels=2)).eval()
    color = gray.convert_variant("color").eval()
    assert color.config.num_channels == 3 and color.config.image_mean == [0.485, 0.456, 0.406]
    with torch.no_grad():
        # A gray image replicated to 3 channels gives the color model exactly the gray model's output.
        torch.testing.assert_close(color(pixel_values.repeat(1, 3, 1, 1)).logits, gray(pixel_values).logits)
        back = color.convert_variant("gray").eval()
        torch.testing.assert_close(back(pixel_values).logits, gray(pixel_values).logits)


@pytest.mark.parametrize("head", [0, 3], ids=["MedNetModel", "MedNetForImageClassification"])
def test_a_saved_folder_is_a_timm_checkpoint(tiny_config, pixel_values, tmp_path, head):
    """timm's own names in model.safetensors and a config.json timm reads: plain timm rebuilds the same network."""
    model = (MedNetForImageClassification(tiny_config(num_labels=head)) if head else MedNetModel(tiny_config())).eval()
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", framework="pt") as f:
        keys = set(f.keys())
    assert keys == set(model.timm_model.state_dict())  # `conv1.weight`, not `timm_model.conv1.weight`
    plain = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    assert plain.num_classes == head
    with torch.no_grad():
        expected = model(pixel_values).logits if head else model(pixel_values).pooler_output
        torch.testing.assert_close(plain(pixel_values), expected, rtol=0, atol=1e-5)
    # And transformers still loads it, from the package's classes.
    again = (AutoModelForImageClassification if head else AutoModel).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        out = again(pixel_values)
        torch.testing.assert_close(out.logits if head else out.pooler_output, expected, rtol=0, atol=1e-6)


def test_bundled_release_loads_in_plain_timm(pixel_values):
    model = AutoModel.from_pretrained("mednet/gray").eval()
    processor = MedNetImageProcessor.from_pretrained("mednet/gray")
    x = processor([str(data_path("cxr/00000001_000.png"))], return_tensors="pt").pixel_values
    plain = timm.create_model("hf-hub:mednet/gray", pretrained=True).eval()  # offline: the cache holds the bundle
    with torch.no_grad():
        torch.testing.assert_close(plain.forward_head(plain.forward_features(x), pre_logits=True), model(x).pooler_output,
                                   rtol=0, atol=1e-5)


def test_gradient_checkpointing_where_timm_supports_it(tiny_config, pixel_values):
    model = MedNetForImageClassification(tiny_config(num_labels=2))
    assert model.supports_gradient_checkpointing
    model.activation_checkpointing_enable()
    assert model.timm_model.grad_checkpointing
    model.train()
    model(pixel_values, labels=torch.tensor([0, 1])).loss.backward()
    assert model.timm_model.conv1.weight.grad is not None
