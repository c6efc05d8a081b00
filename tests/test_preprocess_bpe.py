"""Part 1, bonus (10 points): a byte-level BPE tokenizer, as GPT-2's.

The merges are compared with a plain reference written here (recount every pair at each step, merge the most
frequent, ties to the smallest pair), so any correct training loop passes, fast or slow. The texts use lowercase
words and single spaces only, where GPT-2's pre-tokenizer is simply ` ?[a-z]+`. Encoding is checked by its
result: round trips on any Unicode text, special tokens as single ids, merges applied by rank.
"""

import collections
import re

import numpy as np
import pytest
from checks import assert_shape, step_value

EOT = "<|endoftext|>"
# GPT-2's pre-tokenizer in the standard library's terms (`[^\W\d_]` for \p{L}, `\d` for \p{N}): the same split as
# GPT2_PATTERN on every text of these tests (no letter-like numbers such as '²', no underscores next to letters).
PRETOKEN = re.compile(r"""'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+""")
WORDS = "low lower lowest newer newest wider widest low new now snow slow slower show shower new low"


# ---------------------------------------------------------------------------------------------------------------
# Probes: they run where the student's code runs and return plain data (see grading/runtime/probes.py)
# ---------------------------------------------------------------------------------------------------------------


def bpe_session(vocab_size, special_tokens, fit_text, steps, save=False):
    """Probe: fits `preprocess.BPETokenizer(vocab_size, special_tokens)` on `fit_text`, then calls each (method,
    args) of `steps` on it. Returns its merges, vocab_size and special ids, and for each step the value it returned
    (or the exception it raised); with `save`, the same steps on the tokenizer loaded back by
    `BPETokenizer.load` and by `load_tokenizer`."""
    import os
    import tempfile

    from assignment import preprocess

    tok = preprocess.BPETokenizer(vocab_size, special_tokens=tuple(special_tokens)).fit(fit_text)

    def run(t):
        results = []
        for method, args in steps:
            try:
                value = getattr(t, method)(*args)
            except Exception as exc:
                results.append({"error": type(exc).__name__, "message": str(exc)[:300]})
                continue
            results.append({"value": value})
        return results

    merges = None if tok.merges is None else [[int(i) for i in pair] for pair in tok.merges]
    out = {
        "merges": merges,
        "vocab_size": int(tok.vocab_size),
        "special_ids": {str(k): int(v) for k, v in tok.special_ids.items()},
        "results": run(tok),
    }
    if save:
        path = os.path.join(tempfile.mkdtemp(), "bpe.json")
        tok.save(path)
        out["loaded"] = []
        for again in (preprocess.BPETokenizer.load(path), preprocess.load_tokenizer(path)):
            out["loaded"].append(
                {"class": type(again).__name__, "vocab_size": int(again.vocab_size), "results": run(again)}
            )
    return out


def bpe_constructor_error(vocab_size, special_tokens):
    """Probe: builds `preprocess.BPETokenizer(vocab_size, special_tokens)`; returns the error's type and message."""
    from assignment import preprocess

    try:
        preprocess.BPETokenizer(vocab_size, special_tokens=tuple(special_tokens))
    except Exception as exc:
        return {"error": type(exc).__name__, "message": str(exc)[:300]}
    return None


def _session(student, vocab_size, fit_text, steps=(), special_tokens=(), save=False):
    return student.run(bpe_session, vocab_size, list(special_tokens), fit_text, list(steps), save=save)


def step_ids(result, what):
    """The ids one step returned, checked here to be a 1-D int32 NumPy array (the student's raw value)."""
    ids = step_value(result, what)
    assert isinstance(ids, np.ndarray), f"{what} must return a NumPy array, got {type(ids).__name__}"
    assert ids.dtype == np.int32, f"{what} must return int32 ids, got dtype {ids.dtype}"
    assert_shape(ids, (ids.size,), what)
    return ids


def _merges(session):
    assert session["merges"] is not None, "fit must set self.merges (through self._set_merges)"
    return [tuple(pair) for pair in session["merges"]]


# ---------------------------------------------------------------------------------------------------------------
# Independent references
# ---------------------------------------------------------------------------------------------------------------


