"""MedNet configuration."""

from transformers import PreTrainedConfig
from transformers.backbone_utils import BackboneConfigMixin

# Per-variant defaults, the timm `pretrained_cfg` of each variant. The normalisation constants are ImageNet's
# (color) and their channel average (gray), so that ImageNet-initialised weights, whose first convolution timm
# sums to one channel for the gray variant, see the statistics they were trained on.
VARIANTS = {
    "gray": {"num_channels": 1, "image_mean": [0.449], "image_std": [0.226]},
    "color": {"num_channels": 3, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]},
}


class MedNetConfig(BackboneConfigMixin, PreTrainedConfig):
    r"""
    Configuration of a MedNet model: a timm convolutional network plus the small timm-style preprocessing config
    (`image_size`, `image_mean`/`image_std`, `crop_pct`, `interpolation`) stored with its weights.

    Args:
        backbone (`str`, defaults to `"resnet50"`):
            A timm architecture name. Any timm CNN with `feature_info` works; weights never come from timm
            (`pretrained=False`): they come from the MedNet checkpoint.
        variant (`str`, defaults to `"gray"`):
            `"gray"` (1 input channel: X-ray, CT, MRI, ultrasound, PET) or `"color"` (3 channels: histopathology,
            dermatology, fundus, blood smears).
        image_size (`int`, defaults to 224): side of the square input the model was trained at.
        image_mean / image_std (`list[float]`, *optional*): per-channel normalisation; variant defaults if unset.
        crop_pct (`float`, defaults to 1.0): resize the short side to `image_size / crop_pct`, then center-crop.
        interpolation (`str`, defaults to `"bilinear"`): resize filter.
        drop_rate (`float`, defaults to 0.0): dropout before the classifier.
        drop_path_rate (`float`, defaults to 0.0): stochastic depth inside the timm network.
        timm_kwargs (`dict`, *optional*): extra keyword arguments for `timm.create_model`.
        out_features / out_indices (*optional*): stages `MedNetBackbone` returns (default: the last one).
        stage_names / hidden_sizes (*optional*): filled in from timm's `feature_info` when a model is built; the
            names and channel counts of the stages.
        num_features (`int`, *optional*): width of `pooler_output`; filled in when a model is built.
    """

    model_type = "mednet"

    def __init__(
        self,
        backbone: str = "resnet50",
        variant: str = "gray",
        image_size: int = 224,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        crop_pct: float = 1.0,
        interpolation: str = "bilinear",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        timm_kwargs: dict | None = None,
        out_features: list[str] | None = None,
        out_indices: list[int] | None = None,
        stage_names: list[str] | None = None,
        hidden_sizes: list[int] | None = None,
        num_features: int | None = None,
        num_channels: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if variant not in VARIANTS:
            raise ValueError(f"MedNetConfig: variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        defaults = VARIANTS[variant]
        if num_channels is not None and num_channels != defaults["num_channels"]:
            raise ValueError(
                f"MedNetConfig: variant {variant!r} takes {defaults['num_channels']} channel(s), "
                f"got num_channels={num_channels}"
            )
        self.backbone = backbone
        self.variant = variant
        self.num_channels = defaults["num_channels"]
        self.image_size = int(image_size)
        self.image_mean = list(image_mean) if image_mean is not None else list(defaults["image_mean"])
        self.image_std = list(image_std) if image_std is not None else list(defaults["image_std"])
        for name, values in (("image_mean", self.image_mean), ("image_std", self.image_std)):
            if len(values) != self.num_channels:
                raise ValueError(
                    f"MedNetConfig: {name} has {len(values)} value(s) but variant {variant!r} has "
                    f"{self.num_channels} channel(s)"
                )
        if not 0 < crop_pct <= 1:
            raise ValueError(f"MedNetConfig: crop_pct must be in (0, 1], got {crop_pct}")
        self.crop_pct = float(crop_pct)
        self.interpolation = interpolation
        self.drop_rate = drop_rate
        self.drop_path_rate = drop_path_rate
        self.timm_kwargs = dict(timm_kwargs or {})
        self.stage_names = stage_names
        self.hidden_sizes = hidden_sizes
        self.num_features = num_features
        # Stage names come from timm and are only known once a model is built; until then keep the request.
        self._out_features = out_features
        self._out_indices = list(out_indices) if out_indices is not None else None
        if stage_names is not None:
            self.set_output_features_output_indices(out_features=out_features, out_indices=out_indices)

    def set_stages(self, stage_names: list[str], hidden_sizes: list[int], num_features: int) -> None:
        """Record the stages of the built network and align `out_features`/`out_indices` with them."""
        if self.stage_names is not None and list(self.stage_names) != list(stage_names):
            raise ValueError(
                f"MedNetConfig: the checkpoint's stage_names {self.stage_names} do not match those of timm's "
                f"{self.backbone!r} {stage_names}; was it saved with another timm version or backbone?"
            )
        self.stage_names = list(stage_names)
        self.hidden_sizes = list(hidden_sizes)
        self.num_features = int(num_features)
        self.set_output_features_output_indices(out_features=self._out_features, out_indices=self._out_indices)


__all__ = ["MedNetConfig", "VARIANTS"]
