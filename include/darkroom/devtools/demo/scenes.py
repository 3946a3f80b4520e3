"""Procedural product photographs: numpy + Pillow, seeded, deterministic.

A :class:`Scene` says what is in the picture (product, colour, material, backdrop, light,
framing); :func:`render` draws it. Products are drawn as lit solids, not flat shapes: bodies
of revolution (mugs, bowls, jugs, vases, cans) from a profile curve seen from a three-quarter
viewpoint, with Lambert shading from a key light, a specular highlight whose size and strength
follow the material (glossy porcelain shines, terracotta does not), surface grain, a lit inner
wall for open vessels and a soft contact shadow. Everything is drawn at twice the output size
and downsampled, which anti-aliases the edges.

The same ``Scene`` always gives the same pixels: every random choice comes from the scene's
own ``seed``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageFilter

from darkroom.devtools.demo import catalogue as cat

SIZE = 64  # the demo model's picture size
_SS = 2  # supersampling factor


@dataclass(frozen=True)
class Scene:
    product: str  # a catalogue product name, or "can"
    colour: str  # a key of catalogue.COLOURS
    material: str  # a key of catalogue.MATERIALS
    scene: str  # studio | beach | flatlay
    backdrop: str  # studio: a STUDIO_BACKDROPS key; flatlay: a PASTEL_TABLES key; beach: blanket
    flavour: str | None = None  # cans: the Brisa title
    droplets: bool = False
    seed: int = 0
    light_side: int = -1  # -1: key light from the left, +1: from the right
    handle_side: int = 1
    scale: float = 1.0
    dx: float = 0.0
    dy: float = 0.0
    tint: float = 0.0  # small colour jitter of the glaze, -1..1
    angle: float = 0.0  # flat lay: the can's rotation in degrees

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------ sampling

def sample_scene(rng: np.random.Generator, *, scene: str | None = None, product: str | None = None,
                 colour: str | None = None, backdrop: str | None = None, seed: int | None = None) -> Scene:
    """A random scene, weighted toward the catalogues' own products, colours and settings;
    any argument given is kept as is."""
    if scene is None:
        scene = str(rng.choice(cat.SCENES, p=[0.56, 0.22, 0.22]))
    if product is None:
        can_share = 0.12 if scene == "studio" else 0.72
        if rng.random() < can_share:
            product = cat.CAN
        else:
            product = cat.PRODUCTS[int(rng.integers(len(cat.PRODUCTS)))].name
    flavour = None
    if product == cat.CAN:
        material = "metal"
        if colour is None and rng.random() < 0.8:
            # Mostly the catalogue's flavours; their colour follows the flavour.
            weights = np.array([3.0 if f.in_catalogue else 1.0 for f in cat.FLAVOURS])
            f = cat.FLAVOURS[int(rng.choice(len(cat.FLAVOURS), p=weights / weights.sum()))]
            flavour, colour = f.title, f.colour
        elif colour is None:
            colour = _random_colour(rng)
        else:
            flavour = next((f.title for f in cat.FLAVOURS if f.colour == colour), None)
            if rng.random() < 0.25:
                flavour = None
    else:
        p = cat.product(product)
        if colour is None:
            colour = p.colour if rng.random() < 0.4 else _random_colour(rng)
        material = p.material if rng.random() < 0.5 else str(rng.choice(list(cat.MATERIAL_WORDS)))
    if backdrop is None:
        if scene == "studio":
            backdrop = str(rng.choice(list(cat.STUDIO_BACKDROPS), p=[0.55, 0.2, 0.1, 0.075, 0.075]))
        elif scene == "flatlay":
            backdrop = str(rng.choice(list(cat.PASTEL_TABLES)))
        else:
            backdrop = str(rng.choice(["red gingham", "blue gingham"]))
    return Scene(
        product=product, colour=colour, material=material, scene=scene, backdrop=backdrop,
        flavour=flavour, droplets=product == cat.CAN and scene != "studio" and rng.random() < 0.85,
        seed=int(rng.integers(2**31)) if seed is None else seed,
        light_side=int(rng.choice([-1, 1], p=[0.7, 0.3])), handle_side=int(rng.choice([-1, 1], p=[0.3, 0.7])),
        scale=float(rng.uniform(0.9, 1.1)), dx=float(rng.uniform(-0.035, 0.035)),
        dy=float(rng.uniform(-0.03, 0.03)), tint=float(rng.uniform(-1, 1)),
        angle=float(rng.uniform(-40, 40)),
    )


def _random_colour(rng: np.random.Generator) -> str:
    names = list(cat.COLOURS)
    return names[int(rng.integers(len(names)))]


# ------------------------------------------------------------------------------ drawing

class _Canvas:
    """A float RGB picture in 0..1 with its pixel-centre grid in picture units (0..1)."""

    def __init__(self, n: int):
        self.n = n
        c = (np.arange(n, dtype=np.float32) + 0.5) / n
        self.X, self.Y = np.meshgrid(c, c)
        self.rgb = np.zeros((n, n, 3), np.float32)
        self.drawn = np.zeros((n, n), np.float32)  # coverage of what was painted (not the backdrop)

    def paint(self, mask: np.ndarray, rgb: np.ndarray) -> None:
        self.rgb += (rgb - self.rgb) * mask[..., None]
        self.drawn = np.maximum(self.drawn, mask)

    def darken(self, amount: np.ndarray) -> None:
        self.rgb = self.rgb * (1 - amount[..., None])

    def blur_mask(self, mask: np.ndarray, radius_units: float) -> np.ndarray:
        img = Image.fromarray((np.clip(mask, 0, 1) * 255).astype(np.uint8), "L")
        return np.asarray(img.filter(ImageFilter.GaussianBlur(radius_units * self.n)), np.float32) / 255


@dataclass
class _Light:
    direction: np.ndarray  # unit vector toward the key light (x right, y down, z to viewer)
    ambient: float
    key: float
    tint: np.ndarray  # colour of the key light
    shadow: float  # darkness of the contact shadow
    shadow_blur: float  # in picture units: soft daylight blurs, sunlight does not


def _light(scene: Scene) -> _Light:
    s = scene.light_side
    # direction, ambient, key, key colour, shadow darkness, shadow blur
    if scene.scene == "studio":  # soft natural daylight
        d, ambient, key, tint, shadow, blur = (0.55 * s, -0.5, 0.67), 0.5, 0.62, (1, 0.99, 0.97), 0.32, 0.05
    elif scene.scene == "beach":  # bright summer sunlight: harder, warmer, more contrast
        d, ambient, key, tint, shadow, blur = (0.7 * s, -0.55, 0.45), 0.48, 0.8, (1.04, 1, 0.92), 0.45, 0.012
    else:  # flat lay: light from above the table
        d, ambient, key, tint, shadow, blur = (0.35 * s, -0.35, 0.87), 0.5, 0.62, (1.02, 1, 0.96), 0.35, 0.015
    v = np.array(d, np.float32)
    return _Light(v / np.linalg.norm(v), ambient, key, np.array(tint, np.float32), shadow, blur)


def _base_colour(scene: Scene) -> np.ndarray:
    c = np.array(cat.COLOURS[scene.colour], np.float32) / 255
    # A glaze varies a little from piece to piece; the colour's name still fits.
    return np.clip(c * (1 + 0.045 * scene.tint), 0, 1)


def _shade(base: np.ndarray, n: tuple, light: _Light, material: str, grain: np.ndarray) -> np.ndarray:
    """Lambert + Blinn-Phong for unit normals ``n`` (arrays nx, ny, nz)."""
    nx, ny, nz = n
    L = light.direction
    lambert = np.clip(nx * L[0] + ny * L[1] + nz * L[2], 0, 1)
    m = cat.MATERIALS[material]
    h = L + np.array([0, 0, 1], np.float32)
    h = h / np.linalg.norm(h)
    spec = np.clip(nx * h[0] + ny * h[1] + nz * h[2], 0, 1) ** m["shine"] * m["spec"]
    shade = (light.ambient + light.key * lambert)[..., None] * light.tint
    rgb = base * shade * (1 + grain[..., None])
    if material == "metal":  # brushed aluminium reflects the room: bright and dark bands
        rgb = rgb * (0.9 + 0.18 * np.cos(nx * 5.5 + 0.6)[..., None])
    return np.clip(rgb + spec[..., None] * np.array([1.0, 1.0, 0.98], np.float32), 0, 1)


def _grain(rng: np.random.Generator, n: int, material: str) -> np.ndarray:
    m = cat.MATERIALS[material]
    g = rng.normal(0, m["grain"], (n, n)).astype(np.float32)
    if m["speckle"]:
        g -= (rng.random((n, n)) < m["speckle"]).astype(np.float32) * 0.35
    return g


def _lathe(cv: _Canvas, cx: float, top: float, height: float, profile, e: float):
    """A body of revolution standing upright, seen from slightly above (``e``: how round the
    rim ellipse looks). Returns (body mask, normals, t) where t is 0 at the rim, 1 at the foot."""
    X, Y = cv.X, cv.Y
    t = (Y - top) / height
    for _ in range(3):  # the front surface dips by e*r*cos(phi): solve for the height t
        r = profile(np.clip(t, 0, 1))
        u = (X - cx) / np.maximum(r, 1e-4)
        front = np.sqrt(np.clip(1 - u * u, 0, 1))
        t = (Y - top - e * r * front) / height
    r = profile(np.clip(t, 0, 1))
    u = (X - cx) / np.maximum(r, 1e-4)
    inside = (np.abs(u) <= 1) & (t >= 0) & (t <= 1)
    dr = (profile(np.clip(t + 0.01, 0, 1)) - profile(np.clip(t - 0.01, 0, 1))) / (0.02 * height)
    nz = np.sqrt(np.clip(1 - u * u, 0, 1))
    nx, ny = u, -dr * nz
    norm = np.sqrt(nx * nx + ny * ny + nz * nz) + 1e-6
    return inside.astype(np.float32), (nx / norm, ny / norm - 0.25 * e, nz / norm), t


def _ellipse(cv: _Canvas, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    return ((((cv.X - cx) / rx) ** 2 + ((cv.Y - cy) / ry) ** 2) <= 1).astype(np.float32)


def _ellipse_field(cv: _Canvas, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    return np.sqrt(((cv.X - cx) / rx) ** 2 + ((cv.Y - cy) / ry) ** 2)


class _Painter:
    """Draws one scene's product onto a canvas."""

    def __init__(self, cv: _Canvas, scene: Scene, rng: np.random.Generator):
        self.cv, self.scene, self.rng = cv, scene, rng
        self.light = _light(scene)
        self.base = _base_colour(scene)
        self.grain = _grain(rng, cv.n, scene.material)
        self.e = 0.85 if scene.scene == "flatlay" else 0.3  # overhead vs three-quarter view
        self.s = scene.scale
        self.cx = 0.5 + scene.dx
        self.footprints: list[tuple[float, float, float, float]] = []  # contact shadows: cx, y, rx, ry

    def shade(self, normals, base=None, material=None) -> np.ndarray:
        return _shade(self.base if base is None else base, normals, self.light,
                      material or self.scene.material, self.grain)

    def body(self, cx, top, height, profile, *, opening: str | None = "open", base=None,
             material=None, inner=None) -> tuple[float, float]:
        """A lathe body plus its top: "open" (the lit inner wall of a vessel), "lid" (metal) or
        None. Returns the foot's centre y and radius (for the shadow)."""
        cv, e = self.cv, self.e
        mask, normals, _ = _lathe(cv, cx, top, height, profile, e)
        cv.paint(mask, self.shade(normals, base, material))
        r0 = float(profile(np.float32(0)))
        if opening:
            rim = _ellipse(cv, cx, top, r0, e * r0)
            field = _ellipse_field(cv, cx, top, r0, e * r0)
            if opening == "open":
                # Inside a vessel: the back wall faces the viewer and the light, the front wall
                # is in the lip's shadow; a thin lit lip rings the opening.
                colour = self.base if base is None else base
                if inner is not None:
                    col = inner(self, colour, field)
                else:
                    depth = np.clip((cv.Y - (top - e * r0)) / (2 * e * r0 + 1e-6), 0, 1)
                    col = colour * (0.92 - 0.42 * depth)[..., None] * (1 + self.grain[..., None])
                cv.paint(rim, np.clip(col, 0, 1))
                lip = rim * (field > 0.86)
                cv.paint(lip, np.clip((self.base if base is None else base) * 1.08 + 0.04, 0, 1))
                m = cat.MATERIALS[material or self.scene.material]
                if m["spec"] > 0.3:  # a glossy glaze catches the light inside the bowl
                    spot = _ellipse(cv, cx - 0.35 * r0 * self.scene.light_side, top - 0.2 * e * r0,
                                    0.22 * r0, 0.12 * e * r0 + 0.006)
                    cv.paint(cv.blur_mask(spot, 0.006) * 0.7, np.ones(3, np.float32))
            else:  # a can's lid
                metal = np.array([0.8, 0.8, 0.82], np.float32)
                shade = 0.72 + 0.3 * np.clip(-(cv.X - cx) / r0 * self.scene.light_side, -1, 1)[..., None]
                cv.paint(rim, np.clip(metal * shade, 0, 1))
                ring = rim * (field > 0.78)
                cv.paint(ring, metal * 0.95)
                cv.paint(_ellipse(cv, cx + 0.25 * r0, top, 0.22 * r0, 0.18 * e * r0), metal * 0.55)
        foot_r = float(profile(np.float32(1)))
        return top + height, foot_r

    def handle(self, cx, cy, rx, ry, thickness, side, base=None):
        """A C-shaped handle on one side: the outer half of an elliptical ring, shaded as a tube."""
        cv = self.cv
        f = _ellipse_field(cv, cx, cy, rx, ry)
        inner = 1 - thickness
        ring = (f <= 1) & (f >= inner) & ((cv.X - cx) * side >= -0.15 * rx)
        v = (f - inner) / thickness * 2 - 1  # -1 inner edge .. 1 outer edge of the tube
        ang = np.arctan2((cv.Y - cy) / ry, (cv.X - cx) / rx)
        nz = np.sqrt(np.clip(1 - v * v, 0, 1))
        normals = (np.cos(ang) * v, np.sin(ang) * v, nz)
        cv.paint(ring.astype(np.float32), self.shade(normals, base))

    def shadow(self, cx, foot_y, rx, ry):
        self.footprints.append((cx, foot_y, rx, ry))


