"""Motion detector: one analysed frame in, moving boxes and a score out.

Pure apart from its background model: ``MotionDetector.process(image) -> MotionResult``. No clock,
no I/O; the caller owns timing (``guetteur.analytics.events``) and privacy blackout (``guetteur.analytics.masks``).

Pipeline, per frame (designed for ~320x180 at 5 fps on a Raspberry Pi; docs/motion.md has the
details and the measurements behind the limits):

1. grey level; the background model is kept unblurred, comparisons blur both (``blur``);
2. **exposure compensation**: the median ratio frame/model over well-exposed pixels is the global
   gain (auto-exposure, clouds, lights). The model is rescaled by it and clipped at 255 (which
   predicts the camera's own clipping), so a brightness change is not motion; a jump above
   ``exposure_jump`` in one frame is a global change;
3. **scene change**: a low correlation of frame and model on a coarse grid
   (``scene_change_similarity``) means a new view (PTZ move, shot change): global change;
4. absolute difference; **threshold**: the larger of ``threshold`` scaled down in dark scenes
   (floor ``min_threshold``) and ``noise_factor`` x the robust sensor noise (capped), so night
   noise does not trip it. The noise is the median absolute difference / 0.6745 over the
   flattest quarter of the picture only, where camera shake, a freshly re-seeded background and
   moving edges leave (almost) no residual;
5. ignore and privacy masks removed; more than ``global_change_ratio`` of the usable frame
   changed: global change. A global change re-seeds the model and reports no motion;
6. dilation (``dilate``), external contours, blobs smaller than ``min_area`` dropped, and blobs
   whose fine texture still matches the model's (``illumination_similarity``: headlights, a
   shadow) dropped as light, not motion;
7. model update: running average (``background_alpha``) where nothing moves; changed pixels are
   not learnt (a slow walker does not smear into the model), except pixels changed for
   ``absorb_frames`` frames in a row, copied in at once: no lasting **ghosts** (a parked car that
   leaves), and objects that stopped are absorbed.

``MotionResult.score`` is the fraction of the usable frame area (outside ignore/privacy masks)
covered by the kept moving blobs (0..1).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np

from guetteur.analytics.masks import NormPolygon, PolygonMask
from guetteur.config import MotionConfig
from guetteur.media.types import Box

# Pixels darker than this (background grey level) or brighter than _SATURATED say little about
# the exposure gain (noise floor, clipping) and are left out of its estimate.
_GAIN_MIN_LEVEL = 12.0
_SATURATED = 250.0
_CRUSHED = 3
# Grey level of a normally exposed scene: below it the fixed threshold scales down.
_REFERENCE_LEVEL = 128.0
# Highest noise-adaptive threshold, as a multiple of the configured threshold.
_NOISE_CAP = 2.0
# Scene-change test: width of the coarse grid, and the variance (grey levels squared) under which
# a picture is too flat to compare.
_COARSE_WIDTH = 40
_FLAT_VARIANCE = 4.0
# Least fine texture (grey-level standard deviation of the background's texture) inside a blob
# for the illumination test to decide.
_MIN_TEXTURE = 1.5
# Window (pixels) of the local mean removed to keep only fine texture in that test.
_TEXTURE_WINDOW = 7
# Subsampling step of the gain and noise estimates (medians over ~1/16 of the pixels suffice).
_SAMPLE_STEP = 4
# Robust sigma of |d| for Gaussian d: median(|d|) = 0.6745 sigma.
_MAD_TO_SIGMA = 1.0 / 0.6745
# Noise estimate: measured on the flattest _FLAT_SHARE of the picture, structure being the
# grey-level range over _FLAT_WINDOW x _FLAT_WINDOW samples of the _SAMPLE_STEP grid (+-8 px);
# with fewer usable samples than _MIN_NOISE_SAMPLES, the clipped ones are used as well.
_FLAT_WINDOW = 5
_FLAT_SHARE = 0.25
_MIN_NOISE_SAMPLES = 64


@dataclass(frozen=True)
class MotionResult:
    """What the detector saw in one frame."""

    score: float  # fraction of the usable frame covered by kept moving blobs, 0..1
    boxes: list[Box]  # moving blobs, normalised coordinates, largest first
    global_change: bool  # the whole picture changed (lights, exposure, shot change): no motion
    motion: bool  # at least one blob kept, and no global change, and warm-up over
    changed_ratio: float = 0.0  # fraction of usable pixels above threshold (before min_area)
    gain: float = 1.0  # exposure gain of this frame relative to the background model
    threshold: float = 0.0  # grey-level threshold actually used (noise-adaptive)
    warming_up: bool = False


class MotionDetector:
    """Background-subtraction motion detector for one camera (keeps its background model)."""

    def __init__(
        self,
        config: MotionConfig | None = None,
        ignore_masks: Iterable[NormPolygon] = (),
        privacy_masks: Iterable[NormPolygon] = (),
    ) -> None:
        self.config = config or MotionConfig()
        # Privacy-masked areas are black in analysed frames anyway; ignoring them as well keeps
        # the detector right even when a caller forgets to black the frame out first.
        self._ignore = PolygonMask([*ignore_masks, *privacy_masks])
        blur = self.config.blur | 1  # Gaussian kernels must be odd
        self._blur = (blur, blur)
        self._kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
        self._size: tuple[int, int] | None = None
        self._background: np.ndarray | None = None  # float32 grey
        self._age: np.ndarray | None = None  # frames each pixel has stayed changed
        self._usable: np.ndarray | None = None  # uint8 255 where analysed (outside masks)
        self._usable_count = 1
        self._frames = 0

    def reset(self) -> None:
        """Forget the background (a new stream epoch, a camera that moved)."""
        self._size = None
        self._background = None
        self._age = None
        self._frames = 0

    def process(self, image: np.ndarray) -> MotionResult:
        raw, gray = self._prepare(image)
        cfg = self.config
        self._frames += 1
        bg = self._background
        if bg is None:
            self._seed(raw)
            return MotionResult(0.0, [], False, False, warming_up=True)
        assert self._age is not None and self._usable is not None

        gain = self._gain(gray, self._blurred(bg))
        if max(gain, 1.0 / gain) - 1.0 > cfg.exposure_jump:
            # A big exposure jump (lights switched on, the iris caught up) clips highlights and
            # shadows, which a plain gain does not model: start the background afresh.
            return self._global_change(raw, 1.0, gain, 0.0)
        if gain != 1.0:
            # Follow the exposure: the model is rescaled, not relearnt. The model is kept
            # unblurred so that clipping the rescaled model at 255 predicts the camera's own
            # clipping exactly. Only pixels clipped in the model itself (at 255 with the light
            # going down, at 0 with it going up) hide their true level: those are re-seeded.
            hidden = (bg >= _SATURATED) if gain < 1.0 else (bg <= _CRUSHED)
            np.multiply(bg, gain, out=bg)
            np.minimum(bg, 255.0, out=bg)
            if hidden.any():
                bg[hidden] = raw[hidden]
        bg_blurred = self._blurred(bg)
        similarity = self._similarity(gray, bg_blurred)
        if similarity < cfg.scene_change_similarity:
            # The view itself changed (a PTZ move, a shot change, a covered lens): nothing in it
            # can be compared with the old background.
            return self._global_change(raw, 1.0, gain, 0.0)
        diff = cv2.absdiff(gray, bg_blurred)
        noise_sigma = self._noise_sigma(diff, gray, bg_blurred)
        # Contrast shrinks with the light: in a dark scene the fixed threshold scales down with
        # the background's median level (floor min_threshold), while the noise term keeps
        # sensor noise out.
        level = float(np.median(bg_blurred[::_SAMPLE_STEP, ::_SAMPLE_STEP]))
        base = max(float(cfg.min_threshold), cfg.threshold * min(1.0, level / _REFERENCE_LEVEL))
        # The noise term is capped: when even the flat parts differ by more than that, it is not
        # noise but a pan or a shot change, which the changed-ratio test below must see.
        noise_term = min(cfg.noise_factor * noise_sigma, _NOISE_CAP * cfg.threshold)
        threshold = max(base, noise_term)
        changed = (diff > threshold).astype(np.uint8)
        changed &= self._usable
        changed_count = int(np.count_nonzero(changed))
        changed_ratio = changed_count / self._usable_count

        warming = self._frames <= cfg.warmup_frames
        if changed_ratio > cfg.global_change_ratio:
            return self._global_change(raw, changed_ratio, gain, threshold)

        blobs = cv2.dilate(changed, self._kernel, iterations=cfg.dilate) if cfg.dilate else changed
        self._learn(raw, blobs, warming)
        if warming:
            return MotionResult(
                0.0,
                [],
                False,
                False,
                changed_ratio=changed_ratio,
                gain=gain,
                threshold=threshold,
                warming_up=True,
            )

        boxes, covered = self._boxes(blobs, changed, gray, bg_blurred)
        score = min(1.0, covered / self._usable_count)
        return MotionResult(
            score,
            boxes,
            False,
            bool(boxes),
            changed_ratio=changed_ratio,
            gain=gain,
            threshold=threshold,
        )

    # -- steps -------------------------------------------------------------------------------

    def _global_change(
        self, raw: np.ndarray, changed_ratio: float, gain: float, threshold: float
    ) -> MotionResult:
        """Re-seed the background from this frame and report a global change, no motion."""
        self._seed(raw)
        return MotionResult(
            0.0, [], True, False, changed_ratio=changed_ratio, gain=gain, threshold=threshold
        )

    def _prepare(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(grey float32 as given, blurred grey float32)."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
            raise ValueError("motion: expected a uint8 image (BGR HxWx3 or grey HxW)")
        if image.ndim == 3 and image.shape[2] == 3:
            gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        elif image.ndim == 2:
            gray = image
        else:
            raise ValueError(f"motion: expected HxWx3 BGR or HxW grey, got shape {image.shape}")
        h, w = gray.shape
        if h < 8 or w < 8:
            raise ValueError(f"motion: frame too small ({w}x{h})")
        if self._size != (w, h):
            self.reset()
            self._size = (w, h)
            usable = 255 - self._ignore.mask(w, h)
            self._usable = (usable > 0).astype(np.uint8)
            self._usable_count = max(1, int(np.count_nonzero(self._usable)))
        raw = gray.astype(np.float32)
        return raw, self._blurred(raw)

    def _blurred(self, image: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(image, self._blur, 0) if self._blur[0] > 1 else image

    def _seed(self, raw: np.ndarray) -> None:
        self._background = raw.copy()
        self._age = np.zeros(raw.shape, np.uint16)

    def _gain(self, gray: np.ndarray, bg: np.ndarray) -> float:
        if not self.config.exposure_compensation:
            return 1.0
        g = gray[::_SAMPLE_STEP, ::_SAMPLE_STEP]
        b = bg[::_SAMPLE_STEP, ::_SAMPLE_STEP]
        assert self._usable is not None
        u = self._usable[::_SAMPLE_STEP, ::_SAMPLE_STEP] > 0
        ok = u & (b > _GAIN_MIN_LEVEL) & (b < _SATURATED) & (g < _SATURATED)
        if np.count_nonzero(ok) < 0.1 * ok.size:
            return 1.0  # too dark or too clipped to tell
        ratio = float(np.median(g[ok] / b[ok]))
        # Changes under 1 % are noise in the estimate; leave the model alone.
        return ratio if abs(ratio - 1.0) > 0.01 else 1.0

    def _noise_sigma(self, diff: np.ndarray, gray: np.ndarray, bg: np.ndarray) -> float:
        """Robust sigma (median absolute residual / 0.6745) of the frame-vs-background residual
        where only sensor noise can make one: the flattest quarter of the picture (flat in the
        background and in the frame). There a shaking or drifting camera, a background just
        re-seeded from one frame of a new view, or the edges of a moving object change little;
        over the whole frame the same median measures them instead of noise."""
        step = _SAMPLE_STEP
        d = diff[::step, ::step]
        g = gray[::step, ::step]
        b = bg[::step, ::step]
        assert self._usable is not None
        usable = self._usable[::step, ::step] > 0
        # Clipped pixels (black sky at night, blown highlights) have their noise clipped away.
        ok = usable & (b > _GAIN_MIN_LEVEL) & (b < _SATURATED)
        if np.count_nonzero(ok) < _MIN_NOISE_SAMPLES:
            ok = usable if np.count_nonzero(usable) >= _MIN_NOISE_SAMPLES else np.ones_like(ok)
        # Local structure: grey-level range over +-8 px around each sample, wider than the shake
        # of a handheld or wind-blown camera between two analysed frames.
        window = np.ones((_FLAT_WINDOW, _FLAT_WINDOW), np.uint8)
        structure = np.maximum(
            cv2.dilate(b, window) - cv2.erode(b, window),
            cv2.dilate(g, window) - cv2.erode(g, window),
        )
        flat_limit = float(np.quantile(structure[ok], _FLAT_SHARE))
        return float(np.median(d[ok & (structure <= flat_limit)])) * _MAD_TO_SIGMA

    def _similarity(self, gray: np.ndarray, bg: np.ndarray) -> float:
        """Normalised cross-correlation of frame and background on a coarse grid (~40 px wide):
        a walker or a car barely lowers it, a new view drops it near zero."""
        if self.config.scene_change_similarity <= 0:
            return 1.0
        h, w = gray.shape
        # An integer shrink factor on a cropped view keeps INTER_AREA on its fast path.
        k = max(1, w // _COARSE_WIDTH)
        cw, ch = w // k, max(1, h // k)
        a = cv2.resize(gray[: ch * k, : cw * k], (cw, ch), interpolation=cv2.INTER_AREA)
        b = cv2.resize(bg[: ch * k, : cw * k], (cw, ch), interpolation=cv2.INTER_AREA)
        a -= a.mean()
        b -= b.mean()
        denom = float(np.sqrt(float((a * a).sum()) * float((b * b).sum())))
        if denom < _FLAT_VARIANCE * a.size:
            return 1.0  # a flat picture (lens in the dark, fog) has no structure to compare
        return float((a * b).sum()) / denom

    def _learn(self, raw: np.ndarray, blobs: np.ndarray, warming: bool) -> None:
        bg, age = self._background, self._age
        assert bg is not None and age is not None
        cfg = self.config
        if warming:
            alpha = max(cfg.background_alpha, 1.0 / self._frames)
            cv2.accumulateWeighted(raw, bg, alpha)
            age[:] = 0
            return
        still = (blobs == 0).astype(np.uint8)
        cv2.accumulateWeighted(raw, bg, cfg.background_alpha, mask=still)
        moving = blobs > 0
        age[moving] += 1
        age[~moving] = 0
        if cfg.absorb_frames > 0:
            stale = age >= cfg.absorb_frames
            if stale.any():
                bg[stale] = raw[stale]
                age[stale] = 0

    def _boxes(
        self, blobs: np.ndarray, changed: np.ndarray, gray: np.ndarray, bg: np.ndarray
    ) -> tuple[list[Box], float]:
        h, w = blobs.shape
        min_px = self.config.min_area * w * h
        contours, _ = cv2.findContours(blobs, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        candidates = []
        for contour in contours:
            area = float(cv2.contourArea(contour))
            if area >= min_px and area > 0:
                candidates.append((area, cv2.boundingRect(contour)))
        if candidates and self.config.illumination_similarity > 0:
            # Fine texture only (frame minus its local mean): the light pool's own shape and
            # the scene's large structures (a kerb, a facade edge) must not count as texture.
            k = (_TEXTURE_WINDOW, _TEXTURE_WINDOW)
            texture = (gray - cv2.blur(gray, k), bg - cv2.blur(bg, k))
        found: list[tuple[float, Box]] = []
        covered = 0.0
        for area, (x, y, bw, bh) in candidates:
            roi = (slice(y, y + bh), slice(x, x + bw))
            if self.config.illumination_similarity > 0 and self._is_light(
                changed[roi], texture[0][roi], texture[1][roi]
            ):
                continue
            covered += area
            found.append((area, Box(x / w, y / h, bw / w, bh / h)))
        found.sort(key=lambda item: -item[0])
        return [box for _, box in found], covered

    def _is_light(self, changed: np.ndarray, frame_tex: np.ndarray, bg_tex: np.ndarray) -> bool:
        """A change of light (headlights sweeping a wall, a cloud's shadow) scales the scene but
        keeps its fine texture: frame and background texture still correlate inside the blob.
        An object hides the texture behind it (measured here: objects below 0.55, light pools
        above 0.75). Only decidable where the background has texture."""
        inside = changed > 0
        if np.count_nonzero(inside) < 16:
            return False
        a = frame_tex[inside]
        b = bg_tex[inside]
        a_std, b_std = float(a.std()), float(b.std())
        if b_std < _MIN_TEXTURE or a_std < 1e-3:
            return False
        ncc = float(((a - a.mean()) * (b - b.mean())).mean()) / (a_std * b_std)
        return ncc > self.config.illumination_similarity