def _merge(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _reference_merges(text, num_merges, special_tokens=()):
    """The merges BPE learns on `text` (split at special tokens, then by PRETOKEN), the slow obvious way."""
    pieces = re.split("|".join(re.escape(s) for s in special_tokens), text) if special_tokens else [text]
    words = collections.Counter(tuple(w.encode()) for piece in pieces for w in PRETOKEN.findall(piece))
    merges = []
    for _ in range(num_merges):
        pairs = collections.Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))  # most frequent; ties: the smallest pair
        merges.append(best)
        merged = collections.Counter()
        for word, count in words.items():
            merged[tuple(_merge(list(word), best, 256 + len(merges) - 1))] += count
        words = merged
    return merges


def _reference_encode(word, merges):
    ids = list(word.encode())
    ranks = {pair: r for r, pair in enumerate(merges)}
    while True:
        found = [p for p in zip(ids, ids[1:]) if p in ranks]
        if not found:
            return ids
        best = min(found, key=ranks.get)
        ids = _merge(ids, best, 256 + ranks[best])


def _reference_encode_text(text, merges, special_tokens=()):
    """The ids of `text`: each special token its id (after the merges), each pre-token its merged bytes."""
    ids = []
    for piece in re.split(f"({'|'.join(re.escape(s) for s in special_tokens)})", text) if special_tokens else [text]:
        if piece in special_tokens:
            ids.append(256 + len(merges) + special_tokens.index(piece))
        else:
            ids += [i for w in PRETOKEN.findall(piece) for i in _reference_encode(w, merges)]
    return ids


def _show(merges):
    """The merged tokens as text: [(108, 111), (256, 119)] -> ['lo', 'low']."""
    try:
        return [bytes(_spell(p, merges)).decode("utf-8", "replace") for p in merges]
    except (IndexError, RecursionError, TypeError, ValueError):
        return merges


def _spell(token, merges):
    if isinstance(token, tuple):
        return _spell(token[0], merges) + _spell(token[1], merges)
    return [token] if token < 256 else _spell(merges[token - 256], merges)


# ---------------------------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.bonus
@pytest.mark.points(1)
@pytest.mark.clause(
    "preprocess.merge_pair: every occurrence of `pair` replaced by `new_id`, scanning left to right",
    "preprocess.merge_pair: Occurrences do not overlap: `merge_pair([5, 5, 5], (5, 5), 9) == [9, 5]`",
)
def test_bpe_merge_pair_replaces_occurrences_left_to_right_without_overlap(student):
    cases = [
        ([1, 2, 3, 1, 2], (1, 2), 9, [9, 3, 9]),
        ([5, 5, 5], (5, 5), 9, [9, 5]),
        ([5, 5, 5, 5], (5, 5), 9, [9, 9]),
        ([1, 2], (2, 1), 9, [1, 2]),
        ([1], (1, 2), 9, [1]),
        ([], (1, 2), 9, []),
        # A pre-token longer than 256 ids, its last id left unpaired (a bound check with `is` holds only below 257).
        ([7] * 301, (7, 7), 9, [9] * 150 + [7]),
        # Ids of merged tokens (above 256): equal ids are not always the same int object.
        ([300, 301, 5, 300, 301], (300, 301), 999, [999, 5, 999]),
    ]
    for ids, pair, new_id, expected in cases:
        got = [int(i) for i in student.call("preprocess.merge_pair", list(ids), pair, new_id)]
        assert got == expected, f"merge_pair({ids}, {pair}, {new_id}): expected {expected}, got {got}"


