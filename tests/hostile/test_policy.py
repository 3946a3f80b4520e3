"""Restricted terms read like a person (issue #13, item 5).

The red-team pass got 7 of 11 disguises past the policy. Every disguise below must be caught,
in a product value and through a whole expand_prompts; every innocent text must pass, with the
whole-word rule the policy always had (``cure`` is not in ``secure``).
"""

from __future__ import annotations

import pytest
from darkroom.catalog.tables import PlanItem, Variant
from darkroom.errors import PolicyError
from darkroom.policy import RestrictedTerms, fold, look_alikes
from darkroom.stages import plan
from sqlalchemy import select

from tests.hostile.helpers import CSV_HEADER, run_context, write_spec

TERMS = RestrictedTerms(("dishwasher safe", "guaranteed", "cure", "x-ray", "non toxic"))

CAUGHT = [
    ("dishwasher\u200bsafe", "dishwasher safe", "zero-width space between the words"),
    ("dish\u200bwasher safe", "dishwasher safe", "zero-width space inside a word"),
    ("guaran\u200dteed", "guaranteed", "zero-width joiner"),
    ("guaran\u200cteed", "guaranteed", "zero-width non-joiner"),
    ("gua\u2060ranteed", "guaranteed", "word joiner"),
    ("\ufeffguaranteed", "guaranteed", "byte order mark"),
    ("guar\u00adanteed", "guaranteed", "soft hyphen"),
    ("dishwasher\u2011safe", "dishwasher safe", "non-breaking hyphen"),
    ("dishwasher\u2010safe", "dishwasher safe", "hyphen U+2010"),
    ("dishwasher\u2012safe", "dishwasher safe", "figure dash"),
    ("dishwasher\u2013safe", "dishwasher safe", "en dash"),
    ("dishwasher\u2014safe", "dishwasher safe", "em dash"),
    ("dishwasher\u2015safe", "dishwasher safe", "horizontal bar"),
    ("dishwasher\u2212safe", "dishwasher safe", "minus sign"),
    ("dishwasher-safe", "dishwasher safe", "hyphenated spelling"),
    ("dishwasher_safe", "dishwasher safe", "underscore"),
    ("dishwashersafe", "dishwasher safe", "run together"),
    ("dishwasher\u00a0safe", "dishwasher safe", "no-break space"),
    ("dishwasher\u3000 \t safe", "dishwasher safe", "ideographic space and a tab"),
    ("dishw\u0430sher s\u0430fe", "dishwasher safe", "Cyrillic a"),
    ("\u0441ure", "cure", "Cyrillic es"),
    ("gu\u0430r\u0430nt\u0435\u0435d", "guaranteed", "Cyrillic a and ie"),
    ("GU\u0410R\u0410NTEED", "guaranteed", "Cyrillic capital A"),
    ("\u0455afe dishwasher \u0455afe", "dishwasher safe", "Cyrillic dze"),
    ("cur\u0435", "cure", "Cyrillic ie at the end"),
    ("n\u03bfn toxic", "non toxic", "Greek omicron"),
    ("x-r\u0430y", "x-ray", "Cyrillic a in a hyphenated term"),
    ("xray", "x-ray", "hyphen dropped"),
    ("nontoxic", "non toxic", "space dropped"),
    ("non-toxic", "non toxic", "hyphen for the space"),
    ("\uff47\uff55\uff41\uff52\uff41\uff4e\uff54\uff45\uff45\uff44", "guaranteed", "full-width letters"),
    ("\U0001d420\U0001d42e\U0001d41a\U0001d42b\U0001d41a\U0001d427\U0001d42d\U0001d41e\U0001d41e\U0001d41d",
     "guaranteed", "mathematical bold letters"),
    ("cu\u0301re", "cure", "combining accent"),
    ("CURE", "cure", "capitals"),
    ("Gu\u0430r\u200b\u0430nteed!", "guaranteed", "look-alikes and zero-width together"),
    ("cu\u202ere", "cure", "bidi override"),
    ("cu\U000e0020re", "cure", "tag character"),
    ("cure\ufe0f", "cure", "variation selector"),
    ("c\u0075re", "cure", "escaped ASCII, same text"),
]

INNOCENT = [
    "secure packaging", "a cured glaze", "cures overnight", "manicure set", "procurement",
    "dishwasher", "safe to handle", "dishwashers are sold separately", "guarantee card",
    "a ray of light", "toxic-free is not a word we use", "non-stick", "crème", "procured",
    "\u0441\u043e\u0440",  # Russian "litter": reads "cop", which is no term here
]


@pytest.mark.parametrize("text, term, why", CAUGHT, ids=[c[2] for c in CAUGHT])
def test_disguised_terms_are_caught(text, term, why):
    assert term in TERMS.find(f"a terracotta mug, {text}, studio light"), (why, fold(text))


@pytest.mark.parametrize("text", INNOCENT)
def test_innocent_text_passes(text):
    assert TERMS.find(f"a terracotta mug, {text}") == [], fold(text)


def test_the_look_alike_table_is_unicode_confusables():
    table = look_alikes()
    assert len(table) > 1000  # UTS #39 confusables, not a hand-made list
    assert table["\u0430"] == "a" and table["\u03bf"] == "o" and table["\u0455"] == "s"
    assert all(len(v) == 1 and v.isascii() for v in table.values())


def test_a_term_of_only_invisible_characters_matches_nothing():
    assert RestrictedTerms(("\u200b\u200d",)).find("anything at all") == []


def test_a_disguised_term_in_product_data_rejects_its_variant_at_expand_prompts(tmp_path, darkroom_home):
    rows = (CSV_HEADER
            + "TER-001,coffee mug,drinkware,terracotta,stoneware,18.00\n"
            + "TER-002,dishwasher\u2011safe mug,drinkware,terracotta,stoneware,18.00\n"
            + "TER-003,gu\u0430r\u200banteed mug,drinkware,terracotta,stoneware,18.00\n")
    spec = write_spec(tmp_path, lambda d: d["brand"].update(
        restricted_terms=["dishwasher safe", "guaranteed"]), rows=rows)
    ctx = run_context(spec)
    plan.run(ctx)
    with ctx.catalog.session() as s:
        rejected = dict(s.execute(select(Variant.product_id, PlanItem.reason).join(
            Variant, Variant.id == PlanItem.variant_id).where(PlanItem.status == "policy_rejected")).all())
    assert set(rejected) == {"TER-002", "TER-003"}
    assert "restricted term 'dishwasher safe' from product column `name`" in rejected["TER-002"]
    assert "restricted term 'guaranteed' from product column `name`" in rejected["TER-003"]


def test_a_terms_file_that_is_not_utf8_is_a_policy_error(tmp_path, darkroom_home):
    spec = write_spec(tmp_path)
    (tmp_path / "terms.txt").write_bytes("cr\xe8me\n".encode("latin-1"))
    ctx = run_context(spec)
    with pytest.raises(PolicyError, match=r"field `brand.restricted_terms_file` .* not UTF-8 text.*fix"):
        plan.run(ctx)
