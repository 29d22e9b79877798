"""Seeded copies of a picture, made the ways people copy pictures.

Each transformation is a function of a PIL image (and, where it draws something at random, of a
``numpy.random.Generator``) returning a PIL image, or the encoded bytes for those whose point is
the encoding (JPEG, PNG, the combination). ``TRANSFORMS`` names them in the order the accuracy
tables list them; ``Transform.__call__(image, seed, background)`` applies one deterministically.

Choices that decide what a row measures:

- Crops are given by the *area* they keep; the side shrinks by its square root.
- Small rotations come in two kinds. ``rotate N`` keeps the image's size (``expand=False``) and
  fills the corners with black, as a plain rotate does: the row measures the rotation, the crop
  rows measure losing content. ``rotate N expand`` grows the canvas to hold the whole turned
  picture (``expand=True``), the corners filled black, or white (``... white``), as image
  editors' "rotate" does: nothing is lost, but the picture shrinks within a larger frame. A
  "straighten" that crops to the inscribed rectangle is a rotation plus a crop of 20-35%.
- Central crops by area: 90% and 81% (5% off each side, the light crop of re-posted pictures),
  75%, 64% (10% off each side), 50%. A side crop keeps the aspect ratio, touching one side
  (drawn at random) at its middle; an off-centre crop keeps 60-80% of the area (drawn) at a drawn
  place that is not the centre, the aspect ratio kept.
- The 90-degree rotation turns counter-clockwise and keeps the whole picture.
- Text, logo and caption use Pillow's built-in scalable font, so the copies are the same on every
  machine with the same Pillow.
- ``encode`` writes images that are not bytes already as JPEG quality 95, the form copies travel
  in; the ``png`` row is the only lossless file.
"""

import io
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

BLACK = (0, 0, 0)
WHITE = (255, 255, 255)

CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")

WATERMARK_TEXT = "\u00a9 image-match stock"
CAPTIONS = (
    ("WHEN THE BENCHMARK", "FINALLY FINISHES"),
    ("NOBODY:", "ABSOLUTELY NOBODY:"),
    ("ONE DOES NOT SIMPLY", "CROP A PHOTO"),
    ("THIS IS FINE", "EVERYTHING IS FINE"),
)


# --- geometry --------------------------------------------------------------------------------

def resize(image, scale):
    """Both sides times ``scale`` (Lanczos), at least 1 pixel."""
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def stretch(image, factor):
    """The width times ``factor``, the height kept: a changed aspect ratio."""
    return image.resize((max(1, round(image.width * factor)), image.height),
                        Image.Resampling.LANCZOS)


def central_crop(image, area):
    """The centred rectangle of the same aspect ratio keeping ``area`` (0-1) of the pixels."""
    return _crop_at(image, area, 0.5, 0.5)


def corner_crop(image, area, corner):
    """The rectangle of the same aspect ratio keeping ``area`` of the pixels, at ``corner``."""
    vertical, horizontal = corner.split("-")
    return _crop_at(image, area, 1.0 if horizontal == "right" else 0.0,
                    1.0 if vertical == "bottom" else 0.0)


def _crop_at(image, area, x_anchor, y_anchor):
    side = math.sqrt(area)
    width, height = max(1, round(image.width * side)), max(1, round(image.height * side))
    left = round((image.width - width) * x_anchor)
    top = round((image.height - height) * y_anchor)
    return image.crop((left, top, left + width, top + height))


SIDES = ("top", "bottom", "left", "right")


def side_crop(image, area, side):
    """The rectangle of the same aspect ratio keeping ``area`` of the pixels, touching ``side``
    at its middle."""
    x_anchor = {"left": 0.0, "right": 1.0}.get(side, 0.5)
    y_anchor = {"top": 0.0, "bottom": 1.0}.get(side, 0.5)
    return _crop_at(image, area, x_anchor, y_anchor)


def off_centre_crop(image, rng, areas=(0.6, 0.8)):
    """The rectangle of the same aspect ratio keeping a drawn share of ``areas`` of the pixels, at
    a drawn place at least a quarter of the free margin away from the centre on some axis."""
    area = float(rng.uniform(*areas))
    while True:
        x_anchor, y_anchor = (float(v) for v in rng.uniform(0.0, 1.0, 2))
        if max(abs(x_anchor - 0.5), abs(y_anchor - 0.5)) >= 0.25:
            return _crop_at(image, area, x_anchor, y_anchor)


def rotate(image, degrees, expand=False, colour=BLACK):
    """Counter-clockwise by ``degrees`` about the centre (bicubic): the same size, or with
    ``expand`` a canvas grown to hold the whole turned picture; the corners ``colour``."""
    return image.rotate(degrees, resample=Image.Resampling.BICUBIC, expand=expand,
                        fillcolor=_fill(image, colour))


def rotate_90(image):
    """A quarter turn counter-clockwise, nothing lost."""
    return image.transpose(Image.Transpose.ROTATE_90)


def flip_horizontal(image):
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def flip_vertical(image):
    return image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)


