"""The dataset builders, the entry point and the transform hook, on the real files in ../shared/data."""

import json
import logging
import shutil

import nibabel
import numpy as np
import pydicom
import pytest
import real_variants as rv
import torch
from conftest import data_path
from oracles import pydicom_unit
from datasets.distributed import split_dataset_by_node

from mednet_hf.builders import DataFileError, MedMNIST
from mednet_hf.builders.medmnist_files import SUBSETS
from mednet_hf import MedNetImageProcessor, read_dicom, read_dicom_series
from mednet_hf.intensity import to_unit_range
from mednet_hf.cli import main as cli_main
from mednet_hf.data import load_medical_dataset, medical_transform


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("datasets-cache")


@pytest.fixture(scope="module")
def organamnist(cache_dir):
    return load_medical_dataset("medmnist", "organamnist", size=28, data_dir=data_path("medmnist"), cache_dir=cache_dir)


# ---------------------------------------------------------------------------------------------------- MedMNIST


def test_organamnist_rows_classes_and_pixels(organamnist):
    assert {k: v.num_rows for k, v in organamnist.items()} == {"train": 34561, "validation": 6491, "test": 17778}
    names = organamnist["train"].features["label"].names
    assert len(names) == 11 and names[0] == "bladder" and names[-1] == "spleen"
    with np.load(data_path("medmnist/organamnist.npz")) as npz:
        for index in (0, 17777):
            row = organamnist["test"][index]
            assert row["image"].mode == "L"
            np.testing.assert_array_equal(np.asarray(row["image"]), npz["test_images"][index])
            assert row["label"] == npz["test_labels"][index, 0]


def test_bloodmnist_is_rgb_with_8_classes(cache_dir):
    blood = load_medical_dataset("medmnist", "bloodmnist", size=28, data_dir=data_path("medmnist"), cache_dir=cache_dir)
    assert {k: v.num_rows for k, v in blood.items()} == {"train": 11959, "validation": 1712, "test": 3421}
    assert blood["train"].features["label"].num_classes == 8
    assert blood["validation"][0]["image"].mode == "RGB"


def test_pneumonia_subset_needs_checks_off_and_says_why(cache_dir):
    folder = data_path("medmnist")
    with pytest.raises(DataFileError) as info:
        load_medical_dataset("medmnist", "pneumoniamnist", data_dir=folder, filename="pneumoniamnist_subset.npz", cache_dir=cache_dir)
    message = str(info.value)
    assert "pneumoniamnist_subset.npz" in message and SUBSETS["pneumoniamnist"]["md5"][28] in message
    assert "f5b994ec7c2fe8bc81ae15cbab7c3df8" in message  # the actual md5 of the subset file
    subset = load_medical_dataset("medmnist", "pneumoniamnist", data_dir=folder, filename="pneumoniamnist_subset.npz",
                                  verification_mode="no_checks", cache_dir=cache_dir)
    assert {k: v.num_rows for k, v in subset.items()} == {"train": 3882, "validation": 524, "test": 624}
    assert subset["train"].features["label"].names == ["normal", "pneumonia"]


def test_every_subset_and_size_is_a_config_with_official_urls():
    names = {c.name for c in MedMNIST.BUILDER_CONFIGS}
    # twelve 2-D subsets at 28, 64, 128 and 224 px, six 3-D subsets at 28 and 64 voxels a side
    assert len(names) == 12 * 4 + 6 * 2 and {"chestmnist_224", "organsmnist_64", "tissuemnist_128"} <= names
    assert {"adrenalmnist3d_28", "vesselmnist3d_64", "synapsemnist3d_28"} <= names
    chest = MedMNIST(config_name="chestmnist_64").info.features
    assert chest["labels"].feature.num_classes == 14  # multi-label
    from mednet_hf.builders.medmnist_files import url

    assert url("organamnist", 224) == "https://zenodo.org/records/10519652/files/organamnist_224.npz?download=1"