def _smooth(a, b, t):
    x = np.clip((t - a) / (b - a), 0, 1)
    return x * x * (3 - 2 * x)


# Each product: the painter draws it with its foot near (cx, floor), sizes in picture units.

def _draw_coffee_mug(p: _Painter, floor: float):
    s, cx = p.s, p.cx
    R, H = 0.15 * s, 0.3 * s
    top = floor - H
    side = p.scene.handle_side
    p.handle(cx + side * (R + 0.01 * s), top + 0.47 * H, 0.1 * s, 0.12 * s, 0.42, side)
    p.body(cx, top, H, lambda t: R * (1 - 0.07 * _smooth(0.8, 1.0, t)))
    p.shadow(cx, floor, R * 1.25, 0.3 * R)


def _draw_espresso_cup(p: _Painter, floor: float):
    s, cx = p.s, p.cx
    # saucer first, then the small tapered cup standing on it
    p.body(cx, floor - 0.035 * s, 0.03 * s, lambda t: 0.23 * s * (1 - 0.3 * t), inner=_plate_well(0.55))
    R, H = 0.105 * s, 0.15 * s
    top = floor - 0.03 * s - H
    side = p.scene.handle_side
    p.handle(cx + side * (R * 0.92), top + 0.42 * H, 0.065 * s, 0.07 * s, 0.45, side)
    p.body(cx, top, H, lambda t: R * (1 - 0.28 * t ** 1.3))
    p.shadow(cx, floor, 0.26 * s, 0.06 * s)


