"""The project's released checkpoints, shipped inside the package (fp16 safetensors), placed in the standard
Hugging Face cache layout so that `from_pretrained("mednet/gray")` works offline:

    $HF_HUB_CACHE/models--mednet--gray/refs/main            -> <revision>
    $HF_HUB_CACHE/models--mednet--gray/snapshots/<revision>/ -> config.json, model.safetensors, ...

The bundle holds the weights, configs and card; the modeling and processing code in the snapshot is this package's
own (so `trust_remote_code` users of the cache get the code that matches it). The revision is derived from all
of these files' contents, so a newer bundle or package gets a new snapshot. Files are linked to the package's
copies (copied where links are not possible). Nothing is written for a repository the cache already has unless
`force=True`.
"""

import hashlib
import os
import shutil
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
BUNDLED_DIR = PACKAGE_DIR / "bundled"
REPOS = {"mednet/gray": "gray", "mednet/color": "color", "mednet/gray-3d": "gray-3d"}
# The modules a saved checkpoint carries for `trust_remote_code` (what `save_pretrained` copies).
REMOTE_CODE = ("configuration_mednet.py", "modeling_mednet.py", "image_processing_mednet.py", "medical_io.py",
               "medical_image.py", "phi.py", "dicom.py", "dicom_series.py", "nifti.py", "pil_image.py",
               "intensity.py", "pil_plugin.py", "volumes.py", "conversion_3d.py")


def snapshot_files(variant: str) -> list[Path]:
    """The bundle's own files plus the package's remote-code modules."""
    return sorted(p for p in (BUNDLED_DIR / variant).iterdir() if p.is_file()) + [PACKAGE_DIR / n for n in REMOTE_CODE]


def bundled_revision(variant: str) -> str:
    digest = hashlib.sha1()
    for path in snapshot_files(variant):
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _place(source: Path, target: Path) -> None:
    try:
        os.symlink(source, target)
    except OSError:  # e.g. file systems without symlinks
        shutil.copy2(source, target)


def install_bundled(cache_dir=None, force: bool = False) -> dict[str, Path]:
    """Install the bundled checkpoints into the hub cache; returns {repo_id: snapshot folder} for those written."""
    from huggingface_hub.constants import HF_HUB_CACHE

    cache = Path(cache_dir or HF_HUB_CACHE)
    written = {}
    for repo_id, variant in REPOS.items():
        source = BUNDLED_DIR / variant
        if not (source / "model.safetensors").is_file():
            continue
        repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
        ref = repo_dir / "refs" / "main"
        if ref.is_file() and not force:
            continue
        revision = bundled_revision(variant)
        snapshot = repo_dir / "snapshots" / revision
        tmp = repo_dir / "snapshots" / f".tmp-{revision}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for path in snapshot_files(variant):
            _place(path, tmp / path.name)
        shutil.rmtree(snapshot, ignore_errors=True)
        os.replace(tmp, snapshot)  # a snapshot is complete or absent, also with several processes importing at once
        ref.parent.mkdir(parents=True, exist_ok=True)
        tmp_ref = ref.with_name(f".main-{os.getpid()}")
        tmp_ref.write_text(revision)
        os.replace(tmp_ref, ref)
        written[repo_id] = snapshot
    return written


__all__ = ["BUNDLED_DIR", "REMOTE_CODE", "REPOS", "bundled_revision", "install_bundled", "snapshot_files"]
