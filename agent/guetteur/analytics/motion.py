"""Motion detector: one analysed frame in, moving boxes and a score out.

Pure apart from its background model: ``MotionDetector.process(image) -> MotionResult``. No clock,
no I/O; the caller owns timing (``guetteur.analytics.events``) and privacy blackout
(``guetteur.analytics.masks``). ``image`` is the luma plane (grey) as the sources deliver it; a
BGR image is turned grey first.

Pipeline, per frame (designed for ~320x180 at 5 fps on a Raspberry Pi; docs/motion.md has the
details and the measurements behind the limits). Everything per pixel runs in OpenCV on uint8 or
float32; the statistics run on a sparse grid (one pixel in 4 or 8), so a frame costs a few
hundred microseconds:

1. Gaussian blur (``blur``); the background model is the running average of blurred frames;
2. **exposure compensation**: the median ratio frame/model on a sparse grid of well-exposed
   pixels is the global gain (auto-exposure, clouds, lights); the model is rescaled by it and
   clipped at 255, so a brightness change is not motion;
3. absolute difference; **threshold**: the larger of ``threshold`` scaled down in dark scenes
   (floor ``min_threshold``) and ``noise_factor`` x the robust sensor noise (measured on the
   flattest quarter of the picture, capped), so night noise does not trip it;
4. ignore and privacy masks removed. When the frame looks **global** — more than
   ``global_change_ratio`` of it changed, its coarse correlation with the model fell below
   ``scene_change_similarity``, or the gain jumped by more than ``exposure_jump`` —
   ``guetteur.analytics.scene.classify`` says why: a change of light or a new view (PTZ move, shot
   cut) re-seeds the model and reports no motion; a **crowd** is motion, and its boxes are
   reported like any other;
5. dilation (``dilate``), connected blobs, blobs smaller than ``min_area`` dropped, blobs whose
   fine texture still matches the model's (``illumination_similarity``: headlights, a shadow)
   dropped as light, and short-lived blurry specks (rain, snow, insects at the lens) dropped by
   ``guetteur.analytics.blobs.TransientFilter``;
6. model update: running average (``background_alpha``) where nothing moves; changed pixels are
   not learnt, except pixels changed for ``absorb_frames`` frames in a row, copied in at once:
   no lasting ghosts, and objects that stopped are absorbed.

``MotionResult.score`` is the fraction of the usable frame area (outside ignore/privacy masks)
covered by the kept moving blobs (0..1).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from guetteur.analytics import blobs as blobmod
from guetteur.analytics.masks import NormPolygon, PolygonMask
from guetteur.analytics.scene import Cause, camera_moved, classify
from guetteur.config import MotionConfig
from guetteur.media.types import Box

# Pixels darker than this (model grey level) or brighter than _SATURATED say little about the
# exposure gain (noise floor, clipping) and are left out of its estimate.
_GAIN_MIN_LEVEL = 12.0
_SATURATED = 250.0
_CRUSHED = 3.0
# Model levels the gain takes above this are re-seeded (see ``_rescale``).
_CLIP_MARGIN = 240.0
# Grey level of a normally exposed scene: below it the fixed threshold scales down.
_REFERENCE_LEVEL = 128.0
# Highest noise-adaptive threshold, as a multiple of the configured threshold.
_NOISE_CAP = 2.0
# Variance (grey levels squared) under which a picture is too flat for the coarse correlation.
_FLAT_VARIANCE = 4.0
# Sparse grids, in pixels of a 320-px frame (scaled with ``work_scale``): gain, level and coarse
# correlation on one pixel in _STAT_STEP (both ways), the noise estimate on one in _NOISE_STEP,
# recomputed every _NOISE_EVERY frames (the noise floor of a camera changes with the light,
# over seconds) and right after the model is re-seeded.
_STAT_STEP = 8
_NOISE_STEP = 4
_NOISE_EVERY = 4
# Robust sigma of |d| for Gaussian d: median(|d|) = 0.6745 sigma.
_MAD_TO_SIGMA = 1.0 / 0.6745
# Noise estimate: the flattest _FLAT_SHARE of the picture, structure being the grey-level range
# over _FLAT_WINDOW x _FLAT_WINDOW samples of the _NOISE_STEP grid (+-8 px).
_FLAT_WINDOW = 5
_FLAT_SHARE = 0.25
_MIN_NOISE_SAMPLES = 64
# A frame that does not look global but has this share of its pixels changed and a coarse
# correlation with the model below this is probed for a camera move (one common shift).
_PAN_PROBE_CHANGED = 0.03
_PAN_PROBE_SIMILARITY = 0.95
# ... and the shift it must reach (pixels of a 320-px frame) to be a move, not a shake.
_PAN_CONFIRM_PX = 8.0
# OpenCV takes a Python number as the second operand of its arithmetic (a Scalar); its type
# stubs only know arrays.
_cv: Any = cv2


def _median(values: np.ndarray) -> float:
    """Median (upper one for an even count) by partition: np.median's overhead is tens of
    microseconds on the small samples used here."""
    flat = values.reshape(-1)
    if flat.size == 0:
        return 0.0
    k = flat.size // 2
    return float(np.partition(flat, k)[k])


@dataclass(frozen=True)
class MotionResult:
    """What the detector saw in one frame."""

    score: float  # fraction of the usable frame covered by kept moving blobs, 0..1
    boxes: list[Box]  # moving blobs, normalised coordinates, largest first
    global_change: bool  # the whole picture changed (light, exposure, new view): no motion
    motion: bool  # at least one blob kept, and no global change, and warm-up over
    changed_ratio: float = 0.0  # fraction of usable pixels above threshold (before min_area)
    gain: float = 1.0  # exposure gain of this frame relative to the background model
    threshold: float = 0.0  # grey-level threshold actually used (noise-adaptive)
    warming_up: bool = False
    # Why the frame looked global: "lighting", "view" (the camera moved or the shot changed)
    # or "crowd" (motion); None for an ordinary frame.
    cause: Cause | None = None
    # Global shift (dx, dy) in normalised frame units when the camera was seen panning.
    shift: tuple[float, float] | None = None
    similarity: float = 1.0  # coarse correlation of the frame with the model
    noise_sigma: float = 0.0  # the frame's robust noise level, grey levels
    transients: int = 0  # blobs dropped as rain, snow or insects


class MotionDetector:
    """Background-subtraction motion detector for one camera (keeps its background model)."""

    def __init__(
        self,
        config: MotionConfig | None = None,
        ignore_masks: Iterable[NormPolygon] = (),
        privacy_masks: Iterable[NormPolygon] = (),
    ) -> None:
        self.config = config or MotionConfig()
        self._kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
        self._size: tuple[int, int] | None = None
        self._background: np.ndarray | None = None  # float32, blurred grey
        self._previous: np.ndarray | None = None  # the last frame, blurred
        self._last_shift: tuple[float, float] | None = None  # the last frame's pan probe
        self._age: np.ndarray | None = None  # frames each pixel has stayed changed
        self._usable: np.ndarray | None = None  # uint8 255 where analysed (outside masks)
        self._usable_count = 1
        self._samples = np.zeros(0, np.intp)  # flat indices of the sparse grid's usable pixels
        self._frames = 0
        self._noise = 0.0
        self._noise_due = 0
        self._transients = blobmod.TransientFilter()
        self._set_masks(ignore_masks, privacy_masks)
        self._apply_config()

    def _set_masks(
        self, ignore_masks: Iterable[NormPolygon], privacy_masks: Iterable[NormPolygon]
    ) -> None:
        # Privacy-masked areas are black in analysed frames anyway; ignoring them as well keeps
        # the detector right even when a caller forgets to black the frame out first.
        self._ignore = PolygonMask([*ignore_masks, *privacy_masks])
        self._usable = None  # rasterised again at the next frame

    def _apply_config(self) -> None:
        cfg = self.config
        # ``blur`` and ``dilate`` are given in pixels of the analysed frame: at a working scale
        # below 1 the area averaging already blurs, and both shrink with the scale.
        blur = max(1, round(cfg.blur * cfg.work_scale)) | 1  # Gaussian kernels must be odd
        self._blur = (blur, blur)
        self._dilate = max(1, round(cfg.dilate * cfg.work_scale)) if cfg.dilate else 0
        self._stat_step = max(1, round(_STAT_STEP * cfg.work_scale))
        self._noise_step = max(1, round(_NOISE_STEP * cfg.work_scale))
        self._transients.configure(self.config.transient_filter)

    def reconfigure(
        self,
        config: MotionConfig | None = None,
        ignore_masks: Iterable[NormPolygon] | None = None,
        privacy_masks: Iterable[NormPolygon] | None = None,
    ) -> None:
        """Switch settings (night/day, another PTZ preset's masks) without a restart. The
        background is kept unless the blur changes (the model is of blurred frames)."""
        if config is not None:
            if (config.blur, config.work_scale) != (self.config.blur, self.config.work_scale):
                self.reset()
            self.config = config
            self._apply_config()
        if ignore_masks is not None or privacy_masks is not None:
            self._set_masks(ignore_masks or (), privacy_masks or ())

    def reset(self) -> None:
        """Forget the background (a new stream epoch, a camera that moved)."""
        self._size = None
        self._background = None
        self._age = None
        self._frames = 0
        self._noise_due = 0
        self._transients.reset()

    @property
    def frames_learnt(self) -> int:
        """Frames seen since the background was last seeded from scratch."""
        return self._frames

    def process(self, image: np.ndarray) -> MotionResult:
        gray = self._prepare(image)
        cfg = self.config
        blurred = cv2.GaussianBlur(gray, self._blur, 0) if self._blur[0] > 1 else gray
        frame = blurred.astype(np.float32)
        self._frames += 1
        bg = self._background
        if bg is None:
            self._seed(frame)
            return MotionResult(0.0, [], False, False, warming_up=True)
        assert self._age is not None and self._usable is not None

        gain, level, similarity = self._stats(frame, bg)
        jump = max(gain, 1.0 / gain) - 1.0 > cfg.exposure_jump
        if gain != 1.0 and not jump:
            self._rescale(bg, gain, frame)
            level = min(255.0, level * gain)
        diff = cv2.absdiff(frame, bg)
        if self._noise_due <= 0:
            self._noise = self._noise_sigma(diff, frame, bg)
            self._noise_due = _NOISE_EVERY
        self._noise_due -= 1
        # Contrast shrinks with the light: in a dark scene the fixed threshold scales down with
        # the model's median level (floor min_threshold), while the noise term keeps sensor
        # noise out. The noise term is capped: when even the flat parts differ by more than that,
        # it is not noise but a pan or a shot change, which the global test must see.
        base = max(float(cfg.min_threshold), cfg.threshold * min(1.0, level / _REFERENCE_LEVEL))
        noise_term = min(cfg.noise_factor * self._noise, _NOISE_CAP * cfg.threshold)
        threshold = max(base, noise_term)
        changed = _cv.compare(diff, threshold, cv2.CMP_GT)
        cv2.bitwise_and(changed, self._usable, dst=changed)
        changed_ratio = cv2.countNonZero(changed) / self._usable_count

        cause: Cause | None = None
        shift: tuple[float, float] | None = None
        globalish = (
            jump
            or changed_ratio > cfg.global_change_ratio
            or (cfg.scene_change_similarity > 0 and similarity < cfg.scene_change_similarity)
        )
        if (
            not globalish
            and changed_ratio > _PAN_PROBE_CHANGED
            and similarity < _PAN_PROBE_SIMILARITY
        ):
            # Edges changing all over a picture that still correlates: the first frames of a
            # slow pan look like that, and so do a few walkers. One common shift tells.
            moved = camera_moved(frame, bg, self._usable, self._noise, cfg.work_scale)
            shift = moved.shift if moved is not None else None
            # A pan keeps its direction from one frame to the next and takes the view ever
            # further from the model; a camera shaking on its pole does neither (a few pixels,
            # any way).
            steady = (
                shift is not None
                and self._last_shift is not None
                and shift[0] * self._last_shift[0] + shift[1] * self._last_shift[1] > 0
                and float(np.hypot(*shift)) >= _PAN_CONFIRM_PX * cfg.work_scale
            )
            self._last_shift = shift
            if moved is not None and moved.shift is not None and steady:
                h, w = frame.shape
                self._seed(frame)
                return MotionResult(
                    0.0,
                    [],
                    True,
                    False,
                    changed_ratio=changed_ratio,
                    gain=gain,
                    threshold=threshold,
                    cause="view",
                    shift=(moved.shift[0] / w, moved.shift[1] / h),
                    similarity=similarity,
                    noise_sigma=self._noise,
                )
        else:
            self._last_shift = None
        if globalish:
            verdict = classify(frame, bg, self._usable, self._noise, cfg.work_scale, similarity)
            cause = verdict.cause
            if verdict.shift is not None:
                h, w = frame.shape
                shift = (verdict.shift[0] / w, verdict.shift[1] / h)
            if cause != "crowd" or not cfg.crowd_detection:
                # The light or the view changed: nothing in the frame can be compared with the
                # old model (a big exposure jump clips highlights and shadows, which a plain gain
                # does not model; a new view is a new scene). Start the model afresh.
                self._seed(frame)
                return MotionResult(
                    0.0,
                    [],
                    True,
                    False,
                    changed_ratio=changed_ratio,
                    gain=gain,
                    threshold=threshold,
                    cause=cause,
                    shift=shift,
                    similarity=similarity,
                    noise_sigma=self._noise,
                )
            if jump:
                # A crowd biased the global median: follow the exposure measured on the blocks
                # that still show the background instead.
                gain = verdict.gain
                if gain != 1.0:
                    self._rescale(bg, gain, frame)
                cv2.absdiff(frame, bg, dst=diff)
                _cv.compare(diff, threshold, cv2.CMP_GT, dst=changed)
                cv2.bitwise_and(changed, self._usable, dst=changed)
                changed_ratio = cv2.countNonZero(changed) / self._usable_count

        warming = self._frames <= cfg.warmup_frames
        dilated = (
            cv2.dilate(changed, self._kernel, iterations=self._dilate) if self._dilate else changed
        )
        self._learn(frame, dilated, warming, threshold)
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
                cause=cause,
                similarity=similarity,
                noise_sigma=self._noise,
            )
        found = blobmod.find_blobs(dilated, cfg.min_area)
        if found and cfg.illumination_similarity > 0:
            textures = (blobmod.fine_texture(frame), blobmod.fine_texture(bg))
            limit = cfg.illumination_similarity
            found = [b for b in found if not blobmod.is_light(b, changed, *textures, limit)]
        h, w = changed.shape
        dropped = 0
        if cfg.transient_filter:
            found, dropped = self._transients.filter(found, gray, diff, cfg.min_area * w * h)
        covered = float(sum(b.area for b in found))
        boxes = [Box(b.x / w, b.y / h, b.w / w, b.h / h) for b in found]
        return MotionResult(
            min(1.0, covered / self._usable_count),
            boxes,
            False,
            bool(boxes),
            changed_ratio=changed_ratio,
            gain=gain,
            threshold=threshold,
            cause=cause,
            similarity=similarity,
            noise_sigma=self._noise,
            transients=dropped,
        )

    # -- steps -------------------------------------------------------------------------------

    def _prepare(self, image: np.ndarray) -> np.ndarray:
        """The grey uint8 picture at the working scale; (re)builds the masks when the size
        changes."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
            raise ValueError("motion: expected a uint8 image (grey HxW or BGR HxWx3)")
        if image.ndim == 3 and image.shape[2] == 3:
            gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        elif image.ndim == 2:
            gray = image
        else:
            raise ValueError(f"motion: expected HxW grey or HxWx3 BGR, got shape {image.shape}")
        h, w = gray.shape
        if h < 8 or w < 8:
            raise ValueError(f"motion: frame too small ({w}x{h})")
        scale = self.config.work_scale
        if scale < 1.0 and min(w, h) * scale >= 16:
            # Area averaging is a blur and a decimation in one pass: every later per-pixel step
            # costs a quarter at half scale, and boxes are normalised anyway.
            size = (max(8, round(w * scale)), max(8, round(h * scale)))
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
            h, w = gray.shape
        if self._size != (w, h):
            self.reset()
            self._size = (w, h)
            self._usable = None
        if self._usable is None:
            usable = cv2.bitwise_not(self._ignore.mask(w, h))
            self._usable = usable
            self._usable_count = max(1, cv2.countNonZero(usable))
            grid = np.zeros((h, w), bool)
            grid[:: self._stat_step, :: self._stat_step] = True
            self._samples = np.flatnonzero(grid & (usable > 0))
        return gray

    def _seed(self, frame: np.ndarray) -> None:
        self._background = frame.copy()
        self._previous = frame
        dtype = np.uint8 if self.config.absorb_frames < 255 else np.uint16
        self._age = np.zeros(frame.shape, dtype)
        self._noise_due = 0
        self._transients.reset()

    def _stats(self, frame: np.ndarray, bg: np.ndarray) -> tuple[float, float, float]:
        """(exposure gain, model's median level, coarse correlation) from one gather of the
        sparse grid's usable samples.

        Gain: the median ratio frame/model over well-exposed samples (a moving object is a
        minority of them); changes under 1 % are noise in the estimate and read as 1.
        Correlation: normalised cross-correlation of frame and model on the grid (40 samples
        wide at 320 px): a walker or a car barely lowers it, a new view drops it near zero."""
        g = frame.take(self._samples)
        b = bg.take(self._samples)
        level = _median(b)
        gain = 1.0
        if self.config.exposure_compensation:
            ok = (b > _GAIN_MIN_LEVEL) & (b < _SATURATED) & (g < _SATURATED)
            if np.count_nonzero(ok) >= 0.1 * ok.size:  # else too dark or too clipped to tell
                ratio = _median(g[ok] / b[ok])
                gain = ratio if abs(ratio - 1.0) > 0.01 else 1.0
        similarity = 1.0
        if self.config.scene_change_similarity > 0 and g.size:
            a = g - g.mean()
            m = b - b.mean()
            denom = float(np.sqrt(float(a.dot(a)) * float(m.dot(m))))
            # A flat picture (lens in the dark, fog) has no structure to compare.
            if denom >= _FLAT_VARIANCE * a.size:
                similarity = float(a.dot(m)) / denom
        return gain, level, similarity

    def _rescale(self, bg: np.ndarray, gain: float, frame: np.ndarray) -> None:
        """Follow the exposure: the model is rescaled, not relearnt, and clipped at 255 as the
        camera clips. Pixels clipped in the model itself (255 with the light going down, 0 with
        it going up) hide their true level: those are re-seeded from the frame. So are those the
        gain takes into clipping where the frame agrees (the model is of blurred frames, and
        near a clipped area the blur of the clipped frame is not the clipped blur of the model)
        — not where the frame disagrees: that is an object, which must not enter the model."""
        if gain < 1.0:
            hidden = _cv.compare(bg, _SATURATED, cv2.CMP_GE)
            near_clip = None
        else:
            hidden = _cv.compare(bg, _CRUSHED, cv2.CMP_LE)
            near_clip = _cv.compare(bg, _CLIP_MARGIN / gain, cv2.CMP_GE)
        _cv.multiply(bg, gain, dst=bg)
        _cv.min(bg, 255.0, dst=bg)
        if near_clip is not None and cv2.countNonZero(near_clip):
            agree = _cv.compare(cv2.absdiff(frame, bg), 2.0 * self.config.threshold, cv2.CMP_LT)
            cv2.bitwise_or(hidden, cv2.bitwise_and(near_clip, agree), dst=hidden)
        if cv2.countNonZero(hidden):
            cv2.copyTo(frame, hidden, bg)

    def _noise_sigma(self, diff: np.ndarray, frame: np.ndarray, bg: np.ndarray) -> float:
        """Robust sigma (median absolute residual / 0.6745) of the frame-vs-model residual
        where only sensor noise can make one: the flattest quarter of the picture (flat in the
        model and in the frame). There a shaking or drifting camera, a model just re-seeded
        from one frame of a new view, or the edges of a moving object change little; over the
        whole frame the same median measures them instead of noise."""
        step = self._noise_step
        d = diff[::step, ::step]
        g = np.ascontiguousarray(frame[::step, ::step])
        b = np.ascontiguousarray(bg[::step, ::step])
        assert self._usable is not None
        usable = self._usable[::step, ::step] > 0
        # Clipped pixels (black sky at night, blown highlights) have their noise clipped away.
        ok = usable & (b > _GAIN_MIN_LEVEL) & (b < _SATURATED)
        if np.count_nonzero(ok) < _MIN_NOISE_SAMPLES:
            ok = usable if np.count_nonzero(usable) >= _MIN_NOISE_SAMPLES else np.ones_like(ok)
        window = np.ones((_FLAT_WINDOW, _FLAT_WINDOW), np.uint8)
        structure = np.maximum(
            cv2.dilate(b, window) - cv2.erode(b, window),
            cv2.dilate(g, window) - cv2.erode(g, window),
        )
        values = structure[ok]
        k = int(_FLAT_SHARE * (values.size - 1))
        flat_limit = float(np.partition(values, k)[k])
        # Measured on the blurred residual, which is what the threshold is compared with.
        return _median(d[ok & (structure <= flat_limit)]) * _MAD_TO_SIGMA

    def _learn(
        self, frame: np.ndarray, dilated: np.ndarray, warming: bool, threshold: float
    ) -> None:
        bg, age = self._background, self._age
        assert bg is not None and age is not None
        cfg = self.config
        if warming:
            alpha = max(cfg.background_alpha, 1.0 / self._frames)
            cv2.accumulateWeighted(frame, bg, alpha)
            age[:] = 0
            self._previous = frame
            return
        still = cv2.bitwise_not(dilated)
        cv2.accumulateWeighted(frame, bg, cfg.background_alpha, mask=still)
        # Count how long each pixel has stayed changed: +1 where changed, 0 elsewhere.
        _cv.add(age, 1, dst=age, mask=dilated)
        mask = dilated if age.dtype == np.uint8 else dilated.astype(np.uint16) * 257
        cv2.bitwise_and(age, mask, dst=age)
        if cfg.absorb_frames > 0:
            stale = _cv.compare(age, cfg.absorb_frames, cv2.CMP_GE)
            if cv2.countNonZero(stale) and self._previous is not None:
                # Only where the picture itself holds still: a stopped car, the spot a parked
                # car left. Not where something passes at that instant (it would become a ghost).
                still_now = _cv.compare(cv2.absdiff(frame, self._previous), threshold, cv2.CMP_LE)
                cv2.bitwise_and(stale, still_now, dst=stale)
                cv2.copyTo(frame, stale, bg)
                age[stale > 0] = 0
        self._previous = frame
