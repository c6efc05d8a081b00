"""Part 1: turn text into token ids, and token ids into (input, label) training sequences.

Dimension letters: N number of sequences, T sequence length (`seq_len`), B batch size.

The pipeline is: text -> tokenizer.encode -> ids (int32, shape (num_tokens,))
-> train_val_split -> make_sequences -> (inputs, labels), each (N, T) -> make_dataset -> batches of (B, T).
"""

import collections
import json
import re
from pathlib import Path

import numpy as np
import tensorflow as tf

UNK = "<unk>"  # id 0 in every vocabulary: stands for any token the tokenizer has not seen

# A word is a run of letters/digits/underscores with at most one leading space; punctuation marks are tokens of
# their own (also with one optional leading space); whitespace runs are kept as tokens. Keeping the whitespace
# (as GPT-2's pre-tokenizer does) makes decode(encode(text)) == text, so generated samples read like real text.
WORD_PATTERN = re.compile(r" ?\w+| ?[^\w\s]|\s+(?!\S)|\s+")


def _as_id_list(ids):
    """Returns `ids` (list, NumPy array or tensor, any shape) as a flat list of Python ints."""
    if isinstance(ids, (tf.Tensor, tf.Variable)):
        ids = ids.numpy()
    return [int(i) for i in np.asarray(ids).reshape(-1)]


