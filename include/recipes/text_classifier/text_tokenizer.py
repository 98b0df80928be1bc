"""The text classifier's tokenizer: a word vocabulary built from the training split, saved with the model.

Standard library only, so that anyone holding ``tokenizer.json`` can turn text into the token ids
``model.onnx`` takes (the rules below are all it does; ``tokenizer.json`` states them too):

1. **Normalise**: Unicode NFKC, then ``str.casefold`` (``"Great!"`` -> ``"great!"``).
2. **Split** with the regular expression :data:`TOKEN_PATTERN` (Python ``re``): runs of word
   characters, or single characters that are neither word nor space (``"great!"`` ->
   ``["great", "!"]``). Only the first ``max_length`` tokens of a text are read.
3. **Look up** each token: its id in ``tokens`` (its position), or ``[UNK]`` (1) for a token not in
   the vocabulary; pad with ``[PAD]`` (0) to ``max_length`` ids.

The vocabulary holds ``[PAD]``, ``[UNK]``, then the tokens of the training split seen at least
``min_count`` times, most frequent first, ties by the token's code points, at most ``vocab_size``
entries in all. It depends only on the training split's texts (which the seed's split picks),
never on their order, the number of ranks or a restart; the special tokens cannot be produced
by the split (``[`` and ``]`` are tokens of their own), so text never forges them.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field

TOKEN_PATTERN = r"\w+|[^\w\s]"
PAD, UNK = "[PAD]", "[UNK]"
PAD_ID, UNK_ID = 0, 1
SPECIALS = (PAD, UNK)
#: the tokenizer's file among the model's outputs
TOKENIZER_FILE = "tokenizer.json"
KIND = "aifactory-word-level"
VERSION = 1
_TOKEN_RE = re.compile(TOKEN_PATTERN)


def normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def words(text: str, limit: int) -> list[str]:
    """The first ``limit`` tokens of ``text`` (rules 1 and 2 of the module docstring)."""
    out: list[str] = []
    if limit < 1:
        return out
    for match in _TOKEN_RE.finditer(normalise(text)):
        out.append(match.group())
        if len(out) >= limit:
            break
    return out


@dataclass(frozen=True)
class WordTokenizer:
    """A word vocabulary (``tokens[i]`` has id ``i``) and the length every text is padded or cut to."""

    tokens: tuple[str, ...]
    max_length: int
    _ids: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if tuple(self.tokens[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary starts with {list(SPECIALS)}")
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError("a vocabulary holds each token once")
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 1:
            raise ValueError(f"max_length must be a positive integer, got {self.max_length!r:.40}")
        object.__setattr__(self, "_ids", {t: i for i, t in enumerate(self.tokens)})

    @classmethod
    def build(cls, counts: Mapping[str, int], *, vocab_size: int, min_count: int, max_length: int) -> WordTokenizer:
        """The vocabulary of token ``counts`` (of the training split): see the module docstring."""
        kept = [t for t, c in counts.items() if c >= min_count and t not in SPECIALS]
        kept.sort(key=lambda t: (-counts[t], t))
        return cls(SPECIALS + tuple(kept[: max(0, vocab_size - len(SPECIALS))]), max_length)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def ids(self, text: str) -> list[int]:
        """Token ids of ``text``, without padding (at most ``max_length``)."""
        return [self._ids.get(t, UNK_ID) for t in words(text, self.max_length)]

    def encode(self, text: str) -> list[int]:
        """Exactly ``max_length`` token ids: the text's, then ``[PAD]``."""
        ids = self.ids(text)
        return ids + [PAD_ID] * (self.max_length - len(ids))

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": KIND,
            "version": VERSION,
            "normalisation": "unicodedata.normalize('NFKC', text).casefold()",
            "pattern": TOKEN_PATTERN,
            "max_length": self.max_length,
            "pad_id": PAD_ID,
            "unk_id": UNK_ID,
            "tokens": list(self.tokens),
        }

    def to_json(self) -> bytes:
        """The bytes of ``tokenizer.json``: canonical (sorted keys), so one vocabulary has one digest."""
        return json.dumps(self.to_dict(), indent=1, sort_keys=True, ensure_ascii=False).encode()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_json()).hexdigest()

    @classmethod
    def from_json(cls, raw: bytes | str) -> WordTokenizer:
        """Read ``tokenizer.json``; ValueError naming what is wrong."""
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("kind") != KIND or data.get("version") != VERSION:
            raise ValueError(f"not a {KIND} tokenizer of version {VERSION}")
        if data.get("pattern") != TOKEN_PATTERN or (data.get("pad_id"), data.get("unk_id")) != (PAD_ID, UNK_ID):
            raise ValueError("the tokenizer's rules differ from this module's")
        tokens = data.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise ValueError("tokens must be a list of strings")
        return cls(tuple(tokens), data.get("max_length"))  # type: ignore[arg-type]