def test_missing_local_file_says_what_to_download(tmp_path, capsys):
    code = cli_main(["data", "prepare", "medmnist", "--config", "dermamnist", "--size", "64", "--data-dir", str(tmp_path),
                     "--cache-dir", str(tmp_path / "cache")])
    assert code == 2
    err = capsys.readouterr().err
    assert "dermamnist_64.npz not found" in err and "https://zenodo.org/records/10519652/files/dermamnist_64.npz" in err


# ---------------------------------------------------------------------------------------------------- image folder


def test_dicom_series_folder_gives_120_slices_in_position_order(cache_dir):
    folder = data_path("dicom_series")
    ds = load_medical_dataset("imagefolder", data_dir=folder, cache_dir=cache_dir)["train"]
    assert ds.num_rows == 120 and ds["slice_index"] == list(range(120))
    assert set(ds["source_file"]) == {"mr_t1_vestibular_schwannoma"}
    assert ds.features["label"].names == ["mr_t1_vestibular_schwannoma"]
    volume = read_dicom_series(folder / "mr_t1_vestibular_schwannoma")
    for k in (0, 64, 119):
        np.testing.assert_array_equal(np.asarray(ds[k]["image"]), volume.array[..., k])
    assert ds[0]["modality"] == "MR"
    voi = pydicom.Dataset.from_json(json.loads(ds[0]["voi"]))  # the first slice's own VOI module, as DICOM JSON
    assert (float(voi.WindowCenter), float(voi.WindowWidth)) == (210.0, 502.0)


def test_nifti_folder_gives_slices_of_every_volume(cache_dir):
    folder = data_path("nifti")
    stride = 8
    ds = load_medical_dataset("imagefolder", data_dir=folder, cache_dir=cache_dir, slice_stride=stride)["train"]
    expected = {}
    for path in folder.iterdir():
        shape = nibabel.as_closest_canonical(nibabel.load(path)).shape
        expected[path.name] = len(range(0, shape[2], stride))
    counts = {name: ds["source_file"].count(name) for name in expected}
    assert counts == expected and ds.num_rows == sum(expected.values())


def test_split_folders_become_splits(cache_dir):
    """brain_mri/ has train/ and test/, each with the 4 class folders: the official split, kept."""
    ds = load_medical_dataset("imagefolder", data_dir=data_path("brain_mri"), cache_dir=cache_dir)
    on_disk = {split: sum(1 for p in (data_path("brain_mri") / split).rglob("*") if p.is_file()) for split in ("train", "test")}
    assert list(ds) == ["train", "test"] and {k: v.num_rows for k, v in ds.items()} == on_disk
    assert ds["train"].features["label"].names == ["glioma", "meningioma", "notumor", "pituitary"]
    row = ds["test"][0]
    assert row["source_file"].startswith("test/") and ds["test"].features["label"].int2str(row["label"]) == row["source_file"].split("/")[1]


def test_unreadable_files_are_reported_not_dropped(tmp_path, cache_dir, caplog):
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(data_path("cxr/00000001_000.png"), folder / "good.png")
    shutil.copy(data_path("dicom/CT_small.dcm"), folder / "good.dcm")
    (folder / "broken.png").write_bytes(data_path("cxr/00027426_000.png").read_bytes()[:5000])
    (folder / "broken.dcm").write_bytes(data_path("dicom/MR_small.dcm").read_bytes()[:3000])
    with pytest.raises(DataFileError, match=r"2 unreadable file\(s\)") as info:
        load_medical_dataset("imagefolder", data_dir=folder, cache_dir=cache_dir)
    assert "broken.png" in str(info.value) and "broken.dcm" in str(info.value)
    with caplog.at_level(logging.WARNING):
        ds = load_medical_dataset("imagefolder", data_dir=folder, cache_dir=cache_dir, on_error="skip")["train"]
    assert sorted(ds["source_file"]) == ["good.dcm", "good.png"]
    assert "2 unreadable file(s)" in caplog.text and "broken.png" in caplog.text


