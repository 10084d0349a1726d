"""Which sets of the built-in library a prompt names ("a red cube", "some balls")."""

from __future__ import annotations

import re

from ..errors import DreamsculptError
from .geometry import COLOURS

SHAPE_WORDS: dict[str, str] = {
    **dict.fromkeys(("cube", "box", "block", "dice"), "cube"),
    **dict.fromkeys(("sphere", "ball", "orb", "globe"), "sphere"),
    **dict.fromkeys(("torus", "tori", "donut", "doughnut", "ring"), "torus"),
    "cone": "cone",
    **dict.fromkeys(("cylinder", "tube", "pillar", "column"), "cylinder"),
}
#: Words that name a shape only when no other shape word is there ("can you make a cube").
WEAK_SHAPE_WORDS = {"can": "cylinder"}
COLOUR_WORDS: dict[str, str] = {
    **{c: c for c in COLOURS}, "gray": "grey", "crimson": "red", "scarlet": "red", "violet": "purple",
}
#: Common colours the library lacks: named in a prompt they are an error, not "any colour".
OTHER_COLOUR_WORDS = {"black", "brown", "pink", "cyan", "magenta", "teal", "turquoise", "gold", "golden",
                      "silver", "beige", "navy", "maroon", "lime", "indigo"}
_BACKGROUND_WORDS = {"background", "backdrop"}


def _lookup(word: str, table: dict[str, str]) -> str | None:
    """The entry for a word or its plural ("boxes" -> "box", "balls" -> "ball")."""
    for stem in (word, word[:-2] if word.endswith("es") else None, word[:-1] if word.endswith("s") else None):
        if stem and stem in table:
            return table[stem]
    return None


def match_prompt(prompt: str, library_labels: list[str]) -> list[str]:
    """The distinct labels ("<colour> <shape>") of `library_labels` that `prompt` names.

    One shape must be named (synonyms count: box, ball, donut, tube...). A colour narrows the
    match to that colour; without one every colour of the shape matches. Colours followed by
    "background" are ignored. Raises DreamsculptError listing what is available otherwise.
    """
    available = {}
    for label in dict.fromkeys(library_labels):
        colour, _, shape = label.rpartition(" ")
        available.setdefault(shape, []).append((colour, label))
    hint = (f"Available shapes: {', '.join(available)}; colours: "
            f"{', '.join(dict.fromkeys(c for pairs in available.values() for c, _ in pairs))}. "
            'Try "a red cube", or use --prior references --references DIR for your own images.')
    words = re.findall(r"[a-z]+", prompt.lower())
    shapes = list(dict.fromkeys(s for w in words if (s := _lookup(w, SHAPE_WORDS))))
    if not shapes:
        shapes = list(dict.fromkeys(s for w in words if (s := _lookup(w, WEAK_SHAPE_WORDS))))
    object_words = [w for w, nxt in zip(words, words[1:] + [""]) if nxt not in _BACKGROUND_WORDS]
    colours = list(dict.fromkeys(c for w in object_words if (c := COLOUR_WORDS.get(w))))
    others = [w for w in object_words if w in OTHER_COLOUR_WORDS]
    if not prompt.strip():
        raise DreamsculptError(f"The built-in prior needs a prompt naming a shape. {hint}")
    if not shapes or shapes[0] not in available:
        raise DreamsculptError(f"No built-in shape matches {prompt!r}. {hint}")
    if len(shapes) > 1:
        raise DreamsculptError(f"The prompt {prompt!r} names {len(shapes)} shapes ({', '.join(shapes)}); the "
                               "built-in prior makes one object. Name one shape.")
    if others and not colours:
        raise DreamsculptError(f"The built-in library has no {others[0]} shapes. {hint}")
    if len(colours) > 1:
        raise DreamsculptError(f"The prompt {prompt!r} names {len(colours)} colours ({', '.join(colours)}); "
                               "built-in shapes have one colour. Name one colour, or none for any.")
    matched = [label for colour, label in available[shapes[0]] if not colours or colour == colours[0]]
    if not matched:
        raise DreamsculptError(f"The built-in library has no {colours[0]} {shapes[0]}. Colours of the "
                               f"{shapes[0]}: {', '.join(c for c, _ in available[shapes[0]])}.")
    return matched
