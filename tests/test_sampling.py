"""Part 3 (20 points with the hidden tests): greedy, temperature, top-k, top-p, sample and generate.

Filters are checked on hand-made logits against the exact kept sets; `sample` is checked by drawing 20,000 tokens
and comparing their frequencies with the exact filtered distribution (a chi-square test that a correct
implementation fails with probability below one in a million); `generate` is checked with tiny models defined
here, one per branch of the generation protocol (the docstring of `sampling.generate`).
"""

import math
import re

import numpy as np
import pytest
from checks import assert_shape

INF = float("inf")
N_DRAWS = 20_000  # draws per statistical test: enough to see a 2% shift in one token's probability


# ---------------------------------------------------------------------------------------------------------------
# Independent references
# ---------------------------------------------------------------------------------------------------------------


def _softmax(z):
    """Returns softmax of a 1-D float array in float64; -inf entries get probability exactly 0."""
    z = np.asarray(z, dtype=np.float64)
    finite = np.isfinite(z)
    e = np.where(finite, np.exp(z - np.max(z[finite])), 0.0)
    return e / e.sum()


def _reference_probs(logits, temperature=1.0, top_k=None, top_p=None):
    """Returns the exact distribution `sample` draws from, for one row of logits (NumPy, float64)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    keep = np.isfinite(z)
    if top_k is not None:
        keep &= z >= np.sort(z)[::-1][min(top_k, len(z)) - 1]
    if top_p is not None and top_p < 1:
        probs = _softmax(np.where(keep, z, -INF))
        order = np.argsort(-probs, kind="stable")
        mass_before = np.cumsum(probs[order]) - probs[order]
        nucleus = np.zeros(len(z), dtype=bool)
        nucleus[order[mass_before < top_p]] = True
        keep &= nucleus
    return _softmax(np.where(keep, z, -INF))


def _chi2_critical(df, alpha=1e-6):
    """Returns x such that P(X > x) = alpha for X ~ chi-square with `df` (integer) degrees of freedom.

    The survival function of chi-square has a closed form for integer df (with h = x / 2):
      even df: exp(-h) * sum_{i < df/2} h^i / i!
      odd df:  erfc(sqrt(h)) + exp(-h) * sum_{i < (df-1)/2} h^(i+1/2) / Gamma(i + 3/2)
    It decreases in x, so bisection inverts it. This gives 23.928 for df=1, 27.631 for df=2 (= -2 ln 1e-6),
    30.665 for df=3, the values of printed tables (and of scipy.stats.chi2.isf(1e-6, df)).
    """

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
    """Fails unless `draws` (1-D ints) look like draws from `expected` (probabilities over the vocabulary).

    A token with probability 0 must never appear; on the others a chi-square goodness-of-fit test at level 1e-6
    (a correct implementation fails it with probability below one in a million, whatever its random numbers).
    """
    draws = np.asarray(draws).reshape(-1).astype(np.int64)
    expected = np.asarray(expected, dtype=np.float64)
    n, vocab = len(draws), len(expected)
    assert draws.min() >= 0 and draws.max() < vocab, (
        f"{what}: drawn ids must lie in [0, {vocab}); got ids from {draws.min()} to {draws.max()}"
    )
    counts = np.bincount(draws, minlength=vocab)
    kept = expected > 0
    bad = np.flatnonzero(~kept & (counts > 0))
    assert bad.size == 0, (
        f"{what}: token {bad[0]} was drawn {counts[bad[0]]} times out of {n}, but it is filtered out (probability 0). "
        f"The tokens that may be drawn are {np.flatnonzero(kept).tolist()}"
    )
    df = int(kept.sum()) - 1
    if df == 0:
        return
    statistic = float(np.sum((counts[kept] - n * expected[kept]) ** 2 / (n * expected[kept])))
    critical = _chi2_critical(df)
    assert statistic < critical, (
        f"{what}: the sampled frequencies do not follow the exact filtered distribution "
        f"(chi-square = {statistic:.1f} > {critical:.1f}, df = {df}, false-alarm rate 1e-6).\n"
        f"  observed: {np.round(counts / n, 4).tolist()}\n  expected: {np.round(expected, 4).tolist()}\n"
        "Check the order (temperature, then top-k, then top-p on what is left) and that the temperature divides."
    )


def _assert_filtered(filtered, logits, kept, what):
    """Fails unless `filtered` keeps exactly the entries where `kept` is True (unchanged) and has -inf elsewhere."""
    filtered = np.asarray(filtered, dtype=np.float64)
    logits = np.asarray(logits, dtype=np.float64)
    kept = np.asarray(kept, dtype=bool)
    assert_shape(filtered, logits.shape, what)
    for b in range(logits.shape[0]):
        want = np.flatnonzero(kept[b]).tolist()
        got = np.flatnonzero(np.isfinite(filtered[b])).tolist()
        dropped = np.flatnonzero(~kept[b])
        wrong = dropped[filtered[b, dropped] != -INF]
        assert wrong.size == 0, (
            f"{what}: a filtered entry must be -inf (so its probability is exactly 0); row {b}, token {wrong[0]} "
            f"is {filtered[b, wrong[0]]}"
        )
        assert got == want, f"{what}: row {b} = {np.round(logits[b], 4).tolist()} must keep tokens {want}; got {got}"
        np.testing.assert_allclose(
            filtered[b, kept[b]],
            logits[b, kept[b]],
            rtol=1e-6,
            err_msg=f"{what}: kept entries must keep their logits unchanged (row {b})",
        )


# ---------------------------------------------------------------------------------------------------------------
# greedy and temperature
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.points(1)
@pytest.mark.clause(
    "sampling.greedy: Returns the most probable token of each row: int32 tensor of shape `(B,)`.",
    "sampling.greedy: When a row has several maximal logits, any of them is a valid answer.",
)
def test_greedy_picks_the_argmax_of_each_row(student):
    logits = np.array(
        [
            [0.1, 0.5, -1.0, 0.2, 2.0],
            [3.0, 1.0, 2.9, -3.0, 0.0],
            [-2.0, -1.5, -0.5, -3.0, -1.0],
            [1.0, 2.0, 2.0, 0.5, 2.0],  # a tie: 1, 2 and 4 are all valid answers
        ],
        dtype=np.float32,
    )
    ids = np.asarray(student.call("sampling.greedy", logits))
    assert_shape(ids, (4,), "greedy(logits) for logits of shape (4, 5): one id per row, argmax over the vocabulary")
    assert ids.dtype == np.int32, (
        f"greedy must return int32 ids (the dtype of the token ids it is concatenated with), got dtype {ids.dtype}: "
        "tf.argmax returns int64 unless you pass output_type=tf.int32"
    )
    assert ids[:3].tolist() == [4, 0, 2], f"the largest logit of each row is at [4, 0, 2]; got {ids[:3].tolist()}"
    assert ids[3] in (1, 2, 4), f"row [1, 2, 2, 0.5, 2] ties at tokens 1, 2 and 4: any of them, got {ids[3]}"
    one = np.asarray(student.call("sampling.greedy", logits[2:3]))
    assert_shape(
        one,
        (1,),
        "greedy(logits) for logits of shape (1, 5): a batch of one row still gives one id per row, shape (1,), "
        "not a scalar (no squeeze)",
    )
    assert one.tolist() == [2], f"the largest logit of row [-2, -1.5, -0.5, -3, -1] is at 2; got {one.tolist()}"


@pytest.mark.points(1)
@pytest.mark.clause(
    "sampling.apply_temperature: Returns the logits divided by `temperature`: float32 tensor of shape `(B, V)`.",
    "sampling.apply_temperature: `temperature = 1` changes nothing",
    "sampling.apply_temperature: as it goes to 0 the distribution `softmax(logits / temperature)` approaches one-hot",
    "sampling.apply_temperature: as it grows it approaches uniform",
    "sampling.apply_temperature: Filtered (`-inf`) entries stay `-inf`.",
)
def test_temperature_divides_logits_one_is_identity_and_limits(student):
    logits = np.array([[1.0, 2.0, 0.5, -1.0], [0.0, 0.7, 3.0, -INF]], dtype=np.float32)

    def dist(temperature):
        out = np.asarray(student.call("sampling.apply_temperature", logits, temperature))
        assert_shape(out, (2, 4), f"apply_temperature(logits, {temperature})")
        assert out[1, 3] == -INF, (
            f"apply_temperature(logits, {temperature}): a filtered logit (-inf) must stay -inf, got {out[1, 3]}"
        )
        return np.stack([_softmax(row) for row in out.astype(np.float64)])

    out = np.asarray(student.call("sampling.apply_temperature", logits.astype(np.float64), 2.0))
    assert out.dtype == np.float32, (
        f"apply_temperature must return float32 logits, also for float64 input; got dtype {out.dtype} "
        "(check_logits converts them)"
    )

    exact = lambda t: np.stack([_softmax(row / t) for row in logits.astype(np.float64)])  # noqa: E731
    np.testing.assert_allclose(
        dist(1.0), exact(1.0), atol=1e-6, err_msg="temperature = 1 must leave the distribution unchanged"
    )
    np.testing.assert_allclose(
        dist(2.0),
        exact(2.0),
        atol=1e-6,
        err_msg="temperature 2 must divide the logits by 2 (softmax(logits / 2)): "
        "divide the logits, not the probabilities, and do not multiply",
    )
    np.testing.assert_allclose(
        dist(0.5), exact(0.5), atol=1e-6, err_msg="temperature 0.5 must divide the logits by 0.5 (sharper distribution)"
    )
    np.testing.assert_allclose(
        dist(1e-3),
        [[0, 1, 0, 0], [0, 0, 1, 0]],
        atol=1e-6,
        err_msg="as temperature -> 0 the distribution must approach one-hot on the argmax",
    )
    np.testing.assert_allclose(
        dist(1e4),
        [[0.25] * 4, [1 / 3, 1 / 3, 1 / 3, 0]],
        atol=1e-3,
        err_msg="as temperature grows the distribution must approach uniform over the "
        "tokens not filtered out (a -inf logit stays -inf)",
    )


# ---------------------------------------------------------------------------------------------------------------
# top-k and top-p
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.points(1)
@pytest.mark.clause(
    "sampling.top_k_filter: every token below the k-th largest logit of its row set to `-inf`: shape `(B, V)`",
    "sampling.top_k_filter: a token tied with the k-th one is kept too",
    "sampling.top_k_filter: logits [1, 3, 2, 2] with k = 2 keep [-inf, 3, 2, 2]",
    "sampling.top_k_filter: Kept entries are returned unchanged.",
)
def test_top_k_keeps_ties_at_the_kth_value(student):
    logits = np.array(
        [
            [1.0, 3.0, 2.0, 2.0, 0.0],  # 2nd largest is 2, tied: keep 3, 2, 2
            [5.0, 5.0, 5.0, 1.0, 0.0],  # 2nd largest is 5: keep all three 5s
            [0.5, -1.0, 2.0, 0.1, 0.3],  # no tie: keep 2.0 and 0.5
        ],
        dtype=np.float32,
    )
    kept = [[0, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 0, 1, 0, 0]]
    _assert_filtered(
        student.call("sampling.top_k_filter", logits, 2),
        logits,
        kept,
        "top_k_filter(logits, k=2) (keep every logit >= the 2nd largest, ties included)",
    )


@pytest.mark.points(1)
@pytest.mark.clause("sampling.top_k_filter: `k` larger than V keeps every token")
def test_top_k_one_keeps_the_max_and_k_above_vocab_keeps_all(student):
    logits = np.array([[0.2, 1.5, -0.3, 1.4], [2.0, 0.0, 2.0, -1.0]], dtype=np.float32)
    _assert_filtered(
        student.call("sampling.top_k_filter", logits, 1),
        logits,
        [[0, 1, 0, 0], [1, 0, 1, 0]],
        "top_k_filter(logits, k=1) (only the largest logit, and any tie with it)",
    )
    _assert_filtered(
        student.call("sampling.top_k_filter", logits, 4), logits, np.ones((2, 4)), "top_k_filter(logits, k=V=4)"
    )
    _assert_filtered(
        student.call("sampling.top_k_filter", logits, 10),
        logits,
        np.ones((2, 4)),
        "top_k_filter(logits, k=10) with V=4 (k > V keeps every token)",
    )
    _assert_filtered(
        student.call("sampling.top_k_filter", logits[:1], 2),
        logits[:1],
        [[0, 1, 0, 1]],
        "top_k_filter(one row, k=2) with V=4: k is compared with the vocabulary size V (the last axis), not with "
        "the batch size B=1",
    )


@pytest.mark.points(1)
@pytest.mark.clause(
    "sampling.top_p_filter: every token outside the nucleus of mass `p` set to `-inf`: shape `(B, V)`",
    "sampling.top_p_filter: A token is kept when the total probability of the tokens before it is below `p`.",
    "sampling.top_p_filter: the token whose probability crosses `p` is kept",
    "sampling.top_p_filter: With p = 0.7 the kept tokens are {0.45, 0.3}; with p = 0.8 they are {0.45, 0.3, 0.15}.",
    "sampling.top_p_filter: Kept entries are returned unchanged.",
)
def test_top_p_keeps_the_token_that_crosses_p(student):
    probs = np.array([0.3, 0.1, 0.15, 0.45])
    # Sorted: 0.45, 0.3, 0.15, 0.1; mass before each: 0, 0.45, 0.75, 0.9. The rows are the same distribution
    # (shifting logits changes nothing), in another order, so a mask left in sorted order is caught.
    logits = np.stack([np.log(probs), np.log(probs) + 10.0, np.log(probs[[3, 2, 1, 0]])]).astype(np.float32)
    _assert_filtered(
        student.call("sampling.top_p_filter", logits, 0.7),
        logits,
        [[1, 0, 0, 1], [1, 0, 0, 1], [1, 0, 0, 1]],
        "top_p_filter(logits, p=0.7) on probabilities [0.3, 0.1, 0.15, 0.45] (keep {0.45, 0.3}: "
        "0.3 is kept because the mass before it, 0.45, is below 0.7)",
    )
    _assert_filtered(
        student.call("sampling.top_p_filter", logits, 0.8),
        logits,
        [[1, 0, 1, 1], [1, 0, 1, 1], [1, 1, 0, 1]],
        "top_p_filter(logits, p=0.8) on probabilities [0.3, 0.1, 0.15, 0.45] (keep {0.45, 0.3, 0.15}: "
        "the mass before 0.15 is 0.75 < 0.8)",
    )
    _assert_filtered(
        student.call("sampling.top_p_filter", logits, 0.4),
        logits,
        [[0, 0, 0, 1], [0, 0, 0, 1], [1, 0, 0, 0]],
        "top_p_filter(logits, p=0.4) on probabilities [0.3, 0.1, 0.15, 0.45] (keep {0.45})",
    )


@pytest.mark.points(1)
@pytest.mark.clause(
    "sampling.top_p_filter: the most probable token is always kept",
    "sampling.top_p_filter: `p = 1` keeps every token",
)
def test_top_p_one_keeps_all_and_the_most_probable_is_always_kept(student):
    logits = np.array(
        [
            [0.3, -0.2, 0.1, 0.0, -0.4, 0.2, -0.1, 0.05],  # flat: the most probable token holds about 16%
            [2.0, -1.0, 0.5, -3.0, 1.0, -2.0, 0.0, -0.5],
        ],
        dtype=np.float32,
    )
    _assert_filtered(
        student.call("sampling.top_p_filter", logits, 1.0), logits, np.ones((2, 8)), "top_p_filter(logits, p=1)"
    )
    peaked = np.array([[20.0, 0.0, -5.0, -20.0, -40.0, -60.0]], dtype=np.float32)
    _assert_filtered(
        student.call("sampling.top_p_filter", peaked, 1.0),
        peaked,
        np.ones((1, 6)),
        "top_p_filter(logits, p=1) on a peaked row: the first token holds all but 2e-9 of the mass, so a float32 "
        "cumulative sum is already 1.0 after it; p = 1 must keep every token all the same (return early)",
    )
    _assert_filtered(
        student.call("sampling.top_p_filter", logits, 0.01),
        logits,
        np.eye(8)[[0, 0]],
        "top_p_filter(logits, p=0.01) (the most probable token is always kept, even when it holds more than p)",
    )


# ---------------------------------------------------------------------------------------------------------------
# sample
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.points(1)
@pytest.mark.clause(
    "sampling.sample: divide by `temperature`; keep the `top_k` best tokens (when given); keep the nucleus of mass",
    "sampling.top_p_filter: `-inf` entries have probability 0",
)
def test_sample_applies_temperature_then_top_k_then_top_p_on_what_is_left(student):
    # top_k=2 leaves 0.4 and 0.3, renormalised to 0.57 and 0.43; top_p=0.5 on that keeps only the 0.4 token.
    # (top-p on the full distribution, or before top-k, would keep the 0.3 token too.) Row r holds the
    # distribution rotated by r, so its 0.4 token is token r % 4: the answer differs from row to row.
    rows = np.arange(2000)
    logits = np.stack([np.roll(np.log([0.4, 0.3, 0.2, 0.1]), r % 4) for r in range(4)])[rows % 4].astype(np.float32)
    ids = np.asarray(student.call("sampling.sample", logits, top_k=2, top_p=0.5, seed=0))
    assert_shape(ids, (2000,), "sample(logits) for logits of shape (2000, 4)")
    wrong = np.flatnonzero(ids != rows % 4)
    assert wrong.size == 0, (
        "sample(top_k=2, top_p=0.5) on probabilities [0.4, 0.3, 0.2, 0.1] (rotated by r in row r) must always draw "
        "the 0.4 token: top-k keeps 0.4 and 0.3, renormalised to 0.57 and 0.43, then top-p keeps 0.57 alone. "
        f"Row {wrong[0]} = {np.round(np.exp(logits[wrong[0]]), 2).tolist()} drew token {ids[wrong[0]]}: apply top-p "
        "after top-k, on the renormalised distribution"
    )
    # temperature 0.25 sharpens [0.5, 0.3, 0.2] to [0.87, 0.11, 0.02]: top_p=0.6 then keeps the 0.5 token alone.
    # (top-p before the temperature would keep the 0.3 token too.)
    logits = np.stack([np.roll(np.log([0.5, 0.3, 0.2]), r % 3) for r in range(3)])[rows % 3].astype(np.float32)
    ids = np.asarray(student.call("sampling.sample", logits, temperature=0.25, top_p=0.6, seed=0))
    assert_shape(ids, (2000,), "sample(logits) for logits of shape (2000, 3)")
    wrong = np.flatnonzero(ids != rows % 3)
    assert wrong.size == 0, (
        "sample(temperature=0.25, top_p=0.6) on probabilities [0.5, 0.3, 0.2] (rotated by r in row r) must always "
        "draw the 0.5 token: the temperature comes first and sharpens them to [0.87, 0.11, 0.02]. "
        f"Row {wrong[0]} drew token {ids[wrong[0]]}"
    )
    # top_k=3 leaves [0.4, 0.3, 0.2] / 0.9: the mass before the 0.2 token is 0.78 >= 0.75, so top_p=0.75 keeps
    # tokens 0 and 1, drawn with probabilities 4/7 and 3/7. (top-p on the full distribution would keep token 2: the
    # mass before it there is 0.7.)
    row = np.log([0.4, 0.3, 0.2, 0.1]).astype(np.float32)
    expected = _reference_probs(row, 1.0, top_k=3, top_p=0.75)
    assert np.flatnonzero(expected).tolist() == [0, 1]
    ids = np.asarray(student.call("sampling.sample", np.tile(row, (N_DRAWS, 1)), top_k=3, top_p=0.75, seed=3))
    assert_shape(ids, (N_DRAWS,), f"sample(logits) for logits of shape ({N_DRAWS}, 4)")
    _assert_draws_follow(ids, expected, "sample(top_k=3, top_p=0.75) on probabilities [0.4, 0.3, 0.2, 0.1]")


@pytest.mark.points(1)
@pytest.mark.clause(
    "sampling.sample: Returns one token drawn from each row: int32 tensor of shape `(B,)`.",
    "sampling.sample: The same seed gives the same draws on every call",
    "sampling.sample: without a seed, draws come from TensorFlow's global random state and differ from one call to",
    "sampling.sample: seed: integer or None.",
)
def test_sample_same_seed_same_draws_and_no_seed_differs(student):
    # Every call draws from the same exact distribution (temperature 0.7 on a fixed row), so the draws must follow
    # it, whatever their seed: repeating or differing is checked on draws that are right.
    row = np.array([1.0, 0.2, -0.5, 0.6, 0.0, -1.0, 0.4, 0.8, -0.2, 0.3], dtype=np.float32)
    expected = _reference_probs(row, 0.7)
    logits = np.tile(row, (N_DRAWS, 1))

    def draws(what, **kwargs):
        ids = np.asarray(student.call("sampling.sample", logits, temperature=0.7, **kwargs))
        assert_shape(ids, (N_DRAWS,), f"{what} for logits of shape ({N_DRAWS}, 10)")
        assert ids.dtype == np.int32, f"sample must return int32 ids, got dtype {ids.dtype}"
        _assert_draws_follow(ids, expected, f"{what} (temperature 0.7)")
        return ids

    first = draws("sample(logits, seed=7)", seed=7)
    again = draws("sample(logits, seed=7), called again", seed=7)
    assert np.array_equal(first, again), (
        "the same seed must give the same draws on every call: derive the randomness from the seed alone "
        "(tf.random.stateless_categorical with seed=[seed, 0], or a generator created from the seed)"
    )
    other = draws("sample(logits, seed=8)", seed=8)
    assert not np.array_equal(first, other), "different seeds must give different draws"
    zero = draws("sample(logits, seed=0)", seed=0)
    assert np.array_equal(zero, draws("sample(logits, seed=0), called again", seed=0)), (
        "seed=0 is a seed like any other: two calls with seed=0 must give the same draws. "
        "Test `seed is None`, not `if seed:` (0 is falsy)"
    )
    a, b = draws("sample(logits) without a seed"), draws("sample(logits) without a seed, called again")
    assert not np.array_equal(a, b), "without a seed, two calls must give different draws"
    # top_k=1 leaves only the largest logit of each row: a seeded draw must be the argmax, whatever the seed.
    varied = np.stack([np.roll(row, r) for r in range(10)])  # row r has its largest logit at token r
    ids = np.asarray(student.call("sampling.sample", varied, top_k=1, seed=5))
    assert ids.tolist() == list(range(10)), (
        f"sample(top_k=1, seed=5) must draw the largest logit of each row, tokens {list(range(10))}; got {ids.tolist()}"
    )
    one = np.asarray(student.call("sampling.sample", varied[3:4], top_k=1, seed=5))
    assert_shape(
        one,
        (1,),
        "sample(logits, top_k=1, seed=5) for logits of shape (1, 10): a batch of one row still gives one id per row, "
        "shape (1,), not a scalar (no squeeze)",
    )
    assert one.tolist() == [3], f"sample(top_k=1) on one row whose largest logit is token 3 gave {one.tolist()}"


def seeded_then_unseeded(logits, temperature):
    """Probe: twice, a seeded call of `sample` and then an unseeded one; returns the four draws, in call order."""
    import numpy as np

    from assignment import sampling

    draws = []
    for _ in range(2):
        draws.append(np.asarray(sampling.sample(logits, temperature, seed=7)))
        draws.append(np.asarray(sampling.sample(logits, temperature)))
    return draws


@pytest.mark.points(0.5)
@pytest.mark.clause("sampling.sample: without a seed, draws come from TensorFlow's global random state and differ")
def test_sample_with_a_seed_leaves_the_global_random_state_alone(student):
    row = np.array([0.9, -0.3, 0.5, 0.0, 1.4, -1.1, 0.2, 0.7], dtype=np.float32)
    temperature = 1.3
    expected = _reference_probs(row, temperature)
    logits = np.tile(row, (N_DRAWS, 1))
    draws = student.run(seeded_then_unseeded, logits, temperature)
    names = ["the first seeded call", "the first unseeded call", "the second seeded call", "the second unseeded call"]
    for ids, name in zip(draws, names):
        assert_shape(ids, (N_DRAWS,), f"sample(logits) for logits of shape ({N_DRAWS}, 8), {name}")
        _assert_draws_follow(ids, expected, f"sample(logits, temperature={temperature}), {name}")
    seeded_1, first, seeded_2, second = draws
    assert np.array_equal(seeded_1, seeded_2), "sample(logits, seed=7) must give the same draws on every call"
    assert not np.array_equal(first, second), (
        "after sample(logits, seed=7), two unseeded calls gave the same draws: the seeded call reset TensorFlow's "
        "global random state (tf.random.set_seed?), so every later call without a seed repeats itself. A seed must "
        "only decide this call's draws: tf.random.stateless_categorical(logits, 1, seed=[seed, 0])"
    )


@pytest.mark.points(1.5)
@pytest.mark.clause(
    "sampling.sample: divide by `temperature`; keep the `top_k` best tokens (when given); keep the nucleus of mass",
    "sampling.sample: A filtered token is never drawn.",
)
def test_sample_matches_the_exact_filtered_distribution(student):
    row = np.array([2.0, 0.4, 1.1, -0.3, 1.6, 0.9, -1.2, 1.3], dtype=np.float32)
    temperature, top_k, top_p = 0.8, 5, 0.75
    expected = _reference_probs(row, temperature, top_k, top_p)
    # temperature 0.8 and top-k 5 leave 0.385 (token 0), 0.233 (4), 0.160 (7), 0.125 (2), 0.097 (5);
    # the mass before token 2 is 0.778 >= 0.75, so top-p keeps {0, 4, 7}: token 7 crosses 0.75.
    assert np.flatnonzero(expected).tolist() == [0, 4, 7]
    logits = np.tile(row, (N_DRAWS, 1))
    ids = np.asarray(
        student.call("sampling.sample", logits, temperature=temperature, top_k=top_k, top_p=top_p, seed=2024)
    )
    assert_shape(ids, (N_DRAWS,), f"sample(logits) for logits of shape ({N_DRAWS}, 8)")
    _assert_draws_follow(ids, expected, f"sample(temperature={temperature}, top_k={top_k}, top_p={top_p})")


# ---------------------------------------------------------------------------------------------------------------
# generate, with tiny models: one per branch of the generation protocol
# ---------------------------------------------------------------------------------------------------------------


def _fakes():
    """Returns the tiny models generate() is checked with, one per branch of the generation protocol (a probe helper:
    it runs where the student's code runs, so it imports Keras itself)."""
    import keras
    import tensorflow as tf

    vocab = 7

    def next_token_logits(total, steps=0):
        """Logits `(..., V)` whose clear favourite is (3 * total + 1 + 2 * steps) mod V: `total` a running sum of
        tokens, `steps` how many times the model was handed back the state (or cache) it returned."""
        return 10.0 * tf.one_hot((3 * total + 1 + 2 * steps) % vocab, vocab)

    class BigramLM(keras.Model):
        """Next-token logits depend only on the current token: logits[b, t] = table[tokens[b, t]]."""

        def __init__(self, table):
            super().__init__()
            self.table = tf.constant(table, dtype=tf.float32)  # (V, V)

        def call(self, tokens):
            return tf.gather(self.table, tf.cast(tokens, tf.int32))  # (B, T, V)

    class RecurrentFake(keras.Model):
        """A recurrent model whose state is (running sum of the tokens read, how many calls were given a state).
        The favourite next token depends on both, so the tokens show whether the state was carried: re-reading the
        context, dropping the state or passing a stale one favours other tokens."""

        def call(self, tokens, states=None, return_state=False, training=False):
            tokens = tf.cast(tokens, tf.int32)
            batch = tf.shape(tokens)[0]
            if states is None:
                total, steps = tf.zeros([batch], tf.int32), tf.zeros([batch], tf.int32)
            else:
                total, steps = states[0], states[1] + 1
            totals = total[:, None] + tf.cumsum(tokens, axis=1)  # (B, T)
            logits = next_token_logits(totals, steps[:, None])  # (B, T, V)
            return (logits, (totals[:, -1], steps)) if return_state else logits

    class CachedFake(keras.Model):
        """A model with the KV-cache protocol: prefill reads the prompt, decode_step one token with the cache, which
        holds (running sum, decode steps so far). The favourite next token depends on both, so the tokens show
        whether the cache was used: re-reading with `call`, prefilling again or passing a stale cache favours other
        tokens."""

        def __init__(self, context_length):
            super().__init__()
            self.config = type("Config", (), {"context_length": context_length})()

        def call(self, tokens):
            return next_token_logits(tf.cumsum(tf.cast(tokens, tf.int32), axis=1))  # (B, T, V)

        def prefill(self, tokens):
            tokens = tf.cast(tokens, tf.int32)
            assert tokens.shape[1] <= self.config.context_length, (
                f"prefill got {tokens.shape[1]} tokens but the cache holds context_length="
                f"{self.config.context_length}: crop the prompt"
            )
            totals = tf.cumsum(tokens, axis=1)  # (B, T)
            return next_token_logits(totals), {"total": totals[:, -1], "steps": 0, "length": int(tokens.shape[1])}

        def decode_step(self, next_ids, cache):
            next_ids = tf.cast(next_ids, tf.int32)
            assert next_ids.shape[1:] == (1,), (
                f"decode_step takes next_ids of shape (B, 1); got {tuple(next_ids.shape)}"
            )
            assert cache["length"] < self.config.context_length, (
                "decode_step was called with a full cache: once context_length tokens are cached, re-read a "
                "cropped context instead"
            )
            total, steps = cache["total"] + next_ids[:, 0], cache["steps"] + 1  # (B,), int
            logits = next_token_logits(total, steps)[:, None, :]  # (B, 1, V)
            return logits, {"total": total, "steps": steps, "length": cache["length"] + 1}

    return {"bigram": BigramLM, "recurrent": RecurrentFake, "cached": CachedFake}


def generate_with(kind, model_args, *args, **kwargs):
    """Probe: generate() with a fake model of `_fakes()`; returns what it returned."""
    from assignment import sampling

    model = _fakes()[kind](*model_args)
    return sampling.generate(model, *args, **kwargs)


def _generate(student, kind, model_args, *args, **kwargs):
    """Returns the output of generate() with the fake model `kind`, as an array."""
    return np.asarray(student.run(generate_with, kind, model_args, *args, uses=(_fakes,), **kwargs))


# Each token may be followed only by the tokens listed; the others have logit -inf.
SUCCESSORS = {
    0: {1: 0.5, 2: 0.0},
    1: {2: 0.3, 3: -0.2, 4: 0.1},
    2: {0: 0.0, 5: 0.4},
    3: {3: 0.2, 4: 0.0},
    4: {0: -0.3, 1: 0.3, 5: 0.0},
    5: {2: 0.1, 3: 0.0},
}


def _table(successors, vocab):
    table = np.full((vocab, vocab), -INF, dtype=np.float32)
    for token, nexts in successors.items():
        for nxt, logit in nexts.items():
            table[token, nxt] = logit
    return table


def _argmax_chain(table, prompt, max_new_tokens):
    """Returns each row of `prompt` followed by `max_new_tokens` argmax successors in the bigram `table`."""
    seqs = [list(row) for row in np.atleast_2d(prompt)]
    for seq in seqs:
        for _ in range(max_new_tokens):
            seq.append(int(np.argmax(table[seq[-1]])))
    return seqs


@pytest.mark.points(1)
def test_generate_returns_prompt_plus_new_tokens_the_model_allows(student):
    table = _table(SUCCESSORS, 6)
    out = _generate(student, "bigram", [table], np.array([2, 4], dtype=np.int32), max_new_tokens=5, seed=1)
    assert_shape(out, (7,), "generate(model, prompt of shape (2,), max_new_tokens=5)")
    assert out[:2].tolist() == [2, 4], f"the output must start with the prompt [2, 4]; got {out.tolist()}"

    prompt = np.array([[0, 1], [5, 3], [2, 2]], dtype=np.int32)
    out = _generate(student, "bigram", [table], prompt, max_new_tokens=12, seed=2)
    assert_shape(out, (3, 14), "generate(model, prompt of shape (3, 2), max_new_tokens=12)")
    assert np.array_equal(out[:, :2], prompt), f"each row must start with its prompt; got {out[:, :2].tolist()}"
    for row in out:
        for a, b in zip(row[1:-1], row[2:]):
            assert b in SUCCESSORS[a], (
                f"generated {b} after {a}, which the model gives probability 0: row {row.tolist()}. "
                "Each new token must be drawn from the logits of the last position"
            )
    out = _generate(student, "bigram", [table], prompt, max_new_tokens=8, top_k=1, seed=3)
    expected = _argmax_chain(table, prompt, 8)
    assert out.tolist() == expected, (
        f"generate(top_k=1) keeps only the most probable successor at each step: expected {expected}, "
        f"got {out.tolist()}"
    )
    unchanged = _generate(student, "bigram", [table], prompt, max_new_tokens=0)
    assert np.array_equal(unchanged, prompt), "max_new_tokens=0 must return the prompt unchanged"
    error = student.error(generate_with, "bigram", [table], prompt, max_new_tokens=-1, uses=(_fakes,))
    assert error is not None and error.type_name == "ValueError" and "max_new_tokens" in error.message, (
        f"generate(max_new_tokens=-1) must raise a ValueError naming max_new_tokens; got {error or 'no error'}"
    )


@pytest.mark.points(1)
def test_generate_first_token_follows_the_models_filtered_distribution(student):
    table = np.array(
        [
            [3.0, -2.0, -2.0, -2.0, 3.0],  # after token 0 (the first prompt token, which must not matter)
            [1.0, 0.2, -0.5, 1.6, 0.7],  # after token 1 (the last prompt token)
            [0.0, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.0],
        ],
        dtype=np.float32,
    )
    temperature, top_p = 1.5, 0.85
    expected = _reference_probs(table[1], temperature, top_p=top_p)
    assert np.flatnonzero(expected).tolist() == [0, 1, 3, 4]
    prompt = np.tile(np.array([[0, 1]], dtype=np.int32), (N_DRAWS, 1))
    out = _generate(student, "bigram", [table], prompt, 1, temperature=temperature, top_p=top_p, seed=11)
    assert_shape(out, (N_DRAWS, 3), f"generate(model, prompt of shape ({N_DRAWS}, 2), max_new_tokens=1)")
    _assert_draws_follow(
        out[:, 2],
        expected,
        f"the first token of generate(temperature={temperature}, top_p={top_p}) after prompt [0, 1]",
    )


@pytest.mark.points(1)
def test_generate_stops_each_row_at_stop_id(student):
    # The favourite successors chain 5 -> 4 -> 0 -> 1 -> 2 -> 3 -> 0; the other listed successors are less probable,
    # and top_k=1 leaves only the favourite, so every step is decided.
    table = _table(
        {
            0: {0: 0.5, 1: 2.0},
            1: {0: 0.0, 2: 2.0, 5: 1.0},
            2: {1: 0.3, 3: 2.0},
            3: {0: 2.0, 4: 1.0},
            4: {0: 2.0, 2: 1.5},
            5: {1: 0.0, 3: 1.0, 4: 2.0},
        },
        6,
    )
    prompt = np.array([[5], [0], [2]], dtype=np.int32)
    out = _generate(student, "bigram", [table], prompt, max_new_tokens=10, stop_id=3, top_k=1, seed=0)
    expected = [[5, 4, 0, 1, 2, 3], [0, 1, 2, 3, 3, 3], [2, 3, 3, 3, 3, 3]]
    assert out.tolist() == expected, (
        "with top_k=1 (only the favourite successor) and stop_id=3 a row stops when it produces 3 (kept), later "
        "positions of that row are filled with 3, and generation ends once every row has stopped: "
        f"expected {expected}, got {out.tolist()}"
    )
    out = _generate(student, "bigram", [table], prompt, max_new_tokens=2, stop_id=3, top_k=1, seed=0)
    assert out.tolist() == [[5, 4, 0], [0, 1, 2], [2, 3, 3]], f"max_new_tokens=2 with stop_id=3: got {out.tolist()}"
    out = _generate(student, "bigram", [table], [2], max_new_tokens=10, stop_id=3, top_k=1, seed=0)
    assert out.tolist() == [2, 3], f"prompt [2] with stop_id=3 must give [2, 3]; got {out.tolist()}"
    out = _generate(student, "bigram", [table], prompt, max_new_tokens=10, top_k=1, seed=0)
    expected = _argmax_chain(table, prompt, 10)
    assert out.tolist() == expected, (
        f"without stop_id every row gets max_new_tokens new tokens: expected {expected}, got {out.tolist()}"
    )


VOCAB = 7


def _expected_stateful(prompt, max_new_tokens):
    """Returns the greedy continuation of the recurrent and cached fakes when generate reads the prompt once and then
    hands the model back its state (or cache) at every step: new token i is (3 * sum + 1 + 2 * i) mod V."""
    seqs = [list(row) for row in prompt]
    for i in range(max_new_tokens):
        for seq in seqs:
            seq.append((3 * sum(seq) + 1 + 2 * i) % VOCAB)
    return seqs


@pytest.mark.points(1)
def test_generate_reads_the_prompt_once_then_carries_the_recurrent_state(student):
    prompt = np.array([[1, 2, 3], [4, 0, 6]], dtype=np.int32)
    out = _generate(student, "recurrent", [], prompt, max_new_tokens=6, greedy=True)
    expected = _expected_stateful(prompt.tolist(), 6)
    assert out.tolist() == expected, (
        f"greedy generation with a recurrent model: expected {expected}, got {out.tolist()}. The model's state "
        "counts the calls it was handed back, so re-reading the context or dropping the state gives other tokens: "
        "read the prompt once, then one token a step with the state returned by "
        "model(tokens, states=..., return_state=True)"
    )


@pytest.mark.points(1)
def test_generate_uses_the_kv_cache_and_agrees_with_full_recomputation(student):
    prompt = np.array([[1, 2, 3], [4, 0, 6]], dtype=np.int32)
    out = _generate(student, "cached", [16], prompt, max_new_tokens=6, greedy=True)
    expected = _expected_stateful(prompt.tolist(), 6)
    assert out.tolist() == expected, (
        f"greedy generation with a cached model: expected {expected}, got {out.tolist()}. The model's cache counts "
        "its decode steps, so re-reading the context or prefilling again gives other tokens: prefill the prompt "
        "once, then feed decode_step the token just chosen and the cache returned by the previous call"
    )


# ---------------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------------


def _raises(error, names, value, what):
    """Fails unless `error` (what the call raised, or None) is a ValueError whose message names the parameter and
    quotes the value received.

    A name counts as a word of its own: `k` is found in "k=0" or "top_k must be..." but not in "mask".
    """
    assert error is not None, f"{what}: expected a ValueError, but the call returned normally"
    assert error.type_name == "ValueError", f"{what}: expected a ValueError, got {error}"
    message = error.message
    assert any(re.search(rf"(?<![A-Za-z]){name}(?![A-Za-z])", message) for name in names), (
        f"{what}: the ValueError must name the parameter ({' or '.join(names)}); got: {message!r}"
    )
    assert value.lower() in message.lower(), (
        f"{what}: the ValueError must quote the value received ({value}); got: {message!r}"
    )


@pytest.mark.points(1)
@pytest.mark.clause(
    "sampling.apply_temperature: ValueError: if `temperature <= 0`, or `logits` is not 2-D or holds a NaN.",
    "sampling.top_k_filter: ValueError: if `k` is not an integer >= 1, or `logits` is not 2-D or holds a NaN.",
    "sampling.top_p_filter: ValueError: if `p` is outside `(0, 1]`, or `logits` is not 2-D or holds a NaN.",
    "sampling.sample: ValueError: for a bad `temperature`, `top_k`, `top_p` or `seed`, or `logits` that are not 2-D",
)
def test_invalid_parameters_raise_value_error_naming_them(student):
    logits = np.array([[0.5, 1.0, -1.0], [0.0, 2.0, 1.0]], dtype=np.float32)
    # Legal values of the same arguments are accepted and give the right answer (only a bad value raises).
    out = np.asarray(student.call("sampling.apply_temperature", logits, 0.5))
    assert_shape(out, (2, 3), "apply_temperature(logits, 0.5)")
    np.testing.assert_allclose(out, logits / 0.5, rtol=1e-6, err_msg="apply_temperature(logits, 0.5) = logits / 0.5")
    _assert_filtered(
        student.call("sampling.top_k_filter", logits, 1), logits, [[0, 1, 0], [0, 1, 0]], "top_k_filter(logits, k=1)"
    )
    # probabilities: row 0 [0.35, 0.57, 0.08] keeps {1, 0} at p=0.6; row 1 [0.09, 0.67, 0.24] keeps {1}.
    _assert_filtered(
        student.call("sampling.top_p_filter", logits, 0.6),
        logits,
        [[1, 1, 0], [0, 1, 0]],
        "top_p_filter(logits, p=0.6)",
    )
    peaks = np.array([[2.0, 0.5, 1.0], [0.0, 1.0, 3.0]], dtype=np.float32)
    ids = np.asarray(student.call("sampling.sample", peaks, temperature=0.5, top_k=1, top_p=0.9, seed=0))
    assert ids.tolist() == [0, 2], (
        f"sample(temperature=0.5, top_k=1, top_p=0.9, seed=0) on rows whose largest logits are at [0, 2] must draw "
        f"[0, 2]; got {ids.tolist()}"
    )
    for t in (0, -1.5):
        _raises(
            student.call_error("sampling.apply_temperature", logits, t),
            ["temperature"],
            str(t),
            f"apply_temperature(T={t})",
        )
        _raises(
            student.call_error("sampling.sample", logits, temperature=t),
            ["temperature"],
            str(t),
            f"sample(temperature={t})",
        )
    for k in (0, -2, 2.5):
        _raises(student.call_error("sampling.top_k_filter", logits, k), ["k"], str(k), f"top_k_filter(k={k})")
    _raises(student.call_error("sampling.sample", logits, top_k=0), ["k"], "0", "sample(top_k=0)")
    for p in (0, 1.5, -0.1):
        _raises(student.call_error("sampling.top_p_filter", logits, p), ["p"], str(p), f"top_p_filter(p={p})")
    _raises(student.call_error("sampling.sample", logits, top_p=1.2), ["p"], "1.2", "sample(top_p=1.2)")
    nan = logits.copy()
    nan[1, 2] = np.nan
    for name, fn in [
        ("apply_temperature", student.call_error("sampling.apply_temperature", nan, 1.0)),
        ("top_k_filter", student.call_error("sampling.top_k_filter", nan, 2)),
        ("top_p_filter", student.call_error("sampling.top_p_filter", nan, 0.9)),
        ("sample", student.call_error("sampling.sample", nan, seed=0)),
    ]:
        _raises(fn, ["logits"], "nan", f"{name} on logits holding a NaN")
    for seed in (1.5, "7"):
        _raises(student.call_error("sampling.sample", logits, seed=seed), ["seed"], str(seed), f"sample(seed={seed!r})")
    for shape in [(3,), (2, 1, 3)]:
        bad = np.zeros(shape, dtype=np.float32)
        for name, args in (("apply_temperature", (1.0,)), ("top_p_filter", (0.9,))):
            _raises(
                student.call_error(f"sampling.{name}", bad, *args),
                ["logits"],
                "",
                f"{name} on logits of shape {shape}",
            )
        _raises(
            student.call_error("sampling.top_k_filter", bad, 1),
            ["logits"],
            "",
            f"top_k_filter on logits of shape {shape}",
        )
        _raises(
            student.call_error("sampling.sample", bad, seed=0), ["logits"], "", f"sample on logits of shape {shape}"
        )
