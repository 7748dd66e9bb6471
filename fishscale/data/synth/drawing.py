"""Synthetic fish-vista, drawing: one fish from its traits, on a white background, as a PIL image.

The body outline, tail and fins are polygons in fish units (snout at 0, tail base at 1), mapped
to a canvas drawn at ``SUPERSAMPLE`` times the target size and reduced (cheap anti-aliasing).
"""
from __future__ import annotations

import colorsys
import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from fishscale.data.synth.traits import FishTraits

SUPERSAMPLE = 2   # draw at 2x and reduce: cheap anti-aliasing


def _rgb(hsv: Sequence[float], value_scale: float = 1.0) -> tuple[int, int, int]:
    h, s, v = hsv
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v * value_scale, 0.0), 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def _mix(a: Sequence[int], b: Sequence[int], t: float) -> tuple[int, int, int]:
    return tuple(int(round(x * (1 - t) + y * t)) for x, y in zip(a, b))


class BodyShape:
    """The body outline in fish units: x from snout (0) to tail base (1), y down, half depth hd."""

    def __init__(self, t: FishTraits):
        self.t = t
        self.hd = 0.5 / t.elongation

    def profile(self, x: np.ndarray) -> np.ndarray:
        t = self.t
        x = np.clip(x, 0.0, 1.0)
        front = t.snout + (1 - t.snout) * np.sin(np.pi / 2 * np.minimum(x / t.peak, 1.0)) ** 0.7
        back = t.peduncle + (1 - t.peduncle) * np.cos(np.pi / 2 * np.clip((x - t.peak) / (1 - t.peak), 0, 1))
        return np.where(x <= t.peak, front, back)

    def top(self, x):
        return -self.hd * self.t.hump * self.profile(np.asarray(x, dtype=float))

    def bottom(self, x):
        return self.hd * (2 - self.t.hump) * self.profile(np.asarray(x, dtype=float))

    def outline(self, n: int = 48) -> np.ndarray:
        x = np.linspace(0, 1, n)
        return np.concatenate([np.stack([x, self.top(x)], 1), np.stack([x[::-1], self.bottom(x[::-1])], 1)])


def tail_polygon(body: BodyShape) -> np.ndarray:
    t, hd = body.t, body.hd
    top, bottom = float(body.top(1.0)), float(body.bottom(1.0))
    tl, ts = t.tail_length, hd * t.tail_span
    x0 = 0.985
    if t.tail_shape == "forked":
        pts = [(x0, top), (1 + tl, -ts), (1 + tl * 0.45, 0), (1 + tl, ts), (x0, bottom)]
    elif t.tail_shape == "lunate":
        pts = [(x0, top), (1 + tl * 0.9, -ts * 1.15), (1 + tl * 0.55, -ts * 0.3), (1 + tl * 0.5, 0),
               (1 + tl * 0.55, ts * 0.3), (1 + tl * 0.9, ts * 1.15), (x0, bottom)]
    elif t.tail_shape == "truncate":
        pts = [(x0, top), (1 + tl, -ts * 0.85), (1 + tl * 0.97, 0), (1 + tl, ts * 0.85), (x0, bottom)]
    elif t.tail_shape == "rounded":
        a = np.linspace(-np.pi / 2, np.pi / 2, 13)
        pts = [(x0, top)] + [(1 + tl * 0.15 + tl * 0.85 * math.cos(v), ts * 0.8 * math.sin(v)) for v in a] + [(x0, bottom)]
    else:  # pointed
        pts = [(x0, top), (1 + tl, 0), (x0, bottom)]
    return np.asarray(pts, dtype=float)


def fin_polygons(body: BodyShape) -> list[np.ndarray]:
    """Dorsal fin(s), anal fin, pelvic fin and adipose fin, as polygons in fish units."""
    t, hd = body.t, body.hd
    fins = []
    for start, end, height in t.dorsal:
        w = end - start
        fins.append(np.array([(start, body.top(start) + 0.002), (start + 0.3 * w, body.top(start + 0.3 * w) - height * hd),
                              (end + 0.08 * w, body.top(end) - 0.3 * height * hd), (end, body.top(end) + 0.002)]))
    start, end, height = t.anal
    w = end - start
    fins.append(np.array([(start, body.bottom(start) - 0.002), (start + 0.3 * w, body.bottom(start + 0.3 * w) + height * hd),
                          (end + 0.08 * w, body.bottom(end) + 0.3 * height * hd), (end, body.bottom(end) - 0.002)]))
    p = t.pelvic
    fins.append(np.array([(p, body.bottom(p) - 0.002), (p + 0.09, body.bottom(p + 0.09) + 0.55 * hd),
                          (p + 0.07, body.bottom(p + 0.07) - 0.002)]))
    if t.adipose:
        a = np.linspace(0, np.pi, 8)
        fins.append(np.stack([0.86 + 0.05 * np.cos(a), body.top(0.86) - 0.3 * hd * np.sin(a) + 0.003], 1))
    return fins


