"""MedNet-3D: the 2-D network converted for volumes (ACS, I3D, 2.5D) from the 2-D weights, saved and loaded like the
2-D models (with the package, and by remote code without it); volumes through the processor to `(C, D, H, W)`; and
one path: the processor given a file or an array, and the dataset row of it, give identical tensors."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, data_path
from helpers import run_python

from mednet_hf import MedNetConfig, MedNetImageProcessor, MedNetModel
from mednet_hf.data import load_medical_dataset, medical_transform
from mednet_hf.volumes import as_dhw

SERIES = "dicom_series/mr_t1_vestibular_schwannoma"


@pytest.fixture(scope="module")
def gray_2d():
    return MedNetModel.from_pretrained("mednet/gray").eval()


def _gray_size() -> int:
    """The 2-D release's input size, which a conversion to 3-D keeps on every axis."""
    return MedNetConfig.from_pretrained("mednet/gray").pretrained_cfg["input_size"][-1]


def test_i3d_on_a_volume_constant_along_depth_gives_the_2d_features(gray_2d):
    i3d = MedNetModel.from_pretrained("mednet/gray", spatial_dims=3, conversion="i3d").eval()
    slices = MedNetImageProcessor.from_pretrained("mednet/gray")([str(data_path("cxr/00000001_000.png")),
                                                                 str(data_path("dicom/CT_small.dcm"))], return_tensors="pt")
    images = slices["pixel_values"]
    volume = images[:, :, None].expand(-1, -1, 28, -1, -1).contiguous()
    with torch.no_grad():
        flat, deep = gray_2d(pixel_values=images).pooler_output, i3d(pixel_values=volume).pooler_output
    torch.testing.assert_close(deep, flat, atol=1e-5, rtol=0)
    assert i3d.config.spatial_dims == 3 and i3d.config.pretrained_cfg["input_size"] == [1, *[_gray_size()] * 3]


def test_acs_and_25d_load_the_2d_state_dict_unchanged(gray_2d):
    for conversion in ("acs", "2.5d"):
        model = MedNetModel(MedNetConfig(architecture="resnet18", variant="gray", image_size=28, spatial_dims=3,
                                         conversion=conversion))
        result = model.timm_model.load_state_dict(gray_2d.timm_model.state_dict(), strict=True)
        assert not result.missing_keys and not result.unexpected_keys
        loaded = MedNetModel.from_pretrained("mednet/gray", spatial_dims=3, conversion=conversion)
        for key, value in gray_2d.timm_model.state_dict().items():
            assert torch.equal(loaded.timm_model.state_dict()[key], value), key
        with torch.no_grad():
            out = loaded.eval()(pixel_values=torch.randn(2, 1, 28, 28, 28))
        assert out.pooler_output.shape == (2, 512) and out.last_hidden_state.ndim == 5


def test_auto_classes_convert_a_2d_checkpoint_like_the_model_class(gray_2d):
    """AutoConfig takes `spatial_dims` into the 2-D checkpoint's config; the weights must still be converted, not
    left random in a 3-D network that the 2-D weights do not fit."""
    from transformers import AutoModel

    auto = AutoModel.from_pretrained("mednet/gray", spatial_dims=3, conversion="i3d").eval()
    direct = MedNetModel.from_pretrained("mednet/gray", spatial_dims=3, conversion="i3d").eval()
    assert auto.config.pretrained_cfg["input_size"] == [1, *[_gray_size()] * 3]
    for key, value in direct.timm_model.state_dict().items():
        assert torch.equal(auto.timm_model.state_dict()[key], value), key