def _draw_tea_bowl(p: _Painter, floor: float):
    s, cx = p.s, p.cx
    R, H = 0.2 * s, 0.22 * s
    p.body(cx, floor - H, H, lambda t: R * (1 - 0.32 * t ** 1.6) * (1 - 0.12 * _smooth(0.88, 1.0, t)))
    p.shadow(cx, floor, R * 1.1, 0.28 * R)


def _plate_well(frac: float, strength: float = 0.12):
    """The top of a plate faces up, into the light: bright, the well a shade darker than the
    rim, with a soft ring where they meet."""
    def inner(p: _Painter, base: np.ndarray, field: np.ndarray) -> np.ndarray:
        lit = p.light.ambient + p.light.key * 0.72
        ring = np.exp(-((field - frac) / 0.07) ** 2)
        level = lit * (1 - 0.05 * (field < frac)) - strength * ring
        return np.clip(base * level[..., None] * p.light.tint * (1 + p.grain[..., None]), 0, 1)
    return inner


def _draw_plate(p: _Painter, floor: float, R: float):
    s, cx = p.s, p.cx
    R *= s
    thick = 0.03 * s
    e = p.e
    top = floor - thick - e * R * 0.9
    p.body(cx, top, thick, lambda t: R * (1 - 0.2 * t), inner=_plate_well(0.62))
    if cat.MATERIALS[p.scene.material]["spec"] > 0.3:  # a glossy rim shines
        cv = p.cv
        f = _ellipse_field(cv, cx, top, R, e * R)
        arc = (f > 0.72) & (f < 0.95) & ((cv.X - cx) * p.scene.light_side > 0.2 * R) & (cv.Y < top)
        cv.paint(cv.blur_mask(arc.astype(np.float32), 0.004) * 0.6, np.ones(3, np.float32))
    p.shadow(cx, top + e * R * 0.95, R * 1.05, e * R * 1.05)


