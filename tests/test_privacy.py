"""No patient identifiers in pushed data (issue 11, item 1): a folder holding a DICOM under an image name, a DICOM
named after its SOPInstanceUID, a PNG with text chunks and a JPEG with EXIF goes through `mednet data push
imagefolder` to the loopback Hub, and the pushed files, raw and decoded, hold none of their header or metadata
values. ChestX-ray14, whose builder keeps PNG paths, is pushed the same way."""

import hashlib
import io
import shutil

import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
import real_variants as rv
from conftest import data_path, run_cli
from PIL import Image

from mednet_hf.data import load_medical_dataset
from mednet_hf.hub import pixels_only
from mednet_hf.medical_io import PHI_KEYWORDS

# The header values that identify a patient, a study, a device or a file: names, IDs, UIDs, dates, times, free text.
IDENTIFYING_VRS = ("PN", "LO", "SH", "UI", "DA", "TM", "DT", "LT", "ST", "UT", "AE", "AS")


def _identifying_values(path) -> set[str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    values = {str(ds[k].value).strip() for k in PHI_KEYWORDS if k in ds and str(ds[k].value).strip()}
    for element in ds.iterall():
        if element.VR in IDENTIFYING_VRS and element.value not in (None, ""):
            for value in element.value if element.VM > 1 else [element.value]:
                values.add(str(value).strip())
    return {v for v in values if len(v) >= 4}


def _cells(parquet: bytes) -> bytes:
    """Every value of a parquet file, decoded (strings and the image bytes as stored), as one byte string."""
    parts = []

    def walk(value):
        if isinstance(value, bytes):
            parts.append(value)
        elif isinstance(value, str):
            parts.append(value.encode())
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    table = pq.read_table(io.BytesIO(parquet))
    for column in table.column_names:
        walk(table.column(column).to_pylist())
    walk(str(table.schema.metadata))
    return b"\n".join(parts)


def _assert_nothing_leaks(files: dict, secrets: set[str]) -> None:
    assert secrets
    for path, content in files.items():
        haystacks = [content] + ([_cells(content)] if path.endswith(".parquet") else [])
        for haystack in haystacks:
            leaked = sorted(s for s in secrets if s.encode() in haystack)
            assert not leaked, f"{path} holds {leaked}"


def _pushed(hub, repo_id: str) -> dict:
    repo = hub.state.repos[("dataset", repo_id)]
    return repo.commits[repo.branches["main"]]["files"]


@pytest.mark.slow
def test_pushed_image_folder_holds_no_header_or_metadata(hub, tmp_path):
    folder = tmp_path / "folder"
    renamed = rv.renamed_dicom(folder / "mr" / "export_0001.png")
    uid_named = folder / "cxr" / data_path(rv.CR_DICOM).name
    uid_named.parent.mkdir(parents=True)
    shutil.copy(data_path(rv.CR_DICOM), uid_named)
    rv.png_with_text(folder / "cxr" / "notes.png")
    rv.jpeg_with_exif(folder / "mr" / "exif.jpg")
    # A folder named after the patient, as exports by patient do: the path part becomes phi-<hash>, as in predict
    patient_folder = rv.renamed_dicom(folder / "mr" / "CompressedSamples^MR1" / "scan.dcm")
    secrets = _identifying_values(renamed) | _identifying_values(uid_named) | set(rv.SECRET_TEXT.values())
    uid = str(pydicom.dcmread(uid_named, stop_before_pixels=True).SOPInstanceUID)
    assert uid in secrets and "CompressedSamples^MR1" in secrets

    pushed = run_cli(["data", "push", "imagefolder", "--data-dir", str(folder), "--repo-id", "mednet-test/private",
                      "--cache-dir", str(tmp_path / "cache")], hub.env(tmp_path / "pusher"))
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    files = _pushed(hub, "mednet-test/private")
    parquet = [p for p in files if p.endswith(".parquet")]
    assert parquet, sorted(files)
    _assert_nothing_leaks(files, secrets)

    table = pq.read_table(io.BytesIO(files[parquet[0]])).to_pydict()
    expected = f"cxr/uid-{hashlib.sha256(uid.encode()).hexdigest()[:16]}.dcm"
    patient = f"mr/phi-{hashlib.sha256(patient_folder.parent.name.encode()).hexdigest()[:16]}/scan.dcm"
    assert sorted(table["source_file"]) == sorted(["mr/export_0001.png", expected, "cxr/notes.png", "mr/exif.jpg", patient])
    # Pixels only: every stored image is a PNG of pixel chunks or a baseline TIFF (no DICOM bytes, no text chunk, no
    # EXIF), without a name, and holds the pixels the local build holds.
    local = load_medical_dataset("imagefolder", data_dir=folder, cache_dir=tmp_path / "cache")["train"]
    local = {row["source_file"]: np.asarray(row["image"]) for row in local}
    for source, cell in zip(table["source_file"], table["image"]):
        assert cell["path"] is None and _metadata_free(cell["bytes"]), source
        with Image.open(io.BytesIO(cell["bytes"])) as image:
            np.testing.assert_array_equal(np.asarray(image), local[source])
    card = files["README.md"].decode()
    assert "| patient identifiers | none stored |" in card and "SHA-256" in card and "pixels only" in card


# The PNG chunks that make the pixels; text, time, ICC profiles, EXIF and the rest are metadata.
PNG_PIXEL_CHUNKS = {b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND"}
# The TIFF tags that describe the pixel layout and nothing else (what `datasets` writes for arrays).
BASELINE_TIFF_TAGS = {256, 257, 258, 259, 262, 273, 277, 278, 279, 282, 283, 284, 296, 339}


def _metadata_free(data: bytes) -> bool:
    """A PNG of pixel chunks only, or a TIFF of layout tags only."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        kinds, position = set(), 8
        while position < len(data):
            kinds.add(data[position + 4 : position + 8])
            position += 12 + int.from_bytes(data[position : position + 4], "big")
        return kinds <= PNG_PIXEL_CHUNKS
    with Image.open(io.BytesIO(data)) as image:
        return image.format == "TIFF" and set(image.tag_v2) <= BASELINE_TIFF_TAGS


@pytest.mark.slow
def test_pushed_chestxray14_keeps_pixels_and_drops_png_text(hub, tmp_path):
    """The ChestX-ray14 builder stores file paths; what goes to the Hub is the pixels without the text chunks."""
    root = tmp_path / "nih"
    names = ("00000001_000.png", "00027426_000.png")
    for name in names:
        rv.png_with_text(root / "images" / name, source=f"cxr/{name}")
    (root / "Data_Entry_2017_v2020.csv").write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
        "00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.143\n"
        "00027426_000.png,Effusion|Nodule,0,27426,50,F,AP,3056,2544,0.139,0.139\n"
    )
    (root / "train_val_list.txt").write_text(f"{names[0]}\n")
    (root / "test_list.txt").write_text(f"{names[1]}\n")
    pushed = run_cli(["data", "push", "chestxray14", "--data-dir", str(root), "--repo-id", "mednet-test/nih",
                      "--cache-dir", str(tmp_path / "cache")], hub.env(tmp_path / "pusher"))
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    files = _pushed(hub, "mednet-test/nih")
    _assert_nothing_leaks(files, set(rv.SECRET_TEXT.values()))
    for split, name in (("train", names[0]), ("test", names[1])):
        (path,) = [p for p in files if p.startswith(f"data/{split}-") and p.endswith(".parquet")]
        cell = pq.read_table(io.BytesIO(files[path])).to_pydict()["image"][0]
        with Image.open(io.BytesIO(cell["bytes"])) as pushed_image, Image.open(data_path(f"cxr/{name}")) as original:
            np.testing.assert_array_equal(np.asarray(pushed_image), np.asarray(original))


@pytest.mark.parametrize("source", ["fundus_drive/training/images/21_training.tif", "cxr/16747_3_1.jpg"])
def test_pixels_only_keeps_the_pixels_and_nothing_else(source, tmp_path):
    """TIFF tags and JPEG segments go; the decoded pixels (as `datasets` decodes them) stay exactly."""
    path = data_path(source)
    if source.endswith(".jpg"):
        path = rv.jpeg_with_exif(tmp_path / "exif.jpg", source=source)
    clean = pixels_only({"path": str(path), "bytes": None})
    assert clean["path"] is None and _metadata_free(clean["bytes"])
    with Image.open(path) as original, Image.open(io.BytesIO(clean["bytes"])) as image:
        np.testing.assert_array_equal(np.asarray(image), np.asarray(original))
        assert not image.getexif()
