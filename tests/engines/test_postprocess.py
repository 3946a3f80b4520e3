"""Channel recipes: each one's output size, format and metadata; the upscaler hook; the
parallel, streaming map; the contact sheet's drawing."""

from __future__ import annotations

import io

import numpy as np
import pytest
from darkroom import imaging, postprocess
from darkroom.config import BRAND_DIR
from darkroom.spec import Channel
from PIL import Image, ImageCms, ImageDraw

from tests.support.images import good_image, provenance


def original(size=(96, 64)) -> bytes:
    return imaging.encode(good_image(3, size), "png", provenance(size=size))


def render(ch: Channel, size=(96, 64), locale=None) -> tuple[postprocess.Rendered, Image.Image]:
    (d,) = postprocess.render_all(original(size), {"web": ch}, locale=locale)
    img = Image.open(io.BytesIO(d.data))
    img.load()
    return d, img


@pytest.mark.parametrize(("fmt", "pil"), [("jpeg", "JPEG"), ("webp", "WEBP"), ("png", "PNG")])
def test_each_format_has_the_size_and_carries_provenance(fmt, pil):
    d, img = render(Channel(width=120, height=80, format=fmt, quality=80))
    assert (img.format, img.size, d.format, (d.width, d.height)) == (pil, (120, 80), fmt, (120, 80))
    prov = imaging.read_provenance(d.data)
    assert prov.darkroom["asset_id"] == "asset-1" and prov.darkroom["channel"] == "web"
    assert prov.darkroom["recipe"] == postprocess.recipe_hash(Channel(width=120, height=80, format=fmt, quality=80))
    assert "Seed: 1234" in prov.parameters
    assert img.info.get("icc_profile") == postprocess.SRGB_ICC  # tagged sRGB


def test_quality_setting_changes_the_bytes():
    small, _ = render(Channel(width=200, height=200, format="jpeg", quality=20))
    big, _ = render(Channel(width=200, height=200, format="jpeg", quality=95))
    assert len(small.data) < len(big.data)


def test_same_inputs_same_bytes_and_a_deterministic_name():
    a, _ = render(Channel(width=64, height=64, format="webp"))
    b, _ = render(Channel(width=64, height=64, format="webp"))
    assert a.data == b.data
    assert postprocess.derivative_key("c/r", "web", "v1", "webp") == "c/r/derivatives/web/v1.webp"


def test_pad_fills_with_the_background_colour():
    _, img = render(Channel(width=100, height=100, format="png", fit="pad", background="#123456"))
    assert img.size == (100, 100)
    assert img.getpixel((50, 2))[:3] == (0x12, 0x34, 0x56)  # wide original: bars top and bottom
    assert img.getpixel((50, 50))[:3] != (0x12, 0x34, 0x56)


def test_entropy_crop_keeps_an_off_centre_product_in_frame():
    src = Image.new("RGB", (300, 100), (235, 230, 220))
    ImageDraw.Draw(src).rectangle([230, 20, 290, 80], fill=(30, 30, 160))  # product at the right
    centre = postprocess.fit(src, 100, 100, crop="centre")
    smart = postprocess.fit(src, 100, 100, crop="entropy")
    blue = lambda im: int((np.asarray(im)[..., 2] > 120).sum() - (np.asarray(im)[..., 0] > 120).sum())  # noqa: E731
    assert blue(centre) == 0 and blue(smart) > 2500
    assert smart.size == centre.size == (100, 100)


def test_lanczos_resize_of_a_large_original():
    d, img = render(Channel(width=300, height=200, format="jpeg"), size=(640, 512))
    assert img.size == (300, 200) and img.mode == "RGB"


def test_logo_overlay_position_scale_and_opacity():
    base = Channel(width=200, height=200, format="png")
    _, plain = render(base)
    logo = {"path": "logo.png", "position": "bottom_right", "scale": 0.3, "opacity": 1.0, "margin": 0}
    _, marked = render(base.model_copy(update={"logo": postprocess_logo(**logo)}))
    diff = np.abs(np.asarray(plain, dtype=int) - np.asarray(marked, dtype=int)).sum(axis=2) > 30
    ys, xs = np.nonzero(diff)
    assert xs.min() >= 200 - 60 - 1 and ys.min() >= 200 - 23 - 1 and xs.max() == 199  # 30% wide, corner
    _, ghost = render(base.model_copy(update={"logo": postprocess_logo(**{**logo, "opacity": 0.0})}))
    assert np.array_equal(np.asarray(ghost), np.asarray(plain))


def postprocess_logo(**kw):
    from darkroom.spec import LogoOverlay

    return LogoOverlay(**kw)


def text_channel(**kw) -> Channel:
    from darkroom.spec import TextOverlay

    text = TextOverlay(text={"en": "New season", "de": "Neue Saison"}, position="top", **kw)
    return Channel(width=240, height=160, format="png", text=text)