def _draw_dinner_plate(p: _Painter, floor: float):
    _draw_plate(p, floor, 0.36)


def _draw_side_plate(p: _Painter, floor: float):
    _draw_plate(p, floor, 0.25)


def _draw_serving_bowl(p: _Painter, floor: float):
    s, cx = p.s, p.cx
    R, H = 0.3 * s, 0.22 * s
    p.body(cx, floor - H, H,
           lambda t: R * np.sqrt(np.clip(1 - (0.78 * t) ** 2, 0, 1)) * (1 - 0.15 * _smooth(0.9, 1, t)))
    p.shadow(cx, floor, R * 0.9, 0.25 * R)


def _draw_pasta_bowl(p: _Painter, floor: float):
    s, cx = p.s, p.cx
    R, H = 0.31 * s, 0.1 * s
    p.body(cx, floor - H, H, lambda t: R * (1 - 0.42 * t ** 1.2), inner=_plate_well(0.6, 0.18))
    p.shadow(cx, floor, R * 0.85, 0.22 * R)


def _draw_water_jug(p: _Painter, floor: float):
    s, cx = p.s, p.cx
    R, H = 0.15 * s, 0.46 * s
    top = floor - H
    side = p.scene.handle_side

    def profile(t):
        neck = 0.72 + 0.28 * _smooth(0.12, 0.55, t)
        flare = 0.12 * (1 - _smooth(0.0, 0.1, t))
        return R * (neck + flare) * (1 - 0.08 * _smooth(0.9, 1.0, t))

    p.handle(cx + side * (0.85 * R), top + 0.36 * H, 0.12 * s, 0.17 * s, 0.34, side)
    p.body(cx, top, H, profile)
    # the spout: a lip pulled out of the rim on the side away from the handle
    cv = p.cv
    sx = cx - side * 0.98 * float(profile(np.float32(0)))
    spout = ((np.abs(cv.Y - (top + 0.005)) < 0.028 * s * (1 - np.abs(cv.X - sx) / (0.06 * s)))
             & (np.abs(cv.X - sx) < 0.06 * s)).astype(np.float32)
    cv.paint(spout, np.clip(p.base * (p.light.ambient + 0.5 * p.light.key) * p.light.tint, 0, 1))
    p.shadow(cx, floor, R * 1.2, 0.3 * R)


