"""Part 1: turn text into token ids, and token ids into (input, label) training sequences.

Dimension letters: N number of sequences, T sequence length (`seq_len`), B batch size.

The pipeline is: text -> tokenizer.encode -> ids (int32, shape (num_tokens,))
-> train_val_split -> make_sequences -> (inputs, labels), each (N, T) -> make_dataset -> batches of (B, T).

Tokenizers: `CharTokenizer`, `WordTokenizer`, and (bonus) `BPETokenizer`, GPT-2's byte-level byte-pair encoding.
"""

import collections
import heapq
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf
from numpy.typing import ArrayLike

from lmkit.tokenizer_base import UNK, VocabTokenizer, as_id_list

# A word is a run of letters/digits/underscores with at most one leading space; punctuation marks are tokens of
# their own (also with one optional leading space); whitespace runs are kept as tokens. Keeping the whitespace
# (as GPT-2's pre-tokenizer does) makes decode(encode(text)) == text, so generated samples read like real text.
WORD_PATTERN = re.compile(r" ?\w+| ?[^\w\s]|\s+(?!\S)|\s+")


class CharTokenizer(VocabTokenizer):
    """Character-level tokenizer: every character is one token.

    Args:
        lowercase: if True, text is lowercased before fitting and encoding.

    Examples:
    >>> tok = CharTokenizer().fit("hello")
    >>> tok.decode(tok.encode("hello"))
    'hello'
    """

    kind = "char"

    def fit(self, text: str) -> "CharTokenizer":
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

    def encode(self, text: str) -> np.ndarray:
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

    def decode(self, ids: ArrayLike) -> str:
        """Returns the text for `ids` (a sequence of ints of shape `(T,)`); `<unk>` decodes to U+FFFD.

        Raises:
            ValueError: if an id is outside `[0, vocab_size)`.
        """
        ids = as_id_list(ids)
        self._check_ids(ids)
        # TODO: turn the ids back into text (~1 line)
        #   1. join the characters of the ids, writing "\ufffd" for the unknown id -> a str of len(ids) characters
        # BEGIN SOLUTION
        return "".join("\ufffd" if i == self.unk_id else self.vocab[i] for i in ids)
        # END SOLUTION


class WordTokenizer(VocabTokenizer):
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

    def __init__(self, lowercase: bool = False, max_vocab: int | None = None, min_freq: int = 1):
        super().__init__(lowercase=lowercase)
        if max_vocab is not None and max_vocab < 2:
            raise ValueError(f"max_vocab must be at least 2 (<unk> and one token) or None; got max_vocab={max_vocab}")
        if min_freq < 1:
            raise ValueError(f"min_freq must be at least 1; got min_freq={min_freq}")
        self.max_vocab = max_vocab
        self.min_freq = min_freq

    def get_config(self) -> dict:
        return {**super().get_config(), "max_vocab": self.max_vocab, "min_freq": self.min_freq}

    def tokenize(self, text: str) -> list[str]:
        """Returns the list of token strings of `text` (lowercased first if `lowercase`)."""
        if self.lowercase:
            text = text.lower()
        return WORD_PATTERN.findall(text)

    def fit(self, text: str) -> "WordTokenizer":
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

    def encode(self, text: str) -> np.ndarray:
        """Returns the ids of the tokens of `text`: int32 array of shape `(num_tokens,)`; unknown -> `unk_id`."""
        self._check_fitted()
        # TODO: map each token to its id (~1 line)
        #   1. look each token of self.tokenize(text) up in self.token_to_id, falling back to self.unk_id
        #      -> (num_tokens,) int32
        # BEGIN SOLUTION
        return np.array([self.token_to_id.get(t, self.unk_id) for t in self.tokenize(text)], dtype=np.int32)
        # END SOLUTION

    def decode(self, ids: ArrayLike) -> str:
        """Returns the text for `ids` (shape `(T,)`): the tokens concatenated, `<unk>` written as " <unk>".

        Raises:
            ValueError: if an id is outside `[0, vocab_size)`.
        """
        ids = as_id_list(ids)
        self._check_ids(ids)
        # TODO: turn the ids back into text (~1 line)
        #   1. concatenate the token strings, writing " <unk>" for the unknown id -> a str
        # BEGIN SOLUTION
        return "".join(" " + UNK if i == self.unk_id else self.vocab[i] for i in ids)
        # END SOLUTION


