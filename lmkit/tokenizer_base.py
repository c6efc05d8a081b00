"""Given, not graded: what the vocabulary-based tokenizers of part 1 share (`CharTokenizer`, `WordTokenizer`).

The vocabulary with `<unk>` at id 0, id lookup, and saving to / loading from JSON.
"""

import json
from pathlib import Path
from typing import TypeVar

import numpy as np
import tensorflow as tf
from numpy.typing import ArrayLike

UNK = "<unk>"  # id 0 in every vocabulary: stands for any token the tokenizer has not seen
T = TypeVar("T", bound="VocabTokenizer")  # the tokenizer class a classmethod (from_text, load) is called on


def as_id_list(ids: ArrayLike | tf.Tensor) -> list[int]:
    """Returns `ids` (list, NumPy array or tensor, any shape) as a flat list of Python ints."""
    if isinstance(ids, (tf.Tensor, tf.Variable)):
        ids = ids.numpy()
    return [int(i) for i in np.asarray(ids).reshape(-1)]


class VocabTokenizer:
    """What `CharTokenizer` and `WordTokenizer` share: the vocabulary, id lookup, and saving to / loading from JSON.

    Attributes:
        vocab: list of token strings; `vocab[i]` is the token with id `i`, and `vocab[0]` is `<unk>`.
        token_to_id: dict mapping each token string to its id (the inverse of `vocab`).
    """

    kind = None  # "char" or "word": written to JSON so `load_tokenizer` can rebuild the right class

    def __init__(self, lowercase: bool = False):
        self.lowercase = lowercase
        self.vocab = None
        self.token_to_id = None

    @classmethod
    def from_text(cls: type[T], text: str, **kwargs) -> T:
        """Returns a tokenizer built with `kwargs` and fitted on `text`."""
        return cls(**kwargs).fit(text)

    @property
    def vocab_size(self) -> int:
        """Returns the number of tokens in the vocabulary, `<unk>` included."""
        self._check_fitted()
        return len(self.vocab)

    @property
    def unk_id(self) -> int:
        """Returns the id that every unknown token maps to (0)."""
        return 0

    def _check_fitted(self):
        if self.vocab is None:
            raise RuntimeError(f"{type(self).__name__} has no vocabulary yet: call fit(text) or load(path) first")

    def _set_vocab(self, tokens):
        """Sets `vocab` to `<unk>` followed by `tokens`, and builds `token_to_id`."""
        self.vocab = [UNK] + [t for t in tokens if t != UNK]
        self.token_to_id = {t: i for i, t in enumerate(self.vocab)}

    def _check_ids(self, ids):
        """Raises ValueError naming the first id outside [0, vocab_size)."""
        self._check_fitted()
        for i in ids:
            if not 0 <= i < len(self.vocab):
                raise ValueError(
                    f"cannot decode id {i}: valid ids are 0..{len(self.vocab) - 1} (vocab_size={len(self.vocab)})"
                )

    def get_config(self) -> dict:
        return {"lowercase": self.lowercase}

    def save(self, path: str | Path) -> None:
        """Writes the tokenizer (its settings and vocabulary) to `path` as JSON."""
        self._check_fitted()
        payload = {"kind": self.kind, "config": self.get_config(), "vocab": self.vocab}
        Path(path).write_text(json.dumps(payload, ensure_ascii=False, indent=1), encoding="utf-8")

    @classmethod
    def load(cls: type[T], path: str | Path) -> T:
        """Returns the tokenizer saved at `path` by `save`."""
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
        if payload.get("kind") != cls.kind:
            raise ValueError(f"{path} holds a {payload.get('kind')!r} tokenizer, not a {cls.kind!r} one")
        tokenizer = cls(**payload["config"])
        tokenizer._set_vocab(payload["vocab"])
        return tokenizer
