"""Turning user images into float tensors ``[C, H, W]`` in [0, 1], with explicit conversions only.

Accepted inputs: a file path, a PIL image, a uint8 or float numpy array
(``[H, W]`` or ``[H, W, C]``, the numpy/OpenCV/PIL convention) or a uint8 or
float torch tensor (``[H, W]`` or ``[C, H, W]``, the torch convention). uint8
is divided by 255; floats must already lie in [0, 1] (up to 1e-6 of rounding,
which is clipped). An image keeps its own channels: the noise is added there,
so a grey image is certified in grey units and repeated to RGB only inside the
base classifier. A fully opaque alpha channel is dropped (a transparent one is
refused). Files in palette, CMYK or YCbCr modes are decoded to RGB, which is
then the space the radius is measured in.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import InvalidImageError
from .wording import Wording, plural

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

MAX_CHANNELS = 4
"""Most channels an image may have (RGBA); a larger channel dimension is a layout mistake."""

_PIL_MODES_AS_IS = {"L", "LA", "RGB", "RGBA"}
_PIL_MODES_CONVERTED = {"1": "L", "P": "RGBA", "CMYK": "RGB", "YCbCr": "RGB", "PA": "RGBA", "La": "LA", "RGBa": "RGBA"}


def open_image_file(path: str | os.PathLike, what: str = "image") -> Image.Image:
    """The decoded PIL image of a file (every pixel loaded), or InvalidImageError naming the file: missing, larger
    than Pillow decodes, truncated or not an image. ``what`` names the file's role in messages ("label map")."""
    path = Path(path)
    if not path.is_file():
        raise InvalidImageError(f"{what} file not found: {path}")
    try:
        with Image.open(path) as pil:
            pil.load()  # decodes the whole file: truncated data raises here
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_many_pixels(path, what, exc) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InvalidImageError(f"cannot decode {what} {path}: {exc}. Is the file complete and an image?") from exc
    return pil


def _too_many_pixels(path: Path, what: str, refusal: Exception) -> InvalidImageError:
    """Pillow's refusal of a huge image (a guard against decompression bombs), with its size, the limit and the way
    to raise it. Pillow refuses above twice ``PIL.Image.MAX_IMAGE_PIXELS`` and warns above it (the command line makes
    that warning a refusal: its limit is the number it sets)."""
    limit = Image.MAX_IMAGE_PIXELS * (2 if isinstance(refusal, Image.DecompressionBombError) else 1)
    size = declared_size(path)
    pixels = f"{size[0]}×{size[1]} = {size[0] * size[1]:,} pixels" if size else "larger than that"
    return InvalidImageError(
        f"{what} {path} is {pixels}, more than the {limit:,} pixels Pillow decodes (its guard against decompression "
        "bombs). If you trust the file, raise the limit with {raise_it}; or resize the image first.",
        raise_it=Wording(f"PIL.Image.MAX_IMAGE_PIXELS = N (Pillow refuses images over twice N; now {Image.MAX_IMAGE_PIXELS:,})",
                         "--max-image-pixels N"))


