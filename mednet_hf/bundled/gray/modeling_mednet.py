"""MedNet models: a timm CNN behind transformers' `PreTrainedModel` API.

All four classes hold the same timm network under the same attribute name (`encoder`, or `mednet.encoder`
inside the classifier), so one checkpoint loads into any of them.
"""

import copy
import os

import timm
import torch
from timm.models import adapt_input_conv
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_outputs import (
    BackboneOutput,
    BaseModelOutputWithPoolingAndNoAttention,
    ImageClassifierOutputWithNoAttention,
)

from .configuration_mednet import VARIANTS, MedNetConfig


def _create_encoder(config: MedNetConfig) -> nn.Module:
    """Build the timm network (no timm weights, no timm head) and record its stages in `config`."""
    kwargs = dict(config.timm_kwargs)
    if config.drop_path_rate:
        kwargs["drop_path_rate"] = config.drop_path_rate
    try:
        encoder = timm.create_model(
            config.backbone, pretrained=False, num_classes=0, in_chans=config.num_channels, **kwargs
        )
    except RuntimeError as e:  # timm says "Unknown model (...)"
        raise ValueError(f"MedNetConfig.backbone={config.backbone!r} is not a timm architecture: {e}") from e
    if not getattr(encoder, "feature_info", None) or not hasattr(encoder, "forward_intermediates"):
        raise ValueError(
            f"timm's {config.backbone!r} has no feature_info/forward_intermediates; MedNet needs a timm CNN that has"
        )
    config.set_stages(
        stage_names=[info["module"] for info in encoder.feature_info],
        hidden_sizes=[info["num_chs"] for info in encoder.feature_info],
        num_features=encoder.num_features,
    )
    return encoder


def _check_pixel_values(pixel_values: torch.Tensor, config: MedNetConfig) -> None:
    if pixel_values.ndim != 4 or pixel_values.shape[1] != config.num_channels:
        raise ValueError(
            f"MedNet ({config.variant}) expects pixel_values of shape (batch, {config.num_channels}, height, width), "
            f"got {tuple(pixel_values.shape)}. Use MedNetImageProcessor, which applies the channel policy."
        )


