"""MedNet image processor: any medical input → `pixel_values` for a MedNet model.

The data path, top to bottom:
    raw input ──medical_io.to_medical_image──▶ MedicalImage (modality units)
              ──intensity.to_unit_range──────▶ float32 (C, H, W) in [0, 1]   (the intensity convention)
              ──backend──────────────────────▶ resize, center crop, (x - mean) / std

The first two steps are shared; only the last differs between the two backends: `MedNetImageProcessor`
(torchvision, batched tensors) and `MedNetImageProcessorPil` (PIL/numpy). Both resize in float32, so they agree to
within rounding.

The geometry (input size, crop_pct, mean/std, interpolation, channels) has one home: the model's `config.json`
(`pretrained_cfg`, as timm and transformers' `TimmWrapperImageProcessor` read it). Loaded from a model folder or
repository, the processor takes it from there; its own `preprocessor_config.json` then holds only the medical
options (intensity rule, window, frame and slice policy). A processor saved where no model config is keeps its
geometry in its own file.
"""

import importlib
import json
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_backends import PilBackend, TorchvisionBackend
from transformers.image_transforms import get_resize_output_image_size
from transformers.image_utils import ChannelDimension, PILImageResampling, SizeDict
from transformers.processing_utils import ImagesKwargs
from transformers.utils import CONFIG_NAME, cached_file

# Importing the plugin registers DICOM and NIfTI with PIL, here too so that remote-code loading gets it. (transformers copies
# the files named in `from .module import` lines along with a saved processor.)
from .pil_plugin import MedicalImageFile  # noqa: F401
from .configuration_mednet import VARIANTS, MedNetConfig
from .intensity import INTENSITY_MODES, resolve_window, to_unit_range
from .medical_image import MedicalImageError
from .medical_io import to_medical_image
from .volumes import volume_pixel_values


class MedNetImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    num_channels (`int`): 1 for Gray-MedNet, 3 for Color-MedNet; the channel policy maps every input to it.
    intensity (`str`): `"auto"`, `"window"`, `"minmax"`, `"percentile"` or `"none"` (see `mednet_hf.intensity`).
    window (`str` or `[center, width]`): a preset (`lung`, `mediastinum`, `bone`, `brain`, `abdomen`) or an explicit
        window in modality units (Hounsfield units for CT).
    percentiles (`[low, high]`): the bounds of `intensity="percentile"`.
    frame (`int`): frame of a multi-frame DICOM (default: the middle one).
    slice_index (`int`) / slice_axis (`int`): slice of a NIfTI volume or DICOM series folder (default: the middle
        slice along axis 2, axial for NIfTI).
    slice_policy (`str`): `"slice"` (2-D images, the default) or `"volume"`: whole volumes → `(batch, C, D, H, W)`
        for MedNet-3D (`mednet_hf.volumes`); a 3-D checkpoint's processor has it from its config.
    volume_size (`[D, H, W]`): the model's volume size (from a 3-D config's `input_size`).
    spacing (`[D, H, W]` mm): resample volumes to this voxel spacing first, where the file gives its own.
    label_map (`bool`): resample with nearest neighbour (masks, label maps).
    """

    num_channels: int
    intensity: str
    window: str | list[int | float] | tuple[int | float, int | float] | None
    percentiles: list[int | float] | tuple[int | float, int | float]
    frame: int | None
    slice_index: int | None
    slice_axis: int
    slice_policy: str
    volume_size: list[int] | None
    spacing: list[float] | None
    label_map: bool


# The processor settings that `pretrained_cfg` owns, and PIL's names for timm's interpolation strings.
GEOMETRY_KEYS = ("size", "crop_size", "image_mean", "image_std", "resample", "num_channels", "slice_policy", "volume_size")
RESAMPLE = {"bilinear": PILImageResampling.BILINEAR, "bicubic": PILImageResampling.BICUBIC,
            "nearest": PILImageResampling.NEAREST}


def geometry_from_pretrained_cfg(cfg: dict) -> dict:
    """timm's `pretrained_cfg` → the processor's size, crop, mean/std, resample and channels (and, for a 3-D
    config, whose `input_size` is `[C, D, H, W]`, the volume policy and size)."""
    channels, *spatial = cfg["input_size"]
    height, width = spatial[-2:]
    crop_pct = float(cfg.get("crop_pct", 1.0))
    volume = {"slice_policy": "volume", "volume_size": [int(v) for v in spatial]} if len(spatial) == 3 else {}
    return volume | {
        "num_channels": int(channels),
        "size": {"shortest_edge": int(round(min(height, width) / crop_pct))},
        "crop_size": {"height": int(height), "width": int(width)},
        "image_mean": list(cfg["mean"]),
        "image_std": list(cfg["std"]),
        "resample": RESAMPLE[cfg.get("interpolation", "bilinear")],
    }


def _timm_pretrained_cfg(config_file) -> dict | None:
    if config_file is None or not Path(config_file).is_file():
        return None
    return json.loads(Path(config_file).read_text()).get("pretrained_cfg")


def _flatten(images) -> list:
    """A single input, a list of them, or a batched 4-D array/tensor → a flat list of single inputs."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise MedicalImageError("empty list of images")
        return [item for image in images for item in _flatten(image)]
    ndim = getattr(images, "ndim", None)
    if isinstance(images, (np.ndarray, torch.Tensor)) and ndim is not None:
        if ndim == 4:
            return list(images)
        if ndim > 4:
            raise MedicalImageError(f"<array of shape {tuple(images.shape)}>: too many dimensions ({ndim}); "
                                    "pass (H, W), (H, W, C), (C, H, W) or a batch (N, ...) of those")
    return [images]