def test_labels_from_folders_and_csv(tmp_path, cache_dir):
    folder = tmp_path / "cxr"
    for label, source in (("normal", "cxr/00000001_000.png"), ("tb", "cxr/tbx11k_test_data/imgs/tb/tb0005.png")):
        (folder / label).mkdir(parents=True)
        shutil.copy(data_path(source), folder / label / "a.png")
    ds = load_medical_dataset("imagefolder", data_dir=folder, cache_dir=cache_dir)["train"]
    assert ds.features["label"].names == ["normal", "tb"]
    assert sorted(zip(ds["source_file"], ds["label"])) == [("normal/a.png", 0), ("tb/a.png", 1)]

    (folder / "multi.csv").write_text("path,effusion,nodule\nnormal/a.png,0,0\ntb/a.png,1,1\n")
    multi = load_medical_dataset("imagefolder", data_dir=folder, cache_dir=cache_dir, labels_csv="multi.csv")["train"]
    assert multi.features["labels"].feature.names == ["effusion", "nodule"]
    assert dict(zip(multi["source_file"], multi["labels"])) == {"normal/a.png": [], "tb/a.png": [0, 1]}
    batch = multi.with_transform(medical_transform(MedNetImageProcessor(image_size=32), multi.features))[:2]
    assert batch["labels"].tolist() in ([[0.0, 0.0], [1.0, 1.0]], [[1.0, 1.0], [0.0, 0.0]])

    (folder / "bad.csv").write_text("path,label\nnormal/a.png,x\nmissing/b.png,y\n")
    with pytest.raises(DataFileError, match=r"1 listed file\(s\) are not images under .*missing/b.png"):
        load_medical_dataset("imagefolder", data_dir=folder, cache_dir=cache_dir, labels_csv="bad.csv")


def test_patient_identifiers_are_dropped_unless_asked(tmp_path, cache_dir):
    folder = tmp_path / "ct"
    folder.mkdir()
    shutil.copy(data_path("dicom/CT_small.dcm"), folder / "ct.dcm")
    name = str(pydicom.dcmread(folder / "ct.dcm").PatientName)
    plain = load_medical_dataset("imagefolder", data_dir=folder, cache_dir=cache_dir)["train"]
    assert "phi" not in plain.column_names
    assert name not in repr(plain.remove_columns("image").to_dict())
    with_phi = load_medical_dataset("imagefolder", data_dir=folder, cache_dir=cache_dir, include_phi=True)["train"]
    assert name in with_phi[0]["phi"]
    from mednet_hf.hub import push_dataset

    with pytest.raises(ValueError, match="refusing to push .* patient identifiers"):
        push_dataset({"train": with_phi}, "someone/ct", builder="imagefolder")


