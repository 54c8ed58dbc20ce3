"""Batched pretraining augmentations on `(B, C, H, W)` images (uint8, or float in [0, 1]), on whatever device
the images are on, so that the GPU, not a CPU worker, makes the views.

Every random draw comes from the `torch.Generator` passed in, which `step_generator` seeds from (seed, step, rank):
a resumed run draws exactly the views an uninterrupted one would. Draws are per sample, and no operation reads a
value back to the host.
"""

import hashlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def step_generator(seed: int, step: int, rank: int, device: torch.device | str = "cpu", stream: str = "views") -> torch.Generator:
    """A generator on `device` seeded by a hash of (stream, seed, step, rank): independent across all four."""
    digest = hashlib.blake2b(f"{stream}/{seed}/{step}/{rank}".encode(), digest_size=8).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest, "little") >> 1)


def _uniform(generator: torch.Generator, shape, low, high, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, device=device)


def _chance(generator: torch.Generator, shape, p: float, device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=device) < p


# ---------------------------------------------------------------------------------------------------- geometry


def _crop_thetas(generator, shape, scale, max_rotation: float, device, flip_p: float = 0.5,
                 ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """`(*shape, 2, 3)` affine maps from output to input coordinates (both in [-1, 1]): a random resized crop
    (area fraction in `scale`, aspect ratio in `ratio`), a horizontal flip (with probability `flip_p`) and a
    rotation of up to `max_rotation` degrees (applied to half the views). The images are square (the cache and the
    processor center-crop them). The draws do not depend on `flip_p` or `ratio`."""
    area = _uniform(generator, shape, *scale, device)
    log_ratio = _uniform(generator, shape, math.log(ratio[0]), math.log(ratio[1]), device)
    half_w = (area * log_ratio.exp()).sqrt().clamp(max=1.0)
    half_h = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
    center_x = _uniform(generator, shape, -1.0, 1.0, device) * (1 - half_w)
    center_y = _uniform(generator, shape, -1.0, 1.0, device) * (1 - half_h)
    sign = torch.where(_chance(generator, shape, flip_p, device), -1.0, 1.0)
    angle = _uniform(generator, shape, -max_rotation, max_rotation, device) * _chance(generator, shape, 0.5, device)
    cos, sin = torch.cos(angle.deg2rad()), torch.sin(angle.deg2rad())
    row_x = torch.stack([cos * half_w * sign, -sin * half_h, center_x], dim=-1)
    row_y = torch.stack([sin * half_w * sign, cos * half_h, center_y], dim=-1)
    return torch.stack([row_x, row_y], dim=-2)


def _sample_views(images: torch.Tensor, thetas: torch.Tensor, size: int, black: torch.Tensor | None = None) -> torch.Tensor:
    """`images (B, C, H, W)`, `thetas (B, V, 2, 3)` → `(V, B, C, size, size)` in one `grid_sample`: the V grids of
    an image are stacked along the grid's height, so the source is never copied V times. The grid is what
    `F.affine_grid(align_corners=False)` gives, built by broadcasting: its batched 3×2 matmul is 15× slower on CPU.

    The one fill rule of every view, pretraining's and fine-tuning's: outside the image is black, the intensity
    convention's 0. `black` is that value in the images' own units, per channel (default 0: images in [0, 1]; for
    normalised `pixel_values`, `-mean / std`)."""
    batch, views = thetas.shape[:2]
    coords = (torch.arange(size, device=images.device, dtype=thetas.dtype) * 2 + 1) / size - 1  # pixel centres
    u, v = coords.view(1, 1, 1, size), coords.view(1, 1, size, 1)
    rows = thetas[..., None, None]  # (B, V, 2, 3, 1, 1)
    grid = torch.empty(batch, views, size, size, 2, device=images.device, dtype=thetas.dtype)
    for i in (0, 1):  # one full-size add per coordinate, written in place
        torch.add(rows[:, :, i, 0] * u, rows[:, :, i, 1] * v + rows[:, :, i, 2], out=grid[..., i])
    black = None if black is None else black.to(images.device, images.dtype).view(1, -1, 1, 1)
    source = images if black is None else images - black  # zeros padding then fills with `black`
    out = F.grid_sample(source, grid.view(batch, views * size, size, 2), mode="bilinear", padding_mode="zeros",
                        align_corners=False)
    if black is not None:
        out = out + black
    return out.view(batch, images.shape[1], views, size, size).permute(2, 0, 1, 3, 4)


@torch.no_grad()
def finetune_view(images: torch.Tensor, generator: torch.Generator, scale=(0.7, 1.0), max_rotation: float = 10.0,
                  flip: bool = False, ratio=(3 / 4, 4 / 3), black: torch.Tensor | None = None) -> torch.Tensor:
    """Fine-tuning's augmentation of a batch of processed `pixel_values (B, C, S, S)`: one random resized crop
    (area fraction in `scale`, aspect ratio in `ratio`) and, for half the images, a rotation of up to `max_rotation`
    degrees, back at the same size in one `grid_sample`; outside the image is black, as in pretraining (`black`: the
    normalised value of the intensity convention's 0, `-mean / std` per channel). No flip unless asked: left and
    right carry meaning in radiographs (the heart, a marker)."""
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"finetune_view takes square (B, C, S, S) pixel_values, got shape {tuple(images.shape)}")
    thetas = _crop_thetas(generator, (images.shape[0], 1), scale, max_rotation, images.device,
                          flip_p=0.5 if flip else 0.0, ratio=ratio)
    return _sample_views(images.float(), thetas, images.shape[-1], black)[0].to(images.dtype)


