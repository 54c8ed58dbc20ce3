"""MedNet models: a timm CNN behind transformers' `PreTrainedModel` API, built on transformers' own `TimmWrapper`.

Every class holds the whole timm network as `timm_model`, its classifier included (timm's own head), and the
weights are saved under timm's names: transformers adds the `timm_model.` prefix on load and removes it on save
(the `PrefixChange` registered below, as for `TimmWrapper`). With the timm fields of `config.json` (see
`configuration_mednet.py`) a saved MedNet folder is a timm checkpoint: `timm.create_model("local-dir:<folder>",
pretrained=True)` or `"hf-hub:<repo>"` rebuilds the same network with the same weights.
"""

import copy
import importlib
import re

import timm
import torch
from timm.models import adapt_input_conv
from torch import nn
from transformers import initialization as init
from transformers.backbone_utils import BackboneMixin
from transformers.conversion_mapping import get_model_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.core_model_loading import PrefixChange
from transformers.modeling_outputs import (
    BackboneOutput,
    BaseModelOutputWithPoolingAndNoAttention,
    ImageClassifierOutputWithNoAttention,
)
from transformers.models.timm_wrapper.modeling_timm_wrapper import TimmWrapperPreTrainedModel

from .configuration_mednet import VARIANTS, MedNetConfig
from .conversion_3d import convert_to_3d, inflate_state_dict, init_i3d_kernels
from .intensity import LUMA_WEIGHTS

# Checkpoints hold timm's own names (`conv1.weight`); the modules live under `timm_model.`.
register_checkpoint_conversion_mapping(MedNetConfig.model_type, [PrefixChange(prefix_to_add="timm_model")], overwrite=True)


def _create_timm_model(config: MedNetConfig, num_classes: int) -> nn.Module:
    """Build the timm network (no timm weights) and record its stages in `config`."""
    try:
        model = timm.create_model(config.architecture, pretrained=False, num_classes=num_classes, **config.model_args)
    except RuntimeError as e:  # timm says "Unknown model (...)"
        raise ValueError(f"MedNetConfig.architecture={config.architecture!r} is not a timm architecture: {e}") from e
    if not getattr(model, "feature_info", None) or not hasattr(model, "forward_intermediates"):
        raise ValueError(
            f"timm's {config.architecture!r} has no feature_info/forward_intermediates; MedNet needs a timm CNN that has"
        )
    if config.spatial_dims == 3:  # MedNet-3D: the same network, its modules converted for volumes
        init_i3d_kernels(convert_to_3d(model, config.conversion))  # weights loaded later replace these
    config.set_stages(
        stage_names=[info["module"] for info in model.feature_info],
        hidden_sizes=[info["num_chs"] for info in model.feature_info],
        num_features=model.num_features,
        timm_cfg=model.pretrained_cfg,
    )
    return model


def _check_pixel_values(pixel_values: torch.Tensor, config: MedNetConfig) -> torch.Tensor:
    """The model's input, shape checked. A gray model given 3 channels takes their luma (`intensity.LUMA_WEIGHTS`,
    the convention's channel rule; equal channels stay that gray exactly), so RGB pipelines built from the
    processor's `size`/`image_mean`/`image_std`, such as transformers' `run_image_classification.py`, work: with the
    gray variant's one mean/std on every channel, the luma of normalised channels is the normalised luma, because
    the weights sum to 1. MedNet-3D (`spatial_dims=3`) takes volumes `(batch, C, D, H, W)`."""
    ndim = 2 + config.spatial_dims
    if pixel_values.ndim == ndim and config.num_channels == 1 and pixel_values.shape[1] == 3:
        weights = torch.as_tensor(LUMA_WEIGHTS, dtype=pixel_values.dtype, device=pixel_values.device)
        luma = torch.einsum("c,bc...->b...", weights, pixel_values)[:, None]
        gray = ((pixel_values[:, 0] == pixel_values[:, 1]) & (pixel_values[:, 0] == pixel_values[:, 2])).flatten(1).all(1)
        return torch.where(gray.view(-1, *[1] * (ndim - 1)), pixel_values[:, :1], luma)
    if pixel_values.ndim != ndim or pixel_values.shape[1] != config.num_channels:
        shape = "height, width" if config.spatial_dims == 2 else "depth, height, width"
        three_d = config.spatial_dims == 3
        luma = " (or 3 channels, taken as luma)" if config.num_channels == 1 else ""
        raise ValueError(
            f"MedNet ({config.variant}{', 3-D' if three_d else ''}) expects pixel_values of shape "
            f"(batch, {config.num_channels}, {shape}){luma}, got {tuple(pixel_values.shape)}. "
            f"Use MedNetImageProcessor{'(slice_policy=volume)' if three_d else ''}, which applies the channel policy."
        )
    return pixel_values


