"""Where a saved MedNet lives and which weights it holds: a folder, or a Hub id resolved in the local cache."""

import hashlib
from pathlib import Path


def local_folder(model: str) -> Path | None:
    """The folder holding `model`'s files: `model` itself when it is a folder, else its snapshot in the Hugging Face
    cache (no download); None when neither holds it."""
    folder = Path(model)
    if folder.is_dir():
        return folder
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model, allow_patterns=["*.safetensors", "*.json"], local_files_only=True))
    except Exception:  # not a repo id, or not in the cache
        return None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(model: str) -> str | None:
    """The SHA-256 of `model`'s weights, as `sha256sum model.safetensors` prints it; for sharded weights, of the
    listing `sha256sum *.safetensors` prints (name order). None when no safetensors weights are found."""
    folder = local_folder(model)
    files = sorted(folder.glob("*.safetensors")) if folder else []
    if not files:
        return None
    if len(files) == 1:
        return file_sha256(files[0])
    listing = "".join(f"{file_sha256(f)}  {f.name}\n" for f in files)
    return hashlib.sha256(listing.encode()).hexdigest()


__all__ = ["file_sha256", "local_folder", "weights_sha256"]