def test_folder_transform_applies_each_slice_window(cache_dir):
    """Row k is windowed with slice k's own header, as pydicom would window that file."""
    folder = data_path("dicom_series/mr_t1_vestibular_schwannoma")
    ds = load_medical_dataset("imagefolder", data_dir=data_path("dicom_series"), cache_dir=cache_dir)["train"]
    plain = MedNetImageProcessor(do_resize=False, do_center_crop=False, do_normalize=False)
    files = sorted(folder.glob("*.dcm"), key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    for k in (20, 60):
        out = ds.with_transform(medical_transform(plain, ds.features))[k]
        np.testing.assert_allclose(out["pixel_values"][0].numpy(), pydicom_unit(files[k]), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------- DRIVE, NIH


def test_drive_images_and_masks(cache_dir):
    drive = load_medical_dataset("drive", data_dir=data_path("fundus_drive"), cache_dir=cache_dir)
    assert {k: v.num_rows for k, v in drive.items()} == {"train": 20, "test": 20}
    for row in (drive["train"][0], drive["test"][19]):
        vessels, fov = np.asarray(row["vessel_mask"]), np.asarray(row["fov_mask"])
        assert row["image"].size == row["vessel_mask"].size == row["fov_mask"].size == (565, 584)
        assert set(np.unique(vessels)) == {0, 1} and set(np.unique(fov)) == {0, 1}
        assert 0.05 < vessels.mean() < 0.2 and vessels[fov == 0].mean() < 0.01  # vessels lie inside the field of view


def test_chestxray14_from_a_small_csv(tmp_path, cache_dir):
    root = tmp_path / "nih"
    (root / "images").mkdir(parents=True)
    for name in ("00000001_000.png", "00027426_000.png"):
        shutil.copy(data_path(f"cxr/{name}"), root / "images" / name)
    (root / "Data_Entry_2017_v2020.csv").write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
        "00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.143\n"
        "00027426_000.png,Effusion|Nodule,0,27426,50,F,AP,3056,2544,0.139,0.139\n"
    )
    (root / "train_val_list.txt").write_text("00000001_000.png\n")
    (root / "test_list.txt").write_text("00027426_000.png\n")
    nih = load_medical_dataset("chestxray14", data_dir=root, cache_dir=cache_dir)
    assert {k: v.num_rows for k, v in nih.items()} == {"train": 1, "test": 1}
    names = nih["train"].features["labels"].feature.names
    assert [names[i] for i in nih["test"][0]["labels"]] == ["Effusion", "Nodule"]
    assert nih["train"][0]["patient_id"] == 1 and nih["test"][0]["view_position"] == "AP"
    batch = nih["test"].with_transform(medical_transform(MedNetImageProcessor(image_size=32), nih["test"].features))[:1]
    assert batch["labels"].shape == (1, 14) and batch["labels"].sum() == 2

    (root / "test_list.txt").write_text("00027426_000.png\n99999999_000.png\n")
    with pytest.raises(DataFileError, match=r"1 image\(s\) of test_list.txt are missing.*nihcc.app.box.com"):
        load_medical_dataset("chestxray14", data_dir=root, cache_dir=cache_dir, download_mode="force_redownload")


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="unknown dataset 'isic'; choose one of"):
        load_medical_dataset("isic")


# ---------------------------------------------------------------------------------------------------- scale


def test_two_ranks_see_disjoint_examples_that_cover_the_split(organamnist):
    split = organamnist["validation"].add_column("index", list(range(organamnist["validation"].num_rows)))
    stream = split.select_columns(["index"]).to_iterable_dataset(num_shards=8)
    seen = [{row["index"] for row in split_dataset_by_node(stream, rank=rank, world_size=2)} for rank in (0, 1)]
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(split.num_rows))


# ---------------------------------------------------------------------------------------------------- issue 11


def test_radiographs_sharing_a_series_uid_stay_single_images(tmp_path, cache_dir):
    """Item 5: two radiographs (same pixels, one MONOCHROME1) that share a SeriesInstanceUID in one class folder are
    two rows, each with its own photometric interpretation and file name; the MONOCHROME1 one is inverted."""
    rv.fake_series_pair(tmp_path / "xray" / "chest")
    rv.renamed_dicom(tmp_path / "xray" / "other" / "mr.dcm")
    ds = load_medical_dataset("imagefolder", data_dir=tmp_path / "xray", cache_dir=cache_dir)["train"]
    rows = {row["source_file"]: row for row in ds}
    assert set(rows) == {"chest/cr.dcm", "chest/cr_monochrome1.dcm", "other/mr.dcm"}
    assert rows["chest/cr.dcm"]["photometric_interpretation"] == "MONOCHROME2"
    assert rows["chest/cr_monochrome1.dcm"]["photometric_interpretation"] == "MONOCHROME1"
    plain = MedNetImageProcessor(do_resize=False, do_center_crop=False, do_normalize=False)
    values = {ds[i]["source_file"]: ds.with_transform(medical_transform(plain, ds.features))[i]["pixel_values"] for i in range(len(ds))}
    torch.testing.assert_close(values["chest/cr_monochrome1.dcm"], 1 - values["chest/cr.dcm"], rtol=0, atol=1e-6)


