"""Batched pretraining augmentations: shapes, range, determinism in (seed, step, rank), and what each Models Genesis
corruption must preserve. All on the CPU, the same code the GPU runs."""

import pytest
import torch

from mednet_hf.training.augment import (
    PretrainViews,
    bezier_intensity,
    finetune_view,
    local_shuffle,
    paint,
    step_generator,
)


def _images(n=6, channels=1, size=28, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _views(images, seed=0, step=0, rank=0, **plan) -> dict:
    return PretrainViews(images.shape[-1], **plan)(images, step_generator(seed, step, rank))


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 28), (1, 30)])
def test_every_view_has_its_shape_and_stays_in_the_unit_range(channels, size):
    n = 5
    views = _views(_images(n, channels, size), local_crops=3)
    expected = {
        "image": (n, channels, size, size),
        "global_crops": (2 * n, channels, size, size),
        "local_crops": (3 * n, channels, size // 2, size // 2),
        "genesis_input": (n, channels, size, size),
    }
    assert {k: tuple(v.shape) for k, v in views.items()} == expected
    for name, view in views.items():
        assert view.dtype == torch.float32 and view.device.type == "cpu", name
        assert 0 <= view.min() and view.max() <= 1 and torch.isfinite(view).all(), name


@pytest.mark.parametrize(
    "objectives,keys",
    [
        ({"supervised": {}}, {"image"}),
        ({"contrastive": {}}, {"global_crops", "local_crops"}),
        ({"restoration": {}}, {"image", "genesis_input"}),  # the light view is the target
        ({"supervised": {}, "contrastive": {"local_crops": 0}}, {"image", "global_crops"}),
    ],
)
def test_only_the_views_the_objectives_need_are_made(objectives, keys):
    from mednet_hf.training.objectives import pretrain_views

    images = _images(2)
    assert set(pretrain_views(images.shape[-1], objectives)(images, step_generator(0, 0, 0))) == keys


def test_views_are_a_function_of_seed_step_and_rank():
    images = _images()
    first, again = _views(images, seed=3, step=7, rank=1), _views(images, seed=3, step=7, rank=1)
    for name in first:
        assert torch.equal(first[name], again[name]), name
    for other in (_views(images, seed=3, step=8, rank=1), _views(images, seed=3, step=7, rank=0), _views(images, seed=4, step=7, rank=1)):
        for name in first:
            assert not torch.equal(first[name], other[name]), name


def test_uint8_and_unit_float_inputs_give_the_same_views():
    images = _images()
    from_uint8, from_float = _views(images), _views(images.float() / 255)
    for name in from_uint8:
        torch.testing.assert_close(from_uint8[name], from_float[name], rtol=0, atol=1e-6, msg=name)


def test_each_image_gets_its_own_crop():
    same = _images(1).expand(4, -1, -1, -1)
    views = _views(same)
    assert len({tuple(view.flatten().tolist()) for view in views["image"]}) == 4


def test_local_shuffle_permutes_pixels_inside_tiles_and_leaves_the_rest():
    x = torch.rand(4, 3, 10, 10)
    block = 3  # 3×3 tiles cover 9×9; the last row and column stay in place
    apply = torch.tensor([True, True, False, True])
    out = local_shuffle(x, step_generator(0, 0, 0), apply, block, block_p=1.0)
    assert torch.equal(out[2], x[2]) and torch.equal(out[..., 9:, :], x[..., 9:, :]) and torch.equal(out[..., 9], x[..., 9])

    def tiles(t):
        n, c = t.shape[:2]
        return t[..., :9, :9].reshape(n, c, 3, 3, 3, 3).permute(0, 1, 2, 4, 3, 5).reshape(n, c, 9, 9)

    assert torch.equal(tiles(out).sort(dim=-1).values, tiles(x).sort(dim=-1).values)  # each tile keeps its pixels
    assert not torch.equal(out[0], x[0])
    # One permutation per tile for all channels: channel 1 - channel 0 moves with the pixels.
    torch.testing.assert_close(tiles(out[:, 1:] - out[:, :1]).sort(-1).values, tiles(x[:, 1:] - x[:, :1]).sort(-1).values)


def test_bezier_curve_is_monotone_per_image_and_identity_where_not_applied():
    ramp = torch.linspace(0, 1, 100).view(1, 1, 10, 10).repeat(8, 1, 1, 1)
    apply = torch.tensor([True] * 7 + [False])
    out = bezier_intensity(ramp, step_generator(1, 0, 0), apply)
    torch.testing.assert_close(out[7], ramp[7], rtol=0, atol=1e-6)
    steps = out[:7].flatten(1).diff(dim=1)
    assert ((steps >= -1e-6).all(dim=1) | (steps <= 1e-6).all(dim=1)).all()  # increasing or inverted curve
    assert 0 <= out.min() and out.max() <= 1 and not torch.allclose(out[:7], ramp[:7], atol=1e-3)


def test_painting_replaces_whole_regions_only_where_applied():
    x = torch.full((16, 1, 28, 28), 2.0)  # outside [0, 1]: any painted pixel is noise in [0, 1)
    apply = torch.arange(16) % 4 != 0
    out = paint(x, step_generator(2, 0, 0), apply)
    painted = out < 1
    assert not painted[~apply].any()
    assert painted[apply].flatten(1).any(dim=1).all()
    assert (painted[apply].flatten(1).float().mean(dim=1) < 1).all()  # some of every image is kept


def test_step_generator_streams_are_independent():
    draws = {(seed, step, rank, stream): torch.rand(4, generator=step_generator(seed, step, rank, stream=stream))
             for seed in (0, 1) for step in (0, 1) for rank in (0, 1) for stream in ("views", "batch")}
    values = [tuple(v.tolist()) for v in draws.values()]
    assert len(set(values)) == len(values)


def _normalised(n=8, channels=1, size=28) -> torch.Tensor:
    return (_images(n, channels, size).float() / 255 - 0.5) / 0.25  # processor-like pixel_values


def test_finetune_view_keeps_shape_and_is_a_function_of_the_generator():
    x = _normalised(channels=3)
    a, b = finetune_view(x, step_generator(0, 5, 0)), finetune_view(x, step_generator(0, 5, 0))
    assert a.shape == x.shape and a.dtype == x.dtype and torch.equal(a, b)
    assert not torch.equal(a, finetune_view(x, step_generator(0, 6, 0)))
    assert (a - x).abs().flatten(1).amax(1).gt(0.1).all()  # every image is changed


def test_finetune_view_without_crop_or_rotation_is_the_identity_and_flips_only_when_asked():
    x = _normalised()
    same = finetune_view(x, step_generator(0, 0, 0), scale=(1.0, 1.0), max_rotation=0.0, ratio=(1.0, 1.0))
    torch.testing.assert_close(same, x, rtol=0, atol=1e-5)  # sampled at the pixel centres: no resampling blur
    flipped = finetune_view(x, step_generator(0, 0, 0), scale=(1.0, 1.0), max_rotation=0.0, ratio=(1.0, 1.0),
                            flip=True)
    mirrored = [torch.allclose(f, i.flip(-1), atol=1e-5) for f, i in zip(flipped, x)]
    kept = [torch.allclose(f, i, atol=1e-5) for f, i in zip(flipped, x)]
    assert all(m or k for m, k in zip(mirrored, kept)) and any(mirrored) and any(kept)


def test_finetune_view_refuses_non_square_input():
    with pytest.raises(ValueError, match="square"):
        finetune_view(torch.zeros(2, 1, 28, 30), step_generator(0, 0, 0))


def test_outside_a_rotated_view_is_black_in_pretraining_and_fine_tuning_alike():
    """One fill rule: the corners a rotation uncovers are the intensity convention's 0, in [0, 1] for pretraining's
    views and in normalised units (-mean / std) for fine-tuning's, so both models see the same black."""
    from mednet_hf.configuration_mednet import VARIANTS
    from mednet_hf.training.augment import _sample_views

    mean, std = torch.tensor(VARIANTS["gray"]["image_mean"]), torch.tensor(VARIANTS["gray"]["image_std"])
    white = torch.ones(4, 1, 28, 28)
    quarter_turn = torch.tensor([[0.7071, -0.7071, 0.0], [0.7071, 0.7071, 0.0]]).expand(4, 1, 2, 3)  # 45°, no crop
    pretraining = _sample_views(white, quarter_turn, 28)[0]
    assert pretraining[:, :, 0, 0].max() == 0.0 and pretraining[:, :, 14, 14].min() == 1.0
    normalised = (white - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    generator = step_generator(0, 0, 0)
    tuned = finetune_view(normalised, generator, scale=(1.0, 1.0), max_rotation=45.0, ratio=(1.0, 1.0),
                          black=-mean / std)
    back = tuned * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1)  # to the [0, 1] of the convention
    rotated = (back[:, 0] < 0.999).flatten(1).any(1)  # half the images are rotated at all
    assert rotated.any()
    corners = back[rotated][:, 0, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert corners.min() >= -1e-6 and (corners < 0.05).any()  # black (bilinear edges blend a little white in)
