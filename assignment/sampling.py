"""Part 3: how a language model's logits become the next token, and one `generate` for every model.

Dimension letters: B batch, T time (prompt length), V vocabulary.

Every function below works on batched logits of shape `(B, V)`, one row per sequence, each row on its own.
A filter never renormalises anything itself: it sets the logits of the tokens it removes to `-inf`, so that
`softmax` gives them probability exactly 0 and spreads the remaining mass over the tokens that are left.

    logits (B, V) -> apply_temperature -> top_k_filter -> top_p_filter -> draw -> next ids (B,)

`generate` (given, in `lmkit.generation`) runs that recipe in a loop, feeding each new token back to the model: a
KV cache, a carried recurrent state, or re-reading the context. The argument checks you call first are given too:
`check_logits`, `check_temperature`, `check_k`, `check_p` and `check_seed` raise a `ValueError` naming the bad value.
"""

import numpy as np
import tensorflow as tf
from numpy.typing import ArrayLike

from lmkit import generation
from lmkit.generation import check_k, check_logits, check_p, check_seed, check_temperature

NEG_INF = float("-inf")  # the logit of a filtered token: softmax turns it into a probability of exactly 0


# ----------------------------------------------------------------------------------------------------------------
# Choosing the next token
# ----------------------------------------------------------------------------------------------------------------


def greedy(logits: tf.Tensor | np.ndarray) -> tf.Tensor:
    """Returns the most probable token of each row: int32 tensor of shape `(B,)`.

    Args:
        logits: float tensor of shape `(B, V)`.

    When a row has several maximal logits, any of them is a valid answer.
    """
    # TODO: the index of the largest logit of each row (~2 lines)
    #   1. logits = check_logits(logits) -> (B, V), checked
    #   2. argmax over the vocabulary axis, as int32 -> (B,)
    # BEGIN SOLUTION
    logits = check_logits(logits)
    return tf.argmax(logits, axis=-1, output_type=tf.int32)  # (B,)
    # END SOLUTION


def apply_temperature(logits: tf.Tensor | np.ndarray, temperature: float) -> tf.Tensor:
    """Returns the logits divided by `temperature`: float32 tensor of shape `(B, V)`.

    Args:
        logits: float tensor of shape `(B, V)`.
        temperature: number > 0. `temperature = 1` changes nothing; as it goes to 0 the distribution
            `softmax(logits / temperature)` approaches one-hot on the argmax; as it grows it approaches uniform.
            Filtered (`-inf`) entries stay `-inf`.

    Raises:
        ValueError: if `temperature <= 0`, or `logits` is not 2-D or holds a NaN.
    """
    # TODO: divide the logits by the temperature (~3 lines)
    #   1. logits = check_logits(logits); temperature = check_temperature(temperature) -> (B, V) and a float
    #   2. divide the logits, not the probabilities -> (B, V)
    # BEGIN SOLUTION
    logits = check_logits(logits)
    temperature = check_temperature(temperature)
    return logits / temperature  # (B, V)
    # END SOLUTION


def top_k_filter(logits: tf.Tensor | np.ndarray, k: int) -> tf.Tensor:
    """Returns `logits` with every token below the k-th largest logit of its row set to `-inf`: shape `(B, V)`.

    A token is kept when its logit is at least the k-th largest logit of its row, so a token tied with the
    k-th one is kept too (a row can keep more than k tokens). `k` larger than V keeps every token.
    Kept entries are returned unchanged.

    Example: logits [1, 3, 2, 2] with k = 2 keep [-inf, 3, 2, 2] (the two 2s tie for second place).

    Args:
        logits: float tensor of shape `(B, V)`.
        k: integer >= 1.

    Raises:
        ValueError: if `k` is not an integer >= 1, or `logits` is not 2-D or holds a NaN.
    """
    # TODO: keep every logit >= the k-th largest of its row, -inf elsewhere (~6 lines)
    #   1. logits = check_logits(logits); k = check_k(k); if k >= V, return the logits unchanged -> (B, V)
    #   2. the k largest logits of each row, largest first (tf.math.top_k(logits, k=k).values) -> (B, k)
    #   3. the k-th largest: the last column, kept 2-D so it broadcasts against the row (values[:, -1:]) -> (B, 1)
    #   4. keep the logits >= that value, NEG_INF elsewhere (tf.where) -> (B, V)
    # BEGIN SOLUTION
    logits = check_logits(logits)
    k = check_k(k)
    if k >= logits.shape[-1]:
        return logits
    kth_largest = tf.math.top_k(logits, k=k).values[:, -1:]  # (B, 1)
    return tf.where(logits >= kth_largest, logits, NEG_INF)  # (B, V)
    # END SOLUTION


