#!/usr/bin/env python3
"""Regenerate tests/fixtures/anomaly_map.safetensors (reference anomaly maps).

Reference = what the original PatchCore does: torch.nn.functional.interpolate (bilinear,
align_corners=False, or 'nearest') followed by scipy.ndimage.gaussian_filter (mode 'reflect',
truncate 4). CPU only, deterministic (torch.manual_seed(0)). Run from the repository root:

    python3 scripts/make_map_fixtures.py
"""
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import save_file
from scipy.ndimage import gaussian_filter

torch.manual_seed(0)


def up(grid, out_h, out_w, mode):
    t = torch.from_numpy(grid)[None, None]
    kw = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(t, size=(out_h, out_w), mode=mode, **kw)[0, 0].numpy()


def blur(m, sigma):
    return gaussian_filter(m.astype(np.float32), sigma=sigma, truncate=4.0, mode="reflect")


tensors = {}
# Case A: the default pipeline, 28x28 -> 224x224, bilinear, sigma 4.
grid_a = (torch.rand(28, 28) * 3.0).numpy().astype(np.float32)
tensors["a_grid"] = grid_a
tensors["a_bilinear_blur"] = blur(up(grid_a, 224, 224, "bilinear"), 4.0)
# Case B: rectangular grid, non-integer ratios, bilinear only (no blur).
grid_b = torch.randn(5, 7).numpy().astype(np.float32)
tensors["b_grid"] = grid_b
tensors["b_bilinear_13x23"] = up(grid_b, 13, 23, "bilinear")
tensors["b_nearest_13x23"] = up(grid_b, 13, 23, "nearest")
# Case C: nearest 14x14 -> 56x56, sigma 4 (radius 16).
grid_c = torch.rand(14, 14).numpy().astype(np.float32)
tensors["c_grid"] = grid_c
tensors["c_nearest_blur"] = blur(up(grid_c, 56, 56, "nearest"), 4.0)
# Case D: kernel radius larger than the map (borders fold repeatedly): 3x4 -> 6x10, sigma 4.
grid_d = torch.rand(3, 4).numpy().astype(np.float32)
tensors["d_grid"] = grid_d
tensors["d_bilinear_blur"] = blur(up(grid_d, 6, 10, "bilinear"), 4.0)
# Case E: sigma 1.5 (radius 6) on a 28x28 -> 100x75 bilinear map.
tensors["e_bilinear_blur"] = blur(up(grid_a, 100, 75, "bilinear"), 1.5)

tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
save_file(tensors, "tests/fixtures/anomaly_map.safetensors")
for k, v in tensors.items():
    print(k, v.shape)