# --- colour and noise ------------------------------------------------------------------------

def brightness(image, factor):
    """Every channel times ``factor`` (1.2 is +20%), clipped."""
    return ImageEnhance.Brightness(image).enhance(factor)


def contrast(image, factor):
    """Distances from the mean grey times ``factor``, clipped."""
    return ImageEnhance.Contrast(image).enhance(factor)


def gamma(image, exponent):
    """Each channel ``v`` becomes ``255 * (v / 255) ** exponent``: > 1 darkens the mid-tones."""
    table = [round(255 * (value / 255) ** exponent) for value in range(256)]
    return image.point(table * len(image.getbands()))


def blur(image, radius):
    return image.filter(ImageFilter.GaussianBlur(radius))


def noise(image, sigma, rng):
    """Independent Gaussian noise of standard deviation ``sigma`` (0-1 scale) on every channel."""
    pixels = np.asarray(image, dtype=np.float64)
    noisy = pixels + rng.normal(0.0, sigma * 255.0, pixels.shape)
    return Image.fromarray(np.clip(np.round(noisy), 0, 255).astype(np.uint8), image.mode)


def grayscale(image):
    """One channel (Pillow's ITU-R 601 luma): the file is a grey JPEG."""
    return image.convert("L")


# --- things drawn on or around the picture -----------------------------------------------------

