"""B-mode lung-ultrasound rendering for the phantom: vectorised numpy, pure given an RNG.

Everything is drawn in beam coordinates (d = depth fraction, u = lateral fraction of the
field of view) evaluated at every output pixel, so the convex (sector) and linear
geometries share one scene model and B-lines follow the beam direction as on a scanner.
The lung (everything below the pleura, and the pleura itself) slides laterally between
frames; chest wall, ribs and A-lines do not.

Per-frame ICLUS score markers (Soldati et al. scoring, as in Roy et al. 2020):
  0  smooth pleura, A-lines (horizontal repeats of the pleura at multiples of its depth);
  1  irregular / fragmented pleura, 1-2 narrow B-lines (A-lines fade);
  2  >= 3 B-lines or a broad confluent one, no A-lines;
  3  white lung (confluent B-lines over most of the intercostal space) and a dark
     subpleural consolidation with a shredded deep border.
The diagnosis (covid / pneumonia / healthy) changes the style, not only the score mix:
covid gives fragmented pleura, many B-lines and small consolidations; pneumonia a smoother
pleura, focal B-lines and one large consolidation with bright air bronchograms.
Masks (MASK_CLASSES ids) are thresholds of the same analytic shapes that are drawn, so
they align with the image by construction.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple

import cv2
import numpy as np

from lus_dist.shards.format import MASK_CLASSES, VIDEO_CLASSES

PLEURA, BLINE, CONSOLIDATION = (MASK_CLASSES.index(n) for n in ("pleural_line", "b_line", "consolidation"))
COVID, PNEUMONIA, HEALTHY = (VIDEO_CLASSES.index(n) for n in ("covid", "pneumonia", "healthy"))
PROBES = ("convex", "linear")
_CONVEX_APEX, _CONVEX_HALF_ANGLE = 0.3, 0.62   # apex above the image (image heights), radians


@dataclass(frozen=True)
class Geometry:
    d: np.ndarray        # (H,W) float32 depth fraction, 0 = skin, 1 = bottom of the field
    u: np.ndarray        # (H,W) float32 lateral fraction across the field of view
    inside: np.ndarray   # (H,W) bool, pixel lies in the imaged field


@lru_cache(maxsize=16)
def geometry(probe: str, size: int) -> Geometry:
    """Pixel -> beam coordinates; convex is a sector fanning from an apex above the image."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    y, x = np.meshgrid(c, c, indexing="ij")
    if probe == "linear":
        d, u, inside = y, x, np.ones_like(y, dtype=bool)
    elif probe == "convex":
        r = np.hypot(x - 0.5, y + _CONVEX_APEX)
        theta = np.arctan2(x - 0.5, y + _CONVEX_APEX)
        d = (r - _CONVEX_APEX) / 1.0
        u = (theta / _CONVEX_HALF_ANGLE + 1) / 2
        inside = (d >= 0) & (d <= 1) & (u >= 0) & (u <= 1)
    else:
        raise ValueError(f"probe must be one of {PROBES}, got {probe!r}")
    for a in (d, u, inside):
        a.setflags(write=False)
    return Geometry(d.astype(np.float32), u.astype(np.float32), inside)


@dataclass
class VideoParams:
    """Per-clip nuisance: nothing here depends on the score or the diagnosis."""
    probe: str
    size: int
    pleura_d: float                      # pleural depth as a fraction of the displayed depth
    ribs: list[tuple[float, float]]      # (centre u, half width u) of each rib shadow
    gain: float
    gamma: float
    atten: float                         # depth attenuation left after TGC
    noise: float                         # additive electronic noise (fraction of 255)
    layers: list[tuple[float, float]]    # chest-wall fascia (depth, strength)
    slide_amp: float                     # lung sliding amplitude (u units)
    slide_period: float                  # frames per breath
    slide_phase: float
    speckle_seed: int
    ticks: bool = False                  # depth-scale dots on the right edge (scanner overlay)

    def intercostal(self) -> tuple[float, float]:
        """Lateral window between the ribs, where pleura and lung are visible."""
        lo, hi = 0.0, 1.0
        for c, w in self.ribs:
            if c < 0.5:
                lo = max(lo, c + w)
            else:
                hi = min(hi, c - w)
        return lo, hi


