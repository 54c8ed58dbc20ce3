"""A 2-D timm network → a 3-D one, module by module, so that 2-D MedNet weights start a volumetric model.

Three conversions (MedMNIST v2 benchmarks all three for ResNets on its 3-D sets):

- `"acs"` (Yang et al., IEEE JBHI 2021): each 2-D k×k kernel is applied along the axial, coronal and sagittal planes
  on a third of the output channels each (as 1×k×k, k×1×k and k×k×1 kernels). The weights keep their 2-D shapes,
  so a 2-D state dict loads unchanged.
- `"i3d"` (Carreira & Zisserman, 2017): each kernel is inflated to k×k×k, the 2-D weights repeated along depth and
  divided by the kernel's depth. Depth is padded by replicating the edge slices, so a volume that is constant along
  depth gives exactly the 2-D network's features.
- `"2.5d"`: each 2-D kernel is applied as 1×k×k (slice by slice); the weights keep their 2-D shapes.

Batch norm becomes its 3-D form with the same parameters and statistics; max pooling and the global pool become 3-D.
Strides and pooling apply along depth as along height and width. A module this does not know (a 2-D layer left
after conversion) is refused by name: timm networks beyond ResNets may use 2-D functional calls.

No maintained package does this for timm networks: MONAI's networks are 3-D by construction and it has no
inflation of 2-D weights (its maintainers say so), timm has no 3-D support (huggingface/pytorch-image-models#2628),
and `acsconv` 0.1.1 fails on current torch. So the conversion is written here, and a converted checkpoint loads
with transformers (`AutoModel`, remote code) but not with `timm.create_model`.
"""

import torch
import torch.nn.functional as F
from torch import nn

CONVERSIONS = ("acs", "i3d", "2.5d")


def _triple(value) -> tuple[int, int, int]:
    value = value if isinstance(value, tuple) else (value, value)
    return (value[0], value[0], value[1]) if len(value) == 2 else tuple(value)


class Conv3dFrom2d(nn.Module):
    """A 2-D convolution applied to volumes. `weight` keeps the 2-D shape `(out, in/groups, kH, kW)` for ACS and
    2.5D, and is `(out, in/groups, kD, kH, kW)` for I3D."""

    def __init__(self, conv: nn.Conv2d, conversion: str):
        super().__init__()
        if conversion not in CONVERSIONS:
            raise ValueError(f"conversion must be one of {CONVERSIONS}, got {conversion!r}")
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"{conv}: only numeric zero padding converts to 3-D")
        self.conversion = conversion
        self.in_channels, self.out_channels, self.groups = conv.in_channels, conv.out_channels, conv.groups
        self.kernel_size, self.stride = conv.kernel_size, _triple(conv.stride)
        self.padding, self.dilation = conv.padding, _triple(conv.dilation)
        weight = conv.weight.detach()
        if conversion == "i3d":
            depth = conv.kernel_size[0]
            weight = weight.unsqueeze(2).repeat(1, 1, depth, 1, 1) / depth
        self.weight = nn.Parameter(weight.clone())
        self.bias = nn.Parameter(conv.bias.detach().clone()) if conv.bias is not None else None

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"conversion={self.conversion!r}")

    def _conv(self, x, weight, padding, bias):
        return F.conv3d(x, weight, bias, self.stride, padding, self.dilation, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = self.padding
        if self.conversion == "i3d":
            pd = (self.weight.shape[2] - 1) // 2 * self.dilation[0]
            x = F.pad(x, (0, 0, 0, 0, pd, pd), mode="replicate") if pd else x  # depth: the edge slices, repeated
            return self._conv(x, self.weight, (0, ph, pw), self.bias)
        if self.conversion == "2.5d":
            return self._conv(x, self.weight.unsqueeze(2), (0, ph, pw), self.bias)
        # ACS: a third of the output channels per plane (axial, coronal, sagittal); the first third gets the rest.
        third = self.out_channels // 3
        sizes = [self.out_channels - 2 * third, third, third]
        weights = self.weight.split(sizes)
        biases = self.bias.split(sizes) if self.bias is not None else (None,) * 3
        planes = [  # (the kernel's singleton axis, padding)
            (weights[0].unsqueeze(2), (0, ph, pw)),  # axial: 1 × kH × kW
            (weights[1].unsqueeze(3), (ph, 0, pw)),  # coronal: kH × 1 × kW
            (weights[2].unsqueeze(4), (ph, pw, 0)),  # sagittal: kH × kW × 1
        ]
        outputs = [self._conv(x, w, p, b) for (w, p), b in zip(planes, biases) if w.shape[0]]
        return torch.cat(outputs, dim=1)


class GlobalPool3d(nn.Module):
    """timm's `SelectAdaptivePool2d` for volumes: the global average (or max, avg+max) over depth, height and width,
    flattened to `(batch, channels)` when asked."""

    def __init__(self, pool_type: str = "avg", flatten: bool = True):
        super().__init__()
        if pool_type not in ("avg", "max", "avgmax", "fast", ""):
            raise ValueError(f"global pool {pool_type!r} has no 3-D form here")
        self.pool_type, self.flatten = pool_type, flatten

    def is_identity(self) -> bool:
        return not self.pool_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.pool_type:
            return x
        if self.pool_type in ("avg", "fast"):
            out = x.mean(dim=(2, 3, 4), keepdim=True)
        elif self.pool_type == "max":
            out = x.amax(dim=(2, 3, 4), keepdim=True)
        else:
            out = 0.5 * (x.mean(dim=(2, 3, 4), keepdim=True) + x.amax(dim=(2, 3, 4), keepdim=True))
        return out.flatten(1) if self.flatten else out


def _convert(module: nn.Module, conversion: str) -> nn.Module | None:
    """The 3-D form of one module, or None when it is dimension-agnostic (kept as it is)."""
    from timm.layers import SelectAdaptivePool2d

    if isinstance(module, nn.Conv2d):
        return Conv3dFrom2d(module, conversion)
    if isinstance(module, nn.BatchNorm2d):
        new = nn.BatchNorm3d(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        new.load_state_dict(module.state_dict())
        return new
    if isinstance(module, nn.MaxPool2d):
        return nn.MaxPool3d(_triple(module.kernel_size), _triple(module.stride), _triple(module.padding),
                            _triple(module.dilation), ceil_mode=module.ceil_mode)
    if isinstance(module, nn.AvgPool2d):
        return nn.AvgPool3d(_triple(module.kernel_size), _triple(module.stride), _triple(module.padding),
                            ceil_mode=module.ceil_mode, count_include_pad=module.count_include_pad)
    if isinstance(module, SelectAdaptivePool2d):
        return GlobalPool3d(module.pool_type, flatten=isinstance(module.flatten, nn.Flatten))
    if isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1)):
        return GlobalPool3d("avg", flatten=False)
    return None


