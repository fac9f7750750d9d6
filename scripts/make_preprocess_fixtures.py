#!/usr/bin/env python3
"""Regenerate tests/fixtures/preprocess/* (inputs + expected outputs of PIL/torchvision).

Run from the repository root:  python3 scripts/make_preprocess_fixtures.py
Deterministic (numpy default_rng(0), torch.manual_seed(0): identical images and tensor values;
the byte order of the safetensors header may differ between runs); needs numpy, pillow, torch,
torchvision, safetensors.  Written against Pillow 13 / torchvision 0.29.

Inputs written (all derived from one procedural "photo"):
  photo.png        300x240 RGB: gradients, hard-edged shapes, a noisy patch, text-like strokes
  photo.jpg        the same, JPEG quality 90, no chroma subsampling (4:4:4)
  region420.jpg    120x96 region, JPEG quality 90 with 4:2:0 chroma subsampling
  odd.png          53x71 crop (W x H) used for upscaling and banker's-rounding crop tests
  grey.png         120x96 8-bit greyscale
  la.png           120x96 greyscale + alpha
  rgba.png         120x96 RGBA (alpha varies)
  rgb16.png        120x96 RGB 16-bit (high byte = photo, low byte = a pattern)
  grey16.png       40x30 16-bit greyscale
  mask.png         300x240 L, 0/255 rectangle
  mask2.png        173x131 L, 0/255 rectangle + disc (non-square aspect)
Expected tensors: expected.safetensors (see the `notes` below and the key names).
"""
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors.numpy import save_file
from torchvision import transforms as T

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "preprocess"
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def make_photo(rng):
    h, w = 240, 300
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 40 + 180 * x / (w - 1)
    g = 30 + 200 * y / (h - 1)
    b = 128 + 100 * np.sin(x / 17.0) * np.cos(y / 23.0)
    img = np.stack([r, g, b], -1)
    # hard-edged shapes
    img[40:110, 30:95] = (250, 20, 30)
    disc = (x - 210) ** 2 + (y - 70) ** 2 < 38**2
    img[disc] = (10, 200, 60)
    img[150:152, :] = 255  # 2-pixel white line
    img[:, 151] = 0  # 1-pixel black line
    # checkerboard (high frequency, stresses antialiasing)
    cb = ((x.astype(int) // 3 + y.astype(int) // 3) % 2 == 0)
    sel = (y >= 170) & (y < 230) & (x >= 20) & (x < 120)
    img[sel & cb] = (240, 240, 240)
    img[sel & ~cb] = (15, 15, 15)
    # noisy patch
    sel = (y >= 160) & (y < 235) & (x >= 180) & (x < 290)
    img[sel] += rng.normal(0, 25, size=(int(sel.sum()), 3))
    img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    pil = Image.fromarray(img, "RGB")
    d = ImageDraw.Draw(pil)
    d.text((100, 15), "PatchCore 0123", fill=(0, 0, 0))
    d.text((160, 120), "anomaly", fill=(255, 255, 0))
    d.line([(5, 235), (140, 125)], fill=(60, 0, 120), width=1)
    return pil


def png16(arr):
    """Minimal 16-bit PNG writer (PIL cannot write 16-bit RGB)."""
    h, w, c = arr.shape
    ct = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    raw = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, ct, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def u8_pipeline(pil, resize, crop):
    """Resize (PIL bilinear, antialias) + optional centre crop; HWC uint8."""
    ts = [T.Resize(resize, interpolation=T.InterpolationMode.BILINEAR)]
    if crop is not None:
        ts.append(T.CenterCrop(crop))
    return np.asarray(T.Compose(ts)(pil)).copy()


def orig_mask(pil_mask, resize=256, crop=224):
    """ORIG: Resize(256) + CenterCrop(224) + ToTensor, positive iff value == 1.0."""
    t = T.Compose([T.Resize(resize), T.CenterCrop(crop), T.ToTensor()])(pil_mask)
    return (t[0].numpy().astype(int) == 1).astype(np.uint8), int((t[0] > 0).sum())


def main():
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    OUT.mkdir(parents=True, exist_ok=True)
    exp = {}

    photo = make_photo(rng)
    photo.save(OUT / "photo.png", optimize=True)
    photo.save(OUT / "photo.jpg", quality=90, subsampling=0)
    photo = Image.open(OUT / "photo.png").convert("RGB")
    arr = np.asarray(photo)

    # ORIG pipeline, normalised f32 CHW.
    orig = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(MEAN, STD)])
    exp["photo_png_orig"] = orig(photo).numpy().astype(np.float32)
    # Same pipeline on the JPEG as PIL decodes it (uint8 HWC, before ToTensor).
    jpg = Image.open(OUT / "photo.jpg").convert("RGB")
    exp["photo_jpg_orig_u8"] = u8_pipeline(jpg, 256, 224)
    # Exact resize without crop (downscale by 2.4 / 2.0).
    exp["photo_exact_100x150_u8"] = u8_pipeline(photo, (100, 150), None)
    # MVTec-like 900x900 input: tile[y, x] = photo[y % 240, x % 300].
    tile = arr[np.arange(900)[:, None] % 240, np.arange(900)[None, :] % 300]
    exp["tile900_orig_u8"] = u8_pipeline(Image.fromarray(tile, "RGB"), 256, 224)

    # Small odd-sized crop: upscaling, and a centre crop whose offset needs round-half-even.
    odd = photo.crop((100, 60, 153, 131))  # W=53, H=71
    odd.save(OUT / "odd.png")
    # ShorterSide(97): 97 x int(97*71/53)=129 -> crop (80, 80): top = round(49/2) = 24 (half-even).
    exp["odd_s97_c80_u8"] = u8_pipeline(odd, 97, 80)
    exp["odd_exact_150x110_u8"] = u8_pipeline(odd, (150, 110), None)

    # Decoding variants (120x96 region).
    region = photo.crop((150, 40, 270, 136))
    reg = np.asarray(region)
    region.save(OUT / "region420.jpg", quality=90, subsampling=2)
    exp["dec_region420_jpg"] = np.asarray(Image.open(OUT / "region420.jpg").convert("RGB")).copy()
    grey = region.convert("L")
    grey.save(OUT / "grey.png")
    exp["dec_grey"] = np.asarray(Image.open(OUT / "grey.png").convert("RGB")).copy()
    alpha = (np.arange(120)[None, :] * 2 + np.arange(96)[:, None]).astype(np.uint8)
    la = Image.merge("LA", (grey, Image.fromarray(alpha, "L")))
    la.save(OUT / "la.png")
    exp["dec_la"] = np.asarray(Image.open(OUT / "la.png").convert("RGB")).copy()
    rgba = Image.merge("RGBA", (*region.split(), Image.fromarray(alpha, "L")))
    rgba.save(OUT / "rgba.png")
    exp["dec_rgba"] = np.asarray(Image.open(OUT / "rgba.png").convert("RGB")).copy()
    # Low byte: a pattern covering 0..255 (half of the values would round the high byte up).
    yy16, xx16, cc16 = np.indices(reg.shape)
    low = ((xx16 * 37 + yy16 * 11 + cc16 * 101) % 256).astype(np.uint16)
    (OUT / "rgb16.png").write_bytes(png16(reg.astype(np.uint16) * 256 + low))
    exp["dec_rgb16"] = np.asarray(Image.open(OUT / "rgb16.png").convert("RGB")).copy()
    # 16-bit grey: PIL's convert("RGB") clips to 255 here; the crate takes the high byte, so
    # the expectation is computed with numpy (v >> 8), not PIL.
    g16 = rng.integers(0, 65536, size=(30, 40, 1), dtype=np.uint16)
    g16[0, :4, 0] = (0, 255, 256, 65535)
    (OUT / "grey16.png").write_bytes(png16(g16))
    exp["dec_grey16_highbyte"] = (g16[..., 0] >> 8).astype(np.uint8)

    # Masks.
    m = np.zeros((240, 300), np.uint8)
    m[57:171, 83:234] = 255
    Image.fromarray(m, "L").save(OUT / "mask.png")
    exp["mask_orig"], pos = orig_mask(Image.open(OUT / "mask.png"))
    print(f"mask.png: {int(exp['mask_orig'].sum())} pixels == 1.0, {pos} > 0")
    yy, xx = np.mgrid[0:131, 0:173]
    m2 = np.zeros((131, 173), np.uint8)
    m2[20:61, 31:99] = 255
    m2[(yy - 90) ** 2 + (xx - 120) ** 2 < 27**2] = 255
    Image.fromarray(m2, "L").save(OUT / "mask2.png")
    exp["mask2_orig"], pos = orig_mask(Image.open(OUT / "mask2.png"))
    print(f"mask2.png: {int(exp['mask2_orig'].sum())} pixels == 1.0, {pos} > 0")
    # docs/algorithm.md §1 example: 900x900 mask with a 200x151 box (rows 300..500, cols 400..551).
    m3 = np.zeros((900, 900), np.uint8)
    m3[300:500, 400:551] = 255
    exp["mask900_orig"], pos = orig_mask(Image.fromarray(m3, "L"))
    print(f"mask900: {int(exp['mask900_orig'].sum())} pixels == 1.0, {pos} > 0")

    exp = {k: np.ascontiguousarray(v) for k, v in exp.items()}
    save_file(exp, str(OUT / "expected.safetensors"), metadata={
        "generator": "scripts/make_preprocess_fixtures.py",
        "versions": f"Pillow {Image.__version__}, torch {torch.__version__}",
    })
    total = sum(p.stat().st_size for p in OUT.iterdir())
    for p in sorted(OUT.iterdir()):
        print(f"{p.name:24s} {p.stat().st_size:8d}")
    print(f"total {total} bytes")


if __name__ == "__main__":
    main()