@pytest.mark.slow
def test_a_saved_3d_checkpoint_loads_back_with_the_package_and_by_remote_code(tmp_path):
    from transformers import AutoImageProcessor, AutoModel

    folder = tmp_path / "gray-3d"
    model = MedNetModel.from_pretrained("mednet/gray", spatial_dims=3, conversion="acs").eval()
    model.save_pretrained(folder)
    AutoImageProcessor.from_pretrained("mednet/gray").save_pretrained(folder)
    volumes = np.load(data_path("medmnist3d/adrenalmnist3d.npz"))["test_images"][:2]
    processor = AutoImageProcessor.from_pretrained(folder)
    assert processor.slice_policy == "volume" and processor.volume_size == [_gray_size()] * 3  # from the 3-D config
    pixels = processor(volumes, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model(pixel_values=pixels).pooler_output
        again = AutoModel.from_pretrained(folder).eval()(pixel_values=pixels).pooler_output
    torch.testing.assert_close(again, expected, atol=0, rtol=0)
    np.save(tmp_path / "volumes.npy", volumes)
    result = run_python(
        f"""
        import json, numpy as np, torch
        try:
            import mednet_hf
        except ModuleNotFoundError:
            pass
        else:
            raise SystemExit("mednet_hf is importable: the test proves nothing")
        from transformers import AutoImageProcessor, AutoModel
        model = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        processor = AutoImageProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
        pixels = processor(np.load({str(tmp_path / "volumes.npy")!r}), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            print(json.dumps(model(pixel_values=pixels).pooler_output.tolist()))
        """,
        blocked=("mednet_hf",),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    torch.testing.assert_close(torch.tensor(json.loads(result.stdout.strip().splitlines()[-1])), expected, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"expects pixel_values of shape \(batch, 1, depth, height, width\)"):
        model(pixel_values=torch.zeros(1, 1, 28, 28))


@pytest.mark.parametrize("relative,spacing", [("nifti/CT_pitch.nii.gz", 4.0), (SERIES, 3.0),
                                              ("totalsegmentator_examples/images/example_ct.nii.gz", 3.0)])
def test_volumes_reach_the_configured_spacing_and_size(relative, spacing):
    from mednet_hf.volumes import resample, to_volume

    processor = MedNetImageProcessor(variant="gray", slice_policy="volume", volume_size=[24, 32, 40],
                                     spacing=[spacing] * 3)
    pixels = processor(str(data_path(relative)), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 1, 24, 32, 40) and torch.isfinite(pixels).all()
    array, voxel = as_dhw(to_volume(str(data_path(relative))))
    resampled = resample(array.astype(np.float32), voxel, [spacing] * 3)
    # the physical extent is kept: shape × target spacing ≈ shape × the file's spacing
    assert np.allclose(np.array(resampled.shape) * spacing, np.array(array.shape) * np.array(voxel), atol=spacing)


def test_label_maps_resample_with_nearest_neighbour():
    from mednet_hf.volumes import resample

    labels = np.zeros((10, 10, 10), np.float32)
    labels[2:8, 2:8, 2:8] = 7.0
    out = resample(labels, (1.0, 1.0, 1.0), (0.5, 0.5, 0.5), label_map=True)
    assert set(np.unique(out)) == {0.0, 7.0} and out.shape == (20, 20, 20)
    assert len(np.unique(resample(labels, (1.0, 1.0, 1.0), (0.5, 0.5, 0.5)))) > 2  # trilinear blends


def test_dataset_rows_of_volumes_give_the_processors_tensors(tmp_path):
    """One path for volumes: a MedMNIST-3D row and the array it holds; an image-folder volume row (NIfTI, a DICOM
    series) and its file."""
    processor = MedNetImageProcessor(variant="gray", slice_policy="volume", volume_size=[28, 28, 28], spacing=[4.0] * 3)
    adrenal = load_medical_dataset("medmnist", "adrenalmnist3d", data_path("medmnist3d"), size=28,
                                   cache_dir=tmp_path / "cache")["test"]
    rows = adrenal.with_transform(medical_transform(processor, adrenal.features))
    arrays = np.load(data_path("medmnist3d/adrenalmnist3d.npz"))["test_images"]
    for index in (0, 7, 297):
        torch.testing.assert_close(rows[index]["pixel_values"], processor(arrays[index], return_tensors="pt")["pixel_values"][0],
                                   atol=0, rtol=0)
    assert rows[0]["pixel_values"].shape == (1, 28, 28, 28)
    folder = tmp_path / "volumes"
    folder.mkdir()
    (folder / "ct.nii.gz").symlink_to(data_path("nifti/CT_pitch.nii.gz"))
    shutil.copytree(data_path(SERIES), folder / "series")
    volumes = load_medical_dataset("imagefolder", data_dir=folder, cache_dir=tmp_path / "cache", volumes=True,
                                   drop_labels=True)["train"]
    assert sorted(volumes["source_file"]) == ["ct.nii.gz", "series"]
    transformed = volumes.with_transform(medical_transform(processor, volumes.features))
    for index, name in enumerate(volumes["source_file"]):
        torch.testing.assert_close(transformed[index]["pixel_values"],
                                   processor(str(folder / name), return_tensors="pt")["pixel_values"][0], atol=0, rtol=0)


@pytest.fixture(scope="module")
def classifier_3d(tmp_path_factory):
    """A MedNet-3D classifier (ACS from the 2-D release, head untrained but saved as a classifier) with its
    processor: what `mednet finetune` leaves in best/ for a 3-D set."""
    from mednet_hf import MedNetForImageClassification

    folder = tmp_path_factory.mktemp("gray-3d-classifier")
    model = MedNetForImageClassification.from_pretrained("mednet/gray", spatial_dims=3, conversion="acs", num_labels=2,
                                                         id2label={0: "normal", 1: "abnormal"},
                                                         label2id={"normal": 0, "abnormal": 1}).eval()
    model.save_pretrained(folder)
    MedNetImageProcessor.from_pretrained("mednet/gray").save_pretrained(folder)
    return folder


def test_predict_with_a_3d_model_writes_one_row_per_volume(classifier_3d, tmp_path):
    import csv

    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from mednet_hf.predict import predict

    inputs = [data_path("nifti/CT_pitch.nii.gz"), data_path(SERIES), data_path("cxr/00000001_000.png")]
    rows, unreadable = predict(str(classifier_3d), [str(p) for p in inputs], tmp_path / "p.csv", top_k=2,
                               features=tmp_path / "f.safetensors", progress=False)
    table = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert rows == 2 and [r["slice"] for r in table] == ["", ""]  # a whole volume, not its slices
    refused = {Path(u.path).name: u.reason for u in unreadable}
    assert "takes volumes" in refused["00000001_000.png"]  # a 2-D image is named and skipped, not run as a slab
    model = AutoModelForImageClassification.from_pretrained(classifier_3d).eval()
    processor = AutoImageProcessor.from_pretrained(classifier_3d)
    by_path = {row["path"]: row for row in table}
    assert set(by_path) == {str(p) for p in inputs[:2]}
    for path in inputs[:2]:
        row = by_path[str(path)]
        with torch.no_grad():
            probs = model(**processor(str(path), return_tensors="pt")).logits.softmax(-1)[0]
        assert row["label_1"] == model.config.id2label[int(probs.argmax())]
        assert abs(float(row["probability_1"]) - float(probs.max())) < 1e-5
    from safetensors.torch import load_file

    assert load_file(tmp_path / "f.safetensors")["features"].shape == (2, 512)


@pytest.mark.slow
def test_onnx_export_of_a_3d_model_matches_pytorch(classifier_3d, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime
    from transformers import AutoModelForImageClassification

    from mednet_hf.export import export_onnx

    result = export_onnx(str(classifier_3d), tmp_path / "onnx")
    assert result["output"] == "logits" and result["dynamic"] == "batch, depth, height, width"
    session = onnxruntime.InferenceSession(result["path"], providers=["CPUExecutionProvider"])
    model = AutoModelForImageClassification.from_pretrained(classifier_3d).eval()
    shapes = [(1, 1, 28, 28, 28), (3, 1, 28, 28, 28), (2, 1, 32, 24, 40)]
    generator = torch.Generator().manual_seed(0)
    for shape in shapes:
        pixels = torch.randn(shape, generator=generator)
        with torch.no_grad():
            expected = model(pixel_values=pixels).logits.numpy()
        (got,) = session.run(None, {"pixel_values": pixels.numpy()})
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_finetune_turns_the_2d_release_into_a_3d_classifier_on_adrenalmnist3d(tmp_path):
    """`mednet finetune --spatial-dims 3 --conversion acs` on a real 3-D set: the saved best/ is MedNet-3D with its
    volume processor, and its test scores come from whole volumes."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from mednet_hf.training.finetune import finetune

    results = finetune("mednet/gray", "medmnist:adrenalmnist3d", str(data_path("medmnist3d")), output_dir=str(tmp_path / "run"),
                       spatial_dims=3, conversion="acs", label_fraction=0.1, epochs=1, batch_size=16, report_to="none")
    assert 0.0 <= results["test"]["test_auroc"] <= 1.0
    best = tmp_path / "run" / "best"
    model = AutoModelForImageClassification.from_pretrained(best)
    assert model.config.spatial_dims == 3 and model.config.conversion == "acs"
    processor = AutoImageProcessor.from_pretrained(best)
    assert processor.slice_policy == "volume" and processor.volume_size == [_gray_size()] * 3


def test_finetune_conversion_options_are_checked_and_a_3d_checkpoint_stays_as_it_is(tmp_path):
    from transformers import AutoModel

    from mednet_hf.training.finetune import FinetuneArguments, _conversion

    folder = tmp_path / "i3d"
    MedNetModel.from_pretrained("mednet/gray", spatial_dims=3, conversion="i3d").save_pretrained(folder)
    for spatial_dims, conversion, message in [(None, "acs", "add --spatial-dims 3"), (2, "acs", "add --spatial-dims 3"),
                                              (2, None, "cannot be fine-tuned in 2-D"), (4, None, "must be 2 or 3"),
                                              (3, "acs3d", "must be acs, i3d or 2.5d")]:
        with pytest.raises(ValueError, match=message):
            _conversion(str(folder), FinetuneArguments(model=str(folder), dataset="x", spatial_dims=spatial_dims,
                                                       conversion=conversion))
    # --spatial-dims 3 on a 3-D checkpoint: the checkpoint as it is (its own conversion), not a second conversion
    keywords = _conversion(str(folder), FinetuneArguments(model=str(folder), dataset="x", spatial_dims=3))
    loaded = AutoModel.from_pretrained(folder, **keywords)
    assert loaded.config.spatial_dims == 3 and loaded.config.conversion == "i3d"
    with pytest.raises(ValueError, match="spatial_dims=3"):  # AutoConfig took `conversion` past MedNetConfig's checks
        AutoModel.from_pretrained("mednet/gray", conversion="acs")


@pytest.mark.parametrize("conversion", ["acs", "i3d"])
def test_convert_variant_keeps_a_3d_model_3d(conversion):
    """gray → color on MedNet-3D: a 3-D config (so a volume processor) and the same features for a gray volume."""
    gray = MedNetModel.from_pretrained("mednet/gray", spatial_dims=3, conversion=conversion).eval()
    color = gray.convert_variant("color").eval()
    assert color.config.pretrained_cfg["input_size"] == [3, *[_gray_size()] * 3]
    assert MedNetImageProcessor.from_model_config(color.config).slice_policy == "volume"
    volume = torch.rand(1, 1, 28, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(color(pixel_values=volume.expand(-1, 3, -1, -1, -1)).pooler_output,
                                   gray(pixel_values=volume).pooler_output, atol=1e-5, rtol=0)


def test_a_3d_checkpoint_card_does_not_promise_timm(tmp_path):
    from mednet_hf.model_card import checkpoint_card

    MedNetModel.from_pretrained("mednet/gray", spatial_dims=3, conversion="acs").save_pretrained(tmp_path / "m")
    card = str(checkpoint_card(tmp_path / "m", "you/gray-3d"))
    assert "timm.create_model" not in card and f"{_gray_size()}³ voxels" in card and "timm cannot build it" in card


def test_an_image_folder_of_volumes_says_what_it_left_out(tmp_path, caplog):
    folder = tmp_path / "flat"
    folder.mkdir()
    shutil.copy(data_path("cxr/00000001_000.png"), folder / "a.png")
    with pytest.raises(ValueError, match="no NIfTI volume or DICOM series.*a.png"):
        load_medical_dataset("imagefolder", data_dir=folder, cache_dir=tmp_path / "cache", volumes=True, drop_labels=True)
    (folder / "ct.nii.gz").symlink_to(data_path("nifti/CT_pitch.nii.gz"))
    with caplog.at_level("WARNING"):
        built = load_medical_dataset("imagefolder", data_dir=folder, cache_dir=tmp_path / "cache2", volumes=True,
                                     drop_labels=True)["train"]
    assert built["source_file"] == ["ct.nii.gz"] and "1 2-D file(s)" in caplog.text and "a.png" in caplog.text


def test_a_converted_model_comes_back_in_eval_mode_like_from_pretrained():
    """The README's first 3-D lines: one volume through a freshly converted model (batch norm in training mode
    would refuse a batch of one)."""
    model = MedNetModel.from_pretrained("mednet/gray", spatial_dims=3, conversion="acs")
    assert not model.training
    processor = MedNetImageProcessor(variant="gray", slice_policy="volume", volume_size=[28, 28, 28], spacing=[2.0] * 3)
    pixels = processor(str(data_path("nifti/CT_pitch.nii.gz")), return_tensors="pt")["pixel_values"]
    assert model(pixel_values=pixels).pooler_output.shape == (1, 512)


@pytest.mark.slow
def test_3d_pretraining_restores_sub_volumes_learns_labels_resumes_and_exports_mednet_3d(tmp_path, monkeypatch):
    """The 3-D recipe on real volumes (the MR series, unlabelled: restoration) and a labelled 3-D set (AdrenalMNIST3D:
    the supervised head), from the ACS-converted 2-D release: the same loop, resume and record as 2-D, and an
    export that loads back as MedNet-3D."""
    import yaml

    from conftest import DATA_DIR
    from mednet_hf.training.pretrain import pretrain

    monkeypatch.setenv("MEDNET_DATA_DIR", str(DATA_DIR))
    data_path("medmnist3d"), data_path(SERIES)
    recipe = yaml.safe_load((Path(__file__).parents[1] / "training/configs/gray-3d.yaml").read_text())
    recipe |= {"steps": 2, "batch_size": 4, "checkpoint_every": 1, "log_every": 1, "warmup_steps": 1,  # auto: fp32 here
               "cache_dir": str(tmp_path / "cache"),
               "sources": [{"name": "mr_series", "dataset": "imagefolder", "data_dir": "dicom_series",
                            "options": {"volumes": True, "drop_labels": True}, "labelled": False, "weight": 0.5},
                           {"name": "adrenal", "dataset": "medmnist", "config": "adrenalmnist3d", "data_dir": "medmnist3d",
                            "num_classes": 2, "weight": 0.5}],
               "objectives": {"restoration": {"weight": 1.0}, "supervised": {"weight": 1.0}}}
    path = tmp_path / "gray-3d.yaml"
    path.write_text(yaml.safe_dump(recipe))

    first = pretrain(path, tmp_path / "run")
    assert first["steps"] == 2 and first["segments"][0]["start"].startswith("warm restart from mednet/gray")
    resumed = pretrain(path, tmp_path / "run", resume="latest", steps=3)
    assert [(s["from_step"], s["to_step"]) for s in resumed["segments"]] == [(0, 2), (2, 3)]
    assert set(resumed["final_losses"]) >= {"restoration", "supervised"}
    assert all(np.isfinite(v) for v in resumed["final_losses"].values())
    # every step's gradients were finite (bf16 conv3d on the CPU made every one of them NaN: auto picks fp32 in 3-D)
    assert [s["precision"] for s in resumed["segments"]] == ["no", "no"]
    assert [s["skipped_steps"] for s in resumed["segments"]] == [0, 0]
    assert [d["name"] for d in resumed["data"]] == ["mr_series", "adrenal"] and all(d["drawn"] for d in resumed["data"])
    assert sum(d["drawn"] for d in resumed["data"]) == 3 * 4 and resumed["data"][1]["labelled"]

    model = MedNetModel.from_pretrained(tmp_path / "run" / "final").eval()
    assert model.config.spatial_dims == 3 and model.config.conversion == "acs"
    processor = MedNetImageProcessor.from_pretrained(tmp_path / "run" / "final")
    assert processor.slice_policy == "volume"
    with torch.no_grad():
        features = model(torch.rand(1, 1, 28, 28, 28)).pooler_output
    assert features.shape == (1, model.config.num_features) and torch.isfinite(features).all()



def test_auto_precision_keeps_3d_training_in_fp32_on_the_cpu():
    """bf16 conv3d weight gradients on the CPU are wrong at layer3's 2³ maps of a 28³ input (oneDNN, torch 2.13)."""
    from mednet_hf.training.pretrain import auto_precision

    assert auto_precision(torch.device("cpu"), spatial_dims=3) == "no"
    assert auto_precision(torch.device("cpu"), spatial_dims=2) in ("bf16", "no")


@pytest.mark.parametrize("cpu, sizes, expected", [
    ({"_is_amx_tile_supported", "_is_avx512_bf16_supported"}, (28,), "no"),  # AMX: bf16 is slower at 28 px
    ({"_is_amx_tile_supported", "_is_avx512_bf16_supported"}, (28, 64), "bf16"),
    ({"_is_amx_tile_supported", "_is_avx512_bf16_supported"}, (), "bf16"),
    ({"_is_avx512_bf16_supported"}, (28,), "bf16"),  # AVX-512 BF16 without AMX: faster at every size measured
    (set(), (64,), "no"),
])
def test_auto_precision_follows_the_cpu_settings_measurements(monkeypatch, cpu, sizes, expected):
    from mednet_hf.training import pretrain

    monkeypatch.setattr(pretrain, "_cpu_has", lambda probe: probe in cpu)
    assert pretrain.auto_precision(torch.device("cpu"), 2, sizes) == expected


def test_a_probe_at_one_size_times_the_whole_runs_precision(monkeypatch):
    """A 28-then-64-px run on an AMX CPU trains in bf16, so its 28-px probe must too (alone, 28 px would be fp32)."""
    from dataclasses import replace

    from mednet_hf.training import pretrain
    from mednet_hf.training.recipe import load_recipe

    monkeypatch.setattr(pretrain, "_cpu_has", lambda probe: True)  # AMX and AVX-512 BF16
    monkeypatch.setattr(pretrain, "_on_cpu", lambda: True)
    recipe = load_recipe(REPO_ROOT / "training" / "configs" / "color-supervised.yaml")  # auto, 28 px
    assert recipe.mixed_precision == "auto" and recipe.image_sizes == [28]
    assert pretrain.run_precision(recipe) == "no" and pretrain.run_precision(recipe, [28, 64]) == "bf16"
    assert pretrain.run_precision(replace(recipe, mixed_precision="bf16"), [28]) == "bf16"  # a recipe's own choice stands


def test_the_bundled_gray_3d_release_loads_as_mednet_3d_from_the_hub_id(gray_2d):
    """`mednet/gray-3d` (bundled, offline): MedNet-3D with its volume processor, the ACS-converted Gray-MedNet's
    keys, and weights that its 3-D pretraining moved away from that start."""
    from transformers import AutoImageProcessor, AutoModel

    model = AutoModel.from_pretrained("mednet/gray-3d").eval()
    assert model.config.spatial_dims == 3 and model.config.conversion == "acs"
    processor = AutoImageProcessor.from_pretrained("mednet/gray-3d")
    assert processor.slice_policy == "volume"
    start = MedNetModel.from_pretrained("mednet/gray", spatial_dims=3, conversion="acs").state_dict()
    released = model.state_dict()
    assert released.keys() == start.keys()
    moved = [k for k, v in start.items() if v.is_floating_point() and not torch.allclose(released[k].float(), v, atol=1e-3)]
    assert len(moved) > len(start) // 2
    pixels = processor(str(data_path("nifti/CT_pitch.nii.gz")), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        assert torch.isfinite(model(pixel_values=pixels).pooler_output).all()


def test_a_3d_network_made_from_a_config_has_kaiming_3d_kernels_and_a_converted_one_keeps_its_weights(gray_2d):
    """3-D scratch is a standard random 3-D ResNet (Kaiming over the k×k×k fan), not timm's random 2-D kernels
    divided by their depth; weights loaded afterwards (a 2-D release converted) replace that init."""
    from mednet_hf.conversion_3d import Conv3dFrom2d

    torch.manual_seed(0)
    scratch = MedNetModel(MedNetConfig(**{**gray_2d.config.to_dict(), "spatial_dims": 3, "conversion": "i3d"}))
    stem = scratch.timm_model.conv1
    assert isinstance(stem, Conv3dFrom2d) and stem.weight.shape[2:] == (7, 7, 7)
    expected = (2 / (stem.out_channels * 7**3)) ** 0.5  # Kaiming normal, fan-out, ReLU
    assert float(stem.weight.std()) == pytest.approx(expected, rel=0.05)
    converted = MedNetModel.from_pretrained("mednet/gray", spatial_dims=3, conversion="i3d")
    torch.testing.assert_close(converted.timm_model.conv1.weight, gray_2d.timm_model.conv1.weight.unsqueeze(2).repeat(1, 1, 7, 1, 1) / 7)
