"""Generation: one `generate` for every model, built on part 3's sampler (given, not graded).

Dimension letters: B batch, T time (prompt length), V vocabulary.

`generate` runs part 3's recipe in a loop, feeding each new token back to the model through the generation
protocol (its docstring): a KV cache (`prefill` / `decode_step`), a carried recurrent state
(`call(tokens, states=..., return_state=True)`), or, for any other model, re-reading the context.
`sampling.generate` calls it with the student's `sample` and `greedy`. The argument checks of part 3's functions
live here too, so `generate` checks its arguments before the model runs.
"""

import inspect
import math
import numbers
from collections.abc import Callable

import numpy as np
import tensorflow as tf
from numpy.typing import ArrayLike

# ----------------------------------------------------------------------------------------------------------------
# Argument checks (part 3's functions call them first)
# ----------------------------------------------------------------------------------------------------------------


def check_logits(logits):
    """Returns `logits` as a float32 tensor of shape `(B, V)`.

    Raises:
        ValueError: if `logits` is not 2-D or holds a NaN.
    """
    logits = tf.cast(tf.convert_to_tensor(logits), tf.float32)
    if logits.shape.rank != 2:
        raise ValueError(
            f"logits must be 2-D with shape (B, V), one row of scores per sequence; got shape {tuple(logits.shape)}. "
            "For the (B, T, V) output of a model, take the last step: logits[:, -1, :]"
        )
    if np.isnan(logits.numpy()).any():  # on the host: faster than two TensorFlow ops, at every step of generate
        raise ValueError(
            "logits contain NaN, so no distribution can be sampled from them; a NaN usually comes from the model "
            "(an overflow, a division by zero, or a log of 0) rather than from sampling"
        )
    return logits


def check_temperature(temperature):
    """Returns `temperature` as a float after checking it is a finite number > 0."""
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, numbers.Real)
        or not (math.isfinite(temperature) and temperature > 0)
    ):
        raise ValueError(
            f"temperature must be a finite number > 0 (1 changes nothing, < 1 sharpens, > 1 flattens); "
            f"got temperature={temperature!r}. For argmax decoding use greedy(logits), "
            "or generate(..., temperature=0) / generate(..., greedy=True)"
        )
    return float(temperature)


def check_k(k, name="k"):
    """Returns `k` as an int after checking it is an integer >= 1."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(
            f"{name} must be an integer >= 1 (the number of most probable tokens to keep; a value above the "
            f"vocabulary size keeps every token); got {name}={k!r}"
        )
    return int(k)


def check_p(p, name="p"):
    """Returns `p` as a float after checking 0 < p <= 1."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not (0 < p <= 1):
        raise ValueError(
            f"{name} must be a number in (0, 1] (the probability mass to keep; 1 keeps every token); got {name}={p!r}"
        )
    return float(p)


