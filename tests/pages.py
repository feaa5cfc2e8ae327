"""Test pages: document-like images with known words, drawn with a TrueType font (Pillow's own)."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageFont


def draw_page(path: Path, lines: list[str], size: tuple[int, int] = (900, 400), font_px: int = 34,
              scanned: bool = False, seed: int = 0) -> Path:
    """Draw `lines` onto a white page; `scanned` adds tint, blur, noise and a slight skew like a scan."""
    font = ImageFont.load_default(size=font_px)  # a TrueType font bundled with Pillow: same on every machine
    image = Image.new("RGB", size, (250, 248, 240) if scanned else "white")
    draw = ImageDraw.Draw(image)
    y = font_px
    for line in lines:
        x = font_px
        for word in line.split():
            draw.text((x, y), word, font=font, fill=(20, 20, 25))
            x += int(draw.textlength(word, font=font)) + font_px // 2  # wide gaps keep words apart
        y += int(font_px * 1.9)
    if scanned:
        rng = random.Random(seed)
        image = image.rotate(rng.uniform(-0.8, 0.8), resample=Image.BICUBIC, fillcolor=(250, 248, 240))
        image = image.filter(ImageFilter.GaussianBlur(0.6))
        noise = Image.effect_noise(size, 18).convert("RGB")
        image = Image.blend(image, noise, 0.06)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
