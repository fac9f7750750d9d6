#!/usr/bin/env python3
"""Regenerate tests/fixtures/embedding/*.safetensors (parity fixtures for src/embedding).

The reference embeddings are built here with stock PyTorch operators only, following docs/algorithm.md §3
of this repository (not the Rust code):

* ORIG (docs/algorithm.md §3.1): nn.functional.unfold with a p×p window, stride 1, zero padding p//2; the
  unfolded maps of every layer after the first are resized to the first layer's grid with
  F.interpolate(mode="bilinear", align_corners=False); each cell's C·p² vector is reduced with
  F.adaptive_avg_pool1d to pre_dim; the per-layer results are concatenated and reduced again
  with F.adaptive_avg_pool1d to target_dim.
* Average (docs/algorithm.md §3.2): F.avg_pool2d(p, stride 1, padding p//2, count_include_pad=True) per
  layer, bilinear resize of later layers to the first grid, channel concatenation, optional
  F.adaptive_avg_pool1d over the channels.

Inputs are random non-negative float32 maps (like post-ReLU backbone features). The reference
is computed in float64 from those exact float32 values and stored as float32.

Each file holds `layer0`, `layer1`, ... ([N, C, H, W] float32), `expected` ([N·h·w, D]
float32, row = img·h·w + y·w + x) and `config` (int64: [kind (0 = ORIG, 1 = Average),
patch_size, pre_dim, target_dim (0 = none)]).

Usage: python3 scripts/make_embedding_fixtures.py   (CPU only, deterministic)
"""
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "embedding"


def orig_reference(layers, p, pre_dim, target_dim):
    """Patch embedding the way docs/algorithm.md §3.1 describes it, on float64 copies of `layers`."""
    n = layers[0].shape[0]
    grid = layers[0].shape[-2:]
    per_layer = []
    for idx, fmap in enumerate(layers):
        fmap = fmap.double()
        _, c, h, w = fmap.shape
        cols = F.unfold(fmap, kernel_size=p, stride=1, padding=p // 2, dilation=1)
        # cols: [n, c·p·p, h·w] with component index c·p² + ky·p + kx.
        maps = cols.reshape(n, c * p * p, h, w)
        if idx > 0 and (h, w) != tuple(grid):
            maps = F.interpolate(maps, size=tuple(grid), mode="bilinear", align_corners=False)
        vectors = maps.permute(0, 2, 3, 1).reshape(-1, 1, c * p * p)  # one per (img, y, x)
        per_layer.append(F.adaptive_avg_pool1d(vectors, pre_dim).squeeze(1))
    stacked = torch.cat(per_layer, dim=1).unsqueeze(1)
    return F.adaptive_avg_pool1d(stacked, target_dim).squeeze(1)


def average_reference(layers, p, target_dim):
    """ANO-style construction of docs/algorithm.md §3.2 on float64 copies of `layers`."""
    grid = layers[0].shape[-2:]
    parts = []
    for idx, fmap in enumerate(layers):
        pooled = F.avg_pool2d(fmap.double(), p, stride=1, padding=p // 2, count_include_pad=True)
        if idx > 0 and pooled.shape[-2:] != grid:
            pooled = F.interpolate(pooled, size=tuple(grid), mode="bilinear", align_corners=False)
        parts.append(pooled)
    cat = torch.cat(parts, dim=1)
    rows = cat.permute(0, 2, 3, 1).reshape(-1, cat.shape[1])
    if target_dim:
        rows = F.adaptive_avg_pool1d(rows.unsqueeze(1), target_dim).squeeze(1)
    return rows


def random_layers(gen, n, shapes):
    # Half-rectified Gaussian: non-negative with exact zeros, like ReLU outputs.
    return [torch.randn(n, c, h, w, generator=gen).clamp_min(0.0).float() for c, h, w in shapes]


def save(name, layers, expected, config):
    tensors = {f"layer{i}": t.contiguous() for i, t in enumerate(layers)}
    tensors["expected"] = expected.float().contiguous()
    tensors["config"] = torch.tensor(config, dtype=torch.int64)
    save_file(tensors, str(OUT / f"{name}.safetensors"))


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(20240607)

    # Bottleneck (WRN-50 / R50) channel counts, small grid: exercises the fast path.
    layers = random_layers(gen, 1, [(512, 8, 8), (1024, 4, 4)])
    save("orig_bottleneck", layers, orig_reference(layers, 3, 1024, 1024), [0, 3, 1024, 1024])

    # BasicBlock (R18/R34) channel counts: 1152 → 1024 (bins of 2), 2304 → 1024 (bins of 3),
    # odd grid with a deeper layer that is not an exact half.
    layers = random_layers(gen, 2, [(128, 7, 7), (256, 4, 4)])
    save("orig_basic", layers, orig_reference(layers, 3, 1024, 1024), [0, 3, 1024, 1024])

    # Three layers, p = 5, a deeper layer *larger* than the grid, L < pre_dim (repeats) and
    # non-integer bin ratios everywhere.
    layers = random_layers(gen, 2, [(4, 5, 6), (6, 3, 3), (3, 7, 9)])
    save("orig_three_layers_p5", layers, orig_reference(layers, 5, 130, 57), [0, 5, 130, 57])

    # p = 1 (no neighbourhood), rectangular grid.
    layers = random_layers(gen, 1, [(10, 4, 7), (20, 2, 4)])
    save("orig_p1", layers, orig_reference(layers, 1, 16, 24), [0, 1, 16, 24])

    # Average aggregator without and with channel pooling, p = 3 and 5.
    layers = random_layers(gen, 2, [(16, 7, 7), (32, 4, 4)])
    save("average_concat", layers, average_reference(layers, 3, None), [1, 3, 0, 0])
    layers = random_layers(gen, 2, [(16, 6, 5), (24, 3, 3), (8, 2, 2)])
    save("average_pooled_p5", layers, average_reference(layers, 5, 20), [1, 5, 0, 20])


if __name__ == "__main__":
    main()
