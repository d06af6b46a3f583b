"""Matplotlib figures of `capsrun eval` and `capsrun visualize` (Agg backend, no display needed).

Every figure has a fixed size in inches, so a PNG saved at `dpi` has a predictable size in
pixels (documented per function; `png_size` reads it back). Images are float arrays in [0, 1]
or uint8 arrays, shaped [N, H, W], [N, H, W, 1] (grayscale, white digit on black) or
[N, H, W, 3] (colour).
"""
import io
import math
import textwrap
from typing import Any, Dict, List, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

GRID_COLUMNS = 10
PANEL_COLUMNS = 5


def _displayable(image):
    """[H, W], [H, W, C] uint8/float -> float [H, W] or [H, W, 3] in [0, 1]; C other than 1, 3, 4
    (smallNORB stereo pairs) side by side as one grey [H, W * C]."""
    image = np.asarray(image)
    image = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
    if image.ndim == 3 and image.shape[-1] not in (3, 4):  # e.g. a smallNORB stereo pair: the cameras side by side
        image = np.concatenate(list(np.moveaxis(image, -1, 0)), axis=1)
    image = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
    if image.size and (image.min() < 0 or image.max() > 1):  # standardised inputs: stretched to [0, 1]
        image = (image - image.min()) / max(float(image.max() - image.min()), 1e-6)
    return np.clip(image, 0.0, 1.0)


def _imshow(axis, image, **kwargs):
    image = _displayable(image)
    axis.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest",
                **kwargs)


def _show(axis, image):
    _imshow(axis, image)
    axis.set_xticks([])
    axis.set_yticks([])


def _suptitle(figure, *paragraphs):
    """A figure title wrapped to the figure's width (smaller type on narrow figures)."""
    width, height = figure.get_size_inches()
    size = 10 if width >= 7 else 8
    chars = max(24, int(width * 72 / (size * 0.55)))
    lines = [line for paragraph in paragraphs for line in textwrap.wrap(paragraph, chars)]
    figure.suptitle("\n".join(lines), fontsize=size, y=1.0 - 0.06 / height)


