"""Pixels in and out: the contact sheet's captions, colours and failure marks."""

from __future__ import annotations

import numpy as np
from darkroom import imaging

from tests.support.images import good_image


def test_contact_sheet_captions_and_marks_failures():
    tiles = [(good_image(1), "v1 s1\nP-1 hero\nweb, feed", "qa_passed"),
             (good_image(2), "v2 s2\nP-2 hero\nweb", "qa_failed"),
             (None, "v3 s3\nP-3 hero\nweb", "needs_review")]
    sheet = imaging.contact_sheet(tiles, columns=3, thumb=100, title="run")
    caption_h = 15 * 4 + 4
    assert sheet.size == (8 + 3 * 108, 28 + 8 + 100 + caption_h + 8)
    y = 28 + 8
    assert sheet.getpixel((8 + 108 - 1, y + 10)) == (229, 72, 77)  # failed: red frame ...
    assert sheet.getpixel((8 + 108 + 50, y + 50)) == (229, 72, 77)  # ... and a red cross
    assert sheet.getpixel((8 - 1, y + 10)) == (62, 99, 221)
    assert sheet.getpixel((8 + 216 - 1, y + 10)) == (245, 165, 36)  # needs review: amber
    caption = np.asarray(sheet.crop((8, y + 103, 108, y + 100 + caption_h)))
    assert (caption > 200).any()  # text was drawn under the thumbnail
