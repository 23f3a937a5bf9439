"""What changed when most of the picture changed: the light, the view, or a crowd.

Pure functions on the blurred grey frame and the background model (float32, same size). The
motion detector asks only when a frame looks global (a large changed share, a low coarse
correlation or an exposure jump), so the cost here is paid in crowds and at light or view
changes, not on ordinary frames.

The three causes differ in what they do to the picture's fine texture, measured block by block
(16 x 16 pixels at 320 px wide) as the normalised cross-correlation of frame and model inside the
block:

- a **change of light** (auto-exposure, street lights, a cloud) multiplies the scene by a smooth
  gain: every textured block keeps its texture, so nearly all blocks still correlate;
- a **crowd** (a market, a busy crossing, a queue of cars) puts many separate textured objects in
  front of the background: the blocks they cover stop correlating, the blocks between them still
  correlate — a share in between;
- a **new view** (a PTZ move, a camera knocked, a shot cut) misaligns everything: nearly no block
  correlates, and when the camera panned, phase correlation of the coarse pictures finds one
  clear shift for the whole frame (a crowd has no common shift).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

Cause = Literal["lighting", "view", "crowd"]

BLOCK = 16  # block side, pixels of a 320-px frame (scaled with the detector's working scale)
# Block correlation above which a block still shows the background's texture, and below which
# its texture is gone (in between: undecided, counted in neither).
MATCH_NCC = 0.6
LOST_NCC = 0.35
# Shares of textured blocks that lost their texture: at most LIGHTING_SHARE is a change of light
# (a few blocks clip or hold a passer-by), at least VIEW_SHARE a new view.
LIGHTING_SHARE = 0.2
VIEW_SHARE = 0.85
# A crowd leaves the background visible between its members, so the coarse correlation of the
# whole frame with the model stays clearly positive; below VIEW_SIMILARITY with at least
# VIEW_SHARE_DECORRELATED of the blocks lost, the view itself changed.
VIEW_SIMILARITY = 0.25
VIEW_SHARE_DECORRELATED = 0.5
# Fewer textured blocks than this share of the usable ones: a flat picture (fog, night sky, a
# covered lens) where texture cannot tell; treated as a change of light, as before.
MIN_TEXTURED_SHARE = 0.1
# Phase correlation: a shift of at least this many pixels of a 320-px frame, with at least this
# response, is the camera moving (pan / tilt).
PAN_MIN_SHIFT_PX = 3.0
PAN_MIN_RESPONSE = 0.12
# ... and once the model is moved by that shift, at most this share of textured blocks may stay
# lost (the strip the pan revealed, passers-by).
PAN_ALIGNED_SHARE = 0.35
# ... and no more than this fraction of the unshifted share (the shift must explain the change).
PAN_GAIN = 0.6
# Width of the coarse picture the phase correlation works on (pixels): sub-pixel shifts are
# still measured right, and a pan of a tenth of the frame per analysed frame is well inside.
PAN_WIDTH = 80


@dataclass(frozen=True)
class Verdict:
    """Why most of the picture changed."""

    cause: Cause
    lost_share: float  # share of textured blocks whose texture no longer matches the model
    textured_blocks: int
    gain: float  # exposure gain measured on the blocks that still show the background
    shift: tuple[float, float] | None = None  # (dx, dy) in pixels when the camera panned
    shift_response: float = 0.0


def _block_means(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)


def view_shift(frame: np.ndarray, model: np.ndarray) -> tuple[tuple[float, float], float]:
    """((dx, dy) in pixels of ``frame``, response) of the global translation from the model to
    the frame, by phase correlation of both shrunk to about ``PAN_WIDTH`` wide (Hann-windowed)."""
    h, w = frame.shape
    shrink = max(1, round(w / PAN_WIDTH))
    cw, ch = max(8, w // shrink), max(8, h // shrink)
    a = cv2.resize(model, (cw, ch), interpolation=cv2.INTER_AREA)
    b = cv2.resize(frame, (cw, ch), interpolation=cv2.INTER_AREA)
    window = cv2.createHanningWindow((cw, ch), cv2.CV_32F)
    (dx, dy), response = cv2.phaseCorrelate(a, b, window)
    return (float(dx) * w / cw, float(dy) * h / ch), float(response)


def _texture_stats(
    f: np.ndarray, m: np.ndarray, use: np.ndarray, block: int, floor: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per block: (textured, lost, matching, model mean and frame mean stacked) for two
    pictures cropped to whole blocks."""
    shape = (f.shape[0] // block, f.shape[1] // block)
    mf = _block_means(f, shape)
    mm = _block_means(m, shape)
    var_f = _block_means(f * f, shape) - mf * mf
    var_m = _block_means(m * m, shape) - mm * mm
    cov = _block_means(f * m, shape) - mf * mm
    textured = use & ((var_m > floor) | (var_f > floor))
    ncc = cov / np.sqrt(np.maximum(var_f, floor) * np.maximum(var_m, floor))
    return textured, textured & (ncc < LOST_NCC), textured & (ncc > MATCH_NCC), np.stack([mm, mf])


def _lost_share(textured: np.ndarray, lost: np.ndarray) -> float:
    return float(np.count_nonzero(lost)) / max(1, int(np.count_nonzero(textured)))


def _shifted_lost_share(
    frame: np.ndarray,
    model: np.ndarray,
    use: np.ndarray,
    block: int,
    floor: float,
    shift: tuple[float, float],
) -> float:
    """Share of textured blocks still lost once the model is moved by ``shift``: near zero for
    a pan (the whole view moved), higher than unshifted for a crowd (the street did not move)."""
    dx, dy = round(shift[0]), round(shift[1])
    h, w = frame.shape
    # The part of the frame that the shifted model covers, in whole blocks.
    x0, y0 = max(0, dx), max(0, dy)
    x1, y1 = min(w, w + dx), min(h, h + dy)
    bx0, by0 = -(-x0 // block), -(-y0 // block)
    bx1, by1 = x1 // block, y1 // block
    if bx1 - bx0 < 2 or by1 - by0 < 2:
        return 1.0
    f = frame[by0 * block : by1 * block, bx0 * block : bx1 * block]
    m = model[by0 * block - dy : by1 * block - dy, bx0 * block - dx : bx1 * block - dx]
    textured, lost, _, _ = _texture_stats(f, m, use[by0:by1, bx0:bx1], block, floor)
    return _lost_share(textured, lost)


def classify(
    frame: np.ndarray,
    model: np.ndarray,
    usable: np.ndarray,
    noise_sigma: float,
    scale: float = 1.0,
    similarity: float = 1.0,
) -> Verdict:
    """Tell a change of light, a new view and a crowd apart (see the module docstring).

    ``frame`` and ``model``: blurred grey float32 pictures of one size; ``usable``: uint8, non-zero
    where analysed (outside ignore/privacy masks); ``noise_sigma``: the frame's noise level in
    grey levels (blocks whose contrast is within noise carry no texture); ``scale``: the
    detector's working scale (blocks and shifts are sized for a 320-px frame); ``similarity``:
    the coarse correlation of the whole frame with the model."""
    h, w = frame.shape
    block = max(4, round(BLOCK * scale))
    bh, bw = max(1, h // block), max(1, w // block)
    ch, cw = bh * block, bw * block
    use = _block_means(usable[:ch, :cw].astype(np.float32), (bh, bw)) > 0.5 * float(
        usable.max() or 1
    )
    # Texture floor: a block's contrast must stand clear of the noise (the frames are blurred:
    # what is left of the noise is a fraction of the sensor's, hence the square of 2 sigma).
    floor = max(9.0, (2.0 * noise_sigma) ** 2)
    textured, lost, matching, means = _texture_stats(
        frame[:ch, :cw], model[:ch, :cw], use, block, floor
    )
    n_textured = int(np.count_nonzero(textured))
    lost_share = _lost_share(textured, lost)
    # Gain from the blocks that still show the background (a crowd does not bias it).
    mm, mf = means
    ok = matching & (mm > 12.0)
    gain = float(np.median(mf[ok] / mm[ok])) if np.count_nonzero(ok) >= 4 else 1.0
    if n_textured < MIN_TEXTURED_SHARE * max(1, int(np.count_nonzero(use))):
        return Verdict("lighting", lost_share, n_textured, gain)
    (dx, dy), response = view_shift(frame, model)
    if response >= PAN_MIN_RESPONSE and max(abs(dx), abs(dy)) >= 1.0:
        # A clear common shift; it is the camera's only if moving the model by it lines the
        # street up again (many walkers going one way also give a shift, but not that). Even a
        # pixel or two of it (a dome braking, a pole in the wind) loses fine texture everywhere.
        shifted = _shifted_lost_share(frame, model, use, block, floor, (dx, dy))
        if shifted <= PAN_ALIGNED_SHARE and shifted < PAN_GAIN * lost_share:
            moved = (dx * dx + dy * dy) ** 0.5 >= PAN_MIN_SHIFT_PX * scale
            return Verdict(
                "view", lost_share, n_textured, gain, (dx, dy) if moved else None, response
            )
    if lost_share >= VIEW_SHARE or (
        similarity < VIEW_SIMILARITY and lost_share >= VIEW_SHARE_DECORRELATED
    ):
        return Verdict("view", lost_share, n_textured, gain, None, response)
    if lost_share <= LIGHTING_SHARE:
        return Verdict("lighting", lost_share, n_textured, gain)
    return Verdict("crowd", lost_share, n_textured, gain)


def camera_moved(
    frame: np.ndarray,
    model: np.ndarray,
    usable: np.ndarray,
    noise_sigma: float,
    scale: float = 1.0,
) -> Verdict | None:
    """A "view" verdict when the whole picture moved by one shift (the first frames of a slow
    pan, before most of the picture has changed), else None. For frames that do not look
    global yet: only the phase correlation and, when it finds a shift, the alignment check."""
    (dx, dy), response = view_shift(frame, model)
    if response < PAN_MIN_RESPONSE or max(abs(dx), abs(dy)) < PAN_MIN_SHIFT_PX * scale:
        return None
    h, w = frame.shape
    block = max(4, round(BLOCK * scale))
    bh, bw = max(1, h // block), max(1, w // block)
    ch, cw = bh * block, bw * block
    use = _block_means(usable[:ch, :cw].astype(np.float32), (bh, bw)) > 0.5 * float(
        usable.max() or 1
    )
    floor = max(9.0, (2.0 * noise_sigma) ** 2)
    textured, lost, _, _ = _texture_stats(frame[:ch, :cw], model[:ch, :cw], use, block, floor)
    lost_share = _lost_share(textured, lost)
    shifted = _shifted_lost_share(frame, model, use, block, floor, (dx, dy))
    if shifted <= PAN_ALIGNED_SHARE and shifted < PAN_GAIN * lost_share:
        return Verdict("view", lost_share, int(np.count_nonzero(textured)), 1.0, (dx, dy), response)
    return None