class MedNetPreTrainedModel(TimmWrapperPreTrainedModel):
    """`TimmWrapperPreTrainedModel` gives the `timm_model.` prefix fix for `load_state_dict` (Trainer resumes) and
    gradient checkpointing wherever the timm network supports it; this adds MedNet's config and variants."""

    config_class = MedNetConfig
    config: MedNetConfig
    model_tags = ["timm", "mednet"]
    _no_split_modules = []

    @torch.no_grad()
    def _init_weights(self, module):
        # timm initialises its own layers at construction; only a new classifier and the BatchNorm buffers (lost
        # when transformers builds the model on the meta device) need it here.
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, spatial_dims: int | None = None,
                        conversion: str | None = None, **kwargs):
        """transformers' `from_pretrained`; with `spatial_dims=3` (and `conversion`, default "acs") a 2-D checkpoint
        starts MedNet-3D: its weights are loaded into the converted network, unchanged for ACS and 2.5D, inflated
        along depth for I3D. A saved 3-D checkpoint loads as it is."""
        given = kwargs.get("config")
        if isinstance(given, MedNetConfig) and (given.spatial_dims not in (2, 3) or (given.spatial_dims == 2 and given.conversion)):
            # AutoConfig sets keywords after MedNetConfig's own checks: check them here
            raise ValueError(f"{pretrained_model_name_or_path}: spatial_dims {given.spatial_dims!r} with conversion "
                             f"{given.conversion!r}; pass spatial_dims=3 (and conversion acs, i3d or 2.5d), or neither")
        if spatial_dims is None and isinstance(given, MedNetConfig) and given.spatial_dims == 3:
            # `AutoModel.from_pretrained(id, spatial_dims=3)`: AutoConfig took the keyword into the 2-D checkpoint's
            # config, and loading 2-D weights into that 3-D network would leave it random. Convert instead.
            hub = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only", "subfolder") if k in kwargs}
            if MedNetConfig.from_pretrained(pretrained_model_name_or_path, **hub).spatial_dims == 2:
                spatial_dims, conversion = 3, given.conversion
                flat = copy.deepcopy(given)
                flat.spatial_dims, flat.conversion = 2, None
                flat.image_size = flat.image_size  # input_size for 2-D (the setter is the one rule)
                kwargs["config"] = flat
        if spatial_dims in (None, 2) and conversion is None:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        two_d = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        if two_d.config.spatial_dims == 3 and spatial_dims in (None, 3) and conversion in (None, two_d.config.conversion):
            return two_d  # a 3-D checkpoint, asked for as what it is
        if two_d.config.spatial_dims != 2 or spatial_dims != 3:
            raise ValueError(f"{pretrained_model_name_or_path}: a {two_d.config.spatial_dims}-D checkpoint cannot start "
                             f"a {spatial_dims}-D model with conversion {conversion!r}; convert 2-D weights only")
        config = copy.deepcopy(two_d.config)
        config.spatial_dims, config.conversion = 3, conversion or "acs"
        config.image_size = config.image_size  # input_size for 3-D
        model = cls(config)
        state = inflate_state_dict(two_d.timm_model.state_dict(), model.timm_model)
        model.timm_model.load_state_dict(state)  # strict: every key of the 2-D network, nothing else
        return model.eval()  # as transformers' from_pretrained returns a model

    def convert_variant(self, variant: str) -> "MedNetPreTrainedModel":
        """Return a copy of this model for the other variant (`"gray"` ↔ `"color"`).

        The first convolution is adapted with timm's `adapt_input_conv`: color→gray sums the RGB kernels,
        gray→color repeats the kernel and scales it by 1/3. Either way a gray image gives the same features in both
        models (replicated to 3 channels for the color one) up to the different normalisation constants.
        """
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        config = copy.deepcopy(self.config)
        old_channels = config.num_channels
        config.variant = variant
        config.model_args["in_chans"] = VARIANTS[variant]["num_channels"]
        config.image_size = config.image_size  # input_size with the new channel count (and 2 or 3 spatial dims)
        config.pretrained_cfg.update(mean=list(VARIANTS[variant]["image_mean"]), std=list(VARIANTS[variant]["image_std"]))
        new = type(self)(config)
        state = self.timm_model.state_dict()
        key = f"{config.pretrained_cfg['first_conv']}.weight"
        kernel = state[key]  # (out, in, [depth,] height, width): timm adapts 2-D kernels along `in`
        flat = kernel.flatten(2, 3) if kernel.ndim == 5 else kernel
        adapted = adapt_input_conv(config.num_channels, flat, base_chans=old_channels)
        state[key] = adapted.reshape(adapted.shape[0], adapted.shape[1], *kernel.shape[2:])
        new.timm_model.load_state_dict(state)
        return new

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, with an `auto_map` naming every MedNet class, so that one checkpoint
        serves every head and its processor with `trust_remote_code=True` (the processor's own `save_pretrained`
        writes its code beside it)."""
        if getattr(self, "_auto_class", None) is not None:  # registered (package import or remote code)
            self.config.auto_map = {
                **(getattr(self.config, "auto_map", None) or {}),
                "AutoConfig": "configuration_mednet.MedNetConfig",
                "AutoModel": "modeling_mednet.MedNetModel",
                "AutoModelForImageClassification": "modeling_mednet.MedNetForImageClassification",
                "AutoBackbone": "modeling_mednet.MedNetBackbone",
                "AutoImageProcessor": {
                    "pil": "image_processing_mednet.MedNetImageProcessorPil",
                    "torchvision": "image_processing_mednet.MedNetImageProcessor",
                },
            }
        if getattr(self, "_weight_conversions", None) is None:
            # transformers reverts a PrefixChange on save only for models that `from_pretrained` built; a MedNet
            # checkpoint always holds timm's names, however the model was made.
            self._weight_conversions = get_model_conversion_mapping(self, add_legacy=False)
        super().save_pretrained(save_directory, *args, **kwargs)

    def get_encoder(self) -> nn.Module:
        """The timm network."""
        return self.timm_model

    def _features(self, pixel_values: torch.Tensor, output_hidden_states: bool | None):
        """The last feature map and, if asked (or set in the config), every stage's output."""
        pixel_values = _check_pixel_values(pixel_values, self.config)
        if output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states:
            last, stages = self.timm_model.forward_intermediates(pixel_values)
            return last, tuple(stages)
        return self.timm_model.forward_features(pixel_values), None

    def _ignore_classifier_weights(self) -> None:
        """A headless model loads a classification checkpoint without calling its classifier weights unexpected.
        (Before `post_init`, which collects the patterns.)"""
        classifier = self.config.pretrained_cfg.get("classifier")
        if classifier:
            self._keys_to_ignore_on_load_unexpected = [rf"^timm_model\.{re.escape(classifier)}\."]


