"""Publishing to the Hugging Face Hub: datasets as parquet shards with a dataset card, and saved MedNet models
(safetensors, processor, remote code) with a model card, each in one commit."""

import io
import logging
from pathlib import Path

import PIL.Image
from datasets import ClassLabel, DatasetDict, Image, Sequence
from datasets.features.image import encode_np_array
from huggingface_hub import DatasetCard, hf_hub_download

from .bundled import REMOTE_CODE
from .pil_image import pil_pixels

logger = logging.getLogger(__name__)
TEMPLATES = Path(__file__).parent / "templates"

# Hub license identifiers for the licenses the builders declare.
HUB_LICENSES = {"CC BY 4.0": "cc-by-4.0", "CC BY-NC 4.0": "cc-by-nc-4.0", "CC BY 3.0": "cc-by-3.0"}


def _hub_license(license_text: str) -> str:
    if license_text.startswith("CC0"):
        return "cc0-1.0"
    return HUB_LICENSES.get(license_text, "other")


def _class_names(dataset) -> list[str]:
    for feature in dataset.features.values():
        feature = feature.feature if isinstance(feature, Sequence) else feature
        if isinstance(feature, ClassLabel):
            return list(feature.names)
    return []


# Further training files the Trainer writes into a saved model folder: never uploaded, whatever their format.
TRAINER_FILES = ("training_args.bin",)


def pixels_only(value: dict | None) -> dict | None:
    """One undecoded image cell (`{"bytes", "path"}`) → the same pixels with no file metadata and no file name.

    The image is decoded to the pixels the readers make of it (`pil_image.pil_pixels`: upright by its EXIF
    orientation, palette and other modes as RGB, alpha dropped) and re-encoded losslessly as `datasets` encodes
    arrays (PNG, or TIFF for 16-bit and float). So no PNG text chunk, EXIF block, TIFF tag or embedded file name
    leaves with a pushed image, and a pushed row reads as its file does."""
    if value is None or (value.get("bytes") is None and not value.get("path")):
        return value
    data = value["bytes"] if value.get("bytes") is not None else Path(value["path"]).read_bytes()
    with PIL.Image.open(io.BytesIO(data)) as opened:  # the readers' own rule for modes, orientation and alpha
        return {"bytes": encode_np_array(pil_pixels(opened, value.get("path") or "<pushed image>"))["bytes"], "path": None}


def _strip_image_metadata(dataset: DatasetDict) -> DatasetDict:
    """Every `Image` column of every split with `pixels_only` applied (builders that keep file paths, such as
    ChestX-ray14's PNGs, would otherwise upload the files byte for byte)."""
    out = {}
    for split, part in dataset.items():
        for column, feature in part.features.items():
            if isinstance(feature, Image):
                part = part.cast_column(column, Image(decode=False)).map(
                    lambda batch, column=column: {column: [pixels_only(v) for v in batch[column]]},
                    batched=True, desc=f"{split}: image pixels only",
                ).cast_column(column, feature)
        out[split] = part
    return DatasetDict(out)