def check_seed(seed):
    """Returns `seed` as an int or None."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise ValueError(f"seed must be an integer or None; got seed={seed!r}")
    return None if seed is None else int(seed)


# ----------------------------------------------------------------------------------------------------------------
# generate: one loop for every model
# ----------------------------------------------------------------------------------------------------------------


def _context_length(model):
    """Returns how many tokens `model` can read at once (`model.context_length` or `model.config.context_length`),
    or None when it does not say."""
    for owner in (model, getattr(model, "config", None)):
        length = getattr(owner, "context_length", None)
        if length is not None:
            return int(length)
    return None


def _last_step(logits, what):
    """Returns the logits of the last time step, `(B, V)`, from a model output of shape `(B, T, V)`."""
    logits = tf.convert_to_tensor(logits)
    if logits.shape.rank != 3:
        raise ValueError(
            f"{what} must return logits of shape (B, T, V); got shape {tuple(logits.shape)} "
            "(see the generation protocol in the docstring of lmkit.generation.generate)"
        )
    return logits[:, -1, :]  # (B, V)


class _CachedReader:
    """Protocol 1, the KV cache: `prefill` the prompt once, then `decode_step` one token at a time.

    The cache holds `context_length` positions (C). When it is full and one more token comes, the reader
    re-prefills the last `refill_length(C)` tokens, half the context rounded up (the new token included), and goes
    on decoding with the cache: the window the model reads then grows again, one token a step, from C/2 to C, and
    is refilled once more. So at every step the logits are those of the model reading exactly the last
    `window` tokens, where `window` is the whole sequence while it fits in the context (the same text as
    re-reading it), and past the context cycles through C/2 + 1 .. C (re-reading would use the last C tokens
    every time). It costs one prefill of C/2 tokens every C/2 tokens instead of a full re-read at every step.

    A rolling cache (dropping the oldest slot and keeping the others) would be cheaper still but reads something
    no call of the model reads: the cached keys and values of every layer above the first were computed from
    tokens that have left the window, and with learned or sinusoidal positions the absolute positions baked
    into them would have to shift. Re-prefilling works the same for every positional scheme.

    A model whose cache methods raise `NotImplementedError` (the cache is a bonus TODO) is read by re-reading
    the context, as `_ContextReader` does, from the start.
    """

    def __init__(self, model):
        self.model = model
        self.context_length = _context_length(model)
        self.cache = None
        self.cached = 0  # tokens in the cache: the window the model reads
        self.fallback = None  # a _ContextReader once the model's cache turns out not to be implemented

    @staticmethod
    def refill_length(context_length):
        """Returns how many of the last tokens are re-read once a cache of `context_length` positions is full:
        half of it, rounded up."""
        return (context_length + 1) // 2

    def _prefill(self, ids):
        """Returns the last-step logits `(B, V)` after filling a new cache with `ids` `(B, T)`, T <= C."""
        logits, self.cache = self.model.prefill(tf.constant(ids))  # (B, T, V)
        self.cached = ids.shape[1]
        return _last_step(logits, "model.prefill")

    def start(self, ids):
        """Returns the next-token logits `(B, V)` after reading the prompt `ids` `(B, T)`."""
        if self.context_length is not None:
            ids = ids[:, -self.context_length :]  # (B, min(T, L))
        try:
            return self._prefill(ids)
        except NotImplementedError:
            return self._without_cache(ids)

    def _without_cache(self, ids):
        # The KV cache is a bonus TODO: until it is written, generation re-reads the context at every step.
        self.fallback = _ContextReader(self.model)
        return self.fallback.step(ids)

    def step(self, ids):
        """Returns the next-token logits `(B, V)` once `ids[:, -1]` has been appended to the sequence `ids`."""
        if self.fallback is not None:
            return self.fallback.step(ids)
        if self.context_length is not None and self.cached >= self.context_length:
            # The cache is full: start a new one from the last half of the context, the new token included.
            return self._prefill(ids[:, -self.refill_length(self.context_length) :])  # (B, V)
        try:
            logits, self.cache = self.model.decode_step(tf.constant(ids[:, -1:]), self.cache)  # (B, 1, V)
        except NotImplementedError:
            return self._without_cache(ids)
        self.cached += 1
        return _last_step(logits, "model.decode_step")


class _RecurrentReader:
    """Protocol 2, recurrent state: read the prompt once, then one token at a time, carrying the state."""

    def __init__(self, model):
        self.model = model
        self.states = None

    def start(self, ids):
        logits, self.states = self.model(tf.constant(ids), states=None, return_state=True)
        return _last_step(logits, "model(tokens, states=None, return_state=True)")

    def step(self, ids):
        logits, self.states = self.model(tf.constant(ids[:, -1:]), states=self.states, return_state=True)  # (B, 1, V)
        return _last_step(logits, "model(tokens, states=states, return_state=True)")


class _ContextReader:
    """Protocol 3, any model mapping tokens `(B, T)` to logits `(B, T, V)`: re-read the whole context each step,
    cropped to the model's context length when it has one."""

    def __init__(self, model):
        self.model = model
        self.context_length = _context_length(model)

    def start(self, ids):
        return self.step(ids)

    def step(self, ids):
        if self.context_length is not None:
            ids = ids[:, -self.context_length :]  # (B, min(T, L))
        return _last_step(self.model(tf.constant(ids)), "model")


def _reader_for(model):
    """Returns the reader of the first protocol `model` follows (the generation protocol: see `generate`)."""
    if hasattr(model, "prefill") and hasattr(model, "decode_step"):
        return _CachedReader(model)
    call = getattr(model, "call", model)
    try:
        parameters = inspect.signature(call).parameters
    except (TypeError, ValueError):
        parameters = {}
    if "states" in parameters and "return_state" in parameters:
        return _RecurrentReader(model)
    return _ContextReader(model)