def top_p_filter(logits: tf.Tensor | np.ndarray, p: float) -> tf.Tensor:
    """Returns `logits` with every token outside the nucleus of mass `p` set to `-inf`: shape `(B, V)`.

    Sort the tokens of a row by probability, most probable first (probabilities are `softmax(logits)`, so
    `-inf` entries have probability 0). A token is kept when the total probability of the tokens before it
    is below `p`. So the token whose probability crosses `p` is kept, the most probable token is always kept,
    and `p = 1` keeps every token. Kept entries are returned unchanged.

    Example: probabilities [0.3, 0.1, 0.15, 0.45] sort to 0.45, 0.3, 0.15, 0.1 with mass before each of
    0, 0.45, 0.75, 0.9. With p = 0.7 the kept tokens are {0.45, 0.3}; with p = 0.8 they are {0.45, 0.3, 0.15}.

    Args:
        logits: float tensor of shape `(B, V)`.
        p: number in `(0, 1]`.

    Raises:
        ValueError: if `p` is outside `(0, 1]`, or `logits` is not 2-D or holds a NaN.
    """
    # TODO: keep the most probable tokens while the mass before each is < p, -inf elsewhere (~9 lines)
    #   1. logits = check_logits(logits); p = check_p(p); if p == 1, return the logits unchanged -> (B, V)
    #   2. probabilities sorted in descending order (tf.nn.softmax, tf.sort) -> (B, V)
    #   3. the mass of the tokens before each one (tf.cumsum, exclusive=True) -> (B, V)
    #   4. keep where that mass is < p: a prefix of each sorted row -> (B, V) bool, in sorted order
    #   5. map the decision back to vocabulary order: the smallest kept probability of a row is a
    #      threshold (or scatter with the indices of tf.argsort) -> (B, 1) threshold, or (B, V) bool
    #   6. kept logits unchanged, NEG_INF elsewhere (tf.where) -> (B, V)
    # BEGIN SOLUTION
    logits = check_logits(logits)
    p = check_p(p)
    if p >= 1.0:
        return logits  # rounding in a cumulative sum must not drop a token when every token is wanted
    probs = tf.nn.softmax(logits, axis=-1)  # (B, V)
    sorted_probs = tf.sort(probs, axis=-1, direction="DESCENDING")  # (B, V)
    mass_before = tf.cumsum(sorted_probs, axis=-1, exclusive=True)  # (B, V); 0 for the most probable token
    kept_sorted = mass_before < p  # (B, V), a prefix of each sorted row
    # The kept tokens are exactly those at least as probable as the last kept one: a threshold per row.
    threshold = tf.reduce_min(tf.where(kept_sorted, sorted_probs, 2.0), axis=-1, keepdims=True)  # (B, 1)
    return tf.where(probs >= threshold, logits, NEG_INF)  # (B, V)
    # END SOLUTION


def sample(
    logits: tf.Tensor | np.ndarray,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
) -> tf.Tensor:
    """Returns one token drawn from each row: int32 tensor of shape `(B,)`.

    The recipe, in this order: divide by `temperature`; keep the `top_k` best tokens (when given); keep the
    nucleus of mass `top_p` of what is left, renormalised (when given); draw from `softmax` of the result.
    A filtered token is never drawn.

    Args:
        logits: float tensor of shape `(B, V)`.
        temperature: number > 0 (use `greedy` for argmax decoding).
        top_k: integer >= 1, or None for no top-k filter.
        top_p: number in `(0, 1]`, or None for no top-p filter.
        seed: integer or None. The same seed gives the same draws on every call; without a seed, draws come
            from TensorFlow's global random state and differ from one call to the next.

    Raises:
        ValueError: for a bad `temperature`, `top_k`, `top_p` or `seed`, or `logits` that are not 2-D or hold a NaN.
    """
    # TODO: filter, then draw one token per row (~10 lines)
    #   1. logits = check_logits(logits); seed = check_seed(seed) -> (B, V) and an int or None
    #   2. apply_temperature, then top_k_filter if top_k is not None, then top_p_filter if top_p is not None,
    #      each on the result of the previous one -> (B, V)
    #   3. draw: with a seed, tf.random.stateless_categorical(..., seed=[seed, 0]), so the same seed gives
    #      the same draws; without one, tf.random.categorical -> (B, 1) int32
    #   4. return the draws as int32 -> (B,)
    # BEGIN SOLUTION
    logits = check_logits(logits)
    seed = check_seed(seed)
    logits = apply_temperature(logits, temperature)  # (B, V)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)  # (B, V)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)  # (B, V)
    if seed is None:
        draws = tf.random.categorical(logits, 1, dtype=tf.int32)  # (B, 1)
    else:
        draws = tf.random.stateless_categorical(logits, 1, seed=[seed, 0], dtype=tf.int32)  # (B, 1)
    return draws[:, 0]  # (B,)
    # END SOLUTION


def generate(
    model,
    prompt_ids: ArrayLike | tf.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop_id: int | None = None,
    greedy: bool = False,
) -> np.ndarray:
    """Returns the prompt followed by up to `max_new_tokens` generated tokens, int32 `(T + n,)` or `(B, T + n)`:
    `lmkit.generation.generate` (given; its docstring has the generation protocol) with this file's sampler."""
    return generation.generate(
        model,
        prompt_ids,
        max_new_tokens,
        temperature,
        top_k,
        top_p,
        seed,
        stop_id,
        greedy,
        sample=sample,
        argmax=_greedy,
    )


_greedy = greedy  # `generate`'s `greedy` argument hides this function's name inside it
