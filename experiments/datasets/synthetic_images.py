"""Generated images: one object on a cluttered, noisy background, drawn from shared primitives.

8 shapes, 6 oriented gratings (textures) and 6 hues (`N_SHAPES`, `N_TEXTURES`, `N_COLOURS`): a
`render` call paints each image's object (a shape filled with texture x colour) at a random place
and scale on a random background. Two labelled tasks are built on it for the transfer experiment's
quick profile, `source_task` (96 classes: shape, texture, warm or cool hue; the pretraining task)
and `target_task` (12 classes: shape, one of two neighbouring hues; the fine-tuning task); the
patch experiment's quick profile renders its own 10-class base set with `render`.

Everything is deterministic in its arguments (a seeded ``torch.Generator``, on the CPU) and
independent of the global RNG.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from experiments.datasets.data import generated_once

GENERATOR_VERSION = 3  # bump when the image generator changes: it is part of the pretraining key

N_SHAPES, N_TEXTURES, N_COLOURS = 8, 6, 6
# Source classes: (shape, texture, colour half), the half being hues 0-2 (red to green) or 3-5
# (cyan to magenta); the colour within its half is a nuisance.
SOURCE_CLASSES = N_SHAPES * N_TEXTURES * 2
# Target classes: (shape, colour) pairs; every shape comes in two colours and every colour
# belongs to two shapes, so neither the shape nor the colour alone names the class.
# The two colours of a shape are neighbours on the colour wheel (60 degrees apart, each image's hue
# jittered by up to HUE_JITTER turns): telling them apart needs fine colour features.
TARGET_PAIRS = tuple((s, c) for s in range(N_COLOURS) for c in (s, (s + 1) % N_COLOURS))
HUE_JITTER = 0.06
TARGET_CLASSES = len(TARGET_PAIRS)


def _shape_distance(index: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """Signed distance-like field of each image's shape (negative inside), in object units."""
    au, av = u.abs(), v.abs()
    r = torch.sqrt(u * u + v * v)
    square = torch.maximum(au, av)
    d = torch.stack([
        r - 1.0,  # disc
        square - 0.85,  # square
        au + av - 1.15,  # diamond
        torch.maximum(torch.minimum(au, av) - 0.33, square - 1.0),  # plus
        (r - 0.68).abs() - 0.3,  # ring
        torch.maximum(v - 0.75, (1.8 * au - v - 0.95) / 2.06),  # triangle, apex up
        (square - 0.7).abs() - 0.22,  # square frame
        torch.maximum(torch.minimum((u - v).abs(), (u + v).abs()) / 1.41 - 0.25, r - 1.05),  # x
    ])
    return d.gather(0, index.view(1, -1, 1, 1).expand(1, *u.shape)).squeeze(0)


def _primitives(seed: int) -> tuple[Tensor, Tensor]:
    """The world both tasks share: grating (orientation, frequency) per texture, hue per colour."""
    g = torch.Generator().manual_seed(10_000 + seed)
    angles = torch.arange(N_TEXTURES) * math.pi / N_TEXTURES
    freqs = 0.16 + 0.12 * torch.rand(N_TEXTURES, generator=g)  # cycles per pixel at side 16
    textures = torch.stack([angles, freqs], 1)
    hues = torch.arange(N_COLOURS) / N_COLOURS  # saturated, evenly spaced hues
    return textures, hues


def _hue_to_rgb(hue: Tensor) -> Tensor:
    """RGB (..., 3) of fully saturated, fully bright colours with hue (...,) in turns."""
    k = (torch.tensor([5.0, 3.0, 1.0]) + 6 * hue.unsqueeze(-1)) % 6
    return 1 - torch.clamp(torch.minimum(k, 4 - k), 0, 1)  # HSV with s = v = 1


