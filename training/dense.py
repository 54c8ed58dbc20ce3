"""The dense transfer task of the benchmark: DRIVE retinal vessel segmentation with `MedNetBackbone` and a light
feature-pyramid decoder, scored by Dice on the test images inside the field of view.

DRIVE has 20 training and 20 test fundus photographs (565×584). The images are normalised by the checkpoint's own
processor at full resolution, then resized to `size`×`size` (masks with nearest neighbour), so every
initialisation sees the same pixels.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoImageProcessor

from mednet_hf import MedNetBackbone
from mednet_hf.data import load_medical_dataset


class VesselSegmenter(nn.Module):
    """Backbone stages 1-4 → 1×1 lateral convolutions to `width` channels, summed at stride 4 → 3×3 conv → logits."""

    def __init__(self, backbone: MedNetBackbone, width: int = 64):
        super().__init__()
        self.backbone = backbone
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in backbone.channels)
        self.head = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 1, 1))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        maps = self.backbone(pixel_values).feature_maps
        size = maps[0].shape[-2:]
        fused = sum(F.interpolate(lat(m), size=size, mode="bilinear", align_corners=False) for lat, m in zip(self.lateral, maps))
        return F.interpolate(self.head(fused), size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)


def _tensors(split, processor, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images = processor([row for row in split["image"]], do_resize=False, do_center_crop=False, return_tensors="pt").pixel_values
    images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)

    def masks(column):
        stacked = torch.stack([torch.from_numpy(np.asarray(m, dtype=np.float32)) for m in split[column]])
        return F.interpolate(stacked[:, None], size=(size, size), mode="nearest")

    return images, masks("vessel_mask"), masks("fov_mask")


def dice(logits: torch.Tensor, vessels: torch.Tensor, fov: torch.Tensor) -> float:
    """Dice of the thresholded prediction over all test pixels inside the field of view."""
    predicted = (logits > 0).float() * fov
    truth = vessels * fov
    return float(2 * (predicted * truth).sum() / (predicted.sum() + truth.sum()).clamp_min(1))


def drive_dice(model: str, data_dir: str, *, size: int = 128, steps: int = 300, lr: float = 1e-3, seed: int = 0,
               batch_size: int = 4) -> dict:
    """Fine-tune `model` (a MedNet folder or id) with a vessel decoder on DRIVE's training images; Dice on the test
    images. Returns {"dice": ..., "steps": ..., "size": ...}."""
    torch.manual_seed(seed)
    drive = load_medical_dataset("drive", data_dir=data_dir)
    processor = AutoImageProcessor.from_pretrained(model)
    train_x, train_y, train_fov = _tensors(drive["train"], processor, size)
    test_x, test_y, test_fov = _tensors(drive["test"], processor, size)
    config = AutoConfig.from_pretrained(model, out_indices=[1, 2, 3, 4])
    net = VesselSegmenter(MedNetBackbone.from_pretrained(model, config=config))
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(steps):
        index = torch.randint(0, len(train_x), (batch_size,), generator=generator)
        x, y, fov = train_x[index], train_y[index], train_fov[index]
        if torch.rand((), generator=generator) < 0.5:  # flips keep vessels vessels
            x, y, fov = x.flip(-1), y.flip(-1), fov.flip(-1)
        logits = net(x)
        loss = F.binary_cross_entropy_with_logits(logits, y, weight=fov)
        probabilities = torch.sigmoid(logits) * fov
        loss = loss + 1 - 2 * (probabilities * y).sum() / (probabilities.sum() + (y * fov).sum()).clamp_min(1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        logits = torch.cat([net(test_x[i : i + batch_size]) for i in range(0, len(test_x), batch_size)])
    return {"dice": dice(logits, test_y, test_fov), "steps": steps, "size": size, "test_images": len(test_x)}


__all__ = ["VesselSegmenter", "dice", "drive_dice"]