def push_dataset(
    dataset: DatasetDict,
    repo_id: str,
    *,
    builder: str,
    builder_class: str | None = None,
    config: str | None = None,
    private: bool = False,
    token: str | None = None,
    revision: str | None = None,
    max_shard_size: str | None = None,
    allow_phi: bool = False,
    checksums_verified: bool = True,
) -> str:
    """Push `dataset` as parquet shards (`DatasetDict.push_to_hub`), then its dataset card: license, citation,
    provenance, splits, class names. Returns the dataset's commit sha.

    A dataset with a `phi` column (built with `include_phi=True`) is refused unless `allow_phi=True`. Images are
    uploaded as pixels only (`pixels_only`): no file metadata and no file names.
    `checksums_verified=False` (a build with md5 checks off) is stated in the card.
    """
    first = next(iter(dataset.values()))
    if "phi" in first.column_names and not allow_phi:
        raise ValueError(
            f"refusing to push {repo_id}: the dataset has a 'phi' column with patient identifiers; rebuild it "
            "without include_phi, or pass allow_phi=True if publishing them is intended"
        )
    info = first.info
    if config is None and info.config_name not in (None, "default"):
        config = info.config_name  # e.g. "organamnist_28", as the builder named it
    dataset = _strip_image_metadata(DatasetDict(dataset))
    dataset.push_to_hub(
        repo_id, private=private, token=token, revision=revision, max_shard_size=max_shard_size,
        commit_message=f"Upload {builder}{f' {config}' if config else ''} (mednet_hf)",
    )
    # datasets wrote a README whose YAML describes the parquet configs; keep that metadata, add ours and the text.
    readme = hf_hub_download(repo_id, "README.md", repo_type="dataset", revision=revision, token=token)
    data = DatasetCard.load(readme).data
    data.license = _hub_license(info.license or "")
    data.pretty_name = f"{builder} {config}" if config else builder
    data.tags = sorted({*(data.get("tags") or []), "medical-imaging", "mednet"})
    is_segmentation = any(name.endswith("_mask") for name in first.column_names)
    data.task_categories = ["image-segmentation" if is_segmentation else "image-classification"]
    card = DatasetCard.from_template(
        data,
        template_path=TEMPLATES / "dataset_card.md",
        pretty_name=data.pretty_name,
        description=info.description or "",
        builder=builder,
        builder_class=builder_class or builder,
        config=config,
        homepage=info.homepage or "local files",
        license=info.license or "see the original source",
        phi_statement="included on request (`phi` column)" if "phi" in first.column_names else "none stored",
        checksum_statement=(
            "Source files were checked against the official md5 checksums where the source publishes them."
            if checksums_verified
            else "md5 checks were turned off for this build: the source files may differ from the official release."
        ),
        splits={name: split.num_rows for name, split in dataset.items()},
        class_names=_class_names(first),
        columns={name: repr(feature) for name, feature in first.features.items()},
        repo_id=repo_id,
        first_split=next(iter(dataset)),
        citation=(info.citation or "").strip() or "(none given)",
    )
    commit = card.push_to_hub(repo_id, repo_type="dataset", token=token, revision=revision, commit_message="Dataset card (mednet_hf)")
    logger.info("pushed %s: %s", repo_id, commit)
    return commit


class PushError(RuntimeError):
    """A push that did not complete; the message says which step failed and that nothing local changed."""


def check_model_folder(folder) -> list[Path]:
    """The files of a saved MedNet that go to the Hub; refuses pickled weights and incomplete folders. The Trainer's
    `training_args.bin` (its pickled arguments, not weights) is left out: a Trainer output folder pushes as is."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and p.name != "README.md" and p.name not in TRAINER_FILES)
    pickled = [p.name for p in files if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]
    if pickled:
        raise ValueError(f"{folder}: pickled weights {pickled}; MedNet checkpoints are pushed as safetensors only")
    names = {p.name for p in files}
    missing = [n for n in ("config.json", "preprocessor_config.json", *REMOTE_CODE) if n not in names]
    if missing or not any(n.endswith(".safetensors") for n in names):
        raise ValueError(f"{folder}: not a saved MedNet (missing {missing or ['*.safetensors']}); save it with save_pretrained")
    return files


def push_model(
    folder,
    repo_id: str,
    card: str,
    *,
    private: bool = False,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str = "Upload MedNet (mednet_hf)",
):
    """Push a saved MedNet folder (safetensors weights, config, processor, remote code) and its model card `card`
    (the README text) in one commit. Creates the repo and the `revision` branch if needed. The folder itself is
    never modified: if the commit fails, nothing local changed and running the push again retries it."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    folder = Path(folder)
    files = check_model_folder(folder)
    api = HfApi(token=token)
    step = "create the repository"
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if revision:
            step = f"create branch {revision!r}"
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        step = "commit the files"
        operations = [CommitOperationAdd(p.relative_to(folder).as_posix(), str(p)) for p in files]
        operations.append(CommitOperationAdd("README.md", card.encode()))
        return api.create_commit(repo_id, operations, commit_message=commit_message, revision=revision)
    except HfHubHTTPError as e:
        status = getattr(e.response, "status_code", "?")
        raise PushError(
            f"push of {folder} to {repo_id} failed at: {step} (HTTP {status}: {e.server_message or e}). "
            f"Nothing local was changed ({len(files)} files in {folder}); run the push again to retry."
        ) from e


def default_model_card(folder, repo_id: str) -> str:
    """The card `mednet push` writes for a folder without a README.md (`model_card.checkpoint_card`)."""
    from .model_card import checkpoint_card

    return checkpoint_card(folder, repo_id)