@pytest.mark.bonus
@pytest.mark.points(0.5)  # and 1 for the same at scale, below
@pytest.mark.clause(
    "preprocess.BPETokenizer: Ids 0..255 are the 256 bytes, id `256 + r` is the token made by merge `r`",
    "preprocess.BPETokenizer: merges are learned and applied inside one pre-token only",
    "preprocess.BPETokenizer: each pre-token weighted by how often it occurs",
    "preprocess.BPETokenizer.fit: Merges never cross a pre-token boundary or touch a special token.",
    "preprocess.BPETokenizer.fit: `self.merges[r]` is the pair of ids merged at step `r` into id `256 + r`",
)
def test_bpe_fit_learns_the_reference_merges(student):
    num_merges = 40
    s = _session(student, 256 + num_merges, WORDS)
    expected = _reference_merges(WORDS, num_merges)
    got = _merges(s)
    assert len(got) == len(expected), (
        f"{WORDS!r} allows {len(expected)} merges (of {num_merges} asked); got {len(got)}: {got}"
    )
    for r, (g, e) in enumerate(zip(got, expected)):
        assert g == e, (
            f"merge {r} should be {e} ({_show(expected)[r]!r}), got {g} ({_show(got)[r]!r}); the merges before it: "
            f"{_show(expected)[:r]}. Count pairs inside each pre-token only, weighted by its count; ties go to the "
            "smallest pair"
        )
    assert s["vocab_size"] == 256 + len(expected), f"expected vocab_size {256 + len(expected)}, got {s['vocab_size']}"


def _words(n, seed):
    """`n` lowercase words of 2 to 9 letters, each preceded by a space: a text with hundreds of possible merges."""
    import random

    rng = random.Random(seed)
    return "".join(" " + "".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 9))) for _ in range(n))


@pytest.mark.bonus
@pytest.mark.points(1)
@pytest.mark.clause(
    "preprocess.BPETokenizer.fit: `self.merges[r]` is the pair of ids merged at step `r` into id `256 + r`"
)
def test_bpe_fit_at_scale_learns_the_reference_merges(student):
    # Counts above 256 and more than 256 merges: what a real corpus has and a toy one does not (a count or a merge
    # number compared with `is`, not `==`, goes wrong only from 257 on, where CPython stops caching small ints).
    for text, num_merges in (((" " + WORDS) * 50, 30), (_words(700, 0), 300)):  # 'ow' 550 times
        expected = _reference_merges(text, num_merges)
        got = _merges(_session(student, 256 + num_merges, text))
        assert len(got) == len(expected), (
            f"a text of {len(text)} characters allows {len(expected)} merges (of {num_merges} asked); got {len(got)}"
        )
        wrong = next((r for r, (g, e) in enumerate(zip(got, expected)) if g != e), None)
        assert wrong is None, (
            f"merge {wrong} of {num_merges} should be {expected[wrong]}, got {got[wrong]} (a text of {len(text)} "
            "characters): the merges must not change once counts or merge numbers pass 256"
        )


@pytest.mark.bonus
@pytest.mark.points(0.5)
@pytest.mark.clause(
    "preprocess.BPETokenizer: (fewer if the text runs out of pairs)",
    "preprocess.BPETokenizer: merge the most frequent pair everywhere, record the merge",
)
def test_bpe_fit_stops_when_the_text_runs_out_of_pairs(student):
    # "abab" is one pre-token: (97, 98) -> 256 leaves [256, 256], (256, 256) -> 257 leaves [257]: no pair is left.
    s = _session(student, 300, "abab", [("encode", ["abab"]), ("decode", [[257]])])
    assert _merges(s) == [(97, 98), (256, 256)], (
        "vocab_size=300 asks for 44 merges, but 'abab' has pairs for 2 only, (97, 98) then (256, 256): fit must stop "
        f"when no pre-token has two ids left (not fail, not invent merges); got merges {_show(_merges(s))}"
    )
    assert s["vocab_size"] == 258, f"256 bytes and 2 merges make vocab_size 258; got {s['vocab_size']}"
    assert step_ids(s["results"][0], "encode('abab')").tolist() == [257], "'abab' must encode to the single id 257"
    assert step_value(s["results"][1], "decode([257])") == "abab"


