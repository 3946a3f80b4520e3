"""A CLIP tokenizer whose vocabulary is the demo captions' words.

Trained with the ``tokenizers`` library (byte-level BPE, CLIP's own normalizer, pre-tokenizer
and ``</w>`` word ends), so transformers' ``CLIPTokenizer`` loads the result from vocab.json +
merges.txt like any CLIP checkpoint's. Every frequent caption word becomes one token, so a
campaign prompt takes ~40 of the 77 positions instead of being cut off at ~75 characters as
with byte tokens. All 256 byte symbols (and their word-final forms) stay in the vocabulary:
a word the captions never used still encodes, as bytes the model has learnt to ignore.
"""

from __future__ import annotations

import json
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 77  # CLIP's context, what StableDiffusionPipeline pads and truncates to


def _bpe_tokenizer():
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    tok = Tokenizer(BPE(continuing_subword_prefix="", end_of_word_suffix="</w>", unk_token=EOS))
    # The same normalizer and pre-tokenizer transformers' CLIPTokenizer builds.
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(
            Regex(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
            behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    return tok


def train_tokenizer(captions: list[str], directory: str | Path, vocab_size: int = 1024):
    """Train on ``captions``, write vocab.json + merges.txt into ``directory`` and return the
    loaded ``CLIPTokenizer``."""
    from tokenizers import pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok = _bpe_tokenizer()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[],
                                  initial_alphabet=alphabet, end_of_word_suffix="</w>",
                                  show_progress=False)
    tok.train_from_iterator([c for c in captions if c], trainer)
    model = json.loads(tok.to_str())["model"]
    vocab: dict[str, int] = dict(sorted(model["vocab"].items(), key=lambda kv: kv[1]))
    # Byte symbols in both forms (inside and at the end of a word), then CLIP's two specials last,
    # where CLIP keeps them.
    for symbol in sorted(alphabet):
        for form in (symbol, symbol + "</w>"):
            vocab.setdefault(form, len(vocab))
    for special in (BOS, EOS):
        vocab.setdefault(special, len(vocab))
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), "utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", "utf-8")
    tokenizer = CLIPTokenizer(vocab=str(directory / "vocab.json"), merges=str(directory / "merges.txt"),
                              model_max_length=MAX_LENGTH)
    if len(tokenizer) != len(vocab) or tokenizer("mug").input_ids == tokenizer("plate").input_ids:
        raise RuntimeError(f"the trained tokenizer in {directory} did not load its "
                           f"{len(vocab)}-token vocabulary")
    return tokenizer


def words_per_token(tokenizer, text: str) -> float:
    """How many words each token carries on ``text`` (1.0: every word is one token)."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    words = [w for w in text.replace(",", " , ").split()]
    return len(words) / max(len(ids), 1)
