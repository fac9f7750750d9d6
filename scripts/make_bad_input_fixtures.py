#!/usr/bin/env python3
"""Writes the image fixtures of tests/all/bad_inputs.rs into tests/fixtures/bad_inputs/.

Deterministic (fixed pixel patterns, no randomness). Needs Pillow.

- cmyk.jpg      40x36 CMYK JPEG (Adobe APP14 marker, as Photoshop writes them)
- animated.png  40x36 APNG with 2 frames (first frame red-ish, second blue-ish)
- animated.gif  40x36 GIF with 2 frames (GIF decoding is not enabled in this crate)
- cmyk_rgb.png  PIL's own RGB conversion of cmyk.jpg, for comparing the decoded pixels
- animated_frame0.png  the first frame of animated.png as a still PNG
"""
from pathlib import Path

from PIL import Image

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "bad_inputs"
W, H = 40, 36


def pattern(offset: int) -> Image.Image:
    im = Image.new("RGB", (W, H))
    px = im.load()
    for y in range(H):
        for x in range(W):
            px[x, y] = ((x * 6 + offset) % 256, (y * 7) % 256, ((x + y) * 3 + offset) % 256)
    return im


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    # CMYK JPEG: smooth content so JPEG loss stays small.
    cmyk = Image.new("CMYK", (W, H))
    px = cmyk.load()
    for y in range(H):
        for x in range(W):
            px[x, y] = (x * 5, y * 6, 64 + (x + y) * 2, 20)
    cmyk.save(OUT / "cmyk.jpg", quality=95, subsampling=0)
    Image.open(OUT / "cmyk.jpg").convert("RGB").save(OUT / "cmyk_rgb.png")

    frames = [pattern(0), pattern(128)]
    frames[0].save(OUT / "animated.png", save_all=True, append_images=frames[1:], duration=100, loop=0)
    frames[0].save(OUT / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    frames[0].save(OUT / "animated_frame0.png")


if __name__ == "__main__":
    main()
