"""Images/s of the data path on real OrganAMNIST images: decode only (datasets → PIL → numpy) beside the full
`with_transform` + MedNet processor path (both backends) at 28 and 224 px, all measured in this one run.

    python benchmarks/data_throughput.py [--images 2048] [--batch-size 64]
"""

import argparse
import os
import time
from pathlib import Path

import numpy as np

from mednet_hf import MedNetImageProcessor, MedNetImageProcessorPil
from mednet_hf.data import load_medical_dataset, medical_transform

DATA_DIR = Path(os.environ.get("MEDNET_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


def rate(fn, images: int, repeats: int = 3) -> float:
    """Best of `repeats` (this machine is noisy): images per second."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return images / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    split = load_medical_dataset("medmnist", "organamnist", size=28, data_dir=DATA_DIR / "medmnist")["validation"]
    split = split.select(range(args.images))
    batches = range(0, args.images, args.batch_size)

    def decode_only():
        for start in batches:
            [np.asarray(image) for image in split[start : start + args.batch_size]["image"]]

    rows = [("decode only (baseline)", "-", rate(decode_only, args.images))]
    for size in (28, 224):
        for cls in (MedNetImageProcessor, MedNetImageProcessorPil):
            transformed = split.with_transform(medical_transform(cls(image_size=size), split.features))

            def full_path(transformed=transformed):
                for start in batches:
                    transformed[start : start + args.batch_size]["pixel_values"]

            rows.append((f"with_transform + {cls.__name__}", size, rate(full_path, args.images)))
    baseline = rows[0][2]
    print(f"OrganAMNIST validation, {args.images} images, batches of {args.batch_size}, {os.cpu_count()} CPU(s)")
    print(f"{'path':<52} {'px':>4} {'images/s':>10} {'vs decode':>10}")
    for name, size, value in rows:
        print(f"{name:<52} {size:>4} {value:>10.0f} {value / baseline:>9.2f}x")


if __name__ == "__main__":
    main()