@pytest.mark.bonus
@pytest.mark.points(1)
@pytest.mark.clause(
    "preprocess.BPETokenizer: among pairs with the same count, the smallest pair wins, comparing `(first id, second"
)
def test_bpe_fit_breaks_ties_by_the_smallest_pair(student):
    got = _merges(_session(student, 257, "cd ab cd ab"))
    assert len(got) == 1, f"vocab_size=257 leaves room for exactly one merge; got {len(got)}: {got}"
    # 'cd', ' a' and 'ab' occur twice each (' c' once): the smallest of them is (32, 97), ' a'.
    assert got == [(32, 97)], f"ties go to the smallest pair: expected [(32, 97)] (' a'), got {got}"
    got = _merges(_session(student, 257, "cdcd abab"))
    # 'cd' and 'ab' occur twice, 'dc', ' a', 'ba' once: (97, 98) beats (99, 100) although 'cd' comes first.
    assert got == [(97, 98)], f"ties go to the smallest pair: expected [(97, 98)] ('ab'), got {got}"


@pytest.mark.bonus
@pytest.mark.points(1)
@pytest.mark.clause(
    "preprocess.BPETokenizer: the special tokens come last",
    "preprocess.BPETokenizer: always encode to one id of their own, never split and never part of a merge",
    "preprocess.BPETokenizer.encode: a special token in `text` is one id",
    "preprocess.BPETokenizer.fit: Merges never cross a pre-token boundary or touch a special token.",
)
def test_bpe_special_tokens_are_single_ids_and_never_merged(student):
    text = EOT.join(["low lower", " lowest newer", "newest low", " new", ""]) * 3
    probes = [EOT, f"low{EOT}low{EOT}", "<|endoftext"]
    s = _session(student, 256 + 20 + 1, text, [("encode", [t]) for t in probes], special_tokens=(EOT,))
    expected = _reference_merges(text, 20, special_tokens=(EOT,))
    got = _merges(s)
    assert got == expected, (
        f"a special token is never part of a merge: fit on the text between the special tokens. "
        f"Expected merges {_show(expected)}, got {_show(got)}"
    )
    eot = s["vocab_size"] - 1
    assert s["special_ids"] == {EOT: eot}, f"the special token comes last: expected {{{EOT!r}: {eot}}}"
    ids = [step_ids(r, f"encode({t!r})").tolist() for r, t in zip(s["results"], probes)]
    assert ids[0] == [eot], f"encode({EOT!r}) must be the single id [{eot}], got {ids[0]}"
    assert ids[1].count(eot) == 2 and ids[1][-1] == eot, f"'low{EOT}low{EOT}' must hold id {eot} twice, got {ids[1]}"
    assert eot not in ids[2], f"'<|endoftext' is not the special token, got {ids[2]}"
    s = _session(student, 256 + 20 + 1, text, [("decode", [i]) for i in ids], special_tokens=(EOT,))
    for r, t in zip(s["results"], probes):
        assert step_value(r, "decode") == t, f"decode(encode({t!r})) gave {r.get('value')!r}"


@pytest.mark.bonus
@pytest.mark.points(2)
@pytest.mark.clause(
    "preprocess.BPETokenizer: the lowest-ranked (earliest learned) pair present is merged first, everywhere in the",
    "preprocess.BPETokenizer: until no learned pair is left",
    "preprocess.BPETokenizer.encode_bytes: merges applied by rank: a list of ints",
    'preprocess.BPETokenizer.encode_bytes: `b"abc"` -> `[97, 256]`',
)
def test_bpe_encode_applies_merges_by_rank_not_by_position(student):
    text = "bc bc bc bc bc xab yab zab"
    words = ("abc", " abc", "xabc", "abcab", "bcbc", "aab", " bcab bc")
    s = _session(student, 256 + 3, text, [("encode", [w]) for w in words])
    merges = _reference_merges(text, 3)  # 'bc', ' bc', 'ab': ('b', 'c') ranks before ('a', 'b')
    assert _merges(s) == merges, f"expected merges {_show(merges)}, got {_show(_merges(s))}"
    for word, result in zip(words, s["results"]):
        expected = [i for w in re.findall(r" ?[a-z]+", word) for i in _reference_encode(w, merges)]
        got = step_ids(result, f"encode({word!r})").tolist()
        assert got == expected, (
            f"encode({word!r}) with merges {_show(merges)}: expected {expected}, got {got}. Merge the pair of "
            "lowest rank first (('b', 'c') before ('a', 'b')), wherever it is in the word"
        )


