"""Part 3, hidden tests (4 of the 20 points): the filters on random rows, more statistics, greedy decoding and
cropping to a context length in generate."""

import math
import re

import numpy as np
import pytest
from checks import assert_shape

INF = float("inf")
N_DRAWS = 20_000


def _softmax(z):
    """Returns softmax of a 1-D float array in float64; -inf entries get probability exactly 0."""
    z = np.asarray(z, dtype=np.float64)
    finite = np.isfinite(z)
    e = np.where(finite, np.exp(z - np.max(z[finite])), 0.0)
    return e / e.sum()


def _reference_keep(z, top_k=None, top_p=None):
    """Returns the boolean kept set of one row of logits (NumPy reference of top-k, then top-p)."""
    z = np.asarray(z, dtype=np.float64)
    keep = np.isfinite(z)
    if top_k is not None:
        keep &= z >= np.sort(z)[::-1][min(top_k, len(z)) - 1]
    if top_p is not None and top_p < 1:
        probs = _softmax(np.where(keep, z, -INF))
        order = np.argsort(-probs, kind="stable")
        mass_before = np.cumsum(probs[order]) - probs[order]
        assert np.all(np.abs(mass_before - top_p) > 1e-4), "test data too close to the top-p boundary"
        nucleus = np.zeros(len(z), dtype=bool)
        nucleus[order[mass_before < top_p]] = True
        keep &= nucleus
    return keep


def _reference_probs(z, temperature=1.0, top_k=None, top_p=None):
    z = np.asarray(z, dtype=np.float64) / temperature
    return _softmax(np.where(_reference_keep(z, top_k, top_p), z, -INF))