def _draw_bud_vase(p: _Painter, floor: float):
    s, cx = p.s, p.cx
    H = 0.38 * s

    def profile(t):
        bulb = np.clip(np.sin(np.clip((t - 0.25) / 0.75, 0, 1) * math.pi), 0, 1) ** 0.8
        return s * (0.045 + 0.015 * (1 - _smooth(0, 0.08, t)) + 0.11 * bulb * _smooth(0.2, 0.5, t)
                    + 0.03 * _smooth(0.85, 1, t))

    p.body(cx, floor - H, H, profile)
    p.shadow(cx, floor, 0.15 * s, 0.045 * s)


def _draw_planter(p: _Painter, floor: float):
    s, cx = p.s, p.cx
    R, H = 0.22 * s, 0.33 * s
    top = floor - H
    cv = p.cv
    # leaves first: they rise from the soil behind the front rim
    leaf = np.array([0.28, 0.5, 0.24], np.float32)
    for k, ang in enumerate((-0.7, -0.25, 0.2, 0.65)):
        lx = cx + 0.35 * R * math.sin(ang)
        ly = top - 0.11 * s - 0.03 * s * (k % 2)
        ca, sa = math.cos(ang), math.sin(ang)
        x, y = cv.X - lx, cv.Y - ly
        u, v = x * ca + y * sa, -x * sa + y * ca
        blade = ((u / (0.035 * s)) ** 2 + (v / (0.11 * s)) ** 2 <= 1).astype(np.float32)
        cv.paint(blade, np.clip(leaf * (0.8 + 0.35 * np.clip(-u / (0.035 * s), -1, 1))[..., None], 0, 1))

    def soil(p: _Painter, base: np.ndarray, field: np.ndarray) -> np.ndarray:
        dirt = np.array([0.24, 0.17, 0.12], np.float32) * (1 + p.grain[..., None] * 3)
        wall = base * (0.55 + 0.2 * field)[..., None]
        return np.where((field < 0.88)[..., None], dirt, wall)

    p.body(cx, top, H, lambda t: R * (1.06 - 0.06 * _smooth(0.09, 0.11, t) - 0.22 * t), inner=soil)
    p.shadow(cx, floor, R * 0.95, 0.28 * R)


def _superellipse(cv: _Canvas, cx, cy, a, b, n=4.0):
    return (np.abs((cv.X - cx) / a) ** n + np.abs((cv.Y - cy) / b) ** n)


def _draw_box(p: _Painter, cx, top_cy, a, b, height, base_mult=1.0):
    """A rounded-rectangle box seen from above the front: extruded sides, then the lit top."""
    cv = p.cv
    steps = max(2, int(height * cv.n))
    side = np.zeros_like(cv.X)
    for k in range(steps + 1):
        side = np.maximum(side, (_superellipse(cv, cx, top_cy + height * k / steps, a, b) <= 1))
    nx = np.clip((cv.X - cx) / a, -1, 1) ** 3
    normals = (nx, np.zeros_like(nx) + 0.1, np.sqrt(np.clip(1 - nx * nx, 0, 1)))
    cv.paint(side.astype(np.float32), p.shade(normals, p.base * base_mult))
    top_mask = (_superellipse(cv, cx, top_cy, a, b) <= 1).astype(np.float32)
    up = (np.zeros_like(cv.X) + 0.25 * p.scene.light_side * -np.clip((cv.X - cx) / a, -1, 1),
          np.zeros_like(cv.X) - 0.8, np.zeros_like(cv.X) + 0.55)
    n = np.sqrt(up[0] ** 2 + up[1] ** 2 + up[2] ** 2)
    cv.paint(top_mask, p.shade((up[0] / n, up[1] / n, up[2] / n), p.base * base_mult))


def _draw_butter_dish(p: _Painter, floor: float):
    s, cx = p.s, p.cx
    e = p.e
    a, b = 0.33 * s, 0.24 * s * e / 0.3 * 0.3 + 0.02
    _draw_box(p, cx, floor - 0.025 * s - b * 0.5, a, b, 0.025 * s, 0.97)  # the base plate
    la, lb, lh = 0.27 * s, b * 0.78, 0.13 * s
    _draw_box(p, cx, floor - 0.03 * s - lh - b * 0.45, la, lb, lh)  # the lid
    knob_y = floor - 0.03 * s - lh - b * 0.45
    p.body(cx, knob_y - 0.045 * s, 0.04 * s, lambda t: 0.04 * s * (1 - 0.4 * t), opening=None)
    p.shadow(cx, floor, a * 1.05, b * 0.55)


