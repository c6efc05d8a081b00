"""The training loop's batches: random windows for training, fixed windows for validation (given, not graded).

Training batches are cut at random offsets (nanoGPT's `get_batch`) from stateless random numbers, so the stream
restarts exactly at any position: a resumed run sees the same batches as a run that never stopped.
"""

import numpy as np
import tensorflow as tf


def random_windows(ids, batch_size, seq_len, seed=0, start=0):
    """Returns an endless `tf.data.Dataset` of `(inputs, labels)` batches, each int32 `(B, T)`, cut at random
    offsets of the token stream `ids` (nanoGPT's `get_batch`).

    `ids` is a 1-D int array, or a token shard memory-mapped by `assignment.prepare.open_shard`: a `np.memmap` is
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


def validation_batches(ids, seq_len, batch_size, max_batches=0):
    """Returns the validation set: non-overlapping windows of `ids`, in order, as `(inputs, labels)` batches."""
    from assignment import preprocess

    inputs, labels = preprocess.make_sequences(ids, seq_len)
    dataset = preprocess.make_dataset(inputs, labels, batch_size, shuffle=False)
    return dataset.take(max_batches) if max_batches else dataset


class CorpusTooSmall(ValueError):
    """The corpus has too few tokens for one training batch or one validation window."""


def check_data_size(train_ids, val_ids, batch_size, seq_len):
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
