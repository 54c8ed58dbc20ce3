"""Pretraining objectives. Each is a module with its own head that turns a batch of views into a loss, given
`encode(x) -> (feature_map, pooled)` of the shared MedNet backbone; `PretrainModel` weights and sums them."""

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mednet_hf import MedNetModel


class SupervisedObjective(nn.Module):
    """The MedNet recipe: one linear head per labelled source, cross-entropy on that source's examples of the mixed
    batch, averaged over the sources present with their `loss_weight`s."""

    def __init__(self, num_features: int, heads: list[tuple[int, int, float]]):
        """`heads`: (source index, number of classes, loss weight) for each labelled source."""
        super().__init__()
        self.sources = [source for source, _, _ in heads]
        self.loss_weights = [weight for _, _, weight in heads]
        self.heads = nn.ModuleList(nn.Linear(num_features, classes) for _, classes, _ in heads)

    def forward(self, encode, batch: dict) -> torch.Tensor:
        _, pooled = encode(batch["image"])
        total, weights = pooled.sum() * 0.0, 0.0  # keeps the graph when no labelled example is in the batch
        for source, weight, head in zip(self.sources, self.loss_weights, self.heads):
            mask = (batch["source"] == source) & (batch["label"] >= 0)
            if mask.any():
                total = total + weight * F.cross_entropy(head(pooled[mask]).float(), batch["label"][mask])
                weights += weight
        return total / weights if weights else total


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


class ContrastiveObjective(nn.Module):
    """Self-supervised contrastive learning with online clustering (SwAV, Caron et al. 2020) and multi-crop: the
    cluster code of each global crop is predicted from every other crop."""

    def __init__(self, num_features: int, prototypes: int = 128, dim: int = 64, temperature: float = 0.1,
                 epsilon: float = 0.05, sinkhorn_iterations: int = 3, **_):
        super().__init__()
        self.projector = nn.Sequential(nn.Linear(num_features, 256), nn.GELU(), nn.Linear(256, dim))
        self.prototypes = nn.Linear(dim, prototypes, bias=False)
        self.temperature, self.epsilon, self.iterations = temperature, epsilon, sinkhorn_iterations

    def forward(self, encode, batch: dict) -> torch.Tensor:
        with torch.no_grad():
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        crops = list(batch["global_crops"].unbind(1)) + list(batch["local_crops"].unbind(1))
        scores = [self.prototypes(F.normalize(self.projector(encode(c)[1]), dim=1)).float() for c in crops]
        loss = 0.0
        for k in (0, 1):
            codes = sinkhorn(scores[k].detach(), self.epsilon, self.iterations)
            others = [v for v in range(len(scores)) if v != k]
            loss = loss + sum(-(codes * F.log_softmax(scores[v] / self.temperature, dim=1)).sum(1).mean() for v in others) / len(others)
        return loss / 2


class RestorationObjective(nn.Module):
    """Models Genesis in 2-D (Zhou et al., 2019): a light decoder restores the original view from the backbone's
    last feature map of a corrupted one (non-linear intensity, local shuffling, in-/out-painting); MSE loss."""

    def __init__(self, num_features: int, out_channels: int, reduction: int, width: int = 64, **_):
        super().__init__()
        layers, channels = [nn.Conv2d(num_features, width, 1), nn.GELU()], width
        for _ in range(max(1, int(round(math.log2(reduction))))):
            out = max(16, channels // 2)
            layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), nn.Conv2d(channels, out, 3, padding=1), nn.GELU()]
            channels = out
        layers.append(nn.Conv2d(channels, out_channels, 1))
        self.decoder = nn.Sequential(*layers)

    def forward(self, encode, batch: dict) -> torch.Tensor:
        target = batch["genesis_target"]
        restored = self.decoder(encode(batch["genesis_input"])[0])
        restored = F.interpolate(restored, size=target.shape[-2:], mode="bilinear", align_corners=False)
        return F.mse_loss(torch.sigmoid(restored.float()), target.float())


class PretrainModel(nn.Module):
    """The backbone plus one head per objective; `forward(batch)` returns each weighted loss and their sum."""

    def __init__(self, backbone: MedNetModel, objectives: dict, heads: list[tuple[int, int, float]], channels_last: bool):
        super().__init__()
        config = backbone.config
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(config.image_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.image_std).view(1, -1, 1, 1), persistent=False)
        self.channels_last = channels_last
        self.weights = {name: float(options.get("weight", 1.0)) for name, options in objectives.items()}
        reduction = backbone.encoder.feature_info[-1]["reduction"]
        built = {}
        for name, options in objectives.items():
            options = {k: v for k, v in options.items() if k != "weight"}
            if name == "supervised":
                built[name] = SupervisedObjective(config.num_features, heads)
            elif name == "contrastive":
                built[name] = ContrastiveObjective(config.num_features, **options)
            elif name == "restoration":
                built[name] = RestorationObjective(config.num_features, config.num_channels, reduction, **options)
        self.objectives = nn.ModuleDict(built)

    def encode(self, x: torch.Tensor):
        x = (x - self.mean) / self.std  # the variant's normalisation, after augmenting in [0, 1]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.backbone(x)
        return out.last_hidden_state, out.pooler_output

    def forward(self, batch: dict) -> dict:
        losses = {name: objective(self.encode, batch) for name, objective in self.objectives.items()}
        losses["loss"] = sum(self.weights[name] * loss for name, loss in losses.items())
        return losses