class Canvas:
    """Maps fish units to pixels of a supersampled image, turning the fish by ``angle`` degrees
    (rotating coordinates, not pixels: cheaper and sharper)."""

    def __init__(self, extent: np.ndarray, longer_side: int, margin: float, angle: float = 0.0):
        self.cos, self.sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        self.centre = extent.mean(0)
        extent = self.turn(extent)
        (x0, y0), (x1, y1) = extent.min(0), extent.max(0)
        pad = margin * min(x1 - x0, y1 - y0)   # tight crops, as fish-vista's specimens are
        x0, y0, x1, y1 = x0 - pad, y0 - pad, x1 + pad, y1 + pad
        width, height = x1 - x0, y1 - y0
        # keep the image aspect within fish-vista's range (1.5:1 .. 5:1) by padding the short side
        if width < 1.5 * height:
            x0, width = x0 - (1.5 * height - width) / 2, 1.5 * height
        elif width > 5.0 * height:
            y0, height = y0 - (width / 5.0 - height) / 2, width / 5.0
        self.scale = SUPERSAMPLE * longer_side / max(width, height)
        self.origin = np.array([x0, y0])
        self.size = (max(int(round(width * self.scale)), 8), max(int(round(height * self.scale)), 8))

    def turn(self, pts) -> np.ndarray:
        # element-wise rather than a matmul: no BLAS call in forked workers
        x, y = (np.asarray(pts, dtype=float).reshape(-1, 2) - self.centre).T
        return np.stack([self.cos * x - self.sin * y, self.sin * x + self.cos * y], 1) + self.centre

    def px(self, pts) -> list[tuple[float, float]]:
        pts = (self.turn(pts) - self.origin) * self.scale
        return [tuple(p) for p in pts]

    def length(self, v: float) -> float:
        return v * self.scale


def draw_fish(traits: FishTraits, rng: np.random.Generator, longer_side: int) -> Image.Image:
    """Draw one specimen, lateral view facing left, on an off-white background."""
    body = BodyShape(traits)
    outline, tail, fins = body.outline(), tail_polygon(body), fin_polygons(body)
    extent = np.concatenate([outline, tail, *fins, [(-0.07 if traits.barbels else 0.0, 0.0)]])
    angle = float(np.clip(rng.normal(0, 3.0), -8, 8))
    canvas = Canvas(extent, longer_side, margin=float(rng.uniform(0.05, 0.2)), angle=angle)
    grey = int(rng.integers(238, 254))   # white to light grey, a faint tint at most
    background = tuple(int(min(255, grey + v)) for v in rng.integers(-2, 3, 3))
    image = Image.new("RGB", canvas.size, background)
    draw = ImageDraw.Draw(image)

    body_rgb = _rgb(traits.body_hsv)
    fin_rgb = _mix(_rgb(traits.fin_hsv), background, 0.25)
    for fin in fins:
        draw.polygon(canvas.px(fin), fill=fin_rgb)
    draw.polygon(canvas.px(tail), fill=_mix(fin_rgb, body_rgb, 0.5))
    if traits.dorsal_spot:
        s, e, h = traits.dorsal[-1]
        _ellipse(draw, canvas, ((s + e) / 2, body.top((s + e) / 2) - 0.35 * h * body.hd), 0.25 * h * body.hd, (25, 25, 30))

    skin = _skin(traits, body, canvas, rng)
    mask = Image.new("L", canvas.size, 0)
    ImageDraw.Draw(mask).polygon(canvas.px(outline), fill=255)
    image.paste(skin, (0, 0), mask)
    _draw_head(draw, traits, body, canvas)
    if traits.caudal_spot:
        _ellipse(draw, canvas, (0.95, 0.0), 0.45 * body.hd * traits.peduncle, (30, 28, 30))

    if rng.random() < 0.05:   # a few specimens were photographed facing right
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return image.reduce(SUPERSAMPLE)


def _ellipse(draw: ImageDraw.ImageDraw, canvas: Canvas, centre, radius: float, fill, ry: float | None = None) -> None:
    (cx, cy), = canvas.px([centre])
    rx, ry = canvas.length(radius), canvas.length(radius if ry is None else ry)
    draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=fill)


def _skin(t: FishTraits, body: BodyShape, canvas: Canvas, rng: np.random.Generator) -> Image.Image:
    """Body colour with a dark back / light belly gradient, then the species' pattern."""
    width, height = canvas.size
    back = np.array(_rgb(t.body_hsv, 0.8), dtype=float)
    belly = np.array(_mix(_rgb(t.body_hsv, 1.15), (245, 240, 225), t.belly_light), dtype=float)
    (_, y_top), (_, y_bottom) = canvas.px([(0, -body.hd * t.hump), (0, body.hd * (2 - t.hump))])
    ramp = np.clip((np.arange(height) - y_top) / max(y_bottom - y_top, 1.0), 0, 1)[:, None]
    rows = (back * (1 - ramp) + belly * ramp).astype(np.uint8)
    skin = Image.fromarray(np.ascontiguousarray(np.broadcast_to(rows[:, None, :], (height, width, 3))))
    draw = ImageDraw.Draw(skin)
    tone = _rgb(t.body_hsv, 1 - t.pattern_dark) if t.pattern_dark > 0 else _mix(_rgb(t.body_hsv), (250, 250, 240), -t.pattern_dark)
    PATTERN_PAINTERS.get(t.pattern, lambda *a: None)(draw, t, body, canvas, rng, tone)
    return skin


