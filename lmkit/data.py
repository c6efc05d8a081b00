"""The training loop's batches: random windows for training, fixed windows for validation (given, not graded).

Training batches are cut at random offsets (nanoGPT's `get_batch`) from stateless random numbers, so the stream
restarts exactly at any position: a resumed run sees the same batches as a run that never stopped.
"""

import math

import numpy as np
import tensorflow as tf

from lmkit.errors import CorpusTooSmall


def random_windows(ids: np.ndarray, batch_size: int, seq_len: int, seed: int = 0, start: int = 0) -> tf.data.Dataset:
    """Returns an endless `tf.data.Dataset` of `(inputs, labels)` batches, each int32 `(B, T)`, cut at random
    offsets of the token stream `ids` (nanoGPT's `get_batch`).

    `ids` is a 1-D int array, or a token shard memory-mapped by `lmrun.prepare.open_shard`: a `np.memmap` is
    read window by window (only the pages of the batch), never loaded whole, and gives the same batches as the
    same ids in memory.

    Batch number p depends only on `(seed, p)` (stateless random numbers), so the stream restarts exactly at any
    position `start`: a resumed run sees the same batches as a run that never stopped.
    """
    num_starts = int(len(ids)) - seq_len  # a window is seq_len + 1 tokens
    if isinstance(ids, np.memmap):
        window = np.arange(seq_len + 1)

        def read_windows(starts):  # runs in NumPy: fancy indexing copies just these windows out of the file
            return np.asarray(ids[starts[:, None] + window[None, :]], dtype=np.int32)  # (B, T + 1)

        def gather(starts):
            windows = tf.numpy_function(read_windows, [starts], tf.int32, stateful=False)
            return tf.ensure_shape(windows, [batch_size, seq_len + 1])

    else:
        ids = tf.constant(np.asarray(ids, dtype=np.int32))
        offsets = tf.range(seq_len + 1, dtype=tf.int64)

        def gather(starts):
            return tf.gather(ids, starts[:, None] + offsets[None, :])  # (B, T + 1)

    def batch_at(position):
        starts = tf.random.stateless_uniform(
            [batch_size],
            seed=tf.stack([tf.constant(seed, tf.int64), position]),
            minval=0,
            maxval=num_starts,
            dtype=tf.int64,
        )  # (B,)
        windows = gather(starts)  # (B, T + 1)
        return windows[:, :-1], windows[:, 1:]

    dataset = tf.data.Dataset.counter(start).map(batch_at).prefetch(4)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def validation_batches(ids: np.ndarray, seq_len: int, batch_size: int, max_batches: int = 0) -> tf.data.Dataset:
    """Returns the validation set: non-overlapping windows of `ids`, in order, as `(inputs, labels)` batches.

    Window n holds `ids[n * T : n * T + T + 1]`: inputs its first T tokens, labels its last T, both int32 `(B, T)`;
    the last batch may be smaller. A memory-mapped shard is read batch by batch, as `random_windows` does, so a
    validation shard of any size costs no memory; the batches are those of the same ids in memory.
    """
    num_windows = validation_tokens(len(ids), seq_len, batch_size, max_batches) // seq_len
    if not isinstance(ids, np.memmap):
        stream = np.asarray(ids[: num_windows * seq_len + 1], dtype=np.int32)
        inputs = stream[:-1].reshape(num_windows, seq_len)  # (N, T)
        labels = stream[1:].reshape(num_windows, seq_len)  # (N, T)
        return tf.data.Dataset.from_tensor_slices((inputs, labels)).batch(batch_size).prefetch(2)
    window = np.arange(seq_len + 1)

    def read_windows(indices):  # (b,) -> (b, T + 1), in NumPy: only these windows leave the file
        return np.asarray(ids[indices[:, None] * seq_len + window[None, :]], dtype=np.int32)

    def load(indices):
        windows = tf.numpy_function(read_windows, [indices], tf.int32, stateful=False)
        windows = tf.ensure_shape(windows, [None, seq_len + 1])
        return windows[:, :-1], windows[:, 1:]

    return tf.data.Dataset.range(num_windows).batch(batch_size).map(load).prefetch(2)


def check_data_size(train_ids: np.ndarray, val_ids: np.ndarray, batch_size: int, seq_len: int) -> None:
    """Raises `CorpusTooSmall`, saying what is needed, unless there is a batch to train on and a window to validate."""
    need_train, need_val = batch_size * seq_len + 1, seq_len + 1
    if len(train_ids) < need_train or len(val_ids) < need_val:
        raise CorpusTooSmall(
            f"the corpus is too small for one batch: {len(train_ids)} training and {len(val_ids)} validation tokens, "
            f"but a batch of {batch_size} x {seq_len} tokens needs at least {need_train} training tokens and "
            f"validation needs at least {need_val}; use a larger corpus, or a smaller --batch-size or "
            f"--context-length"
        )