class _Tokenizer:
    """What both tokenizers share: the vocabulary, id lookup, and saving to / loading from JSON.

    Attributes:
        vocab: list of token strings; `vocab[i]` is the token with id `i`, and `vocab[0]` is `<unk>`.
        token_to_id: dict mapping each token string to its id (the inverse of `vocab`).
    """

    kind = None  # "char" or "word": written to JSON so `load_tokenizer` can rebuild the right class

    def __init__(self, lowercase=False):
        self.lowercase = lowercase
        self.vocab = None
        self.token_to_id = None

    @classmethod
    def from_text(cls, text, **kwargs):
        """Returns a tokenizer built with `kwargs` and fitted on `text`."""
        return cls(**kwargs).fit(text)

    @property
    def vocab_size(self):
        """Returns the number of tokens in the vocabulary, `<unk>` included."""
        self._check_fitted()
        return len(self.vocab)

    @property
    def unk_id(self):
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

    def get_config(self):
        return {"lowercase": self.lowercase}

    def save(self, path):
        """Writes the tokenizer (its settings and vocabulary) to `path` as JSON."""
        self._check_fitted()
        payload = {"kind": self.kind, "config": self.get_config(), "vocab": self.vocab}
        Path(path).write_text(json.dumps(payload, ensure_ascii=False, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path):
        """Returns the tokenizer saved at `path` by `save`."""
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
        if payload.get("kind") != cls.kind:
            raise ValueError(f"{path} holds a {payload.get('kind')!r} tokenizer, not a {cls.kind!r} one")
        tokenizer = cls(**payload["config"])
        tokenizer._set_vocab(payload["vocab"])
        return tokenizer


class CharTokenizer(_Tokenizer):
    """Character-level tokenizer: every character is one token.

    Args:
        lowercase: if True, text is lowercased before fitting and encoding.

    Examples:
    >>> tok = CharTokenizer().fit("hello")
    >>> tok.decode(tok.encode("hello"))
    'hello'
    """

    kind = "char"

    def fit(self, text):
        """Builds the vocabulary from the characters of `text` and returns `self`.

        The vocabulary is `<unk>` (id 0) followed by every distinct character of `text`, each once.
        """
        if self.lowercase:
            text = text.lower()
        # TODO: build the vocabulary from the distinct characters of `text` (~1 line)
        #   1. the distinct characters of `text` in a fixed order (e.g. sorted) -> a list of V - 1 strings
        #   2. pass them to self._set_vocab, which puts `<unk>` first and builds self.token_to_id -> V entries
        # BEGIN SOLUTION
        self._set_vocab(sorted(set(text)))
        # END SOLUTION
        return self

    def encode(self, text):
        """Returns the ids of the characters of `text`: int32 array of shape `(len(text),)`.

        A character missing from the vocabulary becomes `self.unk_id`.
        """
        self._check_fitted()
        if self.lowercase:
            text = text.lower()
        # TODO: map each character to its id (~1 line)
        #   1. look each character up in self.token_to_id, falling back to self.unk_id -> (len(text),) int32
        # BEGIN SOLUTION
        return np.array([self.token_to_id.get(ch, self.unk_id) for ch in text], dtype=np.int32)
        # END SOLUTION

    def decode(self, ids):
        """Returns the text for `ids` (a sequence of ints of shape `(T,)`); `<unk>` decodes to U+FFFD.

        Raises:
            ValueError: if an id is outside `[0, vocab_size)`.
        """
        ids = _as_id_list(ids)
        self._check_ids(ids)
        # TODO: turn the ids back into text (~1 line)
        #   1. join the characters of the ids, writing "\ufffd" for the unknown id -> a str of len(ids) characters
        # BEGIN SOLUTION
        return "".join("\ufffd" if i == self.unk_id else self.vocab[i] for i in ids)
        # END SOLUTION


class WordTokenizer(_Tokenizer):
    """Word-level tokenizer: words, punctuation marks and whitespace runs are separate tokens.

    Text is split by `WORD_PATTERN` (already written for you): `"Hi, you."` -> `["Hi", ",", " you", "."]`.
    A word keeps its leading space, so decoding is concatenation and `decode(encode(text)) == text` for text
    whose tokens are all in the vocabulary.

    Args:
        lowercase: if True, text is lowercased before fitting and encoding.
        max_vocab: largest vocabulary size, `<unk>` included; the most frequent tokens are kept. None: no limit.
        min_freq: a token must occur at least this often in the fitted text to enter the vocabulary.
    """

    kind = "word"

    def __init__(self, lowercase=False, max_vocab=None, min_freq=1):
        super().__init__(lowercase=lowercase)
        if max_vocab is not None and max_vocab < 2:
            raise ValueError(f"max_vocab must be at least 2 (<unk> and one token) or None; got max_vocab={max_vocab}")
        if min_freq < 1:
            raise ValueError(f"min_freq must be at least 1; got min_freq={min_freq}")
        self.max_vocab = max_vocab
        self.min_freq = min_freq

    def get_config(self):
        return {**super().get_config(), "max_vocab": self.max_vocab, "min_freq": self.min_freq}

    def tokenize(self, text):
        """Returns the list of token strings of `text` (lowercased first if `lowercase`)."""
        if self.lowercase:
            text = text.lower()
        return WORD_PATTERN.findall(text)

    def fit(self, text):
        """Builds the vocabulary from `text` and returns `self`.

        The vocabulary is `<unk>` (id 0), then the tokens seen at least `min_freq` times, most frequent first
        (ties broken alphabetically), cut so that `vocab_size <= max_vocab`.
        """
        # TODO: build the vocabulary from the most frequent tokens of `text` (~5 lines)
        #   1. count the tokens of self.tokenize(text) (collections.Counter) -> {token: count}
        #   2. keep those with count >= self.min_freq, sorted by (-count, token) -> a list of tokens
        #   3. keep at most self.max_vocab - 1 of them (room for <unk>) when max_vocab is set -> <= max_vocab - 1
        #   4. pass them to self._set_vocab, which puts `<unk>` first -> V entries
        # BEGIN SOLUTION
        counts = collections.Counter(self.tokenize(text))
        tokens = sorted((t for t, c in counts.items() if c >= self.min_freq), key=lambda t: (-counts[t], t))
        if self.max_vocab is not None:
            tokens = tokens[: self.max_vocab - 1]
        self._set_vocab(tokens)
        # END SOLUTION
        return self

    def encode(self, text):
        """Returns the ids of the tokens of `text`: int32 array of shape `(num_tokens,)`; unknown -> `unk_id`."""
        self._check_fitted()
        # TODO: map each token to its id (~1 line)
        #   1. look each token of self.tokenize(text) up in self.token_to_id, falling back to self.unk_id
        #      -> (num_tokens,) int32
        # BEGIN SOLUTION
        return np.array([self.token_to_id.get(t, self.unk_id) for t in self.tokenize(text)], dtype=np.int32)
        # END SOLUTION

    def decode(self, ids):
        """Returns the text for `ids` (shape `(T,)`): the tokens concatenated, `<unk>` written as " <unk>".

        Raises:
            ValueError: if an id is outside `[0, vocab_size)`.
        """
        ids = _as_id_list(ids)
        self._check_ids(ids)
        # TODO: turn the ids back into text (~1 line)
        #   1. concatenate the token strings, writing " <unk>" for the unknown id -> a str
        # BEGIN SOLUTION
        return "".join(" " + UNK if i == self.unk_id else self.vocab[i] for i in ids)
        # END SOLUTION


def load_tokenizer(path):
    """Returns the CharTokenizer or WordTokenizer saved at `path`, whichever it is."""
    kind = json.loads(Path(path).read_text(encoding="utf-8")).get("kind")
    classes = {cls.kind: cls for cls in (CharTokenizer, WordTokenizer)}
    if kind not in classes:
        raise ValueError(f"{path} is not a saved tokenizer: kind={kind!r}, expected one of {sorted(classes)}")
    return classes[kind].load(path)


def make_sequences(ids, seq_len, stride=None):
    """Returns `(inputs, labels)`, both int32 arrays of shape `(N, seq_len)`, cut from the token stream `ids`.

    Window `n` covers `ids[n * stride : n * stride + seq_len + 1]`; its first `seq_len` tokens are the inputs and
    its last `seq_len` tokens the labels, so `labels[n, t] == inputs[n, t + 1]` and `labels[n, -1]` is the token
    after the window's inputs. A final window with fewer than `seq_len + 1` tokens is dropped.

    Args:
        ids: int array of shape `(num_tokens,)`.
        seq_len: tokens per training sequence, `T`; at least 1 and at most `num_tokens - 1`.
        stride: tokens between the starts of consecutive windows; defaults to `seq_len` (windows do not overlap
            in their inputs).

    Example: ids = [0, 1, 2, 3, 4, 5, 6], seq_len = 3 -> inputs [[0, 1, 2], [3, 4, 5]], labels [[1, 2, 3], [4, 5, 6]].
    """
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"ids must be a 1-D token stream; got shape {ids.shape}")
    if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer; got seq_len={seq_len!r}")
    if len(ids) < seq_len + 1:
        raise ValueError(
            f"seq_len={seq_len} needs at least seq_len + 1 = {seq_len + 1} tokens (inputs plus the next-token "
            f"label), but the data has {len(ids)}; use seq_len <= {len(ids) - 1} or more text"
        )
    stride = seq_len if stride is None else stride
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"stride must be a positive integer or None; got stride={stride!r}")
    # TODO: cut the stream into windows of seq_len + 1 tokens, then into inputs and labels (~5 lines)
    #   1. the start of every window that fits whole: 0, stride, 2 * stride, ... -> (N,)
    #   2. gather the windows of seq_len + 1 tokens -> (N, seq_len + 1)
    #   3. inputs = all but the last token, labels = all but the first, as int32 -> (N, seq_len) each
    # BEGIN SOLUTION
    num_windows = (len(ids) - (seq_len + 1)) // stride + 1
    starts = np.arange(num_windows) * stride  # (N,)
    windows = ids[starts[:, None] + np.arange(seq_len + 1)[None, :]]  # (N, T + 1)
    inputs = windows[:, :-1].astype(np.int32)  # (N, T)
    labels = windows[:, 1:].astype(np.int32)  # (N, T)
    # END SOLUTION
    return inputs, labels