# ---------------------------------------------------------------------------------------------------- intensity


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1)


def _blur3(x: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
    """Separable 3-tap Gaussian blur with a per-sample side weight (0 leaves the image as it is), borders
    replicated: shifted multiply-adds along each axis, cheaper than a grouped convolution with one kernel per image."""
    side = _per_sample(side)
    for dim in (-1, -2):
        n = x.shape[dim]
        out = x * (1 - 2 * side)
        out.narrow(dim, 1, n - 1).addcmul_(x.narrow(dim, 0, n - 1), side)
        out.narrow(dim, 0, n - 1).addcmul_(x.narrow(dim, 1, n - 1), side)
        out.narrow(dim, 0, 1).addcmul_(x.narrow(dim, 0, 1), side)
        out.narrow(dim, n - 1, 1).addcmul_(x.narrow(dim, n - 1, 1), side)
        x = out
    return x


def photometric(x: torch.Tensor, generator: torch.Generator, gamma=(0.7, 1.5), contrast=(0.75, 1.25),
                brightness: float = 0.1, blur_sigma=(0.1, 1.0), noise_sigma: float = 0.02) -> torch.Tensor:
    """Gamma, contrast and brightness (scanners and protocols differ), then a Gaussian blur (half the images) and
    Gaussian noise (30%), each drawn per image of `x (N, C, H, W)`; the result stays in [0, 1]."""
    n, device = x.shape[0], x.device
    x = x.clamp(0, 1).pow_(_per_sample(_uniform(generator, n, *gamma, device)))
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x.sub_(mean).mul_(_per_sample(_uniform(generator, n, *contrast, device)))
    x.add_(mean + _per_sample(_uniform(generator, n, -brightness, brightness, device))).clamp_(0, 1)
    sigma = _uniform(generator, n, *blur_sigma, device)
    side = torch.exp(-0.5 / sigma**2)
    x = _blur3(x, side / (1 + 2 * side) * _chance(generator, n, 0.5, device))
    noise = torch.randn(x.shape, generator=generator, device=device)
    return x.add_(noise.mul_(_per_sample(noise_sigma * _chance(generator, n, 0.3, device)))).clamp_(0, 1)


# ---------------------------------------------------------------------------------------------------- Models Genesis


def bezier_intensity(x: torch.Tensor, generator: torch.Generator, apply: torch.Tensor, points: int = 64,
                     lut_size: int = 256) -> torch.Tensor:
    """Models Genesis' non-linear intensity transform, per image: a random cubic Bézier curve from (0, 0) to (1, 1),
    inverted for half the images, tabulated at `lut_size` levels and applied by linear interpolation in the table.
    Images where `apply` is false are returned as they are (identity table)."""
    n, device = x.shape[0], x.device
    t = torch.linspace(0, 1, points, device=device)
    p1, p2 = torch.rand(2, n, 2, generator=generator, device=device)

    def curve(i):  # x(t) is non-decreasing for control points in the unit square, so it needs no sorting
        return 3 * (1 - t) ** 2 * t * p1[:, i, None] + 3 * (1 - t) * t**2 * p2[:, i, None] + t**3

    xs, ys = curve(0), curve(1)
    ys = torch.where(_chance(generator, (n, 1), 0.5, device), ys.flip(-1), ys)
    levels = torch.linspace(0, 1, lut_size, device=device).expand(n, lut_size).contiguous()
    right = torch.searchsorted(xs, levels).clamp(1, points - 1)
    x0, x1 = xs.gather(1, right - 1), xs.gather(1, right)
    y0, y1 = ys.gather(1, right - 1), ys.gather(1, right)
    table = y0 + (y1 - y0) * ((levels - x0) / (x1 - x0).clamp_min(1e-6)).clamp(0, 1)
    table = torch.where(apply[:, None], table, levels)
    position = x.clamp(0, 1).flatten(1) * (lut_size - 1)
    low = position.long().clamp_(max=lut_size - 2)  # floor: positions are non-negative
    return torch.lerp(table.gather(1, low), table.gather(1, low + 1), position - low).view_as(x)


def local_shuffle(x: torch.Tensor, generator: torch.Generator, apply: torch.Tensor, block: int,
                  block_p: float = 0.5) -> torch.Tensor:
    """Shuffle the pixels (voxels) inside `block`-sided tiles (a random half of the tiles of the images where `apply`
    is true), the same permutation for every channel: texture must be restored from context. One batched `argsort`
    of random keys gives every tile its own permutation; kept tiles get sorted keys, i.e. the identity. Images
    `(N, C, H, W)` and volumes `(N, C, D, H, W)` alike."""
    n, c, *spatial = x.shape
    dims = len(spatial)
    counts = [side // block for side in spatial]
    tiles, cells = math.prod(counts), block**dims
    region = x[(..., *[slice(0, k * block) for k in counts])]
    split = [v for k in counts for v in (k, block)]  # (k1, b, k2, b, ...)
    order_in = [0, 1, *[2 + 2 * i for i in range(dims)], *[3 + 2 * i for i in range(dims)]]  # tiles first, then cells
    pixels = region.reshape(n, c, *split).permute(*order_in).reshape(n, c, tiles, cells)
    keys = torch.rand(n, tiles, cells, generator=generator, device=x.device)
    shuffled = _chance(generator, (n, tiles, 1), block_p, x.device) & apply[:, None, None]
    keys = torch.where(shuffled, keys, torch.arange(cells, device=x.device, dtype=keys.dtype))
    order = keys.argsort(dim=-1).unsqueeze(1).expand(n, c, tiles, cells)
    pixels = pixels.gather(-1, order)
    back = [0, 1] + [v for i in range(dims) for v in (2 + i, 2 + dims + i)]  # interleave tile and cell axes again
    out = x.clone()
    out[(..., *[slice(0, k * block) for k in counts])] = (
        pixels.reshape(n, c, *counts, *[block] * dims).permute(*back).reshape(n, c, *[k * block for k in counts])
    )
    return out


def _boxes(generator, shape, size_range, extent: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random intervals `[start, start + length)` inside `[0, extent)`, `length` uniform in `size_range` (pixels)."""
    low, high = size_range
    length = (low + torch.rand(shape, generator=generator, device=device) * (high - low + 1)).floor().clamp(1, extent)
    start = (torch.rand(shape, generator=generator, device=device) * (extent - length + 1)).floor()
    return start, start + length


def paint(x: torch.Tensor, generator: torch.Generator, apply: torch.Tensor, inpaint_p: float = 0.5,
          max_boxes: int = 3) -> torch.Tensor:
    """In-painting (1 to `max_boxes` boxes of 1/6 to 1/3 of the side replaced by noise) or out-painting (all but
    one box of 0.4 to 0.8 of the side replaced by noise), chosen per image and applied as one batched mask; boxes in
    2-D images and 3-D volumes alike."""
    n, _, *spatial = x.shape
    device, dims = x.device, len(spatial)

    def inside(intervals):  # each axis on its own, then one full-size AND
        mask = None
        for axis, (start, end) in enumerate(intervals):
            shape = [1, 1] + [1] * dims
            shape[2 + axis] = spatial[axis]
            coords = torch.arange(spatial[axis], device=device).view(shape)
            here = (coords >= start[(..., *[None] * dims)]) & (coords < end[(..., *[None] * dims)])
            mask = here if mask is None else mask & here
        return mask

    small = inside([_boxes(generator, (n, max_boxes), (side // 6 + 1, side // 3 + 1), side, device) for side in spatial])
    count = torch.randint(1, max_boxes + 1, (n, 1), generator=generator, device=device)
    used = torch.arange(max_boxes, device=device) < count
    inpaint = (small & used[(..., *[None] * dims)]).any(dim=1)
    keep = inside([_boxes(generator, (n, 1), (int(0.4 * side), int(0.8 * side)), side, device) for side in spatial])[:, 0]
    mode = _chance(generator, (n, *[1] * dims), inpaint_p, device)
    mask = torch.where(mode, inpaint, ~keep) & apply[(..., *[None] * dims)]
    noise = torch.rand(x.shape, generator=generator, device=device)
    return torch.where(mask[:, None], noise, x)


def genesis(x: torch.Tensor, generator: torch.Generator, block: int) -> torch.Tensor:
    """The 2-D Models Genesis corruption (Zhou et al., 2019), what the restoration objective undoes: a Bézier
    intensity curve (90% of the images), local pixel shuffling (50%) and in-/out-painting (90%)."""
    n, device = x.shape[0], x.device
    x = bezier_intensity(x, generator, _chance(generator, n, 0.9, device))
    x = local_shuffle(x, generator, _chance(generator, n, 0.5, device), block)
    return paint(x, generator, _chance(generator, n, 0.9, device))


# ---------------------------------------------------------------------------------------------------- all views


VIEWS = ("image", "global_crops", "local_crops", "genesis_input")


@dataclass(frozen=True)
class PretrainViews:
    """The views the objectives read (each objective names its own, `objectives.OBJECTIVES`), made in batches:

    - `image` `(B, C, S, S)`: a light view (crop + flip), for the supervised heads and as the restoration target;
    - `global_crops` `(2B, C, S, S)` and `local_crops` `(nB, C, S/2, S/2)`, crop-major (rows `kB:(k+1)B` are crop
      k of every image): strong multi-crop views (contrastive);
    - `genesis_input`: the Models Genesis corruption of `image` (restoration).

    All crops of one resolution come from one `grid_sample` over one batched affine grid.
    """

    image_size: int
    views: frozenset = frozenset(VIEWS)
    local_crops: int = 4

    def __post_init__(self):
        unknown = sorted(set(self.views) - set(VIEWS))
        if unknown or not self.views:
            raise ValueError(f"PretrainViews makes some of {VIEWS}, got {sorted(self.views)}")

    @property
    def local_size(self) -> int:
        return max(8, self.image_size // 2)

    @property
    def shuffle_block(self) -> int:
        return max(2, self.image_size // 10)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        if images.ndim == 5:
            return self._volume_views(images, generator)
        if images.ndim != 4:
            raise ValueError(f"PretrainViews takes a (B, C, H, W) batch, got shape {tuple(images.shape)}")
        x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        n, device = x.shape[0], x.device
        light = bool({"image", "genesis_input"} & self.views)  # the Genesis input is a corrupted light view
        crops = "global_crops" in self.views
        local = "local_crops" in self.views and self.local_crops > 0
        thetas = [_crop_thetas(generator, (n, 1), (0.6, 1.0), 0.0, device)] if light else []
        if crops:
            thetas.append(_crop_thetas(generator, (n, 2), (0.4, 1.0), 15.0, device))
        sampled = _sample_views(x, torch.cat(thetas, dim=1), self.image_size) if thetas else None
        views = {}
        if light:
            views["image"] = sampled[0]
        if crops:
            views["global_crops"] = photometric(sampled[-2:].flatten(0, 1), generator)
        if local:
            thetas = _crop_thetas(generator, (n, self.local_crops), (0.05, 0.4), 15.0, device)
            views["local_crops"] = photometric(_sample_views(x, thetas, self.local_size).flatten(0, 1), generator)
        if "genesis_input" in self.views:
            views["genesis_input"] = genesis(views["image"], generator, self.shuffle_block)
        return views

    def _volume_views(self, volumes: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Sub-volumes `(B, C, S, S, S)`, already cropped where they were drawn: the light view flips each along
        every axis with probability 1/2; the Genesis input is its 3-D corruption. Multi-crop views are 2-D only."""
        if {"global_crops", "local_crops"} & self.views:
            raise ValueError("the contrastive objective's multi-crop views are made for 2-D images only")
        x = volumes.float() / 255 if volumes.dtype == torch.uint8 else volumes.float()
        n, device = x.shape[0], x.device
        for axis in (2, 3, 4):
            flip = _chance(generator, (n, 1, 1, 1, 1), 0.5, device)
            x = torch.where(flip, x.flip(axis), x)
        views = {"image": x}
        if "genesis_input" in self.views:
            views["genesis_input"] = genesis(x, generator, self.shuffle_block)
        return views


__all__ = ["VIEWS", "PretrainViews", "bezier_intensity", "finetune_view", "genesis", "local_shuffle", "paint", "photometric", "step_generator"]