@dataclass
class Scene:
    """The lung findings drawn for one score segment (positions in the sliding lung frame)."""
    score: int
    irregular: float                               # pleural depth jitter amplitude
    irregular_phase: tuple[float, float, float, float]
    thickness: float
    gaps: list[tuple[float, float]]                # fragmented pleura (u ranges)
    a_lines: float                                 # A-line strength (0 = none)
    b_lines: np.ndarray                            # (n,3) centre u, width u, strength
    consolidations: list[tuple[float, float, float, float]] = field(default_factory=list)
    # (centre u, half width u, depth extent, shred phase)
    bronchograms: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    # (u, depth below pleura as a fraction of the consolidation depth)


def sample_video_params(rng: np.random.Generator, probe: str, size: int, *, gain_offset: float = 0.0,
                        ticks: bool = False) -> VideoParams:
    convex = probe == "convex"
    pleura_d = rng.uniform(0.17, 0.30) if convex else rng.uniform(0.22, 0.36)
    n_ribs = rng.choice([1, 2], p=[0.25, 0.75]) if convex else rng.choice([0, 1, 2], p=[0.3, 0.4, 0.3])
    sides = [0, 1] if n_ribs == 2 else list(rng.choice([0, 1], size=n_ribs, replace=False))
    ribs = [(float(rng.uniform(0.04, 0.14) if s == 0 else rng.uniform(0.86, 0.96)),
             float(rng.uniform(0.06, 0.10))) for s in sides]
    layers = [(float(rng.uniform(0.2, 0.85) * pleura_d), float(rng.uniform(0.2, 0.5)))
              for _ in range(rng.integers(1, 4))]
    return VideoParams(
        probe=probe, size=size, pleura_d=float(pleura_d), ribs=ribs,
        gain=float(rng.uniform(0.7, 1.3) * (1 + gain_offset)), gamma=float(rng.uniform(0.55, 0.8)),
        atten=float(rng.uniform(0.3, 1.3)), noise=float(rng.uniform(0.01, 0.04)), layers=layers,
        slide_amp=float(rng.uniform(0.01, 0.035)), slide_period=float(rng.uniform(8, 20)),
        slide_phase=float(rng.uniform(0, 2 * np.pi)), speckle_seed=int(rng.integers(2**31)),
        ticks=ticks)


def _place(rng: np.random.Generator, lo: float, hi: float, widths: np.ndarray) -> np.ndarray:
    span = np.maximum(hi - lo - widths, 1e-3)
    return lo + widths / 2 + rng.uniform(0, 1, len(widths)) * span


def _b_lines(rng: np.random.Generator, score: int, label: int, lo: float, hi: float) -> np.ndarray:
    """B-line count and width carry the score: 1-2 narrow, >=3 or broad, confluent."""
    span = hi - lo
    if score == 0:
        return np.zeros((0, 3), np.float32)
    if score == 1:
        n = rng.choice([1, 2], p=[0.6, 0.4]) if label != HEALTHY else 1
        widths = rng.uniform(0.03, 0.05, n)
        strength = rng.uniform(0.55, 0.85, n)
    elif score == 2:
        if rng.random() < (0.35 if label == PNEUMONIA else 0.55):
            n = rng.integers(3, 6)
            widths = rng.uniform(0.03, 0.05, n)
        else:
            n = rng.integers(1, 3)
            widths = rng.uniform(0.13, 0.22, n) * span / 0.7
        strength = rng.uniform(0.7, 1.0, n)
    else:  # white lung: bands spread evenly so they cover 60-95% of the intercostal space
        n = rng.integers(2, 4)
        slot = span / n
        widths = slot * rng.uniform(0.6, 0.95, n)
        centres = lo + slot * (np.arange(n) + 0.5) + rng.uniform(-0.5, 0.5, n) * (slot - widths)
        return np.stack([centres, widths, rng.uniform(0.75, 1.0, n)], 1).astype(np.float32)
    return np.stack([_place(rng, lo, hi, widths), widths, strength], 1).astype(np.float32)


def _consolidations(rng: np.random.Generator, label: int, lo: float, hi: float):
    big = label == PNEUMONIA or (label != COVID and rng.random() < 0.5)
    n = 1 if big else rng.integers(1, 3)
    hw = rng.uniform(0.10, 0.17, n) if big else rng.uniform(0.06, 0.10, n)
    depth = rng.uniform(0.14, 0.28, n) if big else rng.uniform(0.09, 0.16, n)
    centres = _place(rng, lo, hi, 2 * hw)
    cons = [(float(c), float(w), float(dp), float(rng.uniform(0, 6.28)))
            for c, w, dp in zip(centres, hw, depth)]
    n_air = rng.integers(3, 9) if big else rng.integers(0, 3)
    which = rng.integers(0, n, n_air)
    air = np.stack([centres[which] + rng.uniform(-0.7, 0.7, n_air) * hw[which],
                    rng.uniform(0.25, 0.75, n_air)], 1).astype(np.float32)
    return cons, air


