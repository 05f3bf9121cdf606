"""Pictures and plots of the app: inputs scaled up for the screen, each patch's vote, frame strips, segmentation
masks with their legend and radius maps, a perturbation inside the certified ball, and matplotlib figures
(``matplotlib.figure.Figure``, never pyplot's global figure list, so a figure is freed when the page no longer holds
it)."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

DISPLAY_SIDE = 256
"""Small inputs are scaled up (nearest neighbour, whole factors up to 16) until their short side reaches this."""
ABSTAIN_COLOUR = (255, 0, 255)
"""Abstained pixels in the mask picture: magenta, a colour no class gets."""
AGREE, DISAGREE = (40, 200, 60), (230, 50, 40)
TILE_SIDE = 96
"""Pixels of the longer side of a patch's tile in the Smooth-Reduce picture."""
PATCHES_SHOWN = 36
"""Most patches the Smooth-Reduce picture draws."""
LEGEND_FONT = 13
TITLE_FONT = 15
LEGEND_WIDTH = 360
"""Pictures with a legend are at least this wide, so that it reads in a few lines."""

ClassNames = Callable[[int], str]
Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


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


@functools.cache
def _font(size: int) -> Font:
    """DejaVu Sans (shipped with matplotlib: it has ×, δ, σ and ‖) at ``size`` pixels; Pillow's own font without it."""
    from matplotlib import font_manager

    try:
        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except OSError:
        return ImageFont.load_default(size=size)


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font: Font, width: float) -> str:
    """``text``, cut and ended with '…' if it is wider than ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _wrapped(draw: ImageDraw.ImageDraw, text: str, font: Font, width: float) -> list[str]:
    """``text`` broken into lines of at most ``width`` pixels, at spaces."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def _with_legend(picture: Image.Image, lines: Sequence[str], swatches: Sequence[tuple[int, int, int] | None] = (),
                 min_width: int = LEGEND_WIDTH) -> Image.Image:
    """``picture`` on a white sheet (at least ``min_width`` wide) with a legend under it: one line per entry, each
    after a colour swatch when ``swatches`` gives one, wrapped to the sheet's width."""
    font = _font(LEGEND_FONT)
    width = max(picture.width, min_width)
    probe = ImageDraw.Draw(picture)
    indent = LEGEND_FONT + 6
    indent = indent if any(swatches) else 0
    rows: list[tuple[str, tuple[int, int, int] | None]] = []
    for line, swatch in zip(lines, [*swatches, *[None] * (len(lines) - len(swatches))]):
        for k, part in enumerate(_wrapped(probe, line, font, width - 8 - indent)):
            rows.append((part, swatch if k == 0 else None))
    line_height = LEGEND_FONT + 6
    sheet = Image.new("RGB", (width, picture.height + 8 + line_height * len(rows)), (255, 255, 255))
    sheet.paste(picture, ((width - picture.width) // 2, 0))
    draw = ImageDraw.Draw(sheet)
    for i, (text, swatch) in enumerate(rows):
        y = picture.height + 6 + i * line_height
        if swatch is not None:
            draw.rectangle((4, y + 2, 4 + LEGEND_FONT, y + 2 + LEGEND_FONT), fill=swatch, outline=(0, 0, 0))
        draw.text((4 + indent, y), text, fill=(20, 20, 20), font=font)
    return sheet


def titled(picture: Image.Image, title: str) -> Image.Image:
    """``picture`` under a bold-ish title line, centred on a white band (pictures carry their own title)."""
    font = _font(TITLE_FONT)
    band = TITLE_FONT + 12
    probe = ImageDraw.Draw(picture)
    width = max(picture.width, int(probe.textlength(title, font=font)) + 16)
    sheet = Image.new("RGB", (width, picture.height + band), (255, 255, 255))
    sheet.paste(picture, ((width - picture.width) // 2, band))
    ImageDraw.Draw(sheet).text((width / 2, 4), title, fill=(20, 20, 20), font=font, anchor="ma")
    return sheet


def _tile_grid(positions: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """(row, column) of each patch on the screen: its place in the grid of distinct tops and lefts when the patches
    form one (a stride), else in reading order, rows of about √k."""
    tops, lefts = sorted({top for top, _ in positions}), sorted({left for _, left in positions})
    if len(tops) * len(lefts) == len(positions):
        return [(tops.index(top), lefts.index(left)) for top, left in positions]
    columns = max(1, round(len(positions) ** 0.5))
    return [divmod(i, columns) for i in range(len(positions))]


def patch_votes(
    pixels: torch.Tensor | np.ndarray,
    positions: Sequence[tuple[int, int]],
    size: tuple[int, int],
    view_counts: np.ndarray,
    label: int,
    names: ClassNames,
    target: str,
    most: int = PATCHES_SHOWN,
) -> Image.Image:
    """What each patch sees and how it votes: one tile per patch (its crop of the input, enlarged), laid out like the
    patches, framed green when its top class is ``label`` and red otherwise, its top class and vote share under it,
    and a legend that says so (``target`` names ``label``, e.g. 'digit 8, the certified class').

    ``view_counts`` [views, classes] are each patch's votes; at most ``most`` patches are drawn (evenly chosen).
    """
    array = as_uint8_hwc(pixels)
    shown = np.unique(np.linspace(0, len(positions) - 1, min(most, len(positions))).round().astype(int))
    places = _tile_grid([positions[i] for i in shown])
    rows, columns = 1 + max(r for r, _ in places), 1 + max(c for _, c in places)
    side = TILE_SIDE
    tile_h, tile_w = (side, max(1, round(side * size[1] / size[0]))) if size[0] >= size[1] else (
        max(1, round(side * size[0] / size[1])), side)
    frame, caption, gap = 4, LEGEND_FONT + 8, 10
    cell_w, cell_h = tile_w + 2 * frame, tile_h + 2 * frame + caption
    sheet = Image.new("RGB", (columns * cell_w + (columns - 1) * gap, rows * cell_h + (rows - 1) * gap), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = _font(LEGEND_FONT)
    draws = max(1, int(view_counts[0].sum())) if len(view_counts) else 1
    for i, (row, column) in zip(shown, places):
        (top, left), votes = positions[i], view_counts[i]
        top_class = int(np.argmax(votes))
        colour = AGREE if top_class == label else DISAGREE
        x, y = column * (cell_w + gap), row * (cell_h + gap)
        crop = Image.fromarray(np.ascontiguousarray(array[top:top + size[0], left:left + size[1]]), "RGB")
        draw.rectangle((x, y, x + cell_w - 1, y + tile_h + 2 * frame - 1), fill=colour)
        sheet.paste(crop.resize((tile_w, tile_h), Image.Resampling.NEAREST), (x + frame, y + frame))
        text = _fit_text(draw, f"{names(top_class)} {votes[top_class] / draws:.0%}", font, cell_w)
        draw.text((x + cell_w / 2, y + tile_h + 2 * frame + 2), text, fill=colour, font=font, anchor="ma")
    subset = "" if len(shown) == len(positions) else f" ({len(shown)} of {len(positions)} patches, evenly chosen)"
    what = (f"Each tile is one {size[0]}×{size[1]} patch as the model sees it, placed like the patches{subset}, with "
            f"its top class and that class's share of {draws:,} separate draws:")
    legend = _with_legend(sheet, [what, f"green frame: its top class is {target};", "red frame: another class."],
                          [None, AGREE, DISAGREE])
    return titled(legend, "Smooth-Reduce: what each patch sees and how it votes")


def frame_strip(clip: torch.Tensor, columns: int = 8) -> Image.Image:
    """Every frame of a clip [T, C, H, W] in rows of ``columns``, each scaled (nearest neighbour) to a height that
    shrinks as the clip gets longer (96 pixels up to 16 frames, 64 up to 32, then 48), numbered from 0."""
    frames = clip.shape[0]
    side = 96 if frames <= 16 else 64 if frames <= 32 else 48
    height, width = clip.shape[-2:]
    size = (max(1, round(width * side / height)), side)
    font = _font(max(10, side // 6))
    gap, cols = 4, min(columns, frames)
    rows = -(-frames // cols)
    sheet = Image.new("RGB", (cols * size[0] + gap * (cols - 1), rows * size[1] + gap * (rows - 1)), (255, 255, 255))
    for t in range(frames):
        picture = Image.fromarray(as_uint8_hwc(clip[t]), "RGB").resize(size, Image.Resampling.NEAREST)
        ImageDraw.Draw(picture).text((3, 2), str(t), fill=(255, 255, 255), font=font, stroke_width=2,
                                     stroke_fill=(0, 0, 0))
        sheet.paste(picture, ((t % cols) * (size[0] + gap), (t // cols) * (size[1] + gap)))
    return sheet


def palette(classes: int) -> np.ndarray:
    """uint8 [classes, 3]: well separated colours (tab20), never the abstain colour."""
    from matplotlib import colormaps

    colours = colormaps["tab20"](np.arange(classes) % 20)[:, :3]
    return np.rint(colours * 255).astype(np.uint8)


def mask_picture(labels: np.ndarray, abstained: np.ndarray, classes: int, names: ClassNames, title: str) -> Image.Image:
    """The predicted mask [H, W] in class colours, abstained pixels magenta, scaled up for the screen, under ``title``
    and over a legend of the classes it shows."""
    colours = palette(classes)
    clipped = np.clip(labels, 0, classes - 1)
    rgb = colours[clipped]
    rgb[abstained] = ABSTAIN_COLOUR
    present = sorted({int(c) for c in np.unique(clipped[~abstained])})
    entries = [names(c) for c in present] + (["abstained (no class certified)"] if abstained.any() else [])
    swatches = [tuple(int(v) for v in colours[c]) for c in present] + ([ABSTAIN_COLOUR] if abstained.any() else [])
    return titled(_with_legend(enlarged(rgb.transpose(2, 0, 1))[0], entries, swatches), title)  # type: ignore[arg-type]


def _figure(width: float = 6.0, height: float = 3.6):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def radius_heatmap(radii: np.ndarray, abstained: np.ndarray, title: str):
    """A figure of the per-pixel certified radius [H, W] with a colour bar (its median over the certified pixels in
    the bar's label); abstained pixels (no radius) magenta."""
    from matplotlib import colormaps
    from matplotlib.patches import Patch

    figure = _figure(4.6, 3.8)
    axes = figure.add_subplot()
    colours = colormaps["viridis"].with_extremes(bad=np.array(ABSTAIN_COLOUR) / 255)
    image = axes.imshow(np.ma.masked_array(radii, mask=abstained), cmap=colours, vmin=0.0, interpolation="nearest")
    median = float(np.median(radii[~abstained])) if (~abstained).any() else 0.0
    figure.colorbar(image, ax=axes, label=f"certified L2 radius (median {median:.3f})")
    if abstained.any():
        axes.legend(handles=[Patch(color=np.array(ABSTAIN_COLOUR) / 255, label="abstained (no radius)")],
                    loc="upper center", bbox_to_anchor=(0.5, -0.02), fontsize=8, frameon=False)
    axes.set_title(title, fontsize=10)
    axes.set_xticks([])
    axes.set_yticks([])
    return figure


def sample_size_plot(sizes: Sequence[int], radii: Sequence[float], n: int, radius: float, shares: str, sigma: float,
                     alpha: float):
    """Radius against the number of estimation samples N at the observed vote shares (``shares`` says which), the
    run's n marked."""
    figure = _figure()
    axes = figure.add_subplot()
    axes.plot(sizes, radii, label=f"N samples {shares}")
    axes.plot([n], [radius], "o", color="black", label=f"this run: n = {n:,} (σ = {sigma:g}, α = {alpha:g})")
    axes.set_xscale("log")
    axes.set_xlabel("estimation samples N")
    axes.set_ylabel("certified L2 radius")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    axes.set_title("Radius that N estimation samples would certify", fontsize=10)
    return figure


def subclip_plot(starts: Sequence[int], length: int, frames: int, view_counts: np.ndarray, label: int, names: ClassNames):
    """Each sub-clip's share of votes for ``label`` drawn over the frames it covers (its top class written above)."""
    from matplotlib.lines import Line2D

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
    axes.legend(handles=[Line2D([], [], color="tab:green", linewidth=4, label=f"its top class is {names(label)}"),
                         Line2D([], [], color="tab:red", linewidth=4, label="another class (written above)")],
                fontsize=8, loc="lower right")
    axes.set_title("Votes of each sub-clip along time", fontsize=10)
    return figure


CURVE_STYLES = (dict(linestyle="-", marker="o", markersize=9, markerfacecolor="none", linewidth=2.5),
                dict(linestyle="--", marker="s", markersize=5, linewidth=1.5),
                dict(linestyle=":", marker="^", markersize=5, linewidth=1.5))
"""Line and marker of each curve in turn: curves that coincide stay visible (a wide hollow one under thin ones)."""


def eps_plot(curves: dict[str, tuple[Sequence[float], Sequence[float]]], ylabel: str):
    """Certified pixel ratio against the L2 budget ε, one line per named curve, each drawn differently."""
    figure = _figure()
    axes = figure.add_subplot()
    for (name, (eps, ratios)), style in zip(curves.items(), itertools.cycle(CURVE_STYLES)):
        axes.plot(eps, ratios, label=name, clip_on=False, **style)
    axes.set_xlabel("L2 budget ε ([0, 1] pixel units)")
    axes.set_ylabel(ylabel)
    axes.set_ylim(0, 1.02)
    axes.grid(alpha=0.3)
    if curves:
        axes.legend(fontsize=8)
    axes.set_title("Certified pixels against the L2 budget ε", fontsize=10)
    return figure


def ball_picture(original: torch.Tensor, perturbed: torch.Tensor, titles: Sequence[str]) -> Image.Image:
    """Three panels of images [C, H, W] in [0, 1], each scaled up for the screen with its title above: the input, the
    perturbed input, and the perturbation (grey is 0; its largest change reaches black or white), under the title
    "One perturbation inside the certified ball"."""
    delta = (perturbed - original).float()
    largest = float(delta.abs().max()) or 1.0
    panels = [enlarged(original)[0], enlarged(perturbed)[0], enlarged((0.5 + delta / (2 * largest)).clamp(0, 1))[0]]
    font = _font(LEGEND_FONT)
    gap, head = 12, LEGEND_FONT + 10
    width = sum(panel.width for panel in panels) + gap * (len(panels) - 1)
    sheet = Image.new("RGB", (width, head + max(panel.height for panel in panels)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    x = 0
    for panel, title in zip(panels, titles):
        sheet.paste(panel, (x, head))
        draw.text((x + panel.width / 2, 2), _fit_text(draw, title, font, panel.width), fill=(20, 20, 20), font=font,
                  anchor="ma")
        x += panel.width + gap
    return titled(sheet, "One perturbation inside the certified ball")