class MedNetPreTrainedModel(PreTrainedModel):
    config_class = MedNetConfig
    config: MedNetConfig
    base_model_prefix = "mednet"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = False

    @torch.no_grad()
    def _init_weights(self, module):
        # timm initialises its own layers at construction; only our classifier and the BatchNorm buffers
        # (lost when transformers builds the model on the meta device) need it here.
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)

    def convert_variant(self, variant: str) -> "MedNetPreTrainedModel":
        """Return a copy of this model for the other variant (`"gray"` ↔ `"color"`).

        The first convolution is adapted with timm's `adapt_input_conv`: color→gray sums the RGB kernels,
        gray→color repeats the kernel and scales it by 1/3. Either way a gray image gives the same features in both
        models (replicated to 3 channels for the color one) up to the different normalisation constants.
        """
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        encoder = self.get_encoder()
        config = copy.deepcopy(self.config)
        old_channels = config.num_channels
        config.variant = variant
        config.num_channels = VARIANTS[variant]["num_channels"]
        config.image_mean = list(VARIANTS[variant]["image_mean"])
        config.image_std = list(VARIANTS[variant]["image_std"])
        new = type(self)(config)
        state = self.state_dict()
        prefix = next(k for k, v in self.named_modules() if v is encoder)
        key = f"{prefix}.{encoder.pretrained_cfg['first_conv']}.weight"
        state[key] = adapt_input_conv(config.num_channels, state[key], base_chans=old_channels)
        new.load_state_dict(state)
        return new

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, plus what makes a MedNet folder self-contained: an `auto_map` naming
        every MedNet class (one checkpoint serves every head), the processing code, and a
        `preprocessor_config.json` matching this config when the folder has none yet."""
        from .image_processing_mednet import MedNetImageProcessor

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
        super().save_pretrained(save_directory, *args, **kwargs)
        if not os.path.exists(os.path.join(save_directory, "preprocessor_config.json")):
            MedNetImageProcessor.from_model_config(self.config).save_pretrained(save_directory)

    def get_encoder(self) -> nn.Module:
        """The timm network."""
        return self.encoder if hasattr(self, "encoder") else self.mednet.encoder


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
        self.encoder = _create_encoder(config)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPoolingAndNoAttention | tuple:
        _check_pixel_values(pixel_values, self.config)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if output_hidden_states:
            last_hidden_state, hidden_states = self.encoder.forward_intermediates(pixel_values)
            hidden_states = tuple(hidden_states)
        else:
            last_hidden_state, hidden_states = self.encoder.forward_features(pixel_values), None
        pooled = self.encoder.forward_head(last_hidden_state, pre_logits=True)
        output = BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=last_hidden_state, pooler_output=pooled, hidden_states=hidden_states
        )
        return output if (return_dict if return_dict is not None else self.config.return_dict) else output.to_tuple()


class MedNetForImageClassification(MedNetPreTrainedModel):
    """MedNet with a linear classifier on the pooled features.

    The loss follows `config.problem_type` (inferred from the labels when unset, as in transformers):
    `"single_label_classification"` → cross-entropy on `(batch,)` class indices,
    `"multi_label_classification"` → BCE-with-logits on `(batch, num_labels)` targets,
    `"regression"` → MSE. Outputs `logits` of shape `(batch, num_labels)`.
    """

    def __init__(self, config: MedNetConfig):
        super().__init__(config)
        self.mednet = MedNetModel(config)
        self.dropout = nn.Dropout(config.drop_rate)
        self.classifier = self._new_classifier(config.num_labels)
        self.post_init()

    def _new_classifier(self, num_labels: int) -> nn.Module:
        return nn.Linear(self.config.num_features, num_labels) if num_labels > 0 else nn.Identity()

    def reset_classifier(self, num_labels: int, id2label: dict[int, str] | None = None) -> None:
        """Replace the classifier with a freshly initialised one for `num_labels` classes (timm's API)."""
        self.config.num_labels = num_labels
        if id2label is not None:
            self.config.id2label = dict(id2label)
            self.config.label2id = {v: k for k, v in self.config.id2label.items()}
        self.classifier = self._new_classifier(num_labels)
        self._init_weights(self.classifier)

    def freeze_backbone(self) -> None:
        """Linear probing: only the classifier trains; the backbone's weights and its BatchNorm statistics stay
        as loaded (it stays in eval mode even when the model is put in training mode)."""
        self.mednet.requires_grad_(False)
        self._backbone_frozen = True
        self.mednet.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self, "_backbone_frozen", False):
            self.mednet.eval()
        return self

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`(batch, C, H, W)` → last feature map `(batch, num_features, h, w)`."""
        _check_pixel_values(pixel_values, self.config)
        return self.mednet.encoder.forward_features(pixel_values)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Last feature map → pooled features (`pre_logits=True`) or logits."""
        pooled = self.mednet.encoder.forward_head(features, pre_logits=True)
        return pooled if pre_logits else self.classifier(self.dropout(pooled))

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
        outputs = self.mednet(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = None
        if labels is not None:
            self._check_labels(labels)
            loss = self.loss_function(labels.to(logits.device), logits, self.config)
        output = ImageClassifierOutputWithNoAttention(loss=loss, logits=logits, hidden_states=outputs.hidden_states)
        return output if (return_dict if return_dict is not None else self.config.return_dict) else output.to_tuple()


class MedNetBackbone(BackboneMixin, MedNetPreTrainedModel):
    """MedNet as a transformers backbone for dense heads (segmentation, detection).

    `feature_maps[i]` has shape `(batch, channels[i], h_i, w_i)` for the stages in `config.out_features`;
    `channels` lists their widths (from `config.hidden_sizes`).
    """

    has_attentions = False

    def __init__(self, config: MedNetConfig):
        encoder = _create_encoder(config)  # first: it fills config.stage_names, which BackboneMixin reads
        super().__init__(config)
        self.encoder = encoder
        self.num_features = list(config.hidden_sizes)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BackboneOutput | tuple:
        _check_pixel_values(pixel_values, self.config)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        wanted = None if output_hidden_states else list(self.out_indices)
        stages = self.encoder.forward_intermediates(
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