# ----------------------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------------------
# Bits per character: the validation loss in a unit every tokenizer shares.
# ----------------------------------------------------------------------------------------------------------------


def validation_tokens(num_ids: int, seq_len: int, batch_size: int, max_batches: int = 0) -> int:
    """Returns how many label tokens `validation_batches(ids, seq_len, batch_size, max_batches)` holds, for
    `num_ids` ids: `n` such that its labels are exactly `ids[1 : 1 + n]`, each once (the windows do not overlap)."""
    windows = max(0, (int(num_ids) - 1) // seq_len)
    if max_batches:
        windows = min(windows, max_batches * batch_size)
    return windows * seq_len


def characters_per_id(tokenizer: object) -> np.ndarray:
    """Returns a float64 array of shape `(V,)`: how many characters of the text each id stands for.

    A character id (and the unknown character) is 1; a word id the length of its word, the unknown word NaN (its
    length is lost); a byte-level BPE id the characters that start among its bytes, so a character cut across two
    ids counts once, in the id holding its first byte, and the ids of any text add up to exactly its length.
    """
    kind = getattr(tokenizer, "kind", None)
    if kind == "bpe":
        return np.array(
            [sum((b & 0xC0) != 0x80 for b in tokenizer.token_bytes(i)) for i in range(tokenizer.vocab_size)],
            np.float64,
        )
    if kind in ("char", "word"):
        counts = np.array([len(token) for token in tokenizer.vocab], np.float64)
        counts[tokenizer.unk_id] = 1.0 if kind == "char" else np.nan
        return counts
    raise ValueError(f"no character counts for a tokenizer of kind {kind!r}: expected char, word or bpe")


def token_characters(tokenizer: object, text: str, ids: np.ndarray) -> np.ndarray:
    """Returns an array of shape `(len(ids),)`: the characters of `text` each of its ids `ids` spells
    (`ids == tokenizer.encode(text)`); they add up to `len(text)`, unknown words included. (Ids that are not one
    per token of the text, from a tokenizer still being written, count as `characters_per_id` says.)"""
    kind = getattr(tokenizer, "kind", None)
    if kind == "word":
        counts = np.array([len(token) for token in tokenizer.tokenize(text)], np.int64)
    elif kind == "char":
        counts = np.ones(len(text), np.int64)
    else:
        counts = None
    if counts is None or len(counts) != len(ids):
        counts = characters_per_id(tokenizer)[np.asarray(ids, np.int64)]
    return counts


class ValidationCharacters:
    """`chars(n)`: the characters of the validation text that `val_ids[1 : 1 + n]` spell (the labels of the first
    `n // seq_len` validation windows), for bits per character.

    Built from exact counts per token (`token_characters`, when the text is at hand) or from the ids and
    `characters_per_id` (a memory-mapped shard, read in chunks: its memory does not grow with the corpus). In the
    second case a word tokenizer's unknown words count `unk_chars` characters each (the validation text's mean,
    from the shard's header); `chars(n)` is None when that is not known and an unknown word is among them.
    """

    CHUNK = 1 << 20

    def __init__(
        self, val_ids: np.ndarray, token_counts: np.ndarray | None = None, id_counts: np.ndarray | None = None
    ):
        self.val_ids = val_ids
        self.id_counts = id_counts
        self.cumulative = None if token_counts is None else np.cumsum(token_counts)
        self._cache = {}

    def __call__(self, n: int) -> float | None:
        n = min(int(n), len(self.val_ids) - 1)
        if n <= 0:
            return None
        if self.cumulative is not None:
            chars = float(self.cumulative[n] - self.cumulative[0])
            return chars if np.isfinite(chars) else None
        if n not in self._cache:
            total = 0.0
            for start in range(1, 1 + n, self.CHUNK):
                chunk = np.asarray(self.val_ids[start : min(1 + n, start + self.CHUNK)])
                total += float(self.id_counts[chunk].sum())
            self._cache[n] = total if np.isfinite(total) else None
        return self._cache[n]


def bits_per_char(loss: float, num_tokens: int, num_chars: int) -> float:
    """Returns bits per character of a mean cross-entropy `loss` (nats per token) over `num_tokens` tokens
    that spell `num_chars` characters: the measure that compares models with different tokenizers."""
    return float(loss) * num_tokens / (num_chars * math.log(2))