@pytest.mark.bonus
@pytest.mark.points(2)
@pytest.mark.clause(
    "preprocess.BPETokenizer: Every string encodes (its UTF-8 bytes always have ids) and `decode(encode(text)) ==",
    "preprocess.BPETokenizer.encode: int32 array of shape `(num_tokens,)`",
)
def test_bpe_round_trips_any_unicode_text(student):
    fit_text = "naïve café, 日本語のテキスト 😀😀 — it's   new.\n\n" * 4
    texts = [
        "naïve café",
        "",
        " ",
        "\n\n\t  \r\n",
        "unseen: Ωmega ñandú Ünïcödé",
        "e\u0301 (a combining accent)",
        "👩\u200d👩\u200d👧 family, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
        "they're, we've, I'll 123 4567.89",
        "\x00\x7f\u00ff\uffff",
        "日本語" * 20,
    ]
    s = _session(student, 320, fit_text, [("encode", [t]) for t in texts])
    merges = _reference_merges(fit_text, 64)
    assert _merges(s) == merges, f"fitted on {fit_text!r}: expected merges {_show(merges)}, got {_show(_merges(s))}"
    ids = [step_ids(r, f"encode({t!r})") for r, t in zip(s["results"], texts)]
    for t, i in zip(texts, ids):
        expected = _reference_encode_text(t, merges)
        assert i.tolist() == expected, f"encode({t!r}): expected {expected}, got {i.tolist()}"
    assert len(ids[0]) < len(texts[0].encode()), "learned merges must shorten fitted text"
    last = 255 + len(merges)
    chosen = [[256, 32, last, last - 7], [195], [0, 127, 255]]  # ids chosen here: merges, half a character, bytes
    s = _session(student, 320, fit_text, [("decode", [i]) for i in ids + chosen])
    for r, t in zip(s["results"], texts):
        assert step_value(r, "decode") == t, f"decode(encode({t!r})) gave {r.get('value')!r}"
    for r, i in zip(s["results"][len(texts) :], chosen):
        expected = b"".join(bytes(_spell(x, merges)) for x in i).decode("utf-8", errors="replace")
        assert step_value(r, f"decode({i})") == expected, f"decode({i}): expected {expected!r}, got {r.get('value')!r}"


@pytest.mark.bonus
@pytest.mark.points(1)
@pytest.mark.clause("preprocess.BPETokenizer: `vocab_size - 256 - len(special_tokens)` merges are learned")
def test_bpe_saves_loads_and_respects_vocab_size(student):
    sample = WORDS + EOT + " unseen ü"
    s = _session(student, 270, WORDS, [("encode", [sample])], special_tokens=(EOT,), save=True)
    assert s["vocab_size"] == 270, f"vocab_size=270 with 1 special token learns 13 merges; got {s['vocab_size']}"
    assert len(_merges(s)) == 13, f"expected 13 merges, got {len(_merges(s))}"
    merges = _reference_merges(WORDS, 13)
    assert _merges(s) == merges, f"expected merges {_show(merges)}, got {_show(_merges(s))}"
    ids = step_ids(s["results"][0], "encode").tolist()
    expected = _reference_encode_text(sample, merges, (EOT,))
    assert ids == expected, f"encode({sample!r}): expected {expected}, got {ids}"
    for how, again in zip(("BPETokenizer.load", "load_tokenizer"), s["loaded"]):
        assert again["class"] == "BPETokenizer", f"{how} must rebuild a BPETokenizer, got {again['class']}"
        assert again["vocab_size"] == 270, f"{how}: vocab_size changed to {again['vocab_size']}"
        assert step_ids(again["results"][0], f"encode after {how}").tolist() == ids, f"ids changed after {how}"
    error = student.run(bpe_constructor_error, 256, [EOT])
    assert error is not None and error["error"] == "ValueError" and "vocab_size" in error["message"], (
        f"BPETokenizer(vocab_size=256, special_tokens=({EOT!r},)) has no room for the 256 bytes and the special "
        f"token: expected a ValueError naming vocab_size, got {error}"
    )