def _chi2_critical(df, alpha=1e-6):
    """Returns x with P(X > x) = alpha for X ~ chi-square(df), integer df: the closed-form survival function
    (even df: exp(-h) sum_{i<df/2} h^i/i!; odd df: erfc(sqrt h) + exp(-h) sum_{i<(df-1)/2} h^(i+1/2)/Gamma(i+3/2),
    h = x/2) inverted by bisection. df=1 -> 23.928, df=2 -> 27.631, as in printed tables."""

    def survival(x):
        h = x / 2.0
        if df % 2 == 0:
            term = total = 1.0
            for i in range(1, df // 2):
                term *= h / i
                total += term
            return math.exp(-h) * total
        total, term = 0.0, math.sqrt(h) / math.gamma(1.5)
        for i in range((df - 1) // 2):
            total += term
            term *= h / (i + 1.5)
        return math.erfc(math.sqrt(h)) + math.exp(-h) * total

    lo, hi = 0.0, 1000.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if survival(mid) > alpha else (lo, mid)
    return hi


def _assert_draws_follow(draws, expected, what):
    """Fails unless no filtered token is drawn and the frequencies pass a chi-square test at level 1e-6."""
    draws = np.asarray(draws).reshape(-1).astype(np.int64)
    n, vocab = len(draws), len(expected)
    assert draws.min() >= 0 and draws.max() < vocab, f"{what}: drawn ids must lie in [0, {vocab})"
    counts = np.bincount(draws, minlength=vocab)
    kept = expected > 0
    bad = np.flatnonzero(~kept & (counts > 0))
    assert bad.size == 0, (
        f"{what}: token {bad[0]} was drawn {counts[bad[0]]} times but is filtered out (probability 0); "
        f"only {np.flatnonzero(kept).tolist()} may be drawn"
    )
    df = int(kept.sum()) - 1
    statistic = float(np.sum((counts[kept] - n * expected[kept]) ** 2 / (n * expected[kept])))
    assert df == 0 or statistic < _chi2_critical(df), (
        f"{what}: the sampled frequencies do not follow the exact filtered distribution "
        f"(chi-square = {statistic:.1f} > {_chi2_critical(df):.1f}, df = {df}).\n"
        f"  observed: {np.round(counts / n, 4).tolist()}\n  expected: {np.round(expected, 4).tolist()}"
    )


@pytest.mark.points(1)
@pytest.mark.clause(
    "sampling.top_k_filter: every token below the k-th largest logit of its row set to `-inf`: shape `(B, V)`",
    "sampling.top_p_filter: every token outside the nucleus of mass `p` set to `-inf`: shape `(B, V)`",
)
def test_filters_match_a_reference_on_random_rows(student):
    rng = np.random.default_rng(4)  # a seed whose rows sit at least 7e-4 from every top-p boundary
    logits = (rng.normal(size=(16, 40)) * 2.0).astype(np.float32)
    logits[:4] = np.round(logits[:4])  # rows with many ties, for top-k
    for k in (1, 3, 7, 40, 100):
        out = np.asarray(student.call("sampling.top_k_filter", logits, k), dtype=np.float64)
        assert_shape(out, logits.shape, f"top_k_filter(logits, {k})")
        for b, row in enumerate(logits):
            keep = _reference_keep(row, top_k=k)
            assert np.flatnonzero(np.isfinite(out[b])).tolist() == np.flatnonzero(keep).tolist(), (
                f"top_k_filter(k={k}), row {b}: kept tokens differ from 'every logit >= the k-th largest'"
            )
            assert np.all(out[b][~keep] == -INF), f"top_k_filter(k={k}), row {b}: filtered entries must be -inf"
            np.testing.assert_allclose(out[b][keep], row[keep], rtol=1e-6, err_msg="kept logits must be unchanged")
    smooth = logits[4:]  # no ties: the top-p boundary is never in doubt
    for p in (0.05, 0.3, 0.6, 0.9, 1.0):
        out = np.asarray(student.call("sampling.top_p_filter", smooth, p), dtype=np.float64)
        assert_shape(out, smooth.shape, f"top_p_filter(logits, {p})")
        for b, row in enumerate(smooth):
            keep = _reference_keep(row, top_p=p)
            assert np.flatnonzero(np.isfinite(out[b])).tolist() == np.flatnonzero(keep).tolist(), (
                f"top_p_filter(p={p}), row {b}: expected the {keep.sum()} most probable tokens "
                f"{np.flatnonzero(keep).tolist()}, got {np.flatnonzero(np.isfinite(out[b])).tolist()}"
            )
            assert np.all(out[b][~keep] == -INF), f"top_p_filter(p={p}), row {b}: filtered entries must be -inf"
            np.testing.assert_allclose(out[b][keep], row[keep], rtol=1e-6, err_msg="kept logits must be unchanged")


@pytest.mark.points(1)
@pytest.mark.clause(
    "sampling.sample: or None for no top-k filter",
    "sampling.sample: or None for no top-p filter",
    "sampling.sample: A filtered token is never drawn.",
)
def test_sample_distribution_with_each_setting_alone(student):
    row = np.array([0.5, -0.4, 1.2, 0.0, 0.9, -1.0], dtype=np.float32)
    logits = np.tile(row, (N_DRAWS, 1))
    for seed, kwargs in enumerate(
        [
            dict(temperature=0.5),
            dict(temperature=2.5),
            dict(top_k=3),
            dict(top_p=0.6),
            dict(temperature=1.7, top_k=4, top_p=0.8),
        ]
    ):
        expected = _reference_probs(row, **kwargs)
        ids = np.asarray(student.call("sampling.sample", logits, seed=100 + seed, **kwargs))
        assert_shape(ids, (N_DRAWS,), f"sample(**{kwargs})")
        _assert_draws_follow(ids, expected, f"sample({', '.join(f'{k}={v}' for k, v in kwargs.items())})")


def _fakes():
    """Returns the tiny models of these tests (a probe helper: it runs where the student's code runs)."""
    import keras
    import tensorflow as tf

    vocab = 7

    def next_token_logits(total):
        return 10.0 * tf.one_hot((3 * total + 1) % vocab, vocab)

    class BigramLM(keras.Model):
        """logits[b, t] = table[tokens[b, t]]: the next token depends only on the current one."""

        def __init__(self, table):
            super().__init__()
            self.table = tf.constant(table, dtype=tf.float32)

        def call(self, tokens):
            return tf.gather(self.table, tf.cast(tokens, tf.int32))

    class WindowLM(keras.Model):
        """A causal model whose favourite next token is a function of the sum of the tokens it reads."""

        def __init__(self, context_length=None, in_config=False):
            super().__init__()
            if context_length is not None and in_config:
                self.config = type("Config", (), {"context_length": context_length})()
            elif context_length is not None:
                self.context_length = context_length
            self.limit = context_length

        def call(self, tokens):
            return next_token_logits(tf.cumsum(tf.cast(tokens, tf.int32), axis=1))

    class CachedWindowLM(WindowLM):
        def __init__(self, context_length):
            super().__init__(context_length, in_config=True)

        def prefill(self, tokens):
            tokens = tf.cast(tokens, tf.int32)
            assert tokens.shape[1] <= self.limit, f"prefill got {tokens.shape[1]} tokens, more than the cache holds"
            totals = tf.cumsum(tokens, axis=1)
            return next_token_logits(totals), (totals[:, -1], int(tokens.shape[1]))

        def decode_step(self, next_ids, cache):
            total, length = cache
            assert length < self.limit, "decode_step called on a full cache: re-read a cropped context instead"
            total = total + tf.cast(next_ids, tf.int32)[:, 0]
            return next_token_logits(total)[:, None, :], (total, length + 1)

    return {"bigram": BigramLM, "window": WindowLM, "cached": CachedWindowLM}


def generate_with(kind, model_args, *args, **kwargs):
    """Probe: generate() with a fake model of `_fakes()`; returns what it returned."""
    from assignment import sampling

    model = _fakes()[kind](*model_args)
    return sampling.generate(model, *args, **kwargs)


def _generate(student, kind, model_args, *args, **kwargs):
    return np.asarray(student.run(generate_with, kind, model_args, *args, uses=(_fakes,), **kwargs))


def _value_error(student, kind, model_args, *args, **kwargs):
    """The message of the ValueError generate() raised (fails the test if it raised none)."""
    error = student.error(generate_with, kind, model_args, *args, uses=(_fakes,), **kwargs)
    assert error is not None and error.type_name == "ValueError", (
        f"generate(..., {kwargs}) must raise a ValueError; got {error or 'no error'}"
    )
    return error.message


@pytest.mark.points(1)
def test_generate_greedy_decoding_and_seeds(student):
    table = np.array(
        [[0.0, 2.0, 1.0, 0.5], [0.1, 0.0, 0.3, 0.9], [1.5, 0.2, 0.0, 0.1], [0.0, 0.0, 2.0, 0.1]], dtype=np.float32
    )  # argmax chain: 0 -> 1 -> 3 -> 2 -> 0 -> ...
    expected = [0, 1, 3, 2, 0, 1, 3]
    for kwargs in (dict(temperature=0), dict(greedy=True), dict(greedy=True, top_k=2, top_p=0.5)):
        out = _generate(student, "bigram", [table], [0], max_new_tokens=6, **kwargs)
        assert out.tolist() == expected, f"generate([0], 6, **{kwargs}) must follow the argmax: {expected}, got {out}"
    prompt = np.zeros((50, 1), dtype=np.int32)
    a = _generate(student, "bigram", [table], prompt, 8, seed=5)
    b = _generate(student, "bigram", [table], prompt, 8, seed=5)
    assert np.array_equal(a, b), "generate with the same seed must give the same output"
    c = _generate(student, "bigram", [table], prompt, 8)
    d = _generate(student, "bigram", [table], prompt, 8)
    assert not np.array_equal(c, d), "generate without a seed must give different outputs from call to call"
    assert re.search("temperature", _value_error(student, "bigram", [table], [0], 3, temperature=-1.0))
    assert re.search("top_k|k", _value_error(student, "bigram", [table], [0], 3, top_k=0))


VOCAB = 7


def _expected(prompt, n, window):
    seqs = [list(row) for row in prompt]
    for _ in range(n):
        for seq in seqs:
            seq.append((3 * sum(seq if window is None else seq[-window:]) + 1) % VOCAB)
    return seqs


def _expected_cached(prompt, n, context):
    """The greedy continuation with a KV cache of `context` positions that, once full, is prefilled again with the
    last (context + 1) // 2 tokens: the window read grows from there one token a step (see sampling._CachedReader)."""
    seqs = [list(row) for row in prompt]
    window = min(len(seqs[0]), context)
    for step in range(n):
        if step > 0:
            window = window + 1 if window < context else (context + 1) // 2
        for seq in seqs:
            seq.append((3 * sum(seq[-window:]) + 1) % VOCAB)
    return seqs


@pytest.mark.points(1)
def test_generate_crops_to_the_context_length_and_falls_back_when_the_cache_is_full(student):
    prompt = np.array([[1, 2, 3, 4, 5, 6, 0, 2], [4, 0, 6, 1, 1, 2, 3, 5]], dtype=np.int32)
    for model_args, window in [([], None), ([4], 4), ([4, True], 4)]:
        out = _generate(student, "window", model_args, prompt, max_new_tokens=6, greedy=True)
        assert out.tolist() == _expected(prompt.tolist(), 6, window), (
            f"generate with a plain model (context length {window}) must re-read the context cropped to its last "
            f"{window} tokens at each step"
        )
    for prompt_len in (3, 8):
        out = _generate(student, "cached", [5], prompt[:, :prompt_len], max_new_tokens=7, greedy=True)
        assert out.tolist() == _expected_cached(prompt[:, :prompt_len].tolist(), 7, 5), (
            f"a cached model with context_length 5 and a prompt of {prompt_len} tokens must give the same tokens "
            "as full recomputation on the window its cache holds: the whole sequence while it fits, then, once the "
            "cache is full, the last 3 tokens prefilled again and one more token a step"
        )
    assert "prompt_ids" in _value_error(student, "window", [4], np.zeros((2, 0), dtype=np.int32), 3)