def test_series_slices_keep_their_own_window():
    """Item 2: the shared MR series has a window per slice; every slice of the volume gives what its file alone
    gives, and the middle slice does not clip (with the first slice's window, 25.8% of it clipped to white)."""
    folder = data_path("dicom_series/mr_t1_vestibular_schwannoma")
    files = sorted(folder.glob("*.dcm"), key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    volume = read_dicom_series(folder)
    windows = {tuple(map(float, (h.WindowCenter, h.WindowWidth))) for h in (pydicom.dcmread(p, stop_before_pixels=True) for p in files)}
    assert len(windows) > 50  # what makes the test able to fail
    for k in range(0, len(files), 7):
        np.testing.assert_array_equal(to_unit_range(volume.slice(k), 1), to_unit_range(read_dicom(files[k]), 1), err_msg=str(k))
    middle = MedNetImageProcessor(do_resize=False, do_center_crop=False, do_normalize=False)(str(folder))["pixel_values"][0]
    assert float((middle >= 1).float().mean()) < 0.01


def test_loose_images_beside_class_folders_stop_the_build(tmp_path, cache_dir):
    """Item 8: one stray image at the top would turn folder labels off for the whole set: the build stops with the
    count and the name; drop_labels=True builds it without labels on purpose."""
    folder = tmp_path / "scans"
    for label, source in (("normal", "cxr/00000001_000.png"), ("tb", "cxr/tbx11k_test_data/imgs/tb/tb0005.png")):
        (folder / label).mkdir(parents=True)
        shutil.copy(data_path(source), folder / label / "a.png")
    shutil.copy(data_path("cxr/00027426_000.png"), folder / "stray.png")
    with pytest.raises(DataFileError, match=r"1 image\(s\) lie beside the class sub-folders \(2 images\).*'stray.png'.*drop_labels=True"):
        load_medical_dataset("imagefolder", data_dir=folder, cache_dir=cache_dir)
    unlabelled = load_medical_dataset("imagefolder", data_dir=folder, cache_dir=cache_dir, drop_labels=True)["train"]
    assert "label" not in unlabelled.column_names and unlabelled.num_rows == 3


def test_labels_csv_reports_the_images_it_leaves_out(tmp_path, cache_dir, caplog):
    """Item 8: a CSV that lists some of the images builds those, and says how many it left out."""
    folder = tmp_path / "cxr"
    folder.mkdir()
    for name in ("00000001_000.png", "00027426_000.png"):
        shutil.copy(data_path(f"cxr/{name}"), folder / name)
    shutil.copy(data_path("cxr/16747_3_1.jpg"), folder / "c.jpg")
    (folder / "labels.csv").write_text("path,label\n00000001_000.png,normal\n00027426_000.png,effusion\n")
    with caplog.at_level(logging.WARNING):
        ds = load_medical_dataset("imagefolder", data_dir=folder, cache_dir=cache_dir, labels_csv="labels.csv")["train"]
    assert ds.num_rows == 2
    assert "labels.csv lists 2 of the 3 images" in caplog.text and "the other 1 are left out" in caplog.text
    assert "c.jpg" in caplog.text


def test_medmnist_file_with_one_dimensional_labels(tmp_path, cache_dir):
    """Item 10: re-saved MedMNIST files may hold labels of shape (N,) instead of (N, 1); they build the same rows."""
    with np.load(data_path("medmnist/pneumoniamnist_subset.npz")) as npz:
        arrays = {k: npz[k][:40] for k in npz.files}
    flat = {k: (v[:, 0] if k.endswith("_labels") else v) for k, v in arrays.items()}
    np.savez(tmp_path / "flat.npz", **flat)
    ds = load_medical_dataset("medmnist", "pneumoniamnist", data_dir=tmp_path, filename="flat.npz",
                              verification_mode="no_checks", cache_dir=cache_dir)
    assert ds["train"]["label"] == arrays["train_labels"][:, 0].tolist()
    np.savez(tmp_path / "bad.npz", **{**flat, "val_labels": arrays["val_labels"][:30]})
    with pytest.raises(DataFileError, match=r"bad.npz: val_labels has shape \(30, 1\) for 40 images"):
        load_medical_dataset("medmnist", "pneumoniamnist", data_dir=tmp_path, filename="bad.npz",
                             verification_mode="no_checks", cache_dir=cache_dir)
