"""Loading a saved MedNet for use, one way for every command (`predict`, `evaluate`, `export`, `demo`, the
benchmark's frozen features): where it lives (a folder, or a Hub id resolved in the local cache), which weights it
holds, whether it is a classifier, and the model with its processor on a device."""

import hashlib
from pathlib import Path

HEADS = ("auto", "classifier", "features")


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


def load_for_use(model: str, head: str = "auto", device: str | None = None, image_size: int | None = None):
    """`(model, processor, device)`: a saved MedNet in eval mode on `device` (default: a GPU when there is one), and
    its processor.

    `head`: "classifier" needs a trained classification head (a fine-tuned checkpoint) and refuses a backbone;
    "features" loads the backbone alone (`MedNetModel`, the head of a classifier left out); "auto" loads what the
    checkpoint holds. `image_size` runs the model at another size (its processor follows)."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if Path(model).exists() and not (Path(model) / "config.json").is_file():
        raise ValueError(f"{model}: not a saved model folder (no config.json); pass e.g. a finetune run's best/")
    try:
        config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as e:
        raise ValueError(f"{model}: no model config could be loaded ({type(e).__name__}: {e})") from e
    if getattr(config, "model_type", None) != "mednet":
        raise ValueError(f"{model}: not a MedNet checkpoint (model_type {getattr(config, 'model_type', None)!r})")
    if head == "classifier" and not config.has_classifier:
        raise ValueError(f"{model}: a backbone without a trained classification head; fine-tune it first "
                         "(mednet finetune), or use it for features")
    classify = head == "classifier" or (head == "auto" and config.has_classifier)
    if image_size:
        config.image_size = image_size
    loaded = (AutoModelForImageClassification if classify else AutoModel).from_pretrained(model, config=config)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return loaded.to(device).eval(), load_processor(model, loaded.config if image_size else None), device


def load_processor(model: str, config=None):
    """The processor saved with `model`; given the (changed) `config` of the model it will feed, with that config's
    geometry, so a model run at another `image_size` gets inputs of that size."""
    from transformers import AutoImageProcessor

    from .image_processing_mednet import geometry_from_pretrained_cfg

    processor = AutoImageProcessor.from_pretrained(model)
    if config is None:
        return processor
    # The class itself, not AutoImageProcessor: the geometry keywords must reach the processor, not a config.
    return type(processor).from_pretrained(model, **geometry_from_pretrained_cfg(config.pretrained_cfg))


__all__ = ["HEADS", "file_sha256", "load_for_use", "load_processor", "local_folder", "weights_sha256"]
