"""Drawing a planned eye: fundus background, optic disc, vessel tree, lesions and camera nuisance.

A Plan (plan.py) is painted in depth order onto a float albedo image; every lesion it holds is
also recorded in a lesion mask at its true size (no inflation: the mask is what the pixel-size
tests measure). Colours and opacities are albedos, then illumination, colour cast, gamma, blur,
noise and the circular field stop make it a photograph.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter

from .plan import Plan, Spot


@dataclass
class Lesion:
    """A drawn lesion in pixel coordinates (pixel centres at integers), as it went into the mask."""

    kind: str
    x: float
    y: float
    r: float


# Paint order (deep to surface) and style: colour (albedo), opacity, edge blur in pixels at 128 px.
# "disc" and "vessels" mark where the optic disc and the vessel tree are drawn. A None style
# means mask-only (the glaucomatous disc is drawn by the disc stage, a new-vessel frond by its vessels).
STYLE: dict[str, tuple[tuple[float, float, float], float, float] | None] = {
    "subretinal_fluid": ((0.95, 0.62, 0.40), 0.35, 2.0),
    "melanoma": ((0.37, 0.35, 0.30), 0.92, 1.6),  # slate grey
    "melanoma_brown": ((0.40, 0.27, 0.16), 0.92, 1.6),
    "orange_pigment": ((0.90, 0.50, 0.15), 0.85, 0.5),
    "geographic_atrophy": ((0.93, 0.78, 0.60), 0.90, 0.6),
    "choroidal_vessel": ((0.85, 0.42, 0.22), 0.75, 0.6),
    "drusen": ((0.98, 0.88, 0.50), 0.85, 0.6),
    "pigment_clump": ((0.22, 0.14, 0.08), 0.85, 0.4),
    "cnv_membrane": ((0.50, 0.48, 0.36), 0.80, 1.5),
    "subretinal_haemorrhage": ((0.40, 0.06, 0.04), 0.90, 1.2),
    "myopic_crescent": ((0.97, 0.86, 0.70), 0.90, 0.5),
    "peripapillary_atrophy": ((0.93, 0.80, 0.62), 0.70, 0.6),
    "disc": None,
    "glaucomatous_disc": None,
    "vessels": None,
    "haemorrhage": ((0.45, 0.05, 0.04), 0.92, 0.4),
    "hard_exudate": ((1.00, 0.90, 0.58), 0.95, 0.3),
    "cotton_wool_spot": ((0.97, 0.93, 0.85), 0.85, 1.3),
    "new_vessel_frond": None,
    "neovascularisation": ((0.62, 0.10, 0.08), 0.90, 0.2),
    "preretinal_haemorrhage": ((0.42, 0.03, 0.03), 0.95, 0.8),
}
NOT_LESIONS = {"myopic_crescent"}  # a normal variant: painted, not masked


@dataclass
class Geometry:
    """Maps eye-frame coordinates to pixels: mirror (left eyes: disc on the left), rotate, shift."""

    size: int
    cx: float
    cy: float
    R: float  # field-of-view radius in pixels
    theta: float
    sign: int  # +1 right eye (nasal = image right), -1 left eye

    def px(self, x: float, y: float) -> tuple[float, float]:
        x = self.sign * x
        c, s = math.cos(self.theta), math.sin(self.theta)
        return self.cx + self.R * (c * x - s * y), self.cy - self.R * (s * x + c * y)

    def angle(self, a: float) -> float:
        """An eye-frame direction as an image angle (radians, y down)."""
        a = a if self.sign > 0 else math.pi - a
        return -(a + self.theta)


def _geometry(rng: np.random.Generator, size: int, eye: str) -> Geometry:
    """Camera framing: field-of-view size and decentring, rotation, and the mirror of a left eye."""
    shift = rng.uniform(-0.035, 0.035, 2) * size  # small field-of-view decentring
    return Geometry(size, (size - 1) / 2 + shift[0], (size - 1) / 2 + shift[1], size * rng.uniform(0.44, 0.49),
                    math.radians(rng.uniform(-15, 15)), 1 if eye == "right" else -1)


def _grow_vessel(rng: np.random.Generator, x: float, y: float, a: float, w: float, curl: float,
                 depth: int, branches: list[list[tuple[float, float, float]]]) -> None:
    """A vessel as a curving random walk that tapers and forks recursively; appends (x, y, width) polylines."""
    step = 0.03
    n = max(1, int(math.log(0.005 / w) / math.log(0.986)) + 1)  # steps until it has tapered away
    # random numbers drawn in bulk: most branches are short, and per-step generator calls dominate otherwise
    wiggle = rng.normal(0, 0.1, n).tolist()
    forks = (rng.random(n) < (0.09 if depth == 0 else 0.06)).tolist() if depth < 3 else [False] * n
    points = [(x, y, w)]
    branches.append(points)
    children = []
    for i in range(n):
        if w <= 0.005 or x * x + y * y > 1.02 ** 2:  # tapered away or left the field
            break
        a += curl * step + wiggle[i]
        curl *= 0.975  # the arcades open up as they leave the disc
        x, y, w = x + step * math.cos(a), y + step * math.sin(a), w * 0.986
        if x * x + y * y < 0.07 ** 2:  # foveal avascular zone
            break
        points.append((x, y, w))
        if forks[i]:
            children.append((x, y, a, w))
            w *= 0.9
    for cx, cy, ca, cw in children:
        side = 1 if rng.random() < 0.5 else -1
        _grow_vessel(rng, cx, cy, ca + side * rng.uniform(0.45, 1.0), cw * rng.uniform(0.5, 0.75),
                     rng.normal(0, 0.6), depth + 1, branches)


def _vessel_tree(rng: np.random.Generator, plan: Plan) -> dict[str, list]:
    """Arteries and veins leaving the disc: four temporal arcades round the macula, plus nasal branches."""
    dx, dy = plan.disc
    trees: dict[str, list] = {"artery": [], "vein": []}
    for kind, w in (("artery", 0.028), ("vein", 0.04)):
        for sgn in (1, -1):  # superior, inferior arcade
            a = sgn * math.radians(rng.uniform(95, 118))
            _grow_vessel(rng, dx + rng.normal(0, 0.01), dy + sgn * 0.01, a, w * rng.uniform(0.9, 1.1),
                         sgn * rng.uniform(1.6, 2.1), 0, trees[kind])
        for _ in range(int(rng.integers(1, 3))):
            a = rng.uniform(-1.1, 1.1)
            _grow_vessel(rng, dx, dy, a, w * rng.uniform(0.45, 0.65), rng.normal(0, 0.8), 1, trees[kind])
    return trees


class Canvas:
    """A float albedo image and a lesion mask; shapes are rasterised 2x oversampled by PIL."""

    SS = 2

    def __init__(self, geo: Geometry, albedo: np.ndarray):
        self.geo, self.albedo = geo, albedo
        self.mask = np.zeros((geo.size, geo.size), np.uint8)
        self.lesions: list[Lesion] = []

    def layer(self) -> tuple[Image.Image, ImageDraw.ImageDraw]:
        im = Image.new("L", (self.geo.size * self.SS,) * 2)
        return im, ImageDraw.Draw(im)

    def to_layer(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Eye-frame arrays to oversampled-layer pixel arrays (vectorised Geometry.px + _ss)."""
        g = self.geo
        x = g.sign * x
        c, s = math.cos(g.theta), math.sin(g.theta)
        px, py = g.cx + g.R * (c * x - s * y), g.cy - g.R * (s * x + c * y)
        return px * self.SS + (self.SS - 1) / 2, py * self.SS + (self.SS - 1) / 2

    def _ss(self, p: tuple[float, float]) -> tuple[float, float]:
        # pixel centre i of the output is at i*SS + (SS-1)/2 on the oversampled layer
        return p[0] * self.SS + (self.SS - 1) / 2, p[1] * self.SS + (self.SS - 1) / 2

    def composite(self, layer: Image.Image, colour, opacity: float, blur: float) -> None:
        """Blend `colour` into the albedo where the layer is painted (only inside its bounding box: cheap)."""
        box = layer.getbbox()
        if box is None:
            return
        S, m = self.geo.size, self.SS
        sigma = blur * S / 128
        pad = int(3 * sigma) + 2
        x0, y0 = max(0, box[0] // m - pad), max(0, box[1] // m - pad)
        x1, y1 = min(S, -(-box[2] // m) + pad), min(S, -(-box[3] // m) + pad)
        a = layer.crop((x0 * m, y0 * m, x1 * m, y1 * m)).resize((x1 - x0, y1 - y0), Image.BOX)
        a = np.asarray(a, dtype=np.float32) / 255 * opacity
        if sigma > 0:
            a = gaussian_filter(a, sigma)
        a = a[..., None]
        region = self.albedo[y0:y1, x0:x1]
        region *= 1 - a
        region += a * np.asarray(colour, dtype=np.float32)

    def draw_spot(self, draw: ImageDraw.ImageDraw, s: Spot) -> None:
        """Rasterise one spot (disc or streak) onto a layer, in pixels of the oversampled layer."""
        g = self.geo
        x, y = self._ss(g.px(s.x, s.y))
        r = s.r * g.R * self.SS
        fill = int(round(255 * s.strength))
        if s.length > 0:
            a, h = g.angle(s.angle), s.length * g.R * self.SS / 2
            ends = [(x - h * math.cos(a), y - h * math.sin(a)), (x + h * math.cos(a), y + h * math.sin(a))]
            draw.line(ends, fill=fill, width=max(1, round(2 * r)))
            for ex, ey in ends:
                draw.ellipse([ex - r, ey - r, ex + r, ey + r], fill=fill)
        else:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)

    def add_to_mask(self, s: Spot) -> None:
        """Record the spot as a lesion and cover it in the mask at its drawn size: every pixel whose centre lies
        within r of the spot's centre (or of its streak's segment), and the pixel at its centre."""
        g = self.geo
        x, y = g.px(s.x, s.y)
        r = s.r * g.R
        a, h = g.angle(s.angle), s.length * g.R / 2
        hx, hy = h * math.cos(a), h * math.sin(a)
        reach = r + abs(h) + 1
        y0, y1 = max(0, int(y - reach)), min(g.size, int(y + reach) + 2)
        x0, x1 = max(0, int(x - reach)), min(g.size, int(x + reach) + 2)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)  # only the window round the spot: cheap
        # numpy, not PIL: PIL truncates float coordinates and would shift small spots by up to a pixel
        t = np.clip(((xx - x) * hx + (yy - y) * hy) / max(hx * hx + hy * hy, 1e-12), -1, 1)  # along the streak
        window = self.mask[y0:y1, x0:x1]
        window[(xx - x - t * hx) ** 2 + (yy - y - t * hy) ** 2 <= r * r] = 255
        row, col = round(y), round(x)
        if 0 <= row < g.size and 0 <= col < g.size:
            self.mask[row, col] = 255
        self.lesions.append(Lesion(s.kind, x, y, r))


def _background(rng: np.random.Generator, geo: Geometry, plan: Plan) -> np.ndarray:
    """Albedo of the fundus: orange-red with choroidal texture, a darker macula and a foveal reflex."""
    S = geo.size
    pig = rng.uniform(0, 1)  # fundus pigmentation: blond orange to dark brown-red
    base = np.array([0.93, 0.50, 0.22]) * (1 - pig) + np.array([0.66, 0.27, 0.12]) * pig
    albedo = np.broadcast_to(base.astype(np.float32), (S, S, 3)).copy()
    tex = _smooth_noise(rng, S, 6) * 0.06 + _smooth_noise(rng, S, 20) * 0.03
    albedo *= (1 + tex)[..., None]
    fx, fy = geo.px(0, 0)
    yy, xx = _grid(S)
    d2 = ((xx - fx) ** 2 + (yy - fy) ** 2) / geo.R ** 2
    macula = np.exp(-d2 / (2 * 0.14 ** 2)) * rng.uniform(0.25, 0.4)
    albedo *= (1 - macula[..., None] * np.array([0.55, 1.0, 0.9], dtype=np.float32))
    reflex = np.exp(-d2 / (2 * 0.012 ** 2)) * rng.uniform(0.1, 0.3)
    albedo += reflex[..., None] * np.array([1.0, 0.9, 0.7], dtype=np.float32)
    return albedo


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel row and column coordinates (y, x), float32; shared, so never modify them."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean smooth random field: a coarse Gaussian grid upsampled bicubically."""
    grid = rng.normal(size=(cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((size, size), Image.BICUBIC))


def _tessellation(rng: np.random.Generator, canvas: Canvas, strength: float) -> None:
    """Visible large choroidal vessels: orange bands with darker pigment between them."""
    if strength < 0.05:
        return
    S = canvas.geo.size
    # ridged noise: the zero crossings of smooth random fields form a network of curvy bands
    bands = np.zeros((S, S), np.float32)
    for cells, width in ((8, 0.4), (13, 0.45)):
        n = _smooth_noise(rng, S, cells)
        bands = np.maximum(bands, np.exp(-(n / width) ** 2))
    dark = strength * 0.5 * (1 - bands)  # pigment between the vessels
    canvas.albedo *= (1 - dark[..., None] * np.array([0.45, 0.8, 0.7], dtype=np.float32))


def _draw_disc(canvas: Canvas, plan: Plan, rng: np.random.Generator) -> None:
    """Optic disc: a pink-orange rim and a pale yellow-white cup (bigger in glaucoma)."""
    (dx, dy), r = plan.disc, plan.disc_r
    layer, draw = canvas.layer()
    canvas.draw_spot(draw, Spot("disc", dx, dy, r))
    halo, hdraw = canvas.layer()
    canvas.draw_spot(hdraw, Spot("disc", dx, dy, r * 1.5))
    canvas.composite(halo, (0.97, 0.62, 0.38), 0.3, 3.0)  # the glow round the disc
    canvas.composite(layer, (0.97, 0.63, 0.48), 0.95, 0.7)  # a pink rim, darker than the cup: its size shows
    cup, cdraw = canvas.layer()
    cx = dx - r * 0.08  # the cup sits a little temporally: the temporal rim is the thinnest
    canvas.draw_spot(cdraw, Spot("cup", cx, dy, r * plan.cdr))
    canvas.composite(cup, (1.0, 0.96, 0.86), rng.uniform(0.85, 1.0), 0.5)


def _draw_vessels(canvas: Canvas, plan: Plan, rng: np.random.Generator) -> None:
    """Veins darker and thicker, arteries lighter and thinner."""
    trees = _vessel_tree(rng, plan)
    for kind, colour, opacity in (("vein", (0.42, 0.07, 0.06), 0.9), ("artery", (0.68, 0.16, 0.09), 0.8)):
        pts = np.array([p for branch in trees[kind] for p in branch])  # (N, 3): x, y, width in eye-frame units
        x, y = canvas.to_layer(pts[:, 0], pts[:, 1])
        wpx = pts[:, 2] * canvas.geo.R * Canvas.SS
        width = np.maximum(1, np.round(wpx)).astype(int)
        fill = (255 * np.minimum(1.0, wpx)).astype(int) // 32 * 32 + 31  # sub-pixel capillaries: fainter, not thinner
        first = np.zeros(len(pts), bool)
        first[np.cumsum([0] + [len(b) for b in trees[kind]])[:-1]] = True
        # one polyline per run of equal width and shade within a branch: far fewer calls than one per step
        cuts = np.flatnonzero(first | np.r_[True, (width[1:] != width[:-1]) | (fill[1:] != fill[:-1])]).tolist()
        xy = list(zip(x.tolist(), y.tolist()))
        layer, draw = canvas.layer()
        for i0, i1 in zip(cuts, cuts[1:] + [len(pts)]):
            j0 = i0 if first[i0] else i0 - 1  # start at the previous run's last point: no gaps
            if i1 - j0 > 1:
                draw.line(xy[j0:i1], fill=int(fill[i0]), width=int(width[i0]), joint="curve")
        canvas.composite(layer, colour, opacity, 0.3)


def _nuisance(rng: np.random.Generator, geo: Geometry, img: np.ndarray) -> np.ndarray:
    """Camera and capture: uneven illumination, vignetting, colour cast, gamma, blur, noise, circular field."""
    S = geo.size
    yy, xx = _grid(S)
    d2 = ((xx - geo.cx) ** 2 + (yy - geo.cy) ** 2) / geo.R ** 2
    d = np.sqrt(d2)
    a = rng.uniform(0, 2 * math.pi)
    gradient = ((xx - geo.cx) * math.cos(a) + (yy - geo.cy) * math.sin(a)) / geo.R
    illum = rng.uniform(0.7, 1.15) * (1 - rng.uniform(0.25, 0.6) * d2 * np.sqrt(d) + rng.uniform(0, 0.15) * gradient)
    img = img * np.clip(illum, 0.05, None)[..., None]
    img *= np.exp(rng.normal(0, 0.07, 3)).astype(np.float32)  # colour cast
    lut = (255 * np.linspace(0, 1, 256) ** rng.uniform(0.85, 1.15) + 0.5).astype(np.uint8)  # camera gamma
    if rng.random() < 0.6:
        img = gaussian_filter(img, (rng.uniform(0.2, 1.0) * S / 128,) * 2 + (0,))
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * rng.uniform(0.005, 0.03)
    fov = np.clip((1 - d) * geo.R / 1.2, 0, 1)  # soft edge of the circular field stop
    if rng.random() < 0.3:  # some cameras also crop the circle top and bottom
        fov *= np.clip((0.93 * geo.R - np.abs(yy - geo.cy)) / 1.2, 0, 1)
    img = np.clip(img * fov[..., None], 0, 1)
    return lut[(img * 255 + 0.5).astype(np.uint8)]




def draw_eye(plan: Plan, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[Lesion]]:
    """Draw a planned eye: (image (S, S, 3) uint8, lesion mask (S, S) uint8 with 255 = lesion, the lesions)."""
    geo = _geometry(rng, size, plan.eye)
    canvas = Canvas(geo, _background(rng, geo, plan))
    _tessellation(rng, canvas, plan.tessellation)
    assert {s.kind for s in plan.spots} <= set(STYLE), "every planned kind needs a STYLE entry (its paint order)"
    for kind in STYLE:
        if kind == "disc":
            _draw_disc(canvas, plan, rng)
        elif kind == "vessels":
            _draw_vessels(canvas, plan, rng)
        spots = [s for s in plan.spots if s.kind == kind]
        if STYLE.get(kind) is not None and spots:
            layer, draw = canvas.layer()
            for s in spots:
                canvas.draw_spot(draw, s)
            canvas.composite(layer, *STYLE[kind])
        for s in spots:
            if kind not in NOT_LESIONS:
                canvas.add_to_mask(s)
    return _nuisance(rng, geo, canvas.albedo), canvas.mask, canvas.lesions