def load_tokenizer(path: str | Path) -> "CharTokenizer | WordTokenizer | BPETokenizer":
    """Returns the CharTokenizer, WordTokenizer or BPETokenizer saved at `path`, whichever it is."""
    kind = json.loads(Path(path).read_text(encoding="utf-8")).get("kind")
    classes = {cls.kind: cls for cls in (CharTokenizer, WordTokenizer, BPETokenizer)}
    if kind not in classes:
        raise ValueError(f"{path} is not a saved tokenizer: kind={kind!r}, expected one of {sorted(classes)}")
    return classes[kind].load(path)


def make_sequences(ids: ArrayLike, seq_len: int, stride: int | None = None) -> tuple[np.ndarray, np.ndarray]:
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


def train_val_split(ids: ArrayLike, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
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


def make_dataset(
    inputs: ArrayLike,
    labels: ArrayLike,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
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


# ---------------------------------------------------------------------------------------------------------------
# Byte-level BPE (bonus)
#
# GPT-2's pre-tokenizer: contractions, letter runs, digit runs and punctuation runs, each with at most one leading
# space, and whitespace runs. BPE merges only inside one pre-token, so " the" and "the" can become tokens but
# "e." never does. `\p{L}` (any letter) and `\p{N}` (any number) need the `regex` package: the stdlib `re` has no
# Unicode property classes, and an approximation would split some text differently from tiktoken.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
NUM_BYTES = 256  # ids 0..255 are the bytes themselves: every string encodes, nothing is unknown


def merge_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Returns `ids` (a list of ints) with every occurrence of `pair` replaced by `new_id`, scanning left to right.

    Occurrences do not overlap: `merge_pair([5, 5, 5], (5, 5), 9) == [9, 5]`.
    """
    # TODO: (bonus, BPE) replace each occurrence of `pair`, left to right, without overlaps (~8 lines)
    #   1. walk i along ids: where (ids[i], ids[i + 1]) == pair, append new_id and step 2; else append ids[i] and
    #      step 1 -> a list of len(ids) minus the number of merges
    # BEGIN SOLUTION
    out = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out
    # END SOLUTION


class BPETokenizer:
    """Byte-level byte-pair-encoding tokenizer, as GPT-2's: learned merges of adjacent tokens, starting from bytes.

    Ids 0..255 are the 256 bytes, id `256 + r` is the token made by merge `r` (`merges[r]`, a pair of ids), and the
    special tokens come last. Text is split at special tokens, then into pre-tokens by `GPT2_PATTERN`; merges are
    learned and applied inside one pre-token only. Every string encodes (its UTF-8 bytes always have ids) and
    `decode(encode(text)) == text`.

    Training (`fit`) repeats: count every pair of adjacent ids inside the pre-tokens (each pre-token weighted by
    how often it occurs), merge the most frequent pair everywhere, record the merge. Tie-break: among pairs with
    the same count, the smallest pair wins, comparing `(first id, second id)` as tuples; so `(97, 98)` ("a", "b")
    beats `(99, 100)` ("c", "d") whatever their order in the text. Encoding applies the merges by rank: the
    lowest-ranked (earliest learned) pair present is merged first, everywhere in the pre-token, until no learned
    pair is left.

    Args:
        vocab_size: the vocabulary to reach, bytes and special tokens included: `vocab_size - 256 -
            len(special_tokens)` merges are learned (fewer if the text runs out of pairs).
        special_tokens: strings such as `"<|endoftext|>"` that always encode to one id of their own, never split
            and never part of a merge.

    Examples:
    >>> tok = BPETokenizer(vocab_size=260, special_tokens=("<|endoftext|>",)).fit("low lower lowest")
    >>> tok.decode(tok.encode("lowest<|endoftext|>"))
    'lowest<|endoftext|>'
    """

    kind = "bpe"

    def __init__(self, vocab_size: int, special_tokens: Sequence[str] = ()):
        special_tokens = tuple(special_tokens)
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)):
            raise ValueError(f"vocab_size must be an integer; got vocab_size={vocab_size!r}")
        if vocab_size < NUM_BYTES + len(special_tokens):
            raise ValueError(
                f"vocab_size={vocab_size} is too small for a byte-level BPE: it needs the {NUM_BYTES} bytes plus "
                f"{len(special_tokens)} special token(s), so at least {NUM_BYTES + len(special_tokens)}"
            )
        if len(set(special_tokens)) != len(special_tokens) or not all(isinstance(s, str) and s for s in special_tokens):
            raise ValueError(f"special_tokens must be distinct non-empty strings; got {special_tokens!r}")
        self.target_vocab_size = int(vocab_size)
        self.special_tokens = special_tokens
        self.merges = None  # list of (id, id) pairs, in the order learned; merge r makes token 256 + r
        # Longest first, so that a special token containing another is matched whole.
        alternatives = "|".join(re.escape(s) for s in sorted(special_tokens, key=len, reverse=True))
        self._special_re = re.compile(f"({alternatives})") if special_tokens else None
        self._pattern = _gpt2_regex()

    @classmethod
    def from_text(cls, text: str, **kwargs) -> "BPETokenizer":
        """Returns a tokenizer built with `kwargs` and fitted on `text`."""
        return cls(**kwargs).fit(text)

    # -- what fit and encode build on (given) -------------------------------------------------------------------

    def pretokenize(self, text: str) -> list[str]:
        """Returns the pre-tokens of `text` (no special tokens in it): `"Hi, you!"` -> `["Hi", ",", " you", "!"]`."""
        return self._pattern.findall(text)

    def split_special(self, text: str) -> list[str]:
        """Returns `text` cut at the special tokens, as a list of non-empty strings, special tokens included.

        `"a<|endoftext|>b"` -> `["a", "<|endoftext|>", "b"]`; without special tokens, `[text]` (or `[]` if empty).
        """
        if self._special_re is None:
            return [text] if text else []
        return [piece for piece in self._special_re.split(text) if piece]

    @property
    def special_ids(self) -> dict[str, int]:
        """Returns `{special token: id}`; the special tokens come right after the merged tokens."""
        self._check_fitted()
        start = NUM_BYTES + len(self.merges)
        return {s: start + i for i, s in enumerate(self.special_tokens)}

    @property
    def vocab_size(self) -> int:
        """Returns the number of ids: 256 bytes, one per learned merge, and the special tokens."""
        self._check_fitted()
        return NUM_BYTES + len(self.merges) + len(self.special_tokens)

    @property
    def unk_id(self) -> int:
        """Returns an id to start from when there is no prompt: the first special token, else "\\n" (10).

        A byte-level BPE has no unknown token (every byte has an id); the name is the other tokenizers'.
        """
        return self.special_ids[self.special_tokens[0]] if self.special_tokens else 10

    def token_bytes(self, token_id: int) -> bytes:
        """Returns the bytes of one id (a special token's are its UTF-8 text)."""
        self._check_fitted()
        return self._bytes[token_id]

    def _check_fitted(self):
        if self.merges is None:
            raise RuntimeError("BPETokenizer has no merges yet: call fit(text) or load(path) first")

    def _set_merges(self, merges):
        """Sets `merges` and builds what encode and decode look up: ranks, the bytes of every id, a cache."""
        self.merges = [(int(a), int(b)) for a, b in merges]
        self.ranks = {pair: rank for rank, pair in enumerate(self.merges)}
        self._bytes = [bytes([b]) for b in range(NUM_BYTES)]
        for a, b in self.merges:
            self._bytes.append(self._bytes[a] + self._bytes[b])
        self._bytes += [s.encode("utf-8") for s in self.special_tokens]
        self._cache = {}

    def _encode_pretoken(self, pretoken):
        """Returns the ids of one pre-token (a string), remembered: a corpus repeats its words."""
        ids = self._cache.get(pretoken)
        if ids is None:
            ids = self._cache[pretoken] = self.encode_bytes(pretoken.encode("utf-8"))
        return ids

    # -- what the student writes ------------------------------------------------------------------------------

    def fit(self, text: str) -> "BPETokenizer":
        """Learns `vocab_size - 256 - len(special_tokens)` merges from `text` and returns `self`.

        Merges never cross a pre-token boundary or touch a special token. After `fit`, `self.merges[r]` is the
        pair of ids merged at step `r` into id `256 + r`.
        """
        num_merges = self.target_vocab_size - NUM_BYTES - len(self.special_tokens)
        # TODO: (bonus, BPE) learn the merges: count pairs, merge the most frequent, record it, repeat (~20 lines)
        #   Recounting every pair at each step is fine here (the reference keeps its counts up to date instead).
        #   1. count the pre-tokens: for each piece of self.split_special(text) that is not a special token, count
        #      tuple(p.encode("utf-8")) for every p in self.pretokenize(piece) -> {tuple of byte ids: count}
        #   2. repeat num_merges times, stopping early when no pre-token has two ids left:
        #      a. count the adjacent pairs inside every pre-token, each weighted by the pre-token's count
        #         -> {(a, b): count}
        #      b. take the most frequent pair, ties going to the smallest pair: min over (-count, pair) -> (a, b)
        #      c. merge it in every pre-token with merge_pair, as new id 256 + len(merges), and append the pair
        #         to merges -> one more merge
        #   3. self._set_merges(merges), which builds self.ranks and the bytes of every id -> vocab_size ids
        # BEGIN SOLUTION
        # Pair counts are kept up to date instead of recounted: a merge changes only the pre-tokens that hold its
        # pair, so only their pairs are re-counted. A heap of (-count, pair) finds the best pair; entries whose
        # count has changed since they were pushed are skipped when popped.
        counts = collections.Counter()
        for piece in self.split_special(text):
            if piece not in self.special_tokens:
                counts.update(tuple(p.encode("utf-8")) for p in self.pretokenize(piece))
        words = [list(w) for w in counts]  # the pre-tokens as lists of ids, merged as we go
        freqs = list(counts.values())  # how often each pre-token occurs
        pair_counts = collections.Counter()  # (a, b) -> occurrences in all pre-tokens
        where = collections.defaultdict(set)  # (a, b) -> indices of the pre-tokens that may hold it
        for i, (word, freq) in enumerate(zip(words, freqs)):
            for pair in zip(word, word[1:]):
                pair_counts[pair] += freq
                where[pair].add(i)
        heap = [(-count, pair) for pair, count in pair_counts.items()]
        heapq.heapify(heap)
        merges = []
        while len(merges) < num_merges and heap:
            negative_count, pair = heapq.heappop(heap)
            if pair_counts.get(pair, 0) != -negative_count or negative_count == 0:
                continue  # stale: the pair's count changed after this entry was pushed
            new_id = NUM_BYTES + len(merges)
            merges.append(pair)
            for i in sorted(where.pop(pair)):
                old = words[i]
                new = merge_pair(old, pair, new_id)
                if len(new) == len(old):
                    continue  # the pre-token lost this pair to an earlier merge
                words[i] = new
                delta = collections.Counter(zip(new, new[1:]))
                delta.subtract(zip(old, old[1:]))
                for changed, d in delta.items():
                    if d:
                        pair_counts[changed] += d * freqs[i]
                        if d > 0:
                            where[changed].add(i)
                        heapq.heappush(heap, (-pair_counts[changed], changed))
        self._set_merges(merges)
        # END SOLUTION
        return self

    def encode_bytes(self, data: bytes) -> list[int]:
        """Returns the ids of one pre-token's bytes `data`, merges applied by rank: a list of ints.

        Example: with merges `[(98, 99), (97, 98)]` ("bc" first, then "ab"), `b"abc"` -> `[97, 256]` ("a", "bc"):
        the pair ("b", "c") has the lower rank, so it is merged first, although ("a", "b") comes first in the text.
        """
        # TODO: (bonus, BPE) merge the learned pairs of lowest rank first, until none is left (~6 lines)
        #   1. ids = list(data) -> len(data) byte ids
        #   2. while some adjacent pair of ids is in self.ranks: take the one of lowest rank and merge it
        #      everywhere with merge_pair, as id 256 + its rank -> fewer ids
        #   3. return ids -> a list of ints
        # BEGIN SOLUTION
        ids = list(data)
        while len(ids) > 1:
            pair = min(zip(ids, ids[1:]), key=lambda p: self.ranks.get(p, math.inf))
            if pair not in self.ranks:
                break
            ids = merge_pair(ids, pair, NUM_BYTES + self.ranks[pair])
        return ids
        # END SOLUTION

    def encode(self, text: str) -> np.ndarray:
        """Returns the ids of `text`: int32 array of shape `(num_tokens,)`; a special token in `text` is one id."""
        self._check_fitted()
        # TODO: (bonus, BPE) special tokens as one id each, everything else pre-token by pre-token (~8 lines)
        #   1. for each piece of self.split_special(text): a special token appends its id from self.special_ids;
        #      any other piece appends self._encode_pretoken(p) (encode_bytes on p's UTF-8 bytes, remembered) for
        #      every p in self.pretokenize(piece) -> a list of ids
        #   2. return them as an int32 array -> (num_tokens,)
        # BEGIN SOLUTION
        special_ids = self.special_ids
        ids = []
        for piece in self.split_special(text):
            if piece in special_ids:
                ids.append(special_ids[piece])
            else:
                for pretoken in self.pretokenize(piece):
                    ids.extend(self._encode_pretoken(pretoken))
        return np.array(ids, dtype=np.int32)
        # END SOLUTION

    # -- given -------------------------------------------------------------------------------------------------

    def decode(self, ids: ArrayLike) -> str:
        """Returns the text of `ids` (shape `(T,)`); bytes that are not valid UTF-8 become U+FFFD.

        Only an arbitrary sequence of ids (a model's sample) can cut a character in two: `encode`'s output always
        decodes back to the text.

        Raises:
            ValueError: if an id is outside `[0, vocab_size)`.
        """
        ids = as_id_list(ids)
        self._check_fitted()
        for i in ids:
            if not 0 <= i < len(self._bytes):
                raise ValueError(
                    f"cannot decode id {i}: valid ids are 0..{len(self._bytes) - 1} (vocab_size={len(self._bytes)})"
                )
        return b"".join(self._bytes[i] for i in ids).decode("utf-8", errors="replace")

    def get_config(self) -> dict:
        return {"vocab_size": self.target_vocab_size, "special_tokens": list(self.special_tokens)}

    def save(self, path: str | Path) -> None:
        """Writes the tokenizer (settings, pattern and merges) to `path` as JSON."""
        self._check_fitted()
        payload = {"kind": self.kind, "config": self.get_config(), "pattern": GPT2_PATTERN, "merges": self.merges}
        Path(path).write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "BPETokenizer":
        """Returns the tokenizer saved at `path` by `save`."""
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
        if payload.get("kind") != cls.kind:
            raise ValueError(f"{path} holds a {payload.get('kind')!r} tokenizer, not a {cls.kind!r} one")
        if payload.get("pattern") != GPT2_PATTERN:
            raise ValueError(f"{path} was saved with another pre-tokenization pattern: {payload.get('pattern')!r}")
        tokenizer = cls(**payload["config"])
        tokenizer._set_merges(payload["merges"])
        return tokenizer


def _gpt2_regex():
    """Returns GPT2_PATTERN compiled by the `regex` package (a dependency: the stdlib `re` has no \\p{L})."""
    try:
        import regex
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "BPETokenizer needs the `regex` package for GPT-2's pre-tokenizer (\\p{L}, \\p{N}): pip install regex"
        ) from None
    return regex.compile(GPT2_PATTERN)