def test_localized_text_overlay_uses_the_shipped_font():
    _, en = render(text_channel())
    _, de = render(text_channel(), locale="de")
    _, de_at = render(text_channel(), locale="de-AT")
    _, fr = render(text_channel(), locale="fr")
    assert np.array_equal(np.asarray(de), np.asarray(de_at))  # de-AT falls back to de
    assert np.array_equal(np.asarray(fr), np.asarray(en))  # unknown locale: the default
    assert not np.array_equal(np.asarray(en), np.asarray(de))
    _, plain = render(Channel(width=240, height=160, format="png"))
    changed = np.abs(np.asarray(plain, dtype=int) - np.asarray(en, dtype=int)).sum(axis=2) > 30
    rows = np.nonzero(changed.any(axis=1))[0]
    assert rows.max() < 160 // 2  # drawn in the top half
    assert (BRAND_DIR / "fonts" / "DejaVuSans.ttf").is_file()
    assert (BRAND_DIR / "fonts" / "DejaVuSans-LICENSE.txt").is_file()


def test_text_overlay_needs_text_for_its_default_locale():
    from darkroom.spec import TextOverlay

    with pytest.raises(ValueError, match="default_locale 'en' has no text; give text.en"):
        TextOverlay(text={"de": "Hallo"})


def test_srgb_conversion_of_an_embedded_profile():
    srgb = ImageCms.createProfile("sRGB")
    img = good_image(4, (64, 64))
    buf = io.BytesIO()
    img.save(buf, format="PNG", icc_profile=ImageCms.ImageCmsProfile(srgb).tobytes())
    tagged = Image.open(io.BytesIO(buf.getvalue()))
    out = postprocess.to_srgb(tagged)
    assert out.mode == "RGB" and np.abs(np.asarray(out, int) - np.asarray(img, int)).max() <= 2
    broken = img.copy()
    broken.info["icc_profile"] = b"not a profile"
    assert np.array_equal(np.asarray(postprocess.to_srgb(broken)), np.asarray(img))
    assert postprocess.to_srgb(img.convert("P")).mode == "RGB"


def test_lanczos_upscaler_by_default_and_recorded():
    ch = Channel(width=2048, height=1365, format="jpeg", upscale_to=2048)
    postprocess.check_recipes({"web": ch})
    d, img = render(ch)
    assert img.size == (2048, 1365)
    assert imaging.read_provenance(d.data).darkroom["upscaled"] == {"by": "lanczos", "to": 2048}
    d, _ = render(Channel(width=300, height=200, format="jpeg"))
    assert "upscaled" not in imaging.read_provenance(d.data).darkroom


def test_upscale_hook_is_used_or_refused_by_name():
    ch = Channel(width=300, height=200, format="jpeg", upscale_to=2048)
    with pytest.raises(postprocess.RecipeError, match="channels.web.upscale_to = 2048: no upscaler 'esrgan'"):
        postprocess.check_recipes({"web": ch}, upscaler="esrgan")
    seen = []

    def upscaler(img, long_side):
        seen.append((img.size, long_side))
        return img.resize((long_side, long_side * img.height // img.width), Image.Resampling.LANCZOS)

    postprocess.UPSCALERS["default"] = upscaler
    try:
        postprocess.check_recipes({"web": ch})
        d, img = render(ch)
    finally:
        postprocess.UPSCALERS["default"] = postprocess.lanczos_upscale
    assert seen == [((96, 64), 2048)] and img.size == (300, 200)


def test_bad_recipe_files_fail_early_naming_the_field():
    ch = Channel(width=10, height=10, logo={"path": "nope.png"}, text={"text": {"en": "x"}, "font": "x.ttf"})
    with pytest.raises(postprocess.RecipeError) as exc:
        postprocess.check_recipes({"feed": ch})
    assert "channels.feed.logo.path = 'nope.png'" in str(exc.value)
    assert "channels.feed.text.font = 'x.ttf'" in str(exc.value)


def test_an_original_without_provenance_is_refused():
    with pytest.raises(imaging.BadImage, match="not a readable image"):
        postprocess.render_all(b"x" * 100, {})
    plain = io.BytesIO()
    good_image().save(plain, format="PNG")
    with pytest.raises(postprocess.RecipeError, match="no provenance"):
        postprocess.render_all(plain.getvalue(), {"web": Channel(width=8, height=8)})


@pytest.mark.parametrize("campaign", ["spring_tiles", "summer_social"])
def test_example_campaign_channels_render(campaign):
    from pathlib import Path

    from darkroom.spec import load_spec

    spec = load_spec(Path(__file__).resolve().parents[2] / "include" / "campaigns" / f"{campaign}.yaml").spec
    postprocess.check_recipes(spec.channels)
    for d in postprocess.render_all(original((64, 64)), dict(spec.channels), locale="de"):
        ch = spec.channels[d.channel]
        img = Image.open(io.BytesIO(d.data))
        assert img.size == (ch.width, ch.height) and d.format == ch.format
        assert imaging.read_provenance(d.data).darkroom["channel"] == d.channel


def test_review_thumbnail_is_a_small_webp_and_the_same_bytes_each_time():
    data = original((600, 300))
    thumb = postprocess.thumbnail(data)
    img = Image.open(io.BytesIO(thumb))
    assert (img.format, img.size) == ("WEBP", (256, 128))
    assert postprocess.thumbnail(data) == thumb
    rendered, again = postprocess.render_for_review(data, {"web": Channel(width=64, height=64)})
    assert again == thumb and [d.channel for d in rendered] == ["web"]
    small = Image.open(io.BytesIO(postprocess.thumbnail(original((96, 64)))))
    assert small.size == (96, 64)  # never enlarged