class _MedNetProcessing:
    """What both backends share: defaults, the medical input stage and the serialised form."""

    valid_kwargs = MedNetImageProcessorKwargs
    model_input_names = ["pixel_values"]

    num_channels = 1
    intensity = "auto"
    window = None
    percentiles = [0.5, 99.5]
    frame = None
    slice_index = None
    slice_axis = 2
    slice_policy = "slice"
    volume_size = None
    spacing = None
    label_map = False
    do_resize = True
    size = {"shortest_edge": 224}
    resample = PILImageResampling.BILINEAR
    do_center_crop = True
    crop_size = {"height": 224, "width": 224}
    do_rescale = False  # the intensity convention already gives [0, 1]
    do_normalize = True
    image_mean = VARIANTS["gray"]["image_mean"]
    image_std = VARIANTS["gray"]["image_std"]

    def __init__(self, variant: str | None = None, image_size: int | None = None, crop_pct: float = 1.0, **kwargs):
        """`variant` ("gray"/"color") and `image_size` are shortcuts for `num_channels`, `image_mean`/`image_std`
        and `size`/`crop_size`; explicit keyword arguments win."""
        if variant is not None:
            if variant not in VARIANTS:
                raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
            for key in ("num_channels", "image_mean", "image_std"):
                kwargs.setdefault(key, VARIANTS[variant][key])
        if image_size is not None:
            kwargs.setdefault("size", {"shortest_edge": int(round(image_size / crop_pct))})
            kwargs.setdefault("crop_size", {"height": image_size, "width": image_size})
        super().__init__(**kwargs)
        self._check_settings(self.num_channels, self.image_mean, self.image_std, self.intensity, self.window)

    @classmethod
    def from_model_config(cls, config: MedNetConfig, **kwargs):
        """The processor matching a `MedNetConfig` (its `pretrained_cfg`); keyword arguments win."""
        return cls(**{**geometry_from_pretrained_cfg(config.pretrained_cfg), **kwargs})

    @classmethod
    def get_image_processor_dict(cls, pretrained_model_name_or_path, **kwargs):
        """The saved medical options, with the geometry taken from the model's `config.json` where there is one."""
        hub = {k: kwargs[k] for k in ("cache_dir", "force_download", "token", "local_files_only", "revision", "subfolder") if k in kwargs}
        try:
            processor_dict, kwargs = super().get_image_processor_dict(pretrained_model_name_or_path, **kwargs)
            missing = None
        except OSError as e:  # a model folder saved without a processor: config.json alone is enough
            processor_dict, missing = {"image_processor_type": cls.__name__}, e
            kwargs = {k: v for k, v in kwargs.items() if k not in hub and k not in ("proxies", "image_processor_filename", "_from_auto", "_from_pipeline")}
        config_file = cached_file(str(pretrained_model_name_or_path), CONFIG_NAME, _raise_exceptions_for_missing_entries=False,
                                  _raise_exceptions_for_connection_errors=False, **hub)
        cfg = _timm_pretrained_cfg(config_file)
        if cfg is None:
            if missing is not None:
                raise missing
            return processor_dict, kwargs
        return {**processor_dict, **geometry_from_pretrained_cfg(cfg)}, kwargs

    def to_json_file(self, json_file_path) -> None:
        """Beside a model's `config.json`, write only the medical options: the geometry lives in that config."""
        data = json.loads(self.to_json_string())
        if _timm_pretrained_cfg(Path(json_file_path).parent / CONFIG_NAME) is not None:
            data = {k: v for k, v in data.items() if k not in GEOMETRY_KEYS}
        Path(json_file_path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")

    @staticmethod
    def _check_settings(num_channels, image_mean, image_std, intensity, window) -> None:
        if num_channels not in (1, 3):
            raise ValueError(f"num_channels must be 1 (gray) or 3 (color), got {num_channels}")
        for name, values in (("image_mean", image_mean), ("image_std", image_std)):
            if len(values) != num_channels:
                raise ValueError(f"{name} has {len(values)} value(s) for {num_channels} channel(s)")
        if intensity not in INTENSITY_MODES:
            raise ValueError(f"intensity must be one of {INTENSITY_MODES}, got {intensity!r}")
        resolve_window(window)  # unknown presets fail here, before any image is read

    def __call__(self, images, *args, **kwargs) -> BatchFeature:
        if kwargs.get("slice_policy", self.slice_policy) == "volume":
            return self.preprocess_volumes(images, **kwargs)
        return super().__call__(images, *args, **kwargs)

    def preprocess_volumes(self, volumes, return_tensors=None, **kwargs) -> BatchFeature:
        """Volumes (a path, a `(D, H, W)` array or a `MedicalVolume`, or a list of them) → `pixel_values`
        `(batch, C, D, H, W)`: the intensity convention, the target spacing, the model's size (`mednet_hf.volumes`)."""
        options = {k: kwargs.get(k, getattr(self, k)) for k in
                   ("num_channels", "image_mean", "image_std", "intensity", "window", "percentiles", "spacing",
                    "label_map", "volume_size")}
        self._check_settings(options["num_channels"], options["image_mean"], options["image_std"], options["intensity"],
                             options["window"])
        size = options.pop("volume_size") or [self.crop_size["height"]] * 3
        if isinstance(volumes, (list, tuple)):
            items = list(volumes)
        elif isinstance(volumes, (np.ndarray, torch.Tensor)) and volumes.ndim == 4 and volumes.shape[0] != 1:
            items = list(volumes)  # a batch of (D, H, W) arrays
        else:
            items = [volumes]
        if not items:
            raise MedicalImageError("empty list of volumes")
        pixels = torch.stack([volume_pixel_values(item, size=size, **options) for item in items])
        return BatchFeature({"pixel_values": pixels}, tensor_type=return_tensors)

    def _prepare_image_like_inputs(self, images, *args, expected_ndims: int = 3, **kwargs) -> list:
        self._check_settings(kwargs["num_channels"], kwargs["image_mean"], kwargs["image_std"],
                             kwargs["intensity"], kwargs["window"])
        prepared = []
        for image in _flatten(images):
            medical = to_medical_image(image, frame=kwargs["frame"], slice_index=kwargs["slice_index"],
                                       slice_axis=kwargs["slice_axis"])
            unit = to_unit_range(medical, num_channels=kwargs["num_channels"], intensity=kwargs["intensity"],
                                 window=kwargs["window"], percentiles=kwargs["percentiles"])
            prepared.append(self._from_unit_array(unit, **kwargs))
        return prepared

    def to_dict(self) -> dict:
        output = super().to_dict()
        # Offer both backends to remote-code users, as transformers' own processors do.
        auto_map = output.get("auto_map", {})
        if isinstance(auto_map.get("AutoImageProcessor"), str):
            module = auto_map["AutoImageProcessor"].rsplit(".", 1)[0]
            auto_map["AutoImageProcessor"] = {
                "pil": f"{module}.MedNetImageProcessorPil",
                "torchvision": f"{module}.MedNetImageProcessor",
            }
        return output


class MedNetImageProcessor(_MedNetProcessing, TorchvisionBackend):
    r"""MedNet image processor, torchvision backend (batched, can run on GPU with `device=`).

    Takes PIL images (L, I;16, I, F, RGB, RGBA), numpy arrays and torch tensors (`HxW`, `HxWxC`, `CxHxW`; uint8,
    uint16, int16, float32), `pydicom` datasets, and paths to PNG/JPEG/TIFF/DICOM/NIfTI files or DICOM series folders.
    Returns `pixel_values` of shape `(batch, num_channels, crop_size["height"], crop_size["width"])`.
    The intensity convention is documented once, in `mednet_hf.intensity`.
    """

    def _from_unit_array(self, unit: np.ndarray, device=None, **kwargs) -> torch.Tensor:
        tensor = torch.from_numpy(unit)
        return tensor.to(device) if device is not None else tensor


class MedNetImageProcessorPil(_MedNetProcessing, PilBackend):
    r"""MedNet image processor, PIL/numpy backend (portable). Same inputs and outputs as `MedNetImageProcessor`."""

    def _from_unit_array(self, unit: np.ndarray, **kwargs) -> np.ndarray:
        return unit

    def resize(self, image: np.ndarray, size: SizeDict, resample=None, **kwargs) -> np.ndarray:
        # transformers' numpy resize goes through 8-bit PIL images for [0, 1] floats; resize each channel as a
        # 32-bit float ("F") PIL image instead, so no precision is lost.
        if size.shortest_edge:
            height, width = get_resize_output_image_size(
                image, size=size.shortest_edge, default_to_square=False, input_data_format=ChannelDimension.FIRST
            )
        else:
            height, width = size.height, size.width
        resample = PILImageResampling.BILINEAR if resample is None else resample
        channels = [PIL.Image.fromarray(channel).resize((width, height), resample=resample) for channel in image]
        return np.stack([np.asarray(channel, dtype=np.float32) for channel in channels])


__all__ = ["MedNetImageProcessor", "MedNetImageProcessorPil"]

if __package__ == "mednet_hf":  # the installed package registers itself; a copy loaded as remote code does not
    from transformers import AutoImageProcessor

    AutoImageProcessor.register(
        MedNetConfig, image_processor_classes={"torchvision": MedNetImageProcessor, "pil": MedNetImageProcessorPil},
        exist_ok=True,
    )
    MedNetImageProcessor.register_for_auto_class("AutoImageProcessor")
    MedNetImageProcessorPil.register_for_auto_class("AutoImageProcessor")
    # importlib, not an import statement: remote-code loading copies the files a checkpoint's code imports.
    importlib.import_module("mednet_hf.registration").register_with_transformers(completed=__name__)