TWO_D = (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
         nn.Upsample, nn.PixelShuffle)


def convert_to_3d(model: nn.Module, conversion: str) -> nn.Module:
    """Convert `model` in place (its weights carried over by `conversion`) and return it; refuse it, naming the
    module, when a 2-D layer is left that has no 3-D form here."""
    if conversion not in CONVERSIONS:
        raise ValueError(f"conversion must be one of {CONVERSIONS}, got {conversion!r}")
    for name, child in list(model.named_children()):
        new = _convert(child, conversion)
        if new is not None:
            setattr(model, name, new)
        else:
            convert_to_3d(child, conversion)
    left = [name for name, m in model.named_modules() if isinstance(m, TWO_D)]
    if left:
        raise ValueError(f"{type(model).__name__}: {left[:5]} have no 3-D form here; MedNet-3D converts ResNet-style "
                         "timm networks (convolutions, batch norm, pooling)")
    return model


def init_i3d_kernels(model: nn.Module) -> nn.Module:
    """Random 3-D kernels for a network made from a config (no weights to inflate): timm's ResNet init (Kaiming
    normal, fan-out, ReLU) over the whole k×k×k kernel, as a 3-D ResNet trained from scratch starts. Inflating
    timm's random 2-D kernels instead gives each kernel 1/k of that variance (1/7 for the stem)."""
    for module in model.modules():
        if isinstance(module, Conv3dFrom2d) and module.conversion == "i3d":
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return model


def inflate_state_dict(state: dict, model: nn.Module) -> dict:
    """A 2-D network's state dict for its converted 3-D form: I3D kernels repeated along depth and divided by the
    kernel's depth; everything else (ACS and 2.5D weights, batch norm) as it is."""
    target = model.state_dict()
    out = {}
    for key, value in state.items():
        if key in target and value.ndim == 4 and target[key].ndim == 5:
            depth = target[key].shape[2]
            value = value.unsqueeze(2).repeat(1, 1, depth, 1, 1) / depth
        out[key] = value
    return out


__all__ = ["CONVERSIONS", "Conv3dFrom2d", "GlobalPool3d", "convert_to_3d", "inflate_state_dict", "init_i3d_kernels"]