def sample_scene(rng: np.random.Generator, score: int, label: int, params: VideoParams) -> Scene:
    if score not in (0, 1, 2, 3):
        raise ValueError(f"score must be 0..3, got {score}")
    lo, hi = params.intercostal()
    style = 0.6 if label == PNEUMONIA else 1.0            # pneumonia: smoother pleura
    irregular = 0.0012 if score == 0 else rng.uniform(0.004, 0.008) * (1 + 0.3 * score) * style
    n_gaps = 0 if score == 0 else rng.integers(0, 2 + (label == COVID) + (score >= 2))
    gap_w = rng.uniform(0.02, 0.05, n_gaps)
    gaps = [(float(c - w / 2), float(c + w / 2)) for c, w in zip(_place(rng, lo, hi, gap_w), gap_w)]
    a_lines = {0: rng.uniform(0.5, 0.8), 1: rng.uniform(0.15, 0.3)}.get(score, 0.0)
    scene = Scene(score=score, irregular=float(irregular),
                  irregular_phase=tuple(float(v) for v in rng.uniform(0, 6.28, 4)),
                  thickness=float(rng.uniform(0.016, 0.022) * (1 + 0.25 * (score >= 2))),
                  gaps=gaps, a_lines=float(a_lines), b_lines=_b_lines(rng, score, label, lo, hi))
    if score == 3:
        scene.consolidations, scene.bronchograms = _consolidations(rng, label, lo, hi)
    return scene


def _smooth_box(x: np.ndarray, half: float, edge: float) -> np.ndarray:
    """1 inside |x| < half, 0 outside, with a soft edge of width `edge`."""
    return np.clip((half - np.abs(x)) / edge + 0.5, 0, 1)


def slide_offset(params: VideoParams, t: float) -> float:
    return params.slide_amp * float(np.sin(2 * np.pi * t / params.slide_period + params.slide_phase))


def _speckle_texture(params: VideoParams) -> np.ndarray:
    """Complex Gaussian field in beam coordinates, 2x wide so the lung can slide over it."""
    return _complex_noise(np.random.default_rng(params.speckle_seed), params.size, 2 * params.size, params.size)


def _grain(size: int) -> tuple[float, float]:
    """Speckle grain (lateral, axial sigma in pixels): a fixed fraction of the field, so a
    phantom looks the same at any size, as a real clip does after downsampling."""
    return 1.4 * size / 128, 0.9 * size / 128


@lru_cache(maxsize=16)
def _blur_gain(size: int) -> float:
    """Std of unit white noise after the speckle blur (measured once, fixed sample)."""
    z = np.random.default_rng(0).standard_normal((2 * size, 2 * size, 2), dtype=np.float32)
    sx, sy = _grain(size)
    return float(cv2.GaussianBlur(z, (0, 0), sigmaX=sx, sigmaY=sy)[16:-16, 16:-16].std())


def _complex_noise(rng: np.random.Generator, h: int, w: int, size: int) -> np.ndarray:
    z = rng.standard_normal((h, w, 2), dtype=np.float32)
    sx, sy = _grain(size)   # anisotropic: speckle grains are longer laterally than axially
    return cv2.GaussianBlur(z, (0, 0), sigmaX=sx, sigmaY=sy) * np.float32(1 / _blur_gain(size))


