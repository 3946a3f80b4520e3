"""Does the picture show what the prompt asked for? An offline reading of product type and colour.

A small CNN trained on the procedural renders alone (never on a generator's output) reads a
picture's product type and colour; :func:`asked` finds which type and colour a prompt asks for,
using the label vocabulary saved beside the weights; :meth:`PromptMatcher.match` returns the
classifier's probability for the asked labels and what it read instead. A prompt that names
no known type or colour is "not applicable": the check has nothing to say about it.

This is the offline stand-in for a CLIP score where no CLIP weights exist (QA's
``prompt_match`` check). It imports torch but not diffusers, so a QA worker can run it
without the generation stack. ``darkroom.devtools.demo`` trains it.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

LABELS_FILE = "labels.json"
WEIGHTS_FILE = "model.safetensors"
HEADS = ("type", "colour")


def build_net(n_types: int, n_colours: int, width: int = 32):
    """A stride-2 stem (64 -> 32 px: a quarter of the cost of full-size first layers), four
    conv blocks (32 -> 4 px), then global average and max pooling into two heads."""
    import torch
    from torch import nn

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                             nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    class PromptMatchNet(nn.Module):
        def __init__(self):
            super().__init__()
            w = width
            stem = nn.Sequential(nn.Conv2d(3, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w),
                                 nn.ReLU())
            self.features = nn.Sequential(stem, block(w, w), nn.MaxPool2d(2), block(w, 2 * w),
                                          nn.MaxPool2d(2), block(2 * w, 4 * w), nn.MaxPool2d(2),
                                          block(4 * w, 4 * w))
            self.dropout = nn.Dropout(0.2)
            self.type_head = nn.Linear(8 * w, n_types)
            self.colour_head = nn.Linear(8 * w, n_colours)

        def forward(self, x):
            f = self.features(x)
            pooled = self.dropout(torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1))
            return self.type_head(pooled), self.colour_head(pooled)

    return PromptMatchNet()


def to_input(images: list, size: int):
    """PIL images or uint8 arrays -> a normalised (N, 3, size, size) float tensor."""
    import torch
    from PIL import Image

    arrays = []
    for img in images:
        if not isinstance(img, Image.Image):
            img = Image.fromarray(np.asarray(img, np.uint8))
        img = img.convert("RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        arrays.append(np.asarray(img, np.float32))
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return x / 127.5 - 1


# ------------------------------------------------------------------------------ prompts

def _fold(text: str) -> str:
    return " ".join(re.sub(r"[^\w'-]+", " ", text.casefold()).split())


def _find(prompt: str, phrases: dict[str, list[str]]) -> list[tuple[int, str]]:
    """(position, label) of every phrase found, longest phrases first, never overlapping."""
    text = f" {_fold(prompt)} "
    taken = np.zeros(len(text), bool)
    found = []
    candidates = sorted(((p, label) for label, ps in phrases.items() for p in ps), key=lambda x: -len(x[0]))
    for phrase, label in candidates:
        for m in re.finditer(rf"(?<=\s){re.escape(_fold(phrase))}(?=\s)", text):
            if not taken[m.start():m.end()].any():
                taken[m.start():m.end()] = True
                found.append((m.start(), label))
    return sorted(found)


def asked(prompt: str, vocabulary: dict) -> dict[str, str | None]:
    """The product type and colour a prompt asks for: the first of each the prompt names
    ("a slate grey terracotta planter": slate grey, the colour; terracotta, there, the material)."""
    out: dict[str, str | None] = {}
    for head in HEADS:
        hits = _find(prompt, vocabulary[f"{head}_phrases"])
        out[head] = hits[0][1] if hits else None
    return out


# ------------------------------------------------------------------------------ matching

@dataclass(frozen=True)
class Match:
    """What the classifier made of one picture, against what its prompt asked."""

    applicable: bool  # the prompt names a known type or colour
    asked: dict  # head -> label asked for (None: the prompt does not say)
    read: dict  # head -> (label, probability) the classifier reads
    probabilities: dict  # head -> the classifier's probability of the asked label
    probability: float | None  # all asked heads together (their product); None: not applicable

    @property
    def matched(self) -> bool:
        """Every asked head reads back as asked (the classifier's top label)."""
        return self.applicable and all(self.read[h][0] == label for h, label in self.asked.items()
                                       if label is not None)


class PromptMatcher:
    """The classifier at ``directory`` (weights + label vocabulary), loaded once."""

    def __init__(self, directory: str | Path):
        import torch
        from safetensors.torch import load_file

        directory = Path(directory)
        try:
            self.vocabulary = json.loads((directory / LABELS_FILE).read_text("utf-8"))
            state = load_file(str(directory / WEIGHTS_FILE))
        except (OSError, ValueError) as exc:
            raise FileNotFoundError(
                f"no prompt-match classifier at {directory} ({exc}); fix: run `darkroom models "
                "train-demo`, or point at a folder holding labels.json and model.safetensors") from None
        v = self.vocabulary
        self.labels = {"type": v["types"], "colour": v["colours"]}
        self.size = int(v["size"])
        self.net = build_net(len(v["types"]), len(v["colours"]), int(v["width"]))
        self.net.load_state_dict({k: t.float() for k, t in state.items()})
        self.net.eval()
        self._torch = torch
        self._lock = threading.Lock()  # BatchNorm in eval mode is read-only; this guards torch's threads

    def probabilities(self, images: list) -> dict[str, np.ndarray]:
        """head -> (N, labels) softmax probabilities."""
        with self._lock, self._torch.inference_mode():
            logits = self.net(to_input(images, self.size))
        return {h: self._torch.softmax(lg, dim=1).numpy() for h, lg in zip(HEADS, logits, strict=True)}

    def read(self, images: list) -> list[dict[str, tuple[str, float]]]:
        probs = self.probabilities(images)
        return [{h: (self.labels[h][int(probs[h][i].argmax())], float(probs[h][i].max())) for h in HEADS}
                for i in range(len(images))]

    def match(self, prompt: str, image) -> Match:
        return self.match_many([prompt], [image])[0]

    def match_many(self, prompts: list[str], images: list) -> list[Match]:
        probs = self.probabilities(images)
        out = []
        for i, prompt in enumerate(prompts):
            want = asked(prompt, self.vocabulary)
            read = {h: (self.labels[h][int(probs[h][i].argmax())], float(probs[h][i].max())) for h in HEADS}
            asked_p = {h: float(probs[h][i][self.labels[h].index(label)])
                       for h, label in want.items() if label is not None}
            applicable = bool(asked_p)
            out.append(Match(applicable=applicable, asked=want, read=read, probabilities=asked_p,
                             probability=float(np.prod(list(asked_p.values()))) if applicable else None))
        return out


@cache
def matcher(directory: str) -> PromptMatcher:
    """One loaded classifier per folder per process."""
    return PromptMatcher(directory)


def prompt_match(prompt: str, image, directory: str | Path) -> Match:
    """Match one picture against its prompt with the classifier at ``directory``."""
    return matcher(str(Path(directory).resolve())).match(prompt, image)
