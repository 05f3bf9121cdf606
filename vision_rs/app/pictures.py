"""Pictures and plots of the app: inputs scaled up for the screen, the patch grid with each view's vote, frame
strips, segmentation masks and radius maps, and matplotlib figures (``matplotlib.figure.Figure``, never pyplot's
global figure list, so a figure is freed when the page no longer holds it)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

DISPLAY_SIDE = 256
"""Small inputs are scaled up (nearest neighbour, whole factors up to 16) until their short side reaches this."""
ABSTAIN_COLOUR = (255, 0, 255)
"""Abstained pixels in the mask picture: magenta, a colour no class gets."""
AGREE, DISAGREE = (40, 200, 60), (230, 50, 40)

ClassNames = Callable[[int], str]


def as_uint8_hwc(pixels: torch.Tensor | np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] of an image [C, H, W] (uint8, or float in [0, 1]; grey repeated; alpha dropped)."""
    array = pixels.detach().cpu().numpy() if isinstance(pixels, torch.Tensor) else np.asarray(pixels)
    if array.dtype != np.uint8:
        array = np.clip(np.rint(array.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    array = array.transpose(1, 2, 0)
    if array.shape[2] in (2, 4):
        array = array[:, :, :-1]
    return np.repeat(array, 3, axis=2) if array.shape[2] == 1 else np.ascontiguousarray(array)


def display_scale(height: int, width: int) -> int:
    """The whole factor a small image is enlarged by for the screen (1 for images already large enough)."""
    return int(min(16, max(1, -(-DISPLAY_SIDE // max(1, min(height, width))))))


def enlarged(pixels: torch.Tensor | np.ndarray) -> tuple[Image.Image, int]:
    """The image [C, H, W] as an RGB picture scaled up by ``display_scale``, and that factor."""
    array = as_uint8_hwc(pixels)
    scale = display_scale(*array.shape[:2])
    picture = Image.fromarray(array, "RGB")
    if scale > 1:
        picture = picture.resize((array.shape[1] * scale, array.shape[0] * scale), Image.Resampling.NEAREST)
    return picture, scale


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def patch_grid(
    pixels: torch.Tensor | np.ndarray,
    positions: Sequence[tuple[int, int]],
    size: tuple[int, int],
    view_counts: np.ndarray,
    label: int,
    names: ClassNames,
) -> Image.Image:
    """The image with each patch's outline and its vote: the class most of its draws voted for and that share.

    ``view_counts`` [views, classes] are the votes of each patch; outlines are green where a patch's top class is
    ``label`` (the certified or candidate class), red elsewhere; text sits at the patch's centre.
    """
    picture, scale = enlarged(pixels)
    draw = ImageDraw.Draw(picture)
    font = _font(max(10, min(18, size[0] * scale // 5)))
    draws = max(1, int(view_counts[0].sum())) if len(view_counts) else 1
    for (top, left), votes in zip(positions, view_counts):
        top_class = int(np.argmax(votes))
        colour = AGREE if top_class == label else DISAGREE
        box = (left * scale, top * scale, (left + size[1]) * scale - 1, (top + size[0]) * scale - 1)
        draw.rectangle(box, outline=colour, width=max(1, scale // 4))
        text = f"{names(top_class)} {votes[top_class] / draws:.0%}"
        centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        draw.text(centre, text, fill=colour, font=font, anchor="mm", stroke_width=2, stroke_fill=(0, 0, 0))
    return picture


def frame_strip(clip: torch.Tensor, most: int = 16, columns: int = 8, side: int = 96) -> Image.Image:
    """Up to ``most`` frames of a clip [T, C, H, W] (evenly spaced) in rows of ``columns``, each scaled (nearest
    neighbour) to ``side`` pixels high."""
    frames = clip.shape[0]
    chosen = np.unique(np.linspace(0, frames - 1, min(most, frames)).round().astype(int))
    height, width = clip.shape[-2:]
    size = (max(1, round(width * side / height)), side)
    pictures = [Image.fromarray(as_uint8_hwc(clip[int(t)]), "RGB").resize(size, Image.Resampling.NEAREST) for t in chosen]
    gap, cols = 4, min(columns, len(pictures))
    rows = -(-len(pictures) // cols)
    sheet = Image.new("RGB", (cols * size[0] + gap * (cols - 1), rows * size[1] + gap * (rows - 1)), (255, 255, 255))
    for i, picture in enumerate(pictures):
        sheet.paste(picture, ((i % cols) * (size[0] + gap), (i // cols) * (size[1] + gap)))
    return sheet


def palette(classes: int) -> np.ndarray:
    """uint8 [classes, 3]: well separated colours (tab20), never the abstain colour."""
    from matplotlib import colormaps

    colours = colormaps["tab20"](np.arange(classes) % 20)[:, :3]
    return np.rint(colours * 255).astype(np.uint8)


def mask_picture(labels: np.ndarray, abstained: np.ndarray, classes: int) -> Image.Image:
    """The predicted mask [H, W] in class colours, abstained pixels magenta, scaled up for the screen."""
    colours = palette(classes)
    rgb = colours[np.clip(labels, 0, classes - 1)]
    rgb[abstained] = ABSTAIN_COLOUR
    return enlarged(rgb.transpose(2, 0, 1))[0]


def _figure(width: float = 6.0, height: float = 3.6):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def radius_heatmap(radii: np.ndarray, abstained: np.ndarray, title: str):
    """A figure of the per-pixel certified radius [H, W] (abstained pixels blank), with a colour bar."""
    figure = _figure(4.6, 3.8)
    axes = figure.add_subplot()
    shown = np.ma.masked_array(radii, mask=abstained)
    image = axes.imshow(shown, cmap="viridis", vmin=0.0, interpolation="nearest")
    figure.colorbar(image, ax=axes, label="certified L2 radius")
    axes.set_title(title, fontsize=9)
    axes.set_xticks([])
    axes.set_yticks([])
    return figure


def sample_size_plot(sizes: Sequence[int], radii: Sequence[float], n: int, radius: float, note: str):
    """Radius against the number of estimation samples at the observed vote shares, the run's n marked."""
    figure = _figure()
    axes = figure.add_subplot()
    axes.plot(sizes, radii, label="same vote shares, N samples")
    axes.plot([n], [radius], "o", color="black", label=f"this run: n = {n:,}")
    axes.set_xscale("log")
    axes.set_xlabel("estimation samples N")
    axes.set_ylabel("certified L2 radius")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    axes.set_title(note, fontsize=9)
    return figure


def subclip_plot(starts: Sequence[int], length: int, frames: int, view_counts: np.ndarray, label: int, names: ClassNames):
    """Each sub-clip's share of votes for ``label`` drawn over the frames it covers (its top class written above)."""
    figure = _figure()
    axes = figure.add_subplot()
    draws = max(1, int(view_counts[0].sum()))
    for start, votes in zip(starts, view_counts):
        share = votes[label] / draws
        top = int(np.argmax(votes))
        axes.hlines(share, start, start + length - 1, colors="tab:green" if top == label else "tab:red", linewidth=4)
        axes.annotate(names(top), ((2 * start + length - 1) / 2, share), textcoords="offset points", xytext=(0, 5),
                      ha="center", fontsize=8)
    axes.set_xlim(-0.5, frames - 0.5)
    axes.set_ylim(0, 1.08)
    axes.set_xlabel("frame")
    axes.set_ylabel(f"share of votes for {names(label)}")
    axes.grid(alpha=0.3)
    axes.set_title("votes of each sub-clip along time (green: its top class is the prediction)", fontsize=9)
    return figure


def eps_plot(curves: dict[str, tuple[Sequence[float], Sequence[float]]], ylabel: str):
    """Certified pixel ratio against the L2 budget ε, one line per named curve."""
    figure = _figure()
    axes = figure.add_subplot()
    for name, (eps, ratios) in curves.items():
        axes.plot(eps, ratios, marker="o", label=name, clip_on=False)
    axes.set_xlabel("L2 budget ε ([0, 1] pixel units)")
    axes.set_ylabel(ylabel)
    axes.set_ylim(0, 1.02)
    axes.grid(alpha=0.3)
    if curves:
        axes.legend(fontsize=8)
    axes.set_title("certified pixels against the L2 budget ε", fontsize=9)
    return figure