class MedNetModel(MedNetPreTrainedModel):
    """MedNet without a head: feature maps and pooled features.

    Outputs (`BaseModelOutputWithPoolingAndNoAttention`):
        last_hidden_state: `(batch, num_features, height / reduction, width / reduction)`
        pooler_output: `(batch, num_features)` (timm's global average pooling)
        hidden_states: with `output_hidden_states=True`, one `(batch, hidden_sizes[i], h_i, w_i)` map per stage
            in `config.stage_names`.
    """

    def __init__(self, config: MedNetConfig):
        super().__init__(config)
        self.timm_model = _create_timm_model(config, num_classes=0)
        self._ignore_classifier_weights()
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPoolingAndNoAttention | tuple:
        last_hidden_state, hidden_states = self._features(pixel_values, output_hidden_states)
        pooled = self.timm_model.forward_head(last_hidden_state, pre_logits=True)
        output = BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=last_hidden_state, pooler_output=pooled, hidden_states=hidden_states
        )
        return output if (return_dict if return_dict is not None else self.config.return_dict) else output.to_tuple()


class MedNetForImageClassification(MedNetPreTrainedModel):
    """MedNet with timm's classifier head on the pooled features (so the head is a timm head too).

    The loss follows `config.problem_type` (inferred from the labels when unset, as in transformers):
    `"single_label_classification"` → cross-entropy on `(batch,)` class indices,
    `"multi_label_classification"` → BCE-with-logits on `(batch, num_labels)` targets,
    `"regression"` → MSE. Outputs `logits` of shape `(batch, num_labels)`.
    """

    def __init__(self, config: MedNetConfig):
        super().__init__(config)
        self.timm_model = _create_timm_model(config, num_classes=config.num_labels)
        self.post_init()

    def reset_classifier(self, num_labels: int, id2label: dict[int, str] | None = None) -> None:
        """Replace the classifier with a freshly initialised one for `num_labels` classes (timm's API)."""
        self.config.num_labels = num_labels
        if id2label is not None:
            self.config.id2label = dict(id2label)
            self.config.label2id = {v: k for k, v in self.config.id2label.items()}
        self.timm_model.reset_classifier(num_labels)
        self.timm_model.get_classifier().apply(self._init_weights)

    def freeze_backbone(self) -> None:
        """Linear probing: only the classifier trains; the backbone's weights and its BatchNorm statistics stay
        as loaded (it stays in eval mode even when the model is put in training mode)."""
        self.timm_model.requires_grad_(False)
        self.timm_model.get_classifier().requires_grad_(True)
        self._backbone_frozen = True
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self, "_backbone_frozen", False):
            self.timm_model.eval()
            self.timm_model.get_classifier().train(mode)
        return self

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`(batch, C, H, W)` → last feature map `(batch, num_features, h, w)`."""
        pixel_values = _check_pixel_values(pixel_values, self.config)
        return self.timm_model.forward_features(pixel_values)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Last feature map → pooled features (`pre_logits=True`) or logits."""
        return self.timm_model.forward_head(features, pre_logits=pre_logits)

    def _check_labels(self, labels: torch.Tensor) -> None:
        num_labels, problem = self.config.num_labels, self.config.problem_type
        if problem == "multi_label_classification" or (problem is None and labels.is_floating_point() and num_labels > 1):
            if labels.ndim != 2 or labels.shape[1] != num_labels:
                raise ValueError(
                    f"multi-label targets must have shape (batch, {num_labels}); got {tuple(labels.shape)}"
                )
        elif problem == "single_label_classification" or (problem is None and not labels.is_floating_point()):
            if num_labels > 1 and labels.numel() and (labels.min() < 0 or labels.max() >= num_labels):
                raise ValueError(
                    f"labels contain class {int(labels.max() if labels.max() >= num_labels else labels.min())} "
                    f"but the model has num_labels={num_labels} (classes 0..{num_labels - 1}: "
                    f"{list(self.config.id2label.values())})"
                )

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutputWithNoAttention | tuple:
        features, hidden_states = self._features(pixel_values, output_hidden_states)
        logits = self.timm_model.forward_head(features)
        loss = None
        if labels is not None:
            self._check_labels(labels)
            loss = self.loss_function(labels.to(logits.device), logits, self.config)
        output = ImageClassifierOutputWithNoAttention(loss=loss, logits=logits, hidden_states=hidden_states)
        return output if (return_dict if return_dict is not None else self.config.return_dict) else output.to_tuple()