def _draw_candle_holder(p: _Painter, floor: float):
    s, cx = p.s, p.cx
    R, H = 0.16 * s, 0.12 * s
    top = floor - H
    p.body(cx, top, H, lambda t: R * (0.75 + 0.25 * _smooth(0.1, 1.0, t)), opening=None)
    # the candle in it, wax-white whatever the holder's glaze
    wax = np.array([0.95, 0.93, 0.86], np.float32)
    cr, ch = 0.055 * s, 0.24 * s
    ctop = top - ch + 0.02 * s
    p.body(cx, ctop, ch, lambda t: cr + 0 * t, opening="open", base=wax, material="porcelain")
    cv = p.cv
    # wick and flame, with a warm glow around it
    fy = ctop - 0.05 * s
    flame = _ellipse(cv, cx, fy, 0.016 * s, 0.04 * s)
    glow = np.exp(-(((cv.X - cx) / (0.06 * s)) ** 2 + ((cv.Y - fy) / (0.08 * s)) ** 2))
    cv.rgb = np.clip(cv.rgb + glow[..., None] * np.array([0.25, 0.16, 0.02], np.float32), 0, 1)
    cv.paint(flame, np.array([1.0, 0.82, 0.35], np.float32))
    cv.paint(_ellipse(cv, cx, fy + 0.012 * s, 0.007 * s, 0.018 * s), np.array([1.0, 0.97, 0.85], np.float32))
    p.shadow(cx, floor, R * 1.15, 0.3 * R)


def _draw_teapot(p: _Painter, floor: float):
    s, cx = p.s, p.cx
    R, H = 0.2 * s, 0.28 * s
    top = floor - H
    side = p.scene.handle_side
    cv = p.cv
    p.handle(cx + side * (0.95 * R), top + 0.45 * H, 0.09 * s, 0.1 * s, 0.4, side)
    # the spout: a tapering tube rising away from the handle
    t = np.clip((cv.X - cx) * -side / (0.3 * s), 0, 1)
    centre_y = top + 0.62 * H - 0.22 * s * t ** 1.4
    width = 0.035 * s * (1 - 0.5 * t)
    spout = ((np.abs(cv.Y - centre_y) < width) & ((cv.X - cx) * -side > 0.5 * R)
             & ((cv.X - cx) * -side < 0.3 * s)).astype(np.float32)
    v = np.clip((cv.Y - centre_y) / np.maximum(width, 1e-4), -1, 1)
    cv.paint(spout, p.shade((np.zeros_like(v), v, np.sqrt(1 - v * v))))
    p.body(cx, top, H, lambda t: R * np.sqrt(np.clip(1 - (1.1 * (t - 0.55)) ** 2, 0.05, 1)) * 1.05,
           opening=None)
    p.body(cx, top - 0.03 * s, 0.05 * s, lambda t: 0.1 * s * (0.4 + 0.6 * t), opening=None)  # the lid
    p.shadow(cx, floor, R * 1.1, 0.28 * R)


def _draw_tumbler(p: _Painter, floor: float):
    s, cx = p.s, p.cx
    R, H = 0.14 * s, 0.32 * s
    p.body(cx, floor - H, H, lambda t: R * (1 - 0.18 * t))
    p.shadow(cx, floor, R * 1.1, 0.28 * R)


def _can_profile(R: float):
    def profile(t):
        return R * (0.86 + 0.14 * _smooth(0.0, 0.07, t)) * (1 - 0.1 * _smooth(0.93, 1.0, t))
    return profile


def _can_skin(p: _Painter, t: np.ndarray, u: np.ndarray, mask: np.ndarray) -> None:
    """Silver rims, the label band and the droplets on a can, from its height t (0 top .. 1
    foot) and the across-coordinate u (-1..1)."""
    cv = p.cv
    metal = np.array([0.82, 0.82, 0.85], np.float32)
    nz = np.sqrt(np.clip(1 - u * u, 0, 1))
    lam = np.clip(u * p.light.direction[0] + nz * p.light.direction[2], 0, 1)
    rims = mask * ((t < 0.075) | (t > 0.94))
    cv.paint(rims, np.clip(metal * (0.55 + 0.55 * lam)[..., None], 0, 1))
    # the label: a lighter band of the flavour colour with the brand's mark in a deeper shade
    # (the can still reads as its flavour's colour: that colour covers most of it)
    band = mask * ((t > 0.4) & (t < 0.58))
    pale = p.base * 0.6 + 0.4
    cv.paint(band * 0.85, np.clip(pale * (0.6 + 0.45 * lam)[..., None], 0, 1))
    mark = mask * (np.abs(t - 0.49) < 0.045) * (np.abs(u + 0.05) < 0.42)
    cv.paint(mark * 0.9, np.clip(p.base * 0.7 * (0.6 + 0.45 * lam)[..., None], 0, 1))
    if p.scene.droplets:
        rng = p.rng
        ys, xs = np.nonzero(mask * (t > 0.08) * (t < 0.93))
        if len(ys):
            dots = np.zeros_like(cv.X)
            k = np.arange(-3, 4)
            for i in rng.integers(len(ys), size=int(rng.integers(25, 45))):
                r = rng.uniform(0.5, 1.4) * _SS / 2  # in pixels
                y0, x0 = ys[i], xs[i]
                d = (k[:, None] ** 2 + k[None, :] ** 2) / r ** 2
                win = dots[max(y0 - 3, 0):y0 + 4, max(x0 - 3, 0):x0 + 4]
                blob = np.exp(-d * 1.5)[3 - (y0 - max(y0 - 3, 0)):, 3 - (x0 - max(x0 - 3, 0)):]
                win[...] = np.maximum(win, blob[:win.shape[0], :win.shape[1]])
            cv.rgb = np.clip(cv.rgb * (1 - 0.25 * dots[..., None]) + 0.45 * dots[..., None] ** 3, 0, 1)


