"""`decode_image`: an uploaded image -> RGB pixels, with its size checked before it is decoded.

An image's width and height are in its header, which PIL reads without decoding a pixel, so a
12000x12000 JPEG of 2 MB or a PNG decompression bomb is refused at once, not after it has taken
seconds and hundreds of MB. What is decoded is shrunk to `MAX_DECODED_SIDE` on its shorter side
(JPEG decodes straight to a smaller size): the retrieval embedding reads a few hundred pixels a
side, so a big photo costs the model no more time than a small one.
"""

from __future__ import annotations

import io

import numpy as np

from indexer.server.schemas import MAX_IMAGE_PIXELS

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")  # only decoders whose size is in the header
MAX_DECODED_SIDE = 768  # the shorter side of what reaches the embedder (CLIP reads 224, SigLIP 384)


def decode_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """An image file's bytes -> uint8 RGB [H, W, 3] (its shorter side at most MAX_DECODED_SIDE).

    ValueError when it cannot be decoded or has more than `max_pixels` pixels (the message says
    which)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as img:  # reads the header only
            width, height = img.size
            if width * height > max_pixels:
                raise ValueError(f"the image is {width}x{height} = {width * height:,} pixels, over the "
                                 f"{max_pixels:,} pixels allowed; send a smaller one")
            shrink = MAX_DECODED_SIDE / max(1, min(width, height))
            if shrink < 1:  # JPEG: decoded at 1/2, 1/4 or 1/8 scale (draft), then resized
                img.thumbnail((max(1, round(width * shrink)), max(1, round(height * shrink))))
            rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except Image.DecompressionBombError as exc:  # PIL's own bound, for sizes far over ours
        raise ValueError(f"the image has over the {max_pixels:,} pixels allowed ({exc}); send a smaller one") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"the image cannot be decoded ({exc}); send a PNG, JPEG, WebP, GIF or BMP file") from exc
    if rgb.ndim != 3 or min(rgb.shape[:2]) < 1:
        raise ValueError(f"the image is empty (shape {rgb.shape})")
    return rgb  # (H, W, 3)


__all__ = ["FORMATS", "MAX_DECODED_SIDE", "decode_image"]