def declared_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) that an image file's header declares, read without decoding a pixel, and so without Pillow's
    size limit; None when no Pillow format reads the header."""
    Image.init()
    with open(path, "rb") as handle:
        prefix = handle.read(16)
        for name in Image.ID:
            factory, accept = Image.OPEN[name]
            if accept is not None and not accept(prefix):
                continue
            handle.seek(0)
            try:
                return tuple(factory(handle, str(path)).size)  # type: ignore[return-value]
            except (OSError, SyntaxError, ValueError, EOFError, struct.error):  # not this format's header: the next one
                pass
    return None


def read_image_file(path: str | os.PathLike) -> torch.Tensor:
    """Decode an image file into a uint8 tensor ``[C, H, W]``; missing, huge, truncated or unreadable files raise."""
    return _pil_to_uint8(open_image_file(path), source=str(path))


def _pil_to_uint8(pil: Image.Image, source: str) -> torch.Tensor:
    mode = pil.mode
    if mode in _PIL_MODES_CONVERTED:
        pil = pil.convert(_PIL_MODES_CONVERTED[mode])
    elif mode not in _PIL_MODES_AS_IS:
        raise InvalidImageError(
            f"{source}: PIL mode {mode!r} has no unambiguous [0,1] scale; convert it to 'RGB' or 'L' first"
        )
    array = np.asarray(pil, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.transpose(2, 0, 1).copy())  # own, writable, C-contiguous memory


def _numpy_to_chw(array: np.ndarray) -> torch.Tensor:
    if array.ndim == 2:
        array = array[:, :, None]
    elif array.ndim != 3:
        raise InvalidImageError(
            f"a numpy image must be [H, W] or [H, W, C], got shape {tuple(array.shape)}"
        )
    if array.shape[-1] > MAX_CHANNELS:
        hint = "; it looks like [C, H, W]: pass array.transpose(1, 2, 0)" if array.shape[0] <= MAX_CHANNELS else ""
        raise InvalidImageError(
            f"a numpy image must be [H, W] or [H, W, C] with 1 to {MAX_CHANNELS} channels, got shape {tuple(array.shape)}{hint}"
        )
    if array.dtype not in (np.uint8, np.float16, np.float32, np.float64):
        raise InvalidImageError(
            f"numpy image dtype {array.dtype} is not supported: use uint8 (0..255) or float in [0, 1]"
        )
    return torch.from_numpy(array.transpose(2, 0, 1).copy())  # own, writable, C-contiguous memory


def _tensor_to_chw(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.ndim == 2:
        tensor = tensor.unsqueeze(0)
    elif tensor.ndim != 3:
        hint = " (a batch? pass one image at a time)" if tensor.ndim == 4 else ""
        raise InvalidImageError(f"an image tensor must be [C, H, W] or [H, W], got shape {tuple(tensor.shape)}{hint}")
    if tensor.shape[0] > MAX_CHANNELS:
        hint = f"; it looks like [H, W, C]: pass tensor.permute(2, 0, 1)" if tensor.shape[-1] <= MAX_CHANNELS else ""
        raise InvalidImageError(
            f"an image tensor must be [C, H, W] with 1 to {MAX_CHANNELS} channels (or [H, W]), "
            f"got shape {tuple(tensor.shape)}{hint}"
        )
    if tensor.dtype != torch.uint8 and not tensor.is_floating_point():
        raise InvalidImageError(
            f"tensor dtype {tensor.dtype} is not supported: use uint8 (0..255) or float in [0, 1]"
        )
    return tensor


ROUNDING_SLACK = 1e-6
"""Float pixels at most this far outside [0, 1] are rounding error and clipped, not refused."""


def to_unit_float(chw: torch.Tensor, what: str = "image", error: type[InvalidImageError] = InvalidImageError) -> torch.Tensor:
    """uint8 → /255; float → checked finite and inside [0, 1] (clipping rounding error up to 1e-6). Any shape.

    ``what`` names the input in messages and ``error`` is the error type raised (clips raise InvalidVideoError).
    """
    if chw.dtype == torch.uint8:
        return chw.to(torch.float32) / 255.0
    chw = chw.to(torch.float32)
    if not torch.isfinite(chw).all():
        raise error(f"{what} contains NaN or Inf pixels; fix the input before certifying")
    low, high = float(chw.min()), float(chw.max())
    if low < -ROUNDING_SLACK or high > 1.0 + ROUNDING_SLACK:
        raise error(
            f"float pixels must lie in [0, 1], found range [{low:.4g}, {high:.4g}] in the {what}. "
            "Pass uint8 for 0..255 data, or undo any normalisation: vision-rs normalises inside the model."
        )
    return chw.clamp(0.0, 1.0) if low < 0.0 or high > 1.0 else chw


def fit_channels(chw: torch.Tensor, channels: int) -> torch.Tensor:
    """The image (channels at dim -3: [C, H, W] or [T, C, H, W]) in its own space, checked against a model
    reading ``channels`` colour channels.

    Equal channels pass; a grey image passes for an RGB model (repeated inside the base classifier,
    after the noise); a fully opaque alpha channel is dropped; anything else is refused.
    """
    have = chw.shape[-3]
    if have == channels or (have == 1 and channels == 3):
        return chw
    if have in (2, 4):  # grey + alpha, RGB + alpha
        if bool((chw[..., -1, :, :] < 1.0).any()):
            raise InvalidImageError(
                f"image has {plural(have, 'channel')} with a transparent alpha; the model reads {channels}. "
                "Composite it onto a background of your choice and pass it without alpha."
            )
        return fit_channels(chw[..., :-1, :, :].clone(), channels)
    raise InvalidImageError(
        f"image has {plural(have, 'channel')} but the model reads {channels}; no unambiguous conversion exists. "
        "Convert the image yourself (for RGB → grey, choose the weights)."
    )


def to_unit_tensor(image: ImageInput, channels: int | None = None) -> torch.Tensor:
    """Return the image as float32 ``[C, H, W]`` in [0, 1] on the CPU, in its own channels.

    With ``channels`` (the colour channels the model reads), an image that cannot be fed to that model
    is refused, and an opaque alpha channel is dropped; a grey image stays grey (see the module docstring).

    Raises :class:`InvalidImageError` with a message saying what to do for NaN/Inf
    pixels, floats outside [0, 1], a wrong rank or dtype, channels that cannot be
    converted unambiguously, and unreadable or truncated files.
    """
    if isinstance(image, (str, os.PathLike)):
        chw = read_image_file(image)
    elif isinstance(image, Image.Image):
        chw = _pil_to_uint8(image, source="PIL image")
    elif isinstance(image, np.ndarray):
        chw = _numpy_to_chw(image)
    elif isinstance(image, torch.Tensor):
        chw = _tensor_to_chw(image.detach().cpu())
    else:
        raise InvalidImageError(
            f"cannot read an image from {type(image).__name__}; pass a path, PIL image, numpy array or tensor"
        )
    if chw.shape[-1] < 1 or chw.shape[-2] < 1:
        raise InvalidImageError(f"image has an empty side: shape {tuple(chw.shape)}")
    unit = to_unit_float(chw)
    return unit if channels is None else fit_channels(unit, channels)