def text_watermark(image, rng, opacity=0.5):
    """White text with a dark outline, a tenth of the width high, at a random place, blended at
    ``opacity``: a stock-photo mark."""
    base = image.convert("RGB")
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    font = ImageFont.load_default(size=max(8, base.width // 10))
    left, top, right, bottom = draw.textbbox((0, 0), WATERMARK_TEXT, font=font, stroke_width=2)
    x = rng.integers(0, max(1, base.width - (right - left))) - left
    y = rng.integers(0, max(1, base.height - (bottom - top))) - top
    alpha = round(255 * opacity)
    draw.text((x, y), WATERMARK_TEXT, font=font, fill=(255, 255, 255, alpha),
              stroke_width=2, stroke_fill=(0, 0, 0, alpha))
    return Image.alpha_composite(base.convert("RGBA"), overlay).convert("RGB")


def logo(image, rng):
    """An opaque box a quarter of the width wide, a random colour with white lettering, in a
    random corner: a broadcaster's or site's logo."""
    result = image.convert("RGB")
    width, height = max(2, result.width // 4), max(2, result.height // 8)
    margin = round(0.03 * min(result.size))
    corner = CORNERS[rng.integers(len(CORNERS))]
    left = result.width - width - margin if corner.endswith("right") else margin
    top = result.height - height - margin if corner.startswith("bottom") else margin
    colour = tuple(int(c) for c in rng.integers(0, 200, 3))
    draw = ImageDraw.Draw(result)
    draw.rectangle((left, top, left + width - 1, top + height - 1), fill=colour)
    font = ImageFont.load_default(size=max(6, height * 3 // 5))
    draw.text((left + width // 2, top + height // 2), "LOGO", font=font, fill=WHITE, anchor="mm")
    return result


def letterbox(image, bar=0.125):
    """Black bars above and below, each ``bar`` of the height: a photo shown in a wider frame."""
    pad = round(image.height * bar)
    return _pad(image, 0, pad, BLACK)


def border(image, rng, width=0.08):
    """A frame of one random colour, ``width`` of the short side thick on every side."""
    pad = max(1, round(min(image.size) * width))
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    return _pad(image, pad, pad, colour)


def _pad(image, horizontal, vertical, colour):
    canvas = Image.new(image.mode, (image.width + 2 * horizontal, image.height + 2 * vertical),
                       _fill(image, colour))
    canvas.paste(image, (horizontal, vertical))
    return canvas


def inset(image, background, rng, scale=0.6):
    """The picture at ``scale`` of each side, at a random place on ``background`` (an unrelated
    photo, resized and centre-cropped to the picture's size): a collage or a screenshot."""
    canvas = _cover(background.convert(image.mode), image.size)
    small = resize(image, scale)
    x = int(rng.integers(0, canvas.width - small.width + 1))
    y = int(rng.integers(0, canvas.height - small.height + 1))
    canvas.paste(small, (x, y))
    return canvas


def _cover(image, size):
    """``image`` scaled to cover ``size`` and centre-cropped to it."""
    scale = max(size[0] / image.width, size[1] / image.height)
    scaled = image.resize((max(size[0], math.ceil(image.width * scale)),
                           max(size[1], math.ceil(image.height * scale))), Image.Resampling.LANCZOS)
    left, top = (scaled.width - size[0]) // 2, (scaled.height - size[1]) // 2
    return scaled.crop((left, top, left + size[0], top + size[1]))


def caption(image, rng, bar=0.18):
    """White bars above and below, each ``bar`` of the height, with black text: a meme."""
    pad = max(8, round(image.height * bar))
    result = _pad(image.convert("RGB"), 0, pad, WHITE)
    draw = ImageDraw.Draw(result)
    lines = CAPTIONS[rng.integers(len(CAPTIONS))]
    for line, centre_y in zip(lines, (pad // 2, result.height - pad // 2)):
        size = pad * 3 // 5
        font = ImageFont.load_default(size=size)
        while size > 6 and draw.textlength(line, font=font) > 0.95 * result.width:
            size -= 2
            font = ImageFont.load_default(size=size)
        draw.text((result.width // 2, centre_y), line, font=font, fill=BLACK, anchor="mm")
    return result


# --- encodings -------------------------------------------------------------------------------

def jpeg(image, quality):
    """The JPEG file at ``quality`` (Pillow's libjpeg, 4:2:0 chroma subsampling)."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def png(image):
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def combination(image):
    """Half size, the central 90% of the area, 10% brighter, JPEG quality 50: a repost."""
    return jpeg(brightness(central_crop(resize(image, 0.5), 0.9), 1.1), 50)


def encode(result):
    """``(bytes, suffix)`` of a transformation's result: bytes as they are (``.jpg`` or ``.png``
    by their signature), an image as JPEG quality 95."""
    if isinstance(result, bytes):
        return result, ".png" if result.startswith(b"\x89PNG") else ".jpg"
    return jpeg(result, 95), ".jpg"


def _fill(image, colour):
    """``colour`` in ``image``'s mode (a grey level for one-channel images)."""
    if len(image.getbands()) == 1:
        return round(sum(colour) / 3)
    return colour


# --- the list --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Transform:
    """A named transformation.

    ``function(image, rng)``, or ``function(image, background, rng)`` when ``needs_background``:
    ``background`` is an unrelated picture the copy is composed onto.
    """

    name: str
    function: Callable
    needs_background: bool = False

    def __call__(self, image, seed=0, background=None):
        """The copy of ``image`` (PIL image or bytes); the same ``seed`` gives the same copy."""
        rng = np.random.default_rng(seed)
        if self.needs_background:
            if background is None:
                raise ValueError(f"transform {self.name} needs a background image")
            return self.function(image, background, rng)
        return self.function(image, rng)


def _fixed(function, *args):
    """A transformation that draws nothing at random."""
    return lambda image, rng: function(image, *args)


TRANSFORMS = {t.name: t for t in (
    Transform("resize 0.5", _fixed(resize, 0.5)),
    Transform("resize 0.25", _fixed(resize, 0.25)),
    Transform("jpeg q30", _fixed(jpeg, 30)),
    Transform("jpeg q10", _fixed(jpeg, 10)),
    Transform("png", _fixed(png)),
    Transform("crop 90%", _fixed(central_crop, 0.9)),
    Transform("crop 81%", _fixed(central_crop, 0.81)),
    Transform("crop 75%", _fixed(central_crop, 0.75)),
    Transform("crop 64%", _fixed(central_crop, 0.64)),
    Transform("crop 50%", _fixed(central_crop, 0.5)),
    Transform("corner crop 80%",
              lambda image, rng: corner_crop(image, 0.8, CORNERS[rng.integers(len(CORNERS))])),
    Transform("side crop 80%",
              lambda image, rng: side_crop(image, 0.8, SIDES[rng.integers(len(SIDES))])),
    Transform("off-centre crop 60-80%", off_centre_crop),
    Transform("rotate 2", _fixed(rotate, 2)),
    Transform("rotate 5", _fixed(rotate, 5)),
    Transform("rotate 10", _fixed(rotate, 10)),
    Transform("rotate 15", _fixed(rotate, 15)),
    Transform("rotate 5 expand", _fixed(rotate, 5, True)),
    Transform("rotate 10 expand", _fixed(rotate, 10, True)),
    Transform("rotate 15 expand", _fixed(rotate, 15, True)),
    Transform("rotate 10 expand white", _fixed(rotate, 10, True, WHITE)),
    Transform("rotate 90", _fixed(rotate_90)),
    Transform("flip h", _fixed(flip_horizontal)),
    Transform("flip v", _fixed(flip_vertical)),
    Transform("bright +20%", _fixed(brightness, 1.2)),
    Transform("bright -20%", _fixed(brightness, 0.8)),
    Transform("contrast +30%", _fixed(contrast, 1.3)),
    Transform("gamma 1.5", _fixed(gamma, 1.5)),
    Transform("blur r2", _fixed(blur, 2)),
    Transform("noise 10/255", lambda image, rng: noise(image, 10 / 255, rng)),
    Transform("grayscale", _fixed(grayscale)),
    Transform("text watermark", text_watermark),
    Transform("logo", logo),
    Transform("letterbox", _fixed(letterbox)),
    Transform("border", border),
    Transform("inset 60%", lambda image, background, rng: inset(image, background, rng),
              needs_background=True),
    Transform("caption bars", caption),
    Transform("stretch 1.3x", _fixed(stretch, 1.3)),
    Transform("combination", _fixed(combination)),
)}
