"""Pretraining objectives on the features of the shared MedNet backbone, and `PretrainModel`, which runs the backbone
once per crop resolution and weights and sums the objectives' losses.

Every parameter takes part in every step's loss (supervised heads through a masked loss, not a branch on the batch's
content), so DDP runs with `find_unused_parameters=False` and nothing reads a value back to the host.
"""

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mednet_hf import MedNetModel

from .augment import PretrainViews


class Objective(nn.Module):
    """What `PretrainModel` asks of an objective: the views it reads (`reads`, names of `augment.VIEWS`) and which
    of them go through the backbone (`encodes`); `build` makes it from the recipe's options, `loss` scores a step
    from the encoded views (`{name: (feature map, pooled)}`) and the batch (every view made, `label`, `source`).
    A new objective is one subclass plus one entry in `OBJECTIVES`."""

    reads: tuple[str, ...] = ()
    encodes: tuple[str, ...] = ()

    @classmethod
    def views(cls, options: dict) -> tuple[str, ...]:
        return cls.reads

    @classmethod
    def build(cls, config, heads: list, reduction: int, **options) -> "Objective":
        raise NotImplementedError

    def loss(self, encoded: dict, batch: dict) -> torch.Tensor:
        raise NotImplementedError


class SupervisedObjective(Objective):
    """The MedNet recipe: one linear head per labelled source, cross-entropy on that source's rows of the mixed
    batch, averaged over the sources present with their `loss_weight`s. Every head sees every row and the loss masks
    out the others, so the graph is the same whatever sources a batch holds."""

    reads = encodes = ("image",)

    @classmethod
    def build(cls, config, heads, reduction, **options):
        return cls(config.num_features, heads)

    def loss(self, encoded, batch):
        return self(encoded["image"][1], batch["label"], batch["source"])

    def __init__(self, num_features: int, heads: list[tuple[int, int, float]]):
        """`heads`: (source index, number of classes, loss weight) for each labelled source."""
        super().__init__()
        self.register_buffer("sources", torch.tensor([source for source, _, _ in heads]), persistent=False)
        self.register_buffer("loss_weights", torch.tensor([weight for _, _, weight in heads]), persistent=False)
        self.heads = nn.ModuleList(nn.Linear(num_features, classes) for _, classes, _ in heads)

    def forward(self, pooled: torch.Tensor, labels: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        mask = (sources[None] == self.sources[:, None]) & (labels[None] >= 0)  # (heads, B)
        per_head = []
        for head, rows in zip(self.heads, mask):
            # Rows of other sources get class 0 as a stand-in target; their loss is masked out below.
            loss = F.cross_entropy(head(pooled).float(), torch.where(rows, labels, 0), reduction="none")
            per_head.append((loss * rows).sum())
        counts = mask.sum(dim=1)
        present = self.loss_weights * (counts > 0)
        total = (present * torch.stack(per_head) / counts.clamp_min(1)).sum()
        return total / present.sum().clamp_min(1e-12)  # no labelled row: total is 0 and so is the loss


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """SwAV's online equipartition: soft cluster codes `(B, K)` whose clusters are used equally across the whole
    batch, all processes together (sums are all-reduced)."""
    q = torch.exp(scores.float() / epsilon).t()  # (K, B)
    distributed = dist.is_available() and dist.is_initialized()
    world = dist.get_world_size() if distributed else 1
    total_batch, prototypes = q.shape[1] * world, q.shape[0]

    def all_reduce(t):
        if distributed:
            dist.all_reduce(t)
        return t

    q /= all_reduce(q.sum())
    for _ in range(iterations):
        q /= all_reduce(q.sum(dim=1, keepdim=True))
        q /= prototypes
        q /= q.sum(dim=0, keepdim=True)
        q /= total_batch
    return (q * total_batch).t()


class ContrastiveObjective(Objective):
    """Self-supervised contrastive learning with online clustering (SwAV, Caron et al. 2020) and multi-crop: the
    cluster code of each global crop is predicted from every other crop."""

    @classmethod
    def views(cls, options):
        return ("global_crops", "local_crops") if int(options.get("local_crops", 4)) else ("global_crops",)

    encodes = ("global_crops", "local_crops")

    @classmethod
    def build(cls, config, heads, reduction, **options):
        return cls(config.num_features, **{k: v for k, v in options.items() if k != "local_crops"})

    def loss(self, encoded, batch):
        crops = encoded["global_crops"][1]
        if "local_crops" in encoded:
            crops = torch.cat([crops, encoded["local_crops"][1]])
        return self(crops, batch["global_crops"].shape[0] // 2)

    def __init__(self, num_features: int, prototypes: int = 128, dim: int = 64, temperature: float = 0.1,
                 epsilon: float = 0.05, sinkhorn_iterations: int = 3, **_):
        super().__init__()
        self.projector = nn.Sequential(nn.Linear(num_features, 256), nn.GELU(), nn.Linear(256, dim))
        self.prototypes = nn.Linear(dim, prototypes, bias=False)
        self.temperature, self.epsilon, self.iterations = temperature, epsilon, sinkhorn_iterations

    def forward(self, crops: torch.Tensor, batch: int) -> torch.Tensor:
        """`crops`: pooled features of every crop, crop-major `(V * batch, F)`, the 2 global crops first."""
        with torch.no_grad():
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        scores = self.prototypes(F.normalize(self.projector(crops), dim=1)).float().view(-1, batch, self.prototypes.out_features)
        log_p = F.log_softmax(scores / self.temperature, dim=-1)
        views = scores.shape[0]
        loss = 0.0
        for k in (0, 1):
            codes = sinkhorn(scores[k].detach(), self.epsilon, self.iterations)
            cross = -(codes * log_p).sum(-1).mean(-1)  # (V,): predicting crop k's codes from each crop
            loss = loss + (cross.sum() - cross[k]) / (views - 1)
        return loss / 2


class RestorationObjective(Objective):
    """Models Genesis (Zhou et al., 2019), in 2-D and, for MedNet-3D, in 3-D: a light decoder restores the original
    view from the backbone's last feature map of a corrupted one (non-linear intensity, local shuffling, in-/out-
    painting); MSE loss."""

    reads = ("image", "genesis_input")  # the light view is the target only: it goes through no backbone here
    encodes = ("genesis_input",)

    @classmethod
    def build(cls, config, heads, reduction, **options):
        return cls(config.num_features, config.num_channels, reduction, spatial_dims=config.spatial_dims, **options)

    def loss(self, encoded, batch):
        return self(encoded["genesis_input"][0], batch["image"])

    def __init__(self, num_features: int, out_channels: int, reduction: int, width: int = 64, spatial_dims: int = 2, **_):
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.mode = "bilinear" if spatial_dims == 2 else "trilinear"
        layers, channels = [conv(num_features, width, 1), nn.GELU()], width
        for _ in range(max(1, int(round(math.log2(reduction))))):
            out = max(16, channels // 2)
            layers += [nn.Upsample(scale_factor=2, mode=self.mode, align_corners=False), conv(channels, out, 3, padding=1), nn.GELU()]
            channels = out
        layers.append(conv(channels, out_channels, 1))
        self.decoder = nn.Sequential(*layers)

    def forward(self, feature_map: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        restored = self.decoder(feature_map)
        restored = F.interpolate(restored, size=target.shape[2:], mode=self.mode, align_corners=False)
        return F.mse_loss(torch.sigmoid(restored.float()), target.float())


# The registry: a recipe's `objectives:` names these. A new objective is one `Objective` subclass plus one entry.
OBJECTIVES: dict[str, type[Objective]] = {
    "supervised": SupervisedObjective,
    "contrastive": ContrastiveObjective,
    "restoration": RestorationObjective,
}
FULL_SIZE = ("image", "global_crops", "genesis_input")  # views at the run's resolution (local crops are half)


def pretrain_views(image_size: int, objectives: dict) -> PretrainViews:
    """The views a recipe's objectives read, as one `PretrainViews`."""
    views = frozenset(v for name, options in objectives.items() for v in OBJECTIVES[name].views(options))
    local = int(objectives.get("contrastive", {}).get("local_crops", 4))
    return PretrainViews(image_size, views=views, local_crops=local)


class PretrainModel(nn.Module):
    """The backbone plus one head per objective. `forward(views)` takes `PretrainViews`' output plus `label` and
    `source` `(B,)`, and returns each weighted loss and their sum (`loss`).

    The views are grouped by resolution, as in DINO's MultiCropWrapper: one backbone call for every full-size view
    the objectives encode (supervised view, global crops, Models Genesis input, concatenated on the batch axis) and
    one for the local crops. BatchNorm therefore normalises each call over all of its views together.
    """

    def __init__(self, backbone: MedNetModel, objectives: dict, heads: list[tuple[int, int, float]], channels_last: bool):
        super().__init__()
        config = backbone.config
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(config.image_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.image_std).view(1, -1, 1, 1), persistent=False)
        self.channels_last = channels_last
        self.weights = {name: float(options.get("weight", 1.0)) for name, options in objectives.items()}
        reduction = backbone.get_encoder().feature_info[-1]["reduction"]
        self.objectives = nn.ModuleDict({
            name: OBJECTIVES[name].build(config, heads, reduction, **{k: v for k, v in options.items() if k != "weight"})
            for name, options in objectives.items()
        })
        encoded = {view for objective in self.objectives.values() for view in objective.encodes}
        self.full_size = [view for view in FULL_SIZE if view in encoded]
        self.local = "local_crops" in encoded

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1, *[1] * (x.ndim - 2))  # images or volumes
        x = (x - self.mean.view(shape)) / self.std.view(shape)  # the variant's normalisation, after augmenting in [0, 1]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last if x.ndim == 4 else torch.channels_last_3d)
        out = self.backbone(x)
        return out.last_hidden_state, out.pooler_output

    def forward(self, views: dict) -> dict:
        names = [name for name in self.full_size if name in views]
        feature_map, pooled = self.encode(torch.cat([views[name] for name in names]))
        sizes = [views[name].shape[0] for name in names]
        encoded = {name: pair for name, pair in zip(names, zip(feature_map.split(sizes), pooled.split(sizes)))}
        if self.local and "local_crops" in views:
            encoded["local_crops"] = self.encode(views["local_crops"])
        losses = {name: objective.loss(encoded, views) for name, objective in self.objectives.items()}
        losses["loss"] = sum(self.weights[name] * loss for name, loss in losses.items())
        return losses
