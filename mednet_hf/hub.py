"""Publishing to the Hugging Face Hub: datasets as parquet shards with a dataset card."""

import logging
from pathlib import Path

from datasets import ClassLabel, DatasetDict, Sequence
from huggingface_hub import DatasetCard, hf_hub_download

from .data import BUILDERS

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


def push_dataset(
    dataset: DatasetDict,
    repo_id: str,
    *,
    builder: str,
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

    A dataset with a `phi` column (built with `include_phi=True`) is refused unless `allow_phi=True`.
    `checksums_verified=False` (a build with md5 checks off) is stated in the card.
    """
    first = next(iter(dataset.values()))
    if "phi" in first.column_names and not allow_phi:
        raise ValueError(
            f"refusing to push {repo_id}: the dataset has a 'phi' column with patient identifiers; rebuild it "
            "without include_phi, or pass allow_phi=True if publishing them is intended"
        )
    info = first.info
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
        builder_class=BUILDERS[builder].__name__,
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