class MedNetBackbone(BackboneMixin, MedNetPreTrainedModel):
    """MedNet as a transformers backbone for dense heads (segmentation, detection).

    `feature_maps[i]` has shape `(batch, channels[i], h_i, w_i)` for the stages in `config.out_features`;
    `channels` lists their widths (from `config.hidden_sizes`).
    """

    has_attentions = False

    def __init__(self, config: MedNetConfig):
        timm_model = _create_timm_model(config, num_classes=0)  # first: it fills config.stage_names for BackboneMixin
        super().__init__(config)
        self.timm_model = timm_model
        self.num_features = list(config.hidden_sizes)
        self._ignore_classifier_weights()
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BackboneOutput | tuple:
        pixel_values = _check_pixel_values(pixel_values, self.config)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        wanted = None if output_hidden_states else list(self.out_indices)
        stages = self.timm_model.forward_intermediates(
            pixel_values, indices=wanted, intermediates_only=True, stop_early=True
        )
        if output_hidden_states:
            hidden_states = tuple(stages)
            feature_maps = tuple(hidden_states[i] for i in self.out_indices)
        else:
            hidden_states, feature_maps = None, tuple(stages)
        output = BackboneOutput(feature_maps=feature_maps, hidden_states=hidden_states, attentions=None)
        return output if (return_dict if return_dict is not None else self.config.return_dict) else output.to_tuple()


__all__ = ["MedNetPreTrainedModel", "MedNetModel", "MedNetForImageClassification", "MedNetBackbone"]

if __package__ == "mednet_hf":  # the installed package registers itself; a copy loaded as remote code does not
    from transformers import AutoBackbone, AutoModel, AutoModelForImageClassification

    for auto, model_class in ((AutoModel, MedNetModel), (AutoModelForImageClassification, MedNetForImageClassification),
                              (AutoBackbone, MedNetBackbone)):
        auto.register(MedNetConfig, model_class, exist_ok=True)
        model_class.register_for_auto_class(auto.__name__)
    # importlib, not an import statement: remote-code loading copies the files a checkpoint's code imports.
    importlib.import_module("mednet_hf.registration").register_with_transformers(completed=__name__)
