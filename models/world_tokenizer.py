"""A word-level tokenizer for the embedded world's tiny CLIP (arch `TinyCLIP`).

The world's captions and prompt templates use a small closed vocabulary, so a word-level tokenizer
keeps the text tower tiny (open_clip's BPE needs a 49k-row embedding). The end-of-text token has the
highest id, because open_clip's text tower pools at `argmax(token id)`.
"""

from __future__ import annotations

import re

import torch

CONTEXT_LENGTH = 16

# Every word the world's captions and templates use (datasets/world/render.py, captions.py).
WORDS = (
    "zero one two three four five six seven eight nine "
    "a an the of on in and digit digits number numeral photo picture image bold italic "
    "red green blue yellow purple orange white black grey gray "
    "plain noisy striped checked dotted background paper "
    "pencil sketch drawing outline rendition art pattern patterned "
    "rotated tilted clutter cluttered unusual small faint partly hidden hard "
    "this is it there showing"
).split()

# The character world (data.version=5, arch TinyCLIP-Chars) adds its noun and the letters' names.
CHARACTER_WORDS = tuple(WORDS) + tuple(
    "character characters letter upper lower "
    "alfa bravo charlie delta echo foxtrot golf hotel india juliett kilo lima mike november oscar papa quebec romeo sierra "
    "tango uniform victor whiskey xray yankee zulu".split()
)

PAD, UNK = 0, 1


def vocabulary(words: tuple[str, ...] | list[str]) -> dict[str, int]:
    """Word -> id (ids 0 and 1 are padding and unknown; start and end of text follow the words)."""
    return {word: i + 2 for i, word in enumerate(dict.fromkeys(words))}


VOCAB = vocabulary(WORDS)
SOT = len(VOCAB) + 2
EOT = SOT + 1
VOCAB_SIZE = EOT + 1  # must equal text_cfg.vocab_size in models/model_configs/TinyCLIP.json
CHARACTER_VOCAB_SIZE = len(vocabulary(CHARACTER_WORDS)) + 4  # ... in TinyCLIP-Chars.json


class WorldTokenizer:
    """Callable like open_clip's tokenizers: texts -> LongTensor [n, context_length]."""

    def __init__(self, context_length: int = CONTEXT_LENGTH, words: tuple[str, ...] | list[str] = WORDS):
        self.context_length = context_length
        self.vocab = vocabulary(words)
        self.sot = len(self.vocab) + 2
        self.eot = self.sot + 1
        self.vocab_size = self.eot + 1

    def encode(self, text: str) -> list[int]:
        words = re.findall(r"[a-z]+", text.lower())
        return [self.vocab.get(word, UNK) for word in words]

    def unknown_words(self, text: str) -> list[str]:
        """Words of `text` outside the closed vocabulary (they would all become one UNK token)."""
        return [word for word in re.findall(r"[a-z]+", text.lower()) if word not in self.vocab]

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        length = context_length or self.context_length
        out = torch.full((len(texts), length), PAD, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot, *self.encode(text)][: length - 1] + [self.eot]
            out[row, : len(ids)] = torch.tensor(ids)
        return out