def _check_prompt(prompt_ids):
    """Returns `prompt_ids` as an int32 array of shape `(B, T)` and whether the caller passed a 1-D prompt."""
    prompt = np.asarray(prompt_ids.numpy() if isinstance(prompt_ids, (tf.Tensor, tf.Variable)) else prompt_ids)
    if prompt.ndim not in (1, 2):
        raise ValueError(f"prompt_ids must have shape (T,) or (B, T); got shape {prompt.shape}")
    if prompt.shape[-1] == 0:
        raise ValueError(
            f"prompt_ids must hold at least one token per row (the model needs something to read); "
            f"got shape {prompt.shape}"
        )
    if not np.issubdtype(prompt.dtype, np.integer):
        raise ValueError(f"prompt_ids must hold integer token ids; got dtype {prompt.dtype}")
    if prompt.min() < 0:
        raise ValueError(f"prompt_ids must be token ids >= 0; got {int(prompt.min())}")
    return prompt.astype(np.int32).reshape(-1, prompt.shape[-1]), prompt.ndim == 1


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
    *,
    sample: Callable,
    argmax: Callable,
) -> np.ndarray:
    """Returns the prompt followed by the generated tokens: int32 NumPy array of the prompt's rank,
    `(T + n,)` or `(B, T + n)` with `n <= max_new_tokens`.

    Works for every model of the package through the generation protocol, checked in order:
    a model with `prefill` and `decode_step` uses its KV cache, and once the cache is full (C =
    `model.config.context_length` tokens) prefills a new one from the last half of the context and decodes on,
    so past the context the model reads the last C/2 + 1 .. C tokens rather than always the last C (the same text
    as re-reading while the sequence fits in the context); a model whose `call` takes `states` and
    `return_state` reads the prompt once and then carries its state; any other model re-reads the whole
    context at each step, cropped to its context length (`model.context_length` or
    `model.config.context_length`) when it has one, so a long prompt is cropped rather than refused.

    Args:
        model: a language model mapping token ids `(B, T)` to logits `(B, T, V)`.
        prompt_ids: integer ids of shape `(T,)` or `(B, T)` (list, NumPy array or tensor), T >= 1.
        max_new_tokens: integer >= 0, the most tokens to append to each row.
        temperature: number >= 0; 0 means greedy (argmax) decoding.
        top_k, top_p: optional filters, as in `sample`.
        seed: integer or None. The same seed gives the same output; without one, outputs differ between calls.
        stop_id: optional token id. A row that produces it stops: the stop token is kept and the row's later
            positions are filled with `stop_id`. Generation ends early once every row has stopped.
        greedy: True for argmax decoding whatever the temperature (top-k and top-p never change the argmax).
        sample: part 3's `sample(logits, temperature, top_k=..., top_p=..., seed=...) -> (B,)` ids.
        argmax: part 3's `greedy(logits) -> (B,)` ids.

    Raises:
        ValueError: for a prompt that is empty or not 1-D/2-D, `max_new_tokens < 0`, `temperature < 0`,
            a bad `top_k`, `top_p` or `seed`, or prompt ids / `stop_id` outside the model's vocabulary.
    """
    # Check everything before the model runs, so a bad argument costs no forward pass.
    prompt, one_dim = _check_prompt(prompt_ids)  # (B, T)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0; got max_new_tokens={max_new_tokens!r}")
    if isinstance(temperature, numbers.Real) and not isinstance(temperature, bool) and temperature == 0:
        greedy = True
    else:
        check_temperature(temperature)
    if top_k is not None:
        check_k(top_k, "top_k")
    if top_p is not None:
        check_p(top_p, "top_p")
    check_seed(seed)
    if stop_id is not None and (isinstance(stop_id, bool) or not isinstance(stop_id, numbers.Integral) or stop_id < 0):
        raise ValueError(f"stop_id must be a token id (an integer >= 0) or None; got stop_id={stop_id!r}")

    rng = np.random.default_rng(seed)  # one seed per step, so a seeded run is reproducible
    reader = _reader_for(model)
    ids = prompt  # (B, T)
    stopped = np.zeros(len(ids), dtype=bool)  # (B,)
    for step in range(max_new_tokens):
        # 1. forward: the logits of the next token, reading the prompt once or the latest token
        logits = reader.start(ids) if step == 0 else reader.step(ids)  # (B, V)
        if step == 0:
            vocab_size = int(logits.shape[-1])
            if ids.max() >= vocab_size:
                raise ValueError(f"prompt_ids must be < vocab_size={vocab_size}; got {int(ids.max())}")
            if stop_id is not None and stop_id >= vocab_size:
                raise ValueError(f"stop_id must be < vocab_size={vocab_size}; got stop_id={stop_id}")
        # 2. choose: argmax, or scale by temperature, filter and draw
        if greedy:
            next_ids = argmax(logits)
        else:
            step_seed = None if seed is None else int(rng.integers(2**31 - 1))
            next_ids = sample(logits, temperature, top_k=top_k, top_p=top_p, seed=step_seed)
        next_ids = np.asarray(next_ids, dtype=np.int32).reshape(-1)  # (B,)
        # 3. rows that have stopped keep emitting stop_id
        if stop_id is not None:
            next_ids = np.where(stopped, stop_id, next_ids)
            stopped |= next_ids == stop_id
        # 4. append, and end once every row has stopped
        ids = np.concatenate([ids, next_ids[:, None]], axis=1)  # (B, T + step + 1)
        if stop_id is not None and stopped.all():
            break
    return ids[0] if one_dim else ids
