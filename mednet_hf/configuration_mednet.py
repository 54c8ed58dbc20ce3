"""MedNet configuration: one `config.json` that transformers and timm both read.

timm reads `architecture`, `num_classes`, `num_features`, `model_args` and `pretrained_cfg` (as for any `hf-hub:`
or `local-dir:` checkpoint); transformers reads the rest. `pretrained_cfg` is the one home of the preprocessing
values (input size, mean/std, interpolation, crop_pct): the image processor takes them from here.
"""

import importlib

from transformers import PreTrainedConfig
from transformers.backbone_utils import BackboneConfigMixin

# Per-variant defaults. The normalisation constants are ImageNet's (color) and their channel average (gray), so
# that ImageNet-initialised weights, whose first convolution timm sums to one channel for the gray variant, see
# the statistics they were trained on.
VARIANTS = {
    "gray": {"num_channels": 1, "image_mean": [0.449], "image_std": [0.226]},
    "color": {"num_channels": 3, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]},
}
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


class MedNetConfig(BackboneConfigMixin, PreTrainedConfig):
    r"""
    Configuration of a MedNet model: a timm convolutional network plus its timm `pretrained_cfg`.

    Args:
        architecture (`str`, defaults to `"resnet50"`):
            A timm architecture name. Any timm CNN with `feature_info` works; weights never come from timm
            (`pretrained=False`): they come from the MedNet checkpoint. (`backbone=` is accepted as an alias.)
        variant (`str`, defaults to `"gray"`):
            `"gray"` (1 input channel: X-ray, CT, MRI, ultrasound, PET) or `"color"` (3 channels: histopathology,
            dermatology, fundus, blood smears).
        image_size (`int`, defaults to 224), image_mean / image_std (`list[float]`, variant defaults if unset),
        crop_pct (`float`, defaults to 1.0), interpolation (`str`, defaults to `"bilinear"`):
            shortcuts that fill `pretrained_cfg` (`input_size`, `mean`, `std`, `crop_pct`, `interpolation`).
            Read them back as properties of the same names.
        pretrained_cfg (`dict`, *optional*): timm's preprocessing config; wins over the shortcuts.
        drop_rate (`float`, defaults to 0.0): dropout before the classifier (timm's head).
        drop_path_rate (`float`, defaults to 0.0): stochastic depth inside the timm network.
        model_args (`dict`, *optional*): extra keyword arguments for `timm.create_model` (`in_chans`, `drop_rate`
            and `drop_path_rate` are filled in from the fields above).
        spatial_dims (`int`, defaults to 2): 3 builds MedNet-3D, the 2-D timm network converted module by module for
            volumes `(batch, C, D, H, W)` (`conversion_3d.py`); timm itself cannot build such a checkpoint.
        conversion (`str`, *optional*): how, for `spatial_dims=3`: `"acs"` (default), `"i3d"` or `"2.5d"`.
        out_features / out_indices (*optional*): stages `MedNetBackbone` returns (default: the last one).
        stage_names / hidden_sizes / num_features (*optional*): filled in from timm's `feature_info` when a model is
            built; the names and widths of the stages and the width of `pooler_output`.
    """

    model_type = "mednet"

    def __init__(
        self,
        architecture: str = "resnet50",
        variant: str = "gray",
        image_size: int | None = None,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        crop_pct: float | None = None,
        interpolation: str | None = None,
        pretrained_cfg: dict | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        model_args: dict | None = None,
        out_features: list[str] | None = None,
        out_indices: list[int] | None = None,
        stage_names: list[str] | None = None,
        hidden_sizes: list[int] | None = None,
        num_features: int | None = None,
        initializer_range: float = 0.02,
        spatial_dims: int = 2,
        conversion: str | None = None,
        **kwargs,
    ):
        # Written for timm, derived on load: the head's width follows num_labels and the class.
        for derived in ("num_classes", "label_names"):
            kwargs.pop(derived, None)
        num_channels = kwargs.pop("num_channels", None)  # implied by the variant; accepted when it agrees
        architecture = kwargs.pop("backbone", None) or architecture
        model_args = dict(model_args or kwargs.pop("timm_kwargs", None) or {})
        super().__init__(**kwargs)
        if variant not in VARIANTS:
            raise ValueError(f"MedNetConfig: variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        if spatial_dims not in (2, 3):
            raise ValueError(f"MedNetConfig: spatial_dims must be 2 or 3, got {spatial_dims!r}")
        if spatial_dims == 3:
            conversion = conversion or "acs"
            if conversion not in ("acs", "i3d", "2.5d"):
                raise ValueError(f"MedNetConfig: conversion must be 'acs', 'i3d' or '2.5d', got {conversion!r}")
        elif conversion is not None:
            raise ValueError("MedNetConfig: conversion applies to spatial_dims=3 only")
        self.spatial_dims, self.conversion = spatial_dims, conversion
        defaults = VARIANTS[variant]
        channels = defaults["num_channels"]
        requested = model_args.get("in_chans", num_channels if num_channels is not None else channels)
        if requested != channels:
            raise ValueError(f"MedNetConfig: variant {variant!r} takes {channels} channel(s), got {requested}")
        self.architecture = architecture
        self.variant = variant
        cfg = dict(pretrained_cfg or {})
        size = int(image_size if image_size is not None else cfg.get("input_size", [channels, 224, 224])[-1])
        cfg["input_size"] = [channels, *[size] * spatial_dims]
        cfg["mean"] = list(image_mean if image_mean is not None else cfg.get("mean", defaults["image_mean"]))
        cfg["std"] = list(image_std if image_std is not None else cfg.get("std", defaults["image_std"]))
        cfg["crop_pct"] = float(crop_pct if crop_pct is not None else cfg.get("crop_pct", 1.0))
        cfg["interpolation"] = interpolation or cfg.get("interpolation", "bilinear")
        cfg.setdefault("crop_mode", "center")
        for name in ("mean", "std"):
            if len(cfg[name]) != channels:
                raise ValueError(
                    f"MedNetConfig: image_{name} has {len(cfg[name])} value(s) but variant {variant!r} has {channels} channel(s)"
                )
        if not 0 < cfg["crop_pct"] <= 1:
            raise ValueError(f"MedNetConfig: crop_pct must be in (0, 1], got {cfg['crop_pct']}")
        if cfg["interpolation"] not in INTERPOLATIONS:
            raise ValueError(f"MedNetConfig: interpolation must be one of {INTERPOLATIONS}, got {cfg['interpolation']!r}")
        self.pretrained_cfg = cfg
        model_args["in_chans"] = channels
        if drop_rate:
            model_args["drop_rate"] = float(drop_rate)
        if drop_path_rate:
            model_args["drop_path_rate"] = float(drop_path_rate)
        self.model_args = model_args
        self.initializer_range = initializer_range
        self.stage_names = stage_names
        self.hidden_sizes = hidden_sizes
        self.num_features = num_features
        # Stage names come from timm and are only known once a model is built; until then keep the request.
        self._out_features = out_features
        self._out_indices = list(out_indices) if out_indices is not None else None
        if stage_names is not None:
            self.set_output_features_output_indices(out_features=out_features, out_indices=out_indices)

    # The preprocessing values, read from their one home.
    @property
    def num_channels(self) -> int:
        return VARIANTS[self.variant]["num_channels"]

    @property
    def image_size(self) -> int:
        return int(self.pretrained_cfg["input_size"][-1])

    @image_size.setter
    def image_size(self, size: int) -> None:
        """Fine-tuning at another size (`from_pretrained(..., image_size=64)`): the model and its processor follow."""
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"MedNetConfig: image_size must be a positive whole number, got {size!r}")
        self.pretrained_cfg["input_size"] = [self.num_channels, *[size] * self.spatial_dims]

    @property
    def image_mean(self) -> list[float]:
        return list(self.pretrained_cfg["mean"])

    @property
    def image_std(self) -> list[float]:
        return list(self.pretrained_cfg["std"])

    @property
    def crop_pct(self) -> float:
        return float(self.pretrained_cfg["crop_pct"])

    @property
    def interpolation(self) -> str:
        return self.pretrained_cfg["interpolation"]

    @property
    def drop_rate(self) -> float:
        return float(self.model_args.get("drop_rate", 0.0))

    def set_stages(self, stage_names: list[str], hidden_sizes: list[int], num_features: int, timm_cfg: dict) -> None:
        """Record what the built timm network says about itself: its stages, its width, and the names timm's weight
        loading needs (`first_conv` to adapt input channels, `classifier` to drop or keep the head)."""
        if self.stage_names is not None and list(self.stage_names) != list(stage_names):
            raise ValueError(
                f"MedNetConfig: the checkpoint's stage_names {self.stage_names} do not match those of timm's "
                f"{self.architecture!r} {stage_names}; was it saved with another timm version or architecture?"
            )
        self.stage_names = list(stage_names)
        self.hidden_sizes = list(hidden_sizes)
        self.num_features = int(num_features)
        for key in ("first_conv", "classifier"):
            if timm_cfg.get(key):
                self.pretrained_cfg.setdefault(key, timm_cfg[key])
        self.set_output_features_output_indices(out_features=self._out_features, out_indices=self._out_indices)

    @property
    def has_classifier(self) -> bool:
        """Whether the checkpoint holds a trained classification head (it was saved by
        `MedNetForImageClassification`, e.g. by `mednet finetune`)."""
        return any(name.endswith("ForImageClassification") for name in (self.architectures or []))

    def to_dict(self) -> dict:
        output = super().to_dict()
        # What timm needs to rebuild the network with the saved head: MedNetModel/MedNetBackbone weights have none.
        has_head = self.has_classifier
        output["num_classes"] = self.num_labels if has_head else 0
        output["pretrained_cfg"] = {**self.pretrained_cfg, "num_classes": output["num_classes"]}
        if has_head:
            output["label_names"] = [self.id2label[i] for i in sorted(self.id2label)]
        return output


__all__ = ["MedNetConfig", "VARIANTS"]

if __package__ == "mednet_hf":  # the installed package registers itself; a copy loaded as remote code does not
    from transformers import AutoConfig

    AutoConfig.register(MedNetConfig.model_type, MedNetConfig, exist_ok=True)
    MedNetConfig.register_for_auto_class()
    # importlib, not an import statement: remote-code loading copies the files a checkpoint's code imports.
    importlib.import_module("mednet_hf.registration").register_with_transformers(completed=__name__)
