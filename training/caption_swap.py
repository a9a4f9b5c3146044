"""One word of a synthetic caption swapped for another of its type: the negative of the caption probe
(training/caption_probe.py) and of the base DiT's caption-contrastive term (training/stage0_base.py).

Works on the caption text, so a training batch needs no scene specs: the grammar is
training/data/synthetic.py's, "<a> <colour> <shape> moving <direction> [and ...] over <a> <colour> background".
"""

from __future__ import annotations

import numpy as np

from .data import synthetic as syn

WORD_TYPES = ("background", "colour", "shape", "direction")


def swap_word(caption: str, word_type: str, rng: np.random.Generator) -> str | None:
    """caption with one word of word_type replaced by a word of that type the caption does not use;
    None when the caption has no such word (the empty CFG caption, a background-only caption)."""
    if " over " not in caption:
        return None
    objects_text, background = caption.rsplit(" over ", 1)
    objects = [o.split() for o in objects_text.split(" and ")]
    bg = background.split()
    if not all(len(o) == 5 and o[3] == "moving" for o in objects) or len(bg) != 3:
        return None
    used_colours = {o[1] for o in objects} | {bg[1]}
    if word_type == "background":
        bg[1] = str(rng.choice([c for c in syn.COLORS if c not in used_colours]))
        bg[0] = syn._article(bg[1])
    else:
        obj = objects[int(rng.integers(len(objects)))]
        slot, vocab = {"colour": (1, [c for c in syn.COLORS if c not in used_colours]),
                       "shape": (2, [s for s in syn.SHAPES if s != obj[2]]),
                       "direction": (4, [d for d in syn.DIRECTIONS if d != obj[4]])}[word_type]
        obj[slot] = str(rng.choice(vocab))
        obj[0] = syn._article(obj[1])
    return " and ".join(" ".join(o) for o in objects) + " over " + " ".join(bg)