def _speckle(params: VideoParams, g: Geometry, u_tex: np.ndarray, texture: np.ndarray,
             fresh: np.ndarray) -> np.ndarray:
    """Rayleigh speckle: |complex field| normalised to mean 1, partly decorrelating per frame."""
    size = params.size
    map_x = (u_tex * size + size / 2).astype(np.float32)
    map_y = (np.clip(g.d, 0, 1) * (size - 1)).astype(np.float32)
    z = cv2.remap(texture, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    z = 0.85 * z + 0.527 * fresh                      # 0.85^2 + 0.527^2 ~ 1
    amp = np.hypot(z[..., 0], z[..., 1])
    return amp * np.float32(1 / np.sqrt(np.pi / 2))  # Rayleigh(1) has mean sqrt(pi/2)


def _pleura_depth(scene: Scene, params: VideoParams, ul: np.ndarray) -> np.ndarray:
    p = scene.irregular_phase
    return params.pleura_d + scene.irregular * (np.sin(2 * np.pi * 7 * ul + p[0])
                                                + 0.6 * np.sin(2 * np.pi * 17 * ul + p[1])
                                                + 0.4 * np.sin(2 * np.pi * 31 * ul + p[2]))


def _rib_fields(params: VideoParams, g: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """(shadow multiplier, rib-surface brightness): ribs do not slide."""
    shade = np.ones_like(g.d)
    surface = np.zeros_like(g.d)
    for c, w in params.ribs:
        x = (g.u - c) / w
        top = params.pleura_d - 0.03 + 0.035 * x ** 2
        under = _smooth_box(x, 1.0, 0.15) * np.clip((g.d - top) / 0.01, 0, 1)
        shade = shade * (1 - 0.93 * under)
        surface += 1.3 * np.exp(-((g.d - top) / 0.012) ** 2) * _smooth_box(x, 1.0, 0.15)
    return shade, surface


def _lung_fields(scene: Scene, params: VideoParams, g: Geometry, ul: np.ndarray, pd: np.ndarray):
    """Echo added below the pleura and the boolean marker regions, in the lung frame."""
    below = g.d - pd
    lung = below > scene.thickness / 2
    echo = np.where(lung, np.float32(0.09), np.float32(0))
    b_prof = np.zeros_like(g.d)
    b_mask = np.zeros(g.d.shape, bool)
    for c, w, s in scene.b_lines:
        box = _smooth_box(ul - c, w / 2, 0.012)
        b_prof = np.maximum(b_prof, s * box)
        b_mask |= box > 0.5
    fade = 1 - 0.25 * np.clip(below, 0, 1)                          # B-lines barely fade
    a_rep = sum(0.65 ** (k - 2) * np.exp(-((g.d - k * params.pleura_d) / (scene.thickness * 0.6)) ** 2)
                for k in range(2, 6))
    echo += lung * (0.95 * b_prof * fade + scene.a_lines * a_rep * (1 - b_prof))
    cons = np.zeros(g.d.shape, bool)
    for c, hw, depth, phase in scene.consolidations:
        x = (ul - c) / hw
        bottom = depth * (1 - 0.35 * x ** 2 + 0.12 * np.sin(25 * ul + phase) + 0.08 * np.sin(61 * ul))
        inside = (np.abs(x) < 1) & (below > 0) & (below < bottom)
        cons |= inside
        rim = (np.abs(x) < 1) & (np.abs(below - bottom) < 0.012)     # shredded deep border
        echo = np.where(inside, np.float32(0.13), echo) + 0.8 * rim
        for au, ad in scene.bronchograms:
            if abs(au - c) < hw:
                echo += 0.9 * np.exp(-(((ul - au) / 0.012) ** 2 + ((below - ad * depth) / 0.01) ** 2))
    return echo, b_prof, lung & b_mask & ~cons, cons


class ClipStatic(NamedTuple):
    """What does not move within a clip: computed once per clip, not once per frame."""
    texture: np.ndarray      # speckle field the lung slides over
    layers: np.ndarray       # chest-wall echo (fascia layers)
    shade: np.ndarray        # rib shadows
    surface: np.ndarray      # rib surfaces
    gain: np.ndarray         # gain x depth attenuation
    noise: np.ndarray        # electronic noise field, shifted per frame


def clip_static(params: VideoParams) -> ClipStatic:
    g = geometry(params.probe, params.size)
    layers = 0.3 + sum(s * np.exp(-((g.d - dk - 0.004 * np.sin(9 * g.u)) / 0.008) ** 2)
                       for dk, s in params.layers)
    shade, surface = _rib_fields(params, g)
    noise = np.random.default_rng([params.speckle_seed, 1]).standard_normal(g.d.shape, dtype=np.float32)
    return ClipStatic(_speckle_texture(params), layers, shade, surface,
                      params.gain * np.exp(-params.atten * g.d), 255 * params.noise * noise)


def render(params: VideoParams, scene: Scene, t: float, static: ClipStatic | None = None,
           fresh: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One frame at time t (frames) -> (image uint8 (H,W), mask uint8 (H,W))."""
    g = geometry(params.probe, params.size)
    static = clip_static(params) if static is None else static
    if fresh is None:
        fresh = _complex_noise(np.random.default_rng([params.speckle_seed, int(t)]), params.size, params.size,
                               params.size)
    ul = g.u - slide_offset(params, t)
    pd = _pleura_depth(scene, params, ul)
    gap = np.zeros(g.d.shape, bool)
    for a, b in scene.gaps:
        gap |= (ul > a) & (ul < b)
    pleura = np.exp(-((g.d - pd) / (scene.thickness / 2)) ** 2) * np.where(gap, np.float32(0.3), 1)
    wall = g.d < pd
    lung_echo, b_prof, b_mask, cons = _lung_fields(scene, params, g, ul, pd)
    shade = static.shade
    echo = (wall * static.layers + 1.25 * pleura + lung_echo) * shade + static.surface
    u_tex = np.where(wall, g.u, ul)
    spk = _speckle(params, g, u_tex, static.texture, fresh)
    spk = 1 + (spk - 1) * (1 - 0.5 * np.clip(b_prof, 0, 1))      # B-lines are smoother
    amp = static.gain * echo * spk
    img = 255 * np.clip(amp / 1.6, 0, 1) ** params.gamma
    img += np.roll(static.noise, (17 * int(t), 23 * int(t)), axis=(0, 1))
    if params.ticks:
        img[((g.d * 10) % 1 < 0.12) & (np.abs(g.u - 0.985) < 0.01) & g.inside] = 200
    img = np.where(g.inside, np.clip(img, 0, 255), 0).astype(np.uint8)
    visible = g.inside & (shade > 0.5)
    mask = np.zeros(g.d.shape, np.uint8)
    mask[b_mask & visible] = BLINE
    mask[cons & visible] = CONSOLIDATION
    mask[(np.abs(g.d - pd) < scene.thickness * 0.6) & ~gap & visible] = PLEURA
    return img, mask


def segment_scenes(rng: np.random.Generator, frame_scores: np.ndarray, label: int,
                   params: VideoParams) -> tuple[list[Scene], np.ndarray]:
    """One scene per run of equal scores; returns (scenes, scene index per frame)."""
    starts = np.flatnonzero(np.r_[True, frame_scores[1:] != frame_scores[:-1]])
    scenes = [sample_scene(rng, int(frame_scores[s]), label, params) for s in starts]
    return scenes, np.cumsum(np.isin(np.arange(len(frame_scores)), starts)) - 1


def render_clip(rng: np.random.Generator, frame_scores, label: int, params: VideoParams
                ) -> tuple[np.ndarray, np.ndarray]:
    """A clip following `frame_scores`; the first frame of a new segment is a 50/50 blend
    of the two scenes (a real transition is gradual, which makes "drop K transition
    frames" evaluation meaningful); its mask and score are the new segment's."""
    frame_scores = np.asarray(frame_scores)
    scenes, idx = segment_scenes(rng, frame_scores, label, params)
    static = clip_static(params)
    # Per-frame speckle decorrelation: shifted copies of one field (cheaper than fresh noise).
    churn = _complex_noise(np.random.default_rng([params.speckle_seed, 2]), params.size, params.size, params.size)
    frames = np.empty((len(frame_scores), params.size, params.size), np.uint8)
    masks = np.empty_like(frames)
    for t, k in enumerate(idx):
        fresh = np.roll(churn, (29 * t, 41 * t), axis=(0, 1))
        frames[t], masks[t] = render(params, scenes[k], t, static, fresh)
        if t > 0 and idx[t - 1] != k:
            prev, _ = render(params, scenes[idx[t - 1]], t, static, fresh)
            frames[t] = ((frames[t].astype(np.uint16) + prev) // 2).astype(np.uint8)
    return frames, masks


def render_frame(rng: np.random.Generator, score: int, probe: str, size: int, t: float = 0.0,
                 label: int | None = None, params: VideoParams | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """A single frame with freshly sampled nuisance (unless `params`) and scene."""
    if label is None:
        label = HEALTHY if score == 0 else (PNEUMONIA if score == 3 and rng.random() < 0.5 else COVID)
    params = sample_video_params(rng, probe, size) if params is None else params
    return render(params, sample_scene(rng, score, label, params), t)
