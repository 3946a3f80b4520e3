"""What the demo model can draw, in the words of the example campaigns.

The products, colours and materials of ``include/campaigns/spring_tiles.products.csv``, the
Brisa cans of ``summer_social.products.csv`` (whose colour follows the flavour), and a few
extras beyond both catalogues, so that colour and product words are learnt as words rather
than as twelve fixed pairs. Plain data: the renderer, the captions, the classifier's label
vocabulary and the benchmark all read it from here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Product:
    name: str  # as the catalogue's `name` column spells it
    category: str  # the catalogue's `category` column
    colour: str  # the catalogue's colour (extras: a typical one)
    material: str
    in_catalogue: bool = True


PRODUCTS: tuple[Product, ...] = (
    Product("coffee mug", "drinkware", "terracotta", "stoneware"),
    Product("espresso cup", "drinkware", "sand", "porcelain"),
    Product("tea bowl", "drinkware", "moss green", "stoneware"),
    Product("dinner plate", "tableware", "chalk white", "stoneware"),
    Product("side plate", "tableware", "charcoal", "stoneware"),
    Product("serving bowl", "tableware", "ochre", "earthenware"),
    Product("pasta bowl", "tableware", "sky blue", "porcelain"),
    Product("water jug", "serveware", "cream", "stoneware"),
    Product("bud vase", "decor", "rust", "earthenware"),
    Product("planter", "decor", "slate grey", "terracotta"),
    Product("butter dish", "serveware", "butter yellow", "porcelain"),
    Product("candle holder", "decor", "ink blue", "stoneware"),
    # Beyond the catalogue.
    Product("teapot", "serveware", "teal", "stoneware", in_catalogue=False),
    Product("tumbler", "drinkware", "lavender", "porcelain", in_catalogue=False),
)
CAN = "can"  # the summer catalogue's one product type, whatever the flavour

# sRGB of a well-lit, unshaded surface. Catalogue colours first, then the cans' flavour colours,
# then extras. Near neighbours (terracotta / rust / ochre, sand / cream / chalk white, charcoal /
# slate grey / ink blue) are kept apart in hue or lightness, so a small model can tell them.
COLOURS: dict[str, tuple[int, int, int]] = {
    "terracotta": (198, 100, 62),
    "sand": (214, 188, 146),
    "moss green": (98, 118, 58),
    "chalk white": (238, 236, 228),
    "charcoal": (56, 56, 60),
    "ochre": (206, 148, 36),
    "sky blue": (126, 178, 224),
    "cream": (244, 228, 188),
    "rust": (146, 58, 26),
    "slate grey": (108, 120, 132),
    "butter yellow": (246, 222, 118),
    "ink blue": (34, 50, 104),
    "green": (104, 196, 58),  # lime and mint
    "peach": (250, 176, 136),
    "pink": (238, 104, 150),
    "yellow": (250, 208, 26),  # yuzu and ginger
    "teal": (28, 138, 140),
    "lavender": (168, 148, 214),
    "plum": (108, 40, 86),
    "red": (200, 36, 40),
}
CATALOGUE_COLOURS = tuple(p.colour for p in PRODUCTS if p.in_catalogue)


@dataclass(frozen=True)
class Flavour:
    title: str  # the catalogue's display_name
    flavour: str  # the catalogue's flavour column
    colour: str  # the can's colour: what a shopper expects of the flavour
    in_catalogue: bool = True


FLAVOURS: tuple[Flavour, ...] = (
    Flavour("Brisa Lime", "lime and mint", "green"),
    Flavour("Brisa Peach", "white peach", "peach"),
    Flavour("Brisa Grapefruit", "pink grapefruit", "pink"),
    Flavour("Brisa Yuzu", "yuzu and ginger", "yellow"),
    Flavour("Brisa Berry", "wild berry", "plum", in_catalogue=False),
    Flavour("Brisa Cherry", "sour cherry", "red", in_catalogue=False),
)

# How a material looks: specular strength, shininess, surface grain.
MATERIALS: dict[str, dict[str, float]] = {
    "stoneware": {"spec": 0.07, "shine": 10.0, "grain": 0.035, "speckle": 0.012},
    "porcelain": {"spec": 0.55, "shine": 60.0, "grain": 0.008, "speckle": 0.0},
    "earthenware": {"spec": 0.14, "shine": 16.0, "grain": 0.03, "speckle": 0.004},
    "terracotta": {"spec": 0.02, "shine": 6.0, "grain": 0.06, "speckle": 0.0},
    "metal": {"spec": 0.85, "shine": 28.0, "grain": 0.004, "speckle": 0.0},
}
# How captions say a material (the catalogue's word first).
MATERIAL_WORDS: dict[str, tuple[str, ...]] = {
    "stoneware": ("stoneware", "matte stoneware"),
    "porcelain": ("porcelain", "glossy porcelain"),
    "earthenware": ("earthenware", "glazed earthenware"),
    "terracotta": ("terracotta", "unglazed terracotta"),
}

# Scenes: the backdrops and lighting the prompts name. ``studio`` is the spring tiles' hero
# tile, ``beach`` and ``flatlay`` the summer posts' two asset types.
STUDIO_BACKDROPS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    # name: (wall, floor)
    "warm neutral": ((206, 190, 170), (224, 210, 192)),
    "white": ((240, 240, 238), (250, 250, 248)),
    "light grey": ((196, 197, 200), (214, 215, 217)),
    "pastel pink": ((236, 200, 206), (244, 214, 218)),
    "pastel blue": ((196, 216, 238), (212, 228, 244)),
}
# Backdrops only the style LoRA learns (``lora.py``); the base model never sees them.
STYLE_BACKDROPS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    # Light, as the studio sweeps are: the autoencoder never saw a dark backdrop, and a forest
    # green one ((38, 72, 56), (56, 92, 72)) came back from it as teal streaks, so a LoRA
    # trained on its latents drew streaks too.
    "mint green": ((170, 200, 176), (190, 218, 196)),
}
PASTEL_TABLES: dict[str, tuple[int, int, int]] = {
    "pink": (240, 200, 208),
    "mint": (196, 230, 212),
    "lilac": (214, 204, 236),
    "blue": (198, 220, 242),
    "lemon": (246, 236, 190),
}
SCENES = ("studio", "beach", "flatlay")

# The campaigns' own prompt pieces (include/campaigns/*.yaml), quoted.
SPRING_STYLE = "studio product photograph"
SPRING_COMPOSITION = "centred, three-quarter view, shallow depth of field"
SPRING_BRAND = "soft natural daylight, warm neutral backdrop, high detail"
SUMMER_SCENES = {"beach": "beach picnic scene", "flatlay": "overhead flat lay on a pastel table"}
SUMMER_BRAND = "bright summer sunlight, vivid but natural colours"
NEGATIVE_WORDS = ("text", "watermark", "logo", "hands", "people", "blurry", "low quality",
                  "oversaturated", "people's faces", "logos of other brands", "dark", "gloomy")


def product(name: str) -> Product:
    for p in PRODUCTS:
        if p.name == name:
            return p
    raise KeyError(f"{name!r} is not a demo product; fix: use one of {', '.join(p.name for p in PRODUCTS)}")


def product_types() -> list[str]:
    """The classifier's product labels: every product, then the can."""
    return [p.name for p in PRODUCTS] + [CAN]


def type_phrases() -> dict[str, list[str]]:
    """Words in a prompt that ask for each product type (matched longest first)."""
    phrases = {p.name: [p.name] for p in PRODUCTS}
    phrases["coffee mug"] += ["mug"]
    phrases["espresso cup"] += ["espresso"]
    phrases["water jug"] += ["jug", "pitcher"]
    phrases["bud vase"] += ["vase"]
    phrases[CAN] = ["can", "drink can", "tin can"]
    return phrases


def colour_phrases() -> dict[str, list[str]]:
    """Words in a prompt that ask for each colour: its name, and for the cans the flavour
    (a "Brisa Lime" can is green, whatever else the prompt says)."""
    phrases = {c: [c] for c in COLOURS}
    for f in FLAVOURS:
        phrases[f.colour] += [f.flavour, f.title.lower()]
    phrases["moss green"] += ["moss"]
    phrases["slate grey"] += ["slate gray"]
    return {c: list(dict.fromkeys(v)) for c, v in phrases.items()}
