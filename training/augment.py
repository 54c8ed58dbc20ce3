"""Medical augmentations for pretraining, on `(C, H, W)` tensors in [0, 1] (the intensity convention's range).

Randomness comes from a generator seeded by (recipe seed, epoch, example index), so a resumed run draws exactly
the views an uninterrupted run would, whatever the loader prefetched before a checkpoint.
"""

import torch
import torch.nn.functional as F
from torchvision.transforms import v2


class RandomIntensity:
    """Gamma, contrast and brightness changes, as scanners and protocols differ; stays in [0, 1]."""

    def __init__(self, gamma=(0.7, 1.5), contrast=(0.75, 1.25), brightness=0.1):
        self.gamma, self.contrast, self.brightness = gamma, contrast, brightness

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        u = torch.rand(3)
        x = x.clamp(0, 1) ** (self.gamma[0] + (self.gamma[1] - self.gamma[0]) * u[0])
        mean = x.mean()
        x = (x - mean) * (self.contrast[0] + (self.contrast[1] - self.contrast[0]) * u[1]) + mean
        return (x + (2 * u[2] - 1) * self.brightness).clamp(0, 1)


def medical_view(size: int, scale: tuple[float, float], strong: bool) -> v2.Compose:
    steps = [v2.RandomResizedCrop(size, scale=scale, antialias=True), v2.RandomHorizontalFlip()]
    if strong:
        steps += [
            v2.RandomApply([v2.RandomRotation(15)], p=0.5),
            RandomIntensity(),
            v2.RandomApply([v2.GaussianBlur(3, sigma=(0.1, 1.0))], p=0.5),
            v2.RandomApply([v2.GaussianNoise(sigma=0.02, clip=True)], p=0.3),
        ]
    return v2.Compose(steps)


# ---------------------------------------------------------------------------------------------------- Models Genesis


def _bezier_intensity(x: torch.Tensor) -> torch.Tensor:
    """Models Genesis' non-linear intensity transform: a random monotone Bézier curve from (0, 0) to (1, 1)."""
    p1, p2 = torch.rand(2), torch.rand(2)
    t = torch.linspace(0, 1, 256)
    curve = [(1 - t) ** 3 * 0 + 3 * (1 - t) ** 2 * t * p1[i] + 3 * (1 - t) * t**2 * p2[i] + t**3 for i in range(2)]
    xs, order = torch.sort(curve[0])
    ys = curve[1][order]
    if torch.rand(()) < 0.5:
        ys = torch.flip(ys, [0])  # the inverted curve
    index = torch.searchsorted(xs, x.clamp(0, 1).contiguous()).clamp(1, len(xs) - 1)
    x0, x1, y0, y1 = xs[index - 1], xs[index], ys[index - 1], ys[index]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0).clamp_min(1e-6)


def _local_shuffle(x: torch.Tensor) -> torch.Tensor:
    """Shuffle the pixels inside small random blocks: texture must be restored from context."""
    _, h, w = x.shape
    out = x.clone()
    for _ in range(max(1, h * w // 64)):
        bh, bw = (int(v) for v in torch.randint(1, max(2, h // 8) + 1, (2,)))
        top, left = int(torch.randint(0, h - bh + 1, ())), int(torch.randint(0, w - bw + 1, ()))
        block = out[:, top : top + bh, left : left + bw].reshape(x.shape[0], -1)
        out[:, top : top + bh, left : left + bw] = block[:, torch.randperm(block.shape[1])].reshape(x.shape[0], bh, bw)
    return out


def _paint(x: torch.Tensor) -> torch.Tensor:
    """In-painting (random boxes replaced by noise) or out-painting (all but one box replaced by noise)."""
    _, h, w = x.shape
    if torch.rand(()) < 0.5:
        out = x.clone()
        for _ in range(int(torch.randint(1, 4, ()))):
            bh, bw = int(torch.randint(h // 6 + 1, h // 3 + 2, ())), int(torch.randint(w // 6 + 1, w // 3 + 2, ()))
            top, left = int(torch.randint(0, h - bh + 1, ())), int(torch.randint(0, w - bw + 1, ()))
            out[:, top : top + bh, left : left + bw] = torch.rand(x.shape[0], bh, bw)
        return out
    out = torch.rand_like(x)
    bh, bw = int(torch.randint(int(0.4 * h), int(0.8 * h) + 1, ())), int(torch.randint(int(0.4 * w), int(0.8 * w) + 1, ()))
    top, left = int(torch.randint(0, h - bh + 1, ())), int(torch.randint(0, w - bw + 1, ()))
    out[:, top : top + bh, left : left + bw] = x[:, top : top + bh, left : left + bw]
    return out


def genesis(x: torch.Tensor) -> torch.Tensor:
    """The 2-D Models Genesis corruption (Zhou et al., 2019): what the restoration objective undoes."""
    if torch.rand(()) < 0.9:
        x = _bezier_intensity(x)
    if torch.rand(()) < 0.5:
        x = _local_shuffle(x)
    if torch.rand(()) < 0.9:
        x = _paint(x)
    return x


# ---------------------------------------------------------------------------------------------------- per example


class PretrainViews:
    """What each objective needs from one example:

    - `image`: a light view (crop + flip) for the supervised heads;
    - `global_crops` `(2, C, S, S)` and `local_crops` `(n, C, S/2, S/2)`: strong multi-crop views (contrastive);
    - `genesis_input`, `genesis_target`: a corrupted view and the view it came from (restoration).
    """

    def __init__(self, image_size: int, objectives: dict, seed: int):
        self.seed, self.epoch = seed, 0
        self.objectives = objectives
        self.light = medical_view(image_size, (0.6, 1.0), strong=False)
        self.global_view = medical_view(image_size, (0.4, 1.0), strong=True)
        self.local_view = medical_view(max(8, image_size // 2), (0.05, 0.4), strong=True)
        self.local_crops = int(objectives.get("contrastive", {}).get("local_crops", 4))

    def __call__(self, image: torch.Tensor, index: int) -> dict:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + self.epoch * 7_919 + int(index)) % (2**63))
            views = {"image": self.light(image)}
            if "contrastive" in self.objectives:
                views["global_crops"] = torch.stack([self.global_view(image) for _ in range(2)])
                views["local_crops"] = torch.stack([self.local_view(image) for _ in range(self.local_crops)])
            if "restoration" in self.objectives:
                target = views["image"]
                views["genesis_input"], views["genesis_target"] = genesis(target), target
        return views


__all__ = ["PretrainViews", "RandomIntensity", "genesis", "medical_view"]