def _draw_can(p: _Painter, floor: float):
    if p.scene.scene == "flatlay":
        return _draw_can_lying(p, floor)
    s, cx = p.s, p.cx
    R, H = 0.13 * s, 0.46 * s
    top = floor - H
    profile = _can_profile(R)
    mask, normals, t = _lathe(p.cv, cx, top, H, profile, p.e)
    p.cv.paint(mask, p.shade(normals))
    _can_skin(p, t, normals[0] / np.maximum(np.sqrt(normals[0] ** 2 + normals[2] ** 2), 1e-4), mask)
    p.body(cx, top, 0.0001, lambda t: profile(np.float32(0)) + 0 * t, opening="lid")
    p.shadow(cx, floor, R * 1.2, 0.3 * R)


def _draw_can_lying(p: _Painter, floor: float):
    """Overhead flat lay: the can lies on the table, seen from above, turned by ``angle``."""
    cv, s = p.cv, p.s
    cx, cy = p.cx, 0.5 + p.scene.dy
    L, W = 0.6 * s, 0.27 * s
    a = math.radians(p.scene.angle)
    ca, sa = math.cos(a), math.sin(a)
    x, y = cv.X - cx, cv.Y - cy
    along = (x * ca + y * sa) / (L / 2)  # -1 top (lid end) .. 1 foot
    across = (-x * sa + y * ca) / (W / 2)
    t = (along + 1) / 2
    neck, foot = 0.86 + 0.14 * t / 0.07, 1 - 0.1 * (t - 0.93) / 0.07
    width = np.where(t < 0.07, neck, 1.0) * np.where(t > 0.93, foot, 1)
    u = across / width
    mask = ((np.abs(u) <= 1) & (t >= 0) & (t <= 1)).astype(np.float32)
    nz = np.sqrt(np.clip(1 - u * u, 0, 1))
    normals = (-u * sa, u * ca, nz)  # the can's across-direction in picture coordinates
    p.cv.paint(mask, p.shade(normals))
    _can_skin(p, t, u, mask)


_DRAW = {
    "coffee mug": _draw_coffee_mug, "espresso cup": _draw_espresso_cup, "tea bowl": _draw_tea_bowl,
    "dinner plate": _draw_dinner_plate, "side plate": _draw_side_plate,
    "serving bowl": _draw_serving_bowl, "pasta bowl": _draw_pasta_bowl,
    "water jug": _draw_water_jug, "bud vase": _draw_bud_vase, "planter": _draw_planter,
    "butter dish": _draw_butter_dish, "candle holder": _draw_candle_holder,
    "teapot": _draw_teapot, "tumbler": _draw_tumbler, cat.CAN: _draw_can,
}


# ------------------------------------------------------------------------------ settings

def _studio(cv: _Canvas, scene: Scene, rng: np.random.Generator, light: _Light) -> float:
    colours = cat.STUDIO_BACKDROPS.get(scene.backdrop) or cat.STYLE_BACKDROPS[scene.backdrop]
    wall, floor_c = (np.array(c, np.float32) / 255 for c in colours)
    horizon = 0.6 + rng.uniform(-0.04, 0.04)
    blend = _smooth(horizon - 0.07, horizon + 0.07, cv.Y)[..., None]
    rgb = wall * (0.9 + 0.1 * cv.Y[..., None] / horizon) * (1 - blend) + floor_c * blend
    # daylight from one side: that side of the backdrop is brighter
    side = (cv.X - 0.5) * -scene.light_side
    rgb = rgb * (1 + 0.07 * side[..., None])
    vignette = ((cv.X - 0.5) ** 2 + (cv.Y - 0.5) ** 2)[..., None]
    cv.rgb = np.clip(rgb * (1 - 0.18 * vignette), 0, 1)
    return 0.8 + scene.dy


def _beach(cv: _Canvas, scene: Scene, rng: np.random.Generator, light: _Light) -> float:
    horizon = 0.36 + rng.uniform(-0.04, 0.04)
    Y, X = cv.Y[..., None], cv.X[..., None]
    up, low = np.array([0.42, 0.66, 0.9], np.float32), np.array([0.76, 0.87, 0.96], np.float32)
    sky = up * (1 - Y / horizon) + low * (Y / horizon)
    sea_end = horizon + 0.09
    sea = np.array([0.16, 0.46, 0.66], np.float32) + 0.08 * np.sin(X * 60 + Y * 200)
    grain = rng.normal(0, 0.03, cv.X.shape).astype(np.float32)[..., None]
    sand = np.array([0.9, 0.81, 0.63], np.float32) * (1 + grain)
    rgb = np.where(Y < horizon, sky, np.where(Y < sea_end, sea, sand))
    foam = (np.abs(cv.Y - sea_end) < 0.008)[..., None]
    rgb = np.where(foam, np.array([0.95, 0.96, 0.95], np.float32), rgb)
    # the picnic blanket: gingham in perspective, the can stands on it
    top_y = sea_end + 0.12
    depth = np.clip((cv.Y - top_y) / (1 - top_y), 0, 1)
    half = 0.28 + 0.3 * depth
    on = (cv.Y > top_y) & (np.abs(cv.X - 0.5) < half)
    gu = (cv.X - 0.5) / (0.075 + 0.075 * depth)  # checks a 16x16 latent can still carry
    gv = np.log1p(depth * 6) * 3.5
    check = ((np.floor(gu) % 2) + (np.floor(gv) % 2))[..., None]
    red = scene.backdrop.startswith("red")
    colour = np.array([0.82, 0.18, 0.2] if red else [0.2, 0.34, 0.72], np.float32)
    white = np.array([0.96, 0.95, 0.92], np.float32)
    blanket = white * (check == 0) + (white * 0.45 + colour * 0.55) * (check == 1) + colour * (check == 2)
    rgb = np.where(on[..., None], blanket, rgb)
    # shallow depth of field: the far scene is soft
    img = Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8))
    img = img.filter(ImageFilter.GaussianBlur(0.8 * _SS))
    cv.rgb = np.asarray(img, np.float32) / 255 * 1.03
    return 0.84 + scene.dy