def train_val_split(ids, val_fraction=0.1):
    """Returns `(train_ids, val_ids)`: the first `1 - val_fraction` of the stream, and the rest.

    The split is contiguous, not shuffled: sequences cut from `train_ids` never contain validation tokens, so
    validation measures text the model has not trained on.

    Args:
        ids: int array of shape `(num_tokens,)`.
        val_fraction: share of the tokens for validation, strictly between 0 and 1.
    """
    ids = np.asarray(ids)
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be strictly between 0 and 1; got val_fraction={val_fraction!r}")
    # TODO: split the stream into a training head and a validation tail (~2 lines)
    #   1. cut = int(len(ids) * (1 - val_fraction)) -> an int
    #   2. train_ids = the tokens before cut, val_ids = the rest -> (cut,) and (num_tokens - cut,)
    # BEGIN SOLUTION
    cut = int(len(ids) * (1 - val_fraction))
    train_ids, val_ids = ids[:cut], ids[cut:]
    # END SOLUTION
    if len(train_ids) == 0 or len(val_ids) == 0:
        raise ValueError(
            f"val_fraction={val_fraction} splits {len(ids)} tokens into {len(train_ids)} for training and "
            f"{len(val_ids)} for validation; both need at least one token"
        )
    return train_ids, val_ids


def make_dataset(inputs, labels, batch_size, shuffle=True, seed=0, drop_remainder=False):
    """Returns a `tf.data.Dataset` of `(inputs, labels)` batches, each int32 of shape `(B, T)`.

    Args:
        inputs, labels: int arrays of shape `(N, T)`, as returned by `make_sequences`.
        batch_size: sequences per batch, `B`; the last batch may be smaller unless `drop_remainder`.
        shuffle: if True, the order of the sequences is shuffled (over all N), differently in every epoch
            but the same for the same `seed`.
        seed: seed of the shuffle.
        drop_remainder: if True, drop the last batch when it has fewer than `batch_size` sequences.
    """
    inputs, labels = np.asarray(inputs), np.asarray(labels)
    if inputs.ndim != 2 or inputs.shape != labels.shape:
        raise ValueError(f"inputs and labels must both have shape (N, T); got {inputs.shape} and {labels.shape}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got batch_size={batch_size!r}")
    # TODO: a shuffled, batched tf.data pipeline of (input, label) pairs (~6 lines)
    #   1. a dataset of (input, label) pairs from the int32 arrays (tf.data.Dataset.from_tensor_slices)
    #      -> elements ((T,), (T,))
    #   2. if shuffle: shuffle over the whole data set with `seed`, reshuffling each epoch -> elements ((T,), (T,))
    #   3. batch (with drop_remainder) and prefetch -> elements ((B, T), (B, T)), in a variable named dataset
    # BEGIN SOLUTION
    dataset = tf.data.Dataset.from_tensor_slices((inputs.astype(np.int32), labels.astype(np.int32)))
    if shuffle:
        dataset = dataset.shuffle(len(inputs), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
    # END SOLUTION
    return dataset
