"""Training the prompt-match classifier (``prompt_match.py``) on renders, and measuring it.

Renders only, never generated pictures: a classifier that had seen the generator's output
could learn its mistakes as the right answers. To read generated pictures anyway, training
pictures are disturbed the ways a small generator disturbs them: shifted, mirrored, blurred,
noisier, a little lighter or darker.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from darkroom.devtools.demo import catalogue as cat
from darkroom.devtools.demo.scenes import Scene
from darkroom.prompt_match import LABELS_FILE, WEIGHTS_FILE, PromptMatcher, build_net, to_input

WIDTH = 32
SIZE = 64


def vocabulary() -> dict:
    return {
        "types": cat.product_types(),
        "colours": list(cat.COLOURS),
        "type_phrases": cat.type_phrases(),
        "colour_phrases": cat.colour_phrases(),
        "size": SIZE,
        "width": WIDTH,
    }


def _augment(x, rng: np.random.Generator):
    import torch
    import torch.nn.functional as F

    n = x.shape[0]
    pad = 5
    padded = F.pad(x, (pad,) * 4, mode="replicate")
    dy, dx = rng.integers(0, 2 * pad + 1, size=2)
    x = padded[:, :, dy:dy + SIZE, dx:dx + SIZE]
    if rng.random() < 0.5:
        x = x.flip(3)
    if rng.random() < 0.4:  # softer pictures, as a small decoder paints them
        x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    gain = torch.from_numpy(rng.uniform(0.9, 1.1, (n, 1, 1, 1)).astype(np.float32))
    x = (x + 1) * gain - 1
    x = x + torch.from_numpy(rng.normal(0, rng.uniform(0, 0.06), x.shape).astype(np.float32))
    return x.clamp(-1, 1)


def train_classifier(images: np.ndarray, scenes: list[Scene], steps: int, rng: np.random.Generator, *,
                     batch: int = 64, tick: Callable[[float], None] = lambda loss: None):
    """Returns the trained network (eval mode) and its label vocabulary."""
    import torch
    import torch.nn.functional as F

    vocab = vocabulary()
    types = np.array([vocab["types"].index(s.product) for s in scenes])
    colours = np.array([vocab["colours"].index(s.colour) for s in scenes])
    torch.manual_seed(int(rng.integers(2**31)))
    net = build_net(len(vocab["types"]), len(vocab["colours"]), WIDTH)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=max(steps, 1), pct_start=0.15)
    net.train()
    x_all = to_input(list(images), SIZE)
    for _ in range(steps):
        idx = rng.integers(len(images), size=batch)
        x = _augment(x_all[idx], rng)
        t_logits, c_logits = net(x)
        loss = F.cross_entropy(t_logits, torch.from_numpy(types[idx])) + \
            F.cross_entropy(c_logits, torch.from_numpy(colours[idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        tick(loss.item())
    net.eval()
    return net, vocab


def save_classifier(net, vocab: dict, directory: Path) -> Path:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    (directory / LABELS_FILE).write_text(json.dumps(vocab, indent=1) + "\n", "utf-8")
    return directory


def accuracy(matcher: PromptMatcher, images: np.ndarray, scenes: list[Scene], batch: int = 256) -> dict:
    """Share of pictures whose type, colour and both the classifier reads right, overall and
    per scene (studio, beach, flat lay)."""
    reads = []
    for i in range(0, len(images), batch):
        reads += matcher.read(list(images[i:i + batch]))
    rows = [(s.scene, r["type"][0] == s.product, r["colour"][0] == s.colour)
            for s, r in zip(scenes, reads, strict=True)]

    def share(sel) -> dict:
        sel = list(sel)
        if not sel:
            return {}
        return {"images": len(sel), "type": round(float(np.mean([t for _, t, _ in sel])), 4),
                "colour": round(float(np.mean([c for _, _, c in sel])), 4),
                "both": round(float(np.mean([t and c for _, t, c in sel])), 4)}

    out = share(rows)
    out["per_scene"] = {name: share(r for r in rows if r[0] == name) for name in cat.SCENES}
    return out
