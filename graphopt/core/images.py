"""Images as model inputs: a folder of pictures becomes one input array through a `Preprocess`.

`Preprocess` is resize -> center crop -> scale -> (x - mean) / std -> layout, parsed from the
CLI's `--preprocess` text. Keys left unset come from the model's input shape (`resolve`):
layout from where the 1 or 3 channels sit, color from the channel count, size from the
static height and width (dynamic ones need `resize=HxW`). Pillow reads the files; without it
the error says to install it or convert the images to .npz.
"""

from __future__ import annotations

__all__ = ["IMAGE_SUFFIXES", "Preprocess", "from_images"]

import dataclasses
import pathlib
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from graphopt.core.errors import InputError, UsageError, first_line

class InputSpec(Protocol):
    """What images need of a graph input (`graphopt.core.calibrate.InputSpec` has it)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...] | None

    def describe(self) -> str: ...


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff"}


@dataclasses.dataclass
class Preprocess:
    """How an image becomes a tensor: resize -> center crop -> scale -> (x - mean) / std -> layout.

    Text form (CLI `--preprocess`): comma-separated `key=value`, lists separated by `/`:
    `resize=256,crop=224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225,layout=nchw,color=rgb`.
    `resize=N` scales the shorter side to N, `resize=HxW` resizes exactly; `scale` defaults
    to 1/255. Unset keys come from the model's input shape.
    """

    resize: tuple[int, ...] | None = None
    crop: tuple[int, int] | None = None
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str | None = None  # "nchw" or "nhwc"
    color: str | None = None  # "rgb", "bgr" or "gray"

    @classmethod
    def parse(cls, text: str) -> "Preprocess":
        result = cls()
        for item in filter(None, (t.strip() for t in text.split(","))):
            key, sep, value = item.partition("=")
            key = key.strip().lower()
            try:
                if not sep:
                    raise ValueError
                if key == "resize":
                    result.resize = tuple(int(v) for v in value.lower().split("x"))
                    if len(result.resize) not in (1, 2):
                        raise ValueError
                elif key == "crop":
                    dims = [int(v) for v in value.lower().split("x")]
                    result.crop = (dims[0], dims[-1])
                elif key == "scale":
                    num, _, den = value.partition("/")
                    result.scale = float(num) / float(den or 1)
                elif key in ("mean", "std"):
                    setattr(result, key, tuple(float(v) for v in value.split("/")))
                elif key == "layout" and value.lower() in ("nchw", "nhwc"):
                    result.layout = value.lower()
                elif key == "color" and value.lower() in ("rgb", "bgr", "gray"):
                    result.color = value.lower()
                else:
                    raise ValueError
            except ValueError:
                raise UsageError(f"--preprocess {item!r}: expected resize=N|HxW, crop=HxW, scale=X, "
                                 "mean=a/b/c, std=a/b/c, layout=nchw|nhwc, color=rgb|bgr|gray") from None
        if any(s == 0 for s in result.std):
            raise UsageError("--preprocess std: values must be non-zero")
        return result

    def describe(self) -> str:
        parts = []
        if self.resize:
            parts.append("resize=" + "x".join(map(str, self.resize)))
        if self.crop:
            parts.append(f"crop={self.crop[0]}x{self.crop[1]}")
        parts.append(f"scale={self.scale:g}")
        parts.append("mean=" + "/".join(f"{m:g}" for m in self.mean))
        parts.append("std=" + "/".join(f"{s:g}" for s in self.std))
        parts.append(f"layout={self.layout}")
        parts.append(f"color={self.color}")
        return ",".join(parts)


def resolve(pre: Preprocess, spec: InputSpec, folder: pathlib.Path) -> Preprocess:
    pre = dataclasses.replace(pre)
    shape = spec.shape
    if shape is None or len(shape) != 4:
        raise InputError(f"{folder}: images feed a 4-D input; '{spec.name}' is {spec.describe()}")
    if pre.layout is None:
        if shape[1] in (1, 3):
            pre.layout = "nchw"
        elif shape[3] in (1, 3):
            pre.layout = "nhwc"
        else:
            raise InputError(f"{folder}: cannot tell the layout of '{spec.name}' {spec.describe()}; "
                             "give --preprocess layout=nchw or layout=nhwc")
    channels = shape[1] if pre.layout == "nchw" else shape[3]
    height, width = (shape[2], shape[3]) if pre.layout == "nchw" else (shape[1], shape[2])
    if pre.color is None:
        pre.color = "gray" if channels == 1 else "rgb"
    if pre.crop is None and pre.resize is None:
        if height is None or width is None:
            raise InputError(f"{folder}: '{spec.name}' has dynamic height/width; give --preprocess resize=HxW")
        pre.resize = (height, width)
    return pre


def from_images(folder: pathlib.Path, files: list[pathlib.Path], specs: Sequence[InputSpec],
                 preprocess: Preprocess | None) -> tuple[np.ndarray, str]:
    """The images as one batch for the model's single input, and a note of how they were read."""
    if len(specs) != 1:
        raise InputError(f"{folder}: images feed a single-input model; this one has "
                         f"{', '.join(s.name for s in specs)}")
    try:
        from PIL import Image
    except ImportError as e:
        raise InputError(f"{folder}: reading images needs Pillow (pip install pillow), or convert them to an "
                         ".npz yourself") from e
    spec = specs[0]
    pre = resolve(preprocess or Preprocess(), spec, folder)
    samples = []
    for path in files:
        try:
            with Image.open(path) as img:
                img = img.convert("L" if pre.color == "gray" else "RGB")
                img = _resize_crop(img, pre, Image)
                array = np.asarray(img, dtype=np.float32)
        except (OSError, ValueError) as e:
            raise InputError(f"{path}: not a readable image ({first_line(e)})") from e
        if array.ndim == 2:
            array = array[:, :, None]
        if pre.color == "bgr":
            array = array[:, :, ::-1]
        mean = np.asarray(pre.mean, dtype=np.float32)
        std = np.asarray(pre.std, dtype=np.float32)
        if mean.size not in (1, array.shape[2]) or std.size not in (1, array.shape[2]):
            raise UsageError(f"--preprocess mean/std: give 1 or {array.shape[2]} values")
        array = (array * pre.scale - mean) / std
        if pre.layout == "nchw":
            array = array.transpose(2, 0, 1)
        samples.append(array.astype(spec.dtype if np.issubdtype(spec.dtype, np.floating) else np.float32))
    return np.stack(samples), f"images preprocessed with {pre.describe()}"


def _resize_crop(img, pre: Preprocess, Image):
    if pre.resize:
        if len(pre.resize) == 1:
            short = pre.resize[0]
            w, h = img.size
            ratio = short / min(w, h)
            img = img.resize((max(1, round(w * ratio)), max(1, round(h * ratio))), Image.BILINEAR)
        else:
            img = img.resize((pre.resize[1], pre.resize[0]), Image.BILINEAR)
    if pre.crop:
        ch, cw = pre.crop
        w, h = img.size
        if ch > h or cw > w:
            raise InputError(f"crop {ch}x{cw} is larger than the resized image {h}x{w}; raise resize")
        left, top = (w - cw) // 2, (h - ch) // 2
        img = img.crop((left, top, left + cw, top + ch))
    return img