def render(shapes: Tensor, textures: Tensor, colours: Tensor, size: int, generator: torch.Generator,
           world_seed: int) -> Tensor:
    """Images (uint8 N x 3 x size x size) of one object each: shape, filled with texture x colour.

    The object's hue is jittered; it sits at a random place and scale on a background of a faint
    random grating in a random dull colour with two random colour blobs, and every pixel gets
    Gaussian noise.
    """
    g, n = generator, len(shapes)
    bank, palette = _primitives(world_seed)
    s = size / 16  # geometry is stated for side 16 and scales with it

    def uniform(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(n, *shape, generator=g)

    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    yy, xx = coords.view(1, -1, 1), coords.view(1, 1, -1)
    cx, cy = (uniform(-2.5, 2.5).mul(s).view(n, 1, 1) for _ in range(2))
    radius = uniform(4.2, 6.0).mul(s).view(n, 1, 1)
    angle = uniform(-0.35, 0.35).view(n, 1, 1)  # a small rotation
    dx, dy = (xx - cx) / radius, (yy - cy) / radius
    u = dx * torch.cos(angle) + dy * torch.sin(angle)
    v = -dx * torch.sin(angle) + dy * torch.cos(angle)
    edge = 0.6 / radius  # about 0.6 pixel of soft edge
    mask = torch.sigmoid(-_shape_distance(shapes, u, v) / edge).unsqueeze(1)  # n 1 H W

    def grating(theta, freq):
        phase = uniform(0, 2 * math.pi).view(n, 1, 1)
        t, f = theta.view(n, 1, 1), (freq / s).view(n, 1, 1)
        return torch.cos(2 * math.pi * f * (xx * torch.cos(t) + yy * torch.sin(t)) + phase)

    tex = grating(bank[textures, 0], bank[textures, 1]).unsqueeze(1)
    hue = palette[colours] + uniform(-HUE_JITTER, HUE_JITTER)
    obj = _hue_to_rgb(hue).view(n, 3, 1, 1) * (0.7 + 0.3 * tex)

    bg_tex = grating(uniform(0, math.pi), uniform(0.1, 0.3)).unsqueeze(1)
    background = uniform(0.15, 0.6, 3).view(n, 3, 1, 1) * (0.85 + 0.15 * bg_tex)
    for _ in range(2):
        bx, by = (uniform(-8, 8).mul(s).view(n, 1, 1) for _ in range(2))
        sigma = uniform(1.5, 3.0).mul(s).view(n, 1, 1)
        blob = torch.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * sigma**2)).unsqueeze(1)
        background = background + 0.5 * uniform(0, 1, 3).view(n, 3, 1, 1) * blob

    image = mask * obj + (1 - mask) * background + 0.08 * torch.randn(n, 3, size, size, generator=g)
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def source_task(n: int, seed: int, size: int = 16, world_seed: int = 0) -> tuple[Tensor, Tensor]:
    """The pretraining task: n images, label = (shape * N_TEXTURES + texture) * 2 + colour half
    (96 classes).

    Deterministic in (n, seed, size, world_seed); ``world_seed`` fixes the primitives.
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, SOURCE_CLASSES, (n,), generator=g)
    half = N_COLOURS // 2
    colours = (y % 2) * half + torch.randint(0, half, (n,), generator=g)
    return render(y // (2 * N_TEXTURES), (y // 2) % N_TEXTURES, colours, size, g, world_seed), y


@generated_once
def target_task(n: int, seed: int, size: int = 16, world_seed: int = 0) -> tuple[Tensor, Tensor]:
    """The fine-tuning task: n images, label = index of (shape, colour) in TARGET_PAIRS (12 classes).

    Same primitives as `source_task` for the same ``world_seed``; the texture is random.
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, TARGET_CLASSES, (n,), generator=g)
    pairs = torch.tensor(TARGET_PAIRS)[y]
    textures = torch.randint(0, N_TEXTURES, (n,), generator=g)
    return render(pairs[:, 0], textures, pairs[:, 1], size, g, world_seed), y