def to_png(figure: Any, dpi: int) -> bytes:
    """The figure as PNG bytes, exactly figsize * dpi pixels; the figure is closed."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    plt.close(figure)
    return buffer.getvalue()


def png_size(png: bytes) -> Tuple[int, int]:
    """(width, height) in pixels of PNG bytes, read from the IHDR chunk."""
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def confusion_matrix_figure(confusion: np.ndarray, title: str) -> Any:
    """confusion: int [J, J], rows = true class, columns = predicted class.

    Cells are coloured by the fraction of their true class and annotated with counts.
    Size: 7.0 x 6.0 inches.
    """
    confusion = np.asarray(confusion)
    classes = confusion.shape[0]
    totals = confusion.sum(axis=1, keepdims=True)
    fractions = np.divide(confusion, totals, out=np.zeros(confusion.shape, dtype=np.float64), where=totals > 0)
    figure, axis = plt.subplots(figsize=(7.0, 6.0), layout="constrained")
    shown = axis.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    for true in range(classes):
        for predicted in range(classes):
            count = int(confusion[true, predicted])
            if count:
                axis.text(predicted, true, str(count), ha="center", va="center", fontsize=8,
                          color="white" if fractions[true, predicted] > 0.5 else "black")
    axis.set_xticks(range(classes))
    axis.set_yticks(range(classes))
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    axis.set_title(title, fontsize=10)
    figure.colorbar(shown, ax=axis, label="fraction of the true class's test digits")
    return figure


def _classes(value):
    """A class int, or K classes int [K] -> "3" or "(3,7)"."""
    value = np.asarray(value)
    return str(int(value)) if value.ndim == 0 else "(" + ",".join(str(int(k)) for k in value) + ")"


def _lengths(value):
    value = np.asarray(value)
    return f"{float(value):.2f}" if value.ndim == 0 else ", ".join(f"{float(v):.2f}" for v in value)


def misclassified_figure(images: np.ndarray, labels: np.ndarray, predicted: np.ndarray, confidences: np.ndarray,
                         indices: Sequence[int], total_wrong: int, title: str) -> Any:
    """A grid of misclassified images, 10 per row, each captioned "#index: true -> predicted".

    images: [N, H, W(, C)]; indices: int [N]; labels, predicted: int [N], or int [N, K] for K
    digits per image (shown as pairs); confidences: float [N] (or [N, K]), the lengths of the
    predicted capsules. Size: 11.0 x (0.8 + 1.3 * rows) inches, rows = ceil(N / 10), at least 1
    (a note when nothing is misclassified).
    """
    count = len(images)
    rows = max(1, math.ceil(count / GRID_COLUMNS))
    figure, axes = plt.subplots(rows, GRID_COLUMNS, figsize=(1.1 * GRID_COLUMNS, 0.8 + 1.3 * rows),
                                squeeze=False)
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=1.0 - 0.75 / (0.8 + 1.3 * rows),
                           hspace=0.45, wspace=0.1)
    for slot, axis in enumerate(axes.flat):
        if slot >= count:
            axis.axis("off")
            continue
        _show(axis, images[slot])
        axis.set_title(f"#{indices[slot]}: {_classes(labels[slot])} \u2192 {_classes(predicted[slot])}\n"
                       f"({_lengths(confidences[slot])})", fontsize=8 if np.ndim(labels) == 1 else 7,
                       color="firebrick")
    what = "test digits" if np.ndim(labels) == 1 else "test images"
    if count == 0:
        axes[0, 0].text(0.0, 0.5, f"no misclassified {what}", fontsize=12, transform=axes[0, 0].transAxes)
    shown = f"all {count}" if count == total_wrong else f"the first {count} of {total_wrong}"
    classes = "class" if np.ndim(labels) == 1 else "classes"
    _suptitle(figure, title, f"Misclassified {what} ({shown}): #test index: true \u2192 predicted {classes} "
              f"(length of the predicted capsule{'' if np.ndim(labels) == 1 else 's'})")
    return figure


def _paired_rows(tops, bottoms, top_titles, bottom_titles, wrong, row_names, caption):
    """Pairs of rows, 10 images per row: tops [N, H, W(, C)] above bottoms [N, H, W(, C)], each
    titled; bottom titles red where wrong (bool [N]). Size: 11.0 x (0.8 + 2.3 * groups) inches,
    groups = ceil(N / 10)."""
    count = len(tops)
    groups = max(1, math.ceil(count / GRID_COLUMNS))
    height = 0.8 + 2.3 * groups
    figure, axes = plt.subplots(2 * groups, GRID_COLUMNS, figsize=(1.1 * GRID_COLUMNS, height), squeeze=False)
    figure.subplots_adjust(left=0.08, right=0.99, bottom=0.02, top=1.0 - 0.7 / height, hspace=0.35, wspace=0.1)
    for group in range(groups):
        for column in range(GRID_COLUMNS):
            slot = group * GRID_COLUMNS + column
            top, bottom = axes[2 * group, column], axes[2 * group + 1, column]
            if slot >= count:
                top.axis("off")
                bottom.axis("off")
                continue
            _show(top, tops[slot])
            _show(bottom, bottoms[slot])
            top.set_title(top_titles[slot], fontsize=8)
            bottom.set_title(bottom_titles[slot], fontsize=8, color="firebrick" if wrong[slot] else "black")
        axes[2 * group, 0].set_ylabel(row_names[0], fontsize=8)
        axes[2 * group + 1, 0].set_ylabel(row_names[1], fontsize=8)
    _suptitle(figure, caption)
    return figure


def reconstructions_figure(images: np.ndarray, reconstructions: np.ndarray, labels: np.ndarray, predicted: np.ndarray,
                           indices: Sequence[int]) -> Any:
    """Pairs of rows: test digits above their reconstructions from the predicted capsule.

    images, reconstructions: [N, H, W(, 1)]; labels, predicted, indices: int [N].
    Size: 11.0 x (0.8 + 2.3 * groups) inches, groups = ceil(N / 10).
    """
    return _paired_rows(
        images, reconstructions, [f"#{index}: {label}" for index, label in zip(indices, labels, strict=True)],
        [f"as {value}" for value in predicted], np.asarray(predicted) != np.asarray(labels),
        ("test digit", "reconstruction"),
        "Test digits (#index: true class) and the decoder's reconstruction from the predicted digit capsule "
        "(as: predicted class; red = wrong)")


OVERLAY_BACKGROUND = 0.35
"""Brightness of the grey input under the coloured reconstructions of a Figure 5 overlay."""


def colour_overlay(image: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
    """The paper's Figure 5 picture of one image: the input in dim grey, the reconstruction of the
    first digit added to the red channel and that of the second to the green one (overlap: yellow).

    image: float [H, W, 1] in [0, 1]; reconstructions: float [2, H, W, 1]. Returns float [H, W, 3].
    """
    grey = OVERLAY_BACKGROUND * np.asarray(image, np.float32)[..., 0]
    first, second = (np.asarray(part, np.float32)[..., 0] for part in reconstructions)
    return np.clip(np.stack([grey + first, grey + second, grey], axis=-1), 0.0, 1.0)


def multimnist_figure(images: np.ndarray, reconstructions: np.ndarray, labels: np.ndarray, predicted: np.ndarray,
                      indices: Sequence[int]) -> Any:
    """The paper's Figure 5: MultiMNIST test images above the two digits reconstructed separately,
    each from its own capsule, in red and green over the input in grey.

    images: float [N, H, W, 1]; reconstructions: float [N, 2, H, W, 1] from the capsules of
    predicted[:, 0] (red) and predicted[:, 1] (green); labels, predicted: int [N, 2]; indices: int
    [N]. Size: 11.0 x (0.8 + 2.3 * groups) inches, groups = ceil(N / 10).
    """
    overlays = [colour_overlay(image, pair) for image, pair in zip(images, reconstructions, strict=True)]
    wrong = [sorted(map(int, label)) != sorted(map(int, guess)) for label, guess in zip(labels, predicted, strict=True)]
    return _paired_rows(
        images, overlays, [f"#{index} L:{_classes(label)}" for index, label in zip(indices, labels, strict=True)],
        [f"R:{_classes(guess)}" for guess in predicted], wrong, ("test image", "reconstructions"),
        "MultiMNIST test images (#index, L: the two true digits) and each digit reconstructed from its own "
        "capsule, R: the two longest capsules, first in red, second in green (yellow where they overlap), over "
        "the input in grey; red caption = not both digits right (Sabour et al. 2017, Figure 5)")


def perturbations_figure(panels: List[Dict[str, Any]], deltas: np.ndarray) -> Any:
    """The paper's Figure 4 for several digits, one panel per digit.

    panels: list of dicts with `grid` [D, S, H, W(, C)] (row d: dimension d of the winning capsule
    shifted by each of the S `deltas`), `index`, `label`, `predicted`. Panels sit 5 per row.
    Size: (3.4 * columns) x (0.7 + rows * (1.0 + 2.7 * D * H / (S * W))) inches.
    """
    count = len(panels)
    columns = min(count, PANEL_COLUMNS)
    rows = math.ceil(count / PANEL_COLUMNS)
    dims, steps, height, width = np.asarray(panels[0]["grid"]).shape[:4]
    image_width = 2.7
    image_height = image_width * dims * height / (steps * width)
    cell_width, cell_height, header = 3.4, 1.0 + image_height, 0.7
    figure = plt.figure(figsize=(cell_width * columns, header + rows * cell_height))
    total_width, total_height = figure.get_size_inches()
    for slot, panel in enumerate(panels):
        row, column = divmod(slot, columns)
        left = column * cell_width + 0.55
        bottom = total_height - header - (row + 1) * cell_height + 0.6
        axis = figure.add_axes((left / total_width, bottom / total_height,
                                image_width / total_width, image_height / total_height))
        grid = np.asarray(panel["grid"], dtype=np.float32).reshape(dims, steps, height, width, -1)
        mosaic = grid.transpose(0, 2, 1, 3, 4).reshape(dims * height, steps * width, grid.shape[-1])
        _imshow(axis, mosaic, aspect="auto")
        tick_columns = range(0, steps, max(1, steps // 5))
        axis.set_xticks([width * s + width / 2 - 0.5 for s in tick_columns])
        axis.set_xticklabels([f"{deltas[s]:+.2f}" for s in tick_columns], fontsize=7)
        tick_rows = range(0, dims, max(1, dims // 8))
        axis.set_yticks([height * d + height / 2 - 0.5 for d in tick_rows])
        axis.set_yticklabels([str(d + 1) for d in tick_rows], fontsize=7)
        axis.set_xlabel("change added to the dimension", fontsize=8)
        axis.set_ylabel("capsule dimension", fontsize=8)
        axis.set_title(f"test #{panel['index']}: true {panel['label']}, capsule {panel['predicted']}", fontsize=9)
    _suptitle(figure, f"What the {dims} dimensions of the winning digit capsule encode: each row adds "
              f"{deltas[0]:+.2f} \u2026 {deltas[-1]:+.2f} to one dimension and the decoder redraws the digit "
              "(Sabour et al. 2017, Figure 4)")
    return figure


def capsule_lengths_figure(images: np.ndarray, lengths: np.ndarray, labels: np.ndarray, indices: Sequence[int],
                           m_plus: float = 0.9, m_minus: float = 0.1) -> Any:
    """A bar chart of the J capsule lengths per image, with the image itself inset.

    images: [N, H, W(, 1)]; lengths: float [N, J]; indices: int [N]; labels: int [N], or int
    [N, K] for K digits per image (the K longest capsules are then the prediction).
    Panels sit 5 per row. Size: (3.0 * columns) x (0.9 + 2.4 * rows) inches.
    """
    lengths = np.asarray(lengths)
    count, classes = lengths.shape
    columns = min(count, PANEL_COLUMNS)
    rows = math.ceil(count / PANEL_COLUMNS)
    total_height = 0.9 + 2.4 * rows
    figure, axes = plt.subplots(rows, columns, figsize=(3.0 * columns, total_height), squeeze=False)
    figure.subplots_adjust(left=0.07, right=0.99, bottom=0.45 / total_height, top=1.0 - 0.9 / total_height,
                           hspace=0.6, wspace=0.3)
    for slot, axis in enumerate(axes.flat):
        if slot >= count:
            axis.axis("off")
            continue
        truth = np.atleast_1d(labels[slot])
        winners = np.sort(np.argsort(-lengths[slot], kind="stable")[: len(truth)])
        colours = ["tab:gray"] * classes
        for winner in winners:
            colours[winner] = "tab:green" if winner in truth else "tab:red"
        axis.bar(range(classes), lengths[slot], color=colours)
        axis.axhline(m_plus, color="tab:blue", linestyle="--", linewidth=0.8, label=f"m+ = {m_plus}")
        axis.axhline(m_minus, color="tab:orange", linestyle=":", linewidth=0.8, label=f"m- = {m_minus}")
        axis.set_ylim(0.0, 1.45)
        axis.set_yticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
        axis.set_xticks(range(classes))
        axis.tick_params(labelsize=7)
        axis.set_xlabel("class", fontsize=8)
        if slot % columns == 0:
            axis.set_ylabel("capsule length", fontsize=8)
        axis.set_title(f"test #{indices[slot]}: true {_classes(labels[slot])}, predicted "
                       f"{_classes(winners if len(truth) > 1 else winners[0])}", fontsize=9)
        inset = axis.inset_axes([0.01, 0.71, 0.2, 0.28])  # above the bars, which end at 1.0
        _show(inset, images[slot])
    axes[0, 0].legend(loc="upper right", fontsize=6, frameon=False)
    _suptitle(figure, "Length of each digit capsule = the network's confidence that the class is present "
              "(green: correct winner, red: wrong; with several digits per image, the longest capsules win)")
    return figure