def _flatlay(cv: _Canvas, scene: Scene, rng: np.random.Generator, light: _Light) -> float:
    base = np.array(cat.PASTEL_TABLES[scene.backdrop], np.float32) / 255
    # painted wooden planks: faint seams and grain across the table
    along = cv.Y + 0.03 * np.sin(cv.X * 7 + rng.uniform(0, 6))
    seams = (np.abs(((along + rng.uniform(0, 1)) * 4) % 1 - 0.5) > 0.485)
    grain = 0.025 * np.sin(along * 180 + 3 * np.sin(cv.X * 23))
    rgb = base * (1 + grain - 0.08 * seams)[..., None]
    cv.rgb = np.clip(rgb * (1 + rng.normal(0, 0.012, cv.X.shape).astype(np.float32))[..., None], 0, 1)
    return 0.74 + scene.dy


_SETTINGS = {"studio": _studio, "beach": _beach, "flatlay": _flatlay}


def render(scene: Scene, size: int = SIZE, *, with_mask: bool = False):
    """The scene as a ``size`` x ``size`` RGB uint8 array. Same scene, same pixels.
    ``with_mask``: also return how much of each pixel the product covers (0..1)."""
    rng = np.random.default_rng(scene.seed)
    cv = _Canvas(size * _SS)
    light = _light(scene)
    floor = _SETTINGS[scene.scene](cv, scene, rng, light)
    backdrop = cv.rgb.copy()
    cv.drawn[:] = 0
    painter = _Painter(cv, scene, rng)
    _DRAW[scene.product](painter, floor)
    # Contact shadows go under the product: darken the backdrop, then put the product back.
    drawn = cv.drawn
    shadow = np.zeros_like(cv.X)
    if scene.scene == "flatlay":  # light from above: the product's own outline, a little offset
        shift = int(0.022 * cv.n)
        shadow = np.roll(np.roll(drawn, shift, axis=0), -scene.light_side * shift, axis=1)
    off = (0.035 if scene.scene == "beach" else 0.012) * -scene.light_side
    for cx, fy, rx, ry in painter.footprints if scene.scene != "flatlay" else ():
        if scene.scene == "beach":  # the sun casts a long shadow away from it
            cast = _ellipse(cv, cx + off - 1.1 * rx * scene.light_side, fy, rx * 1.9, ry * 0.9)
            shadow = np.maximum(shadow, cast)
        shadow = np.maximum(shadow, _ellipse(cv, cx + off, fy, rx, ry))
    shadow = cv.blur_mask(shadow, light.shadow_blur) * light.shadow
    shaded = backdrop * (1 - shadow[..., None])
    cv.rgb = shaded * (1 - drawn[..., None]) + cv.rgb * drawn[..., None]
    img = Image.fromarray((np.clip(cv.rgb, 0, 1) * 255 + 0.5).astype(np.uint8))
    img = img.resize((size, size), Image.Resampling.LANCZOS)
    out = np.asarray(img, np.float32) + rng.normal(0, 1.6, (size, size, 3))  # sensor noise
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    if not with_mask:
        return out
    coverage = Image.fromarray((drawn * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BOX)
    return out, np.asarray(coverage, np.float32) / 255


def render_image(scene: Scene, size: int = SIZE) -> Image.Image:
    return Image.fromarray(render(scene, size))


def contact_sheet(images: list[np.ndarray], columns: int, scale: int = 2) -> Image.Image:
    """Pictures side by side in a grid, each enlarged ``scale`` times (nearest: no invented detail)."""
    h, w = images[0].shape[:2]
    rows = -(-len(images) // columns)
    size = (columns * w * scale + (columns + 1) * 2, rows * h * scale + (rows + 1) * 2)
    sheet = Image.new("RGB", size, "white")
    for i, arr in enumerate(images):
        img = Image.fromarray(arr).resize((w * scale, h * scale), Image.Resampling.NEAREST)
        sheet.paste(img, (2 + (i % columns) * (w * scale + 2), 2 + (i // columns) * (h * scale + 2)))
    return sheet