def _paint_bars(draw, t: FishTraits, body: BodyShape, canvas: Canvas, rng, tone) -> None:
    n = t.pattern_count + 2
    xs = np.linspace(t.head + 0.05, 0.95, n) + rng.normal(0, 0.012, n)
    width = (0.95 - t.head) / n * (0.25 + 0.5 * t.pattern_size)
    hd = body.hd
    for x in xs:
        draw.polygon(canvas.px([(x - width / 2, -2 * hd), (x + width / 2, -2 * hd),
                                (x + width / 2 - 0.02, 2 * hd), (x - width / 2 - 0.02, 2 * hd)]), fill=tone)


def _paint_stripes(draw, t: FishTraits, body: BodyShape, canvas: Canvas, rng, tone) -> None:
    n = min(t.pattern_count, 4)
    x = np.linspace(t.head * 0.8, 1.0, 24)
    width = max(1, int(canvas.length(body.hd * (0.12 + 0.35 * t.pattern_size))))
    for level in np.linspace(-0.5, 0.45, n) if n > 1 else [-0.05]:
        level += rng.normal(0, 0.03)
        y = np.where(level < 0, -level * body.top(x), level * body.bottom(x))
        draw.line(canvas.px(np.stack([x, y], 1)), fill=tone, width=width, joint="curve")


def _paint_spots(draw, t: FishTraits, body: BodyShape, canvas: Canvas, rng, tone) -> None:
    n = 6 * t.pattern_count
    xs = rng.uniform(t.head * 0.7, 1.0, n)
    ys = rng.uniform(-1, 1, n) * body.hd
    for x, y in zip(xs, ys):
        _ellipse(draw, canvas, (x, y), body.hd * 0.35 * t.pattern_size * rng.uniform(0.7, 1.3), tone)


def _paint_saddles(draw, t: FishTraits, body: BodyShape, canvas: Canvas, rng, tone) -> None:
    n = max(2, min(t.pattern_count, 5))
    for x in np.linspace(t.head + 0.08, 0.92, n) + rng.normal(0, 0.01, n):
        _ellipse(draw, canvas, (x, float(body.top(x))), 0.5 / n, tone, ry=body.hd * (0.6 + t.pattern_size))


PATTERN_PAINTERS = {"bars": _paint_bars, "stripes": _paint_stripes, "spots": _paint_spots,
                    "saddles": _paint_saddles}


def _draw_head(draw: ImageDraw.ImageDraw, t: FishTraits, body: BodyShape, canvas: Canvas) -> None:
    """Eye, gill cover, mouth, barbels, ear spot, pectoral fin and lateral line."""
    hd = body.hd
    dark = _rgb(t.body_hsv, 0.45)
    gill_x = t.head
    u = np.linspace(-1, 1, 9)   # the gill cover's edge: an arc bulging backwards
    gill = np.stack([gill_x + 0.025 * (1 - u ** 2), np.where(u < 0, -u * body.top(gill_x), u * body.bottom(gill_x)) * 0.8], 1)
    draw.line(canvas.px(gill), fill=dark, width=max(1, int(canvas.length(hd * 0.06))))
    pect = np.array([(gill_x + 0.01, 0.2 * hd), (gill_x + 0.12, 0.05 * hd), (gill_x + 0.11, 0.35 * hd)])
    draw.polygon(canvas.px(pect), fill=_mix(_rgb(t.fin_hsv), dark, 0.3))
    draw.line(canvas.px([(gill_x, -0.15 * hd), (0.98, float(body.top(0.98)) * 0.1)]),
              fill=_rgb(t.body_hsv, 0.7), width=max(1, int(canvas.length(hd * 0.03))))
    eye_x = t.head * 0.33
    eye_y = float(body.top(eye_x)) * 0.45
    _ellipse(draw, canvas, (eye_x, eye_y), t.eye * hd, (225, 215, 170))
    _ellipse(draw, canvas, (eye_x, eye_y), t.eye * hd * 0.6, (15, 15, 20))
    mouth_y = float(body.bottom(0.0)) * 0.25
    draw.line(canvas.px([(0.0, mouth_y), (t.head * 0.25, mouth_y + 0.1 * hd)]), fill=dark,
              width=max(1, int(canvas.length(hd * 0.04))))
    for i in range(t.barbels):
        tip = (-0.06 + 0.02 * (i % 2), mouth_y + hd * (0.25 + 0.3 * (i // 2)))
        draw.line(canvas.px([(0.01, mouth_y), tip]), fill=dark, width=max(1, int(canvas.length(hd * 0.04))))
    if t.ear_spot:
        _ellipse(draw, canvas, (gill_x - 0.01, -0.12 * hd), 0.05, (20, 20, 35), ry=0.16 * hd)


