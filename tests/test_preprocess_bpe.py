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
from checks import assert_shape

from assignment import preprocess

EOT = "<|endoftext|>"
WORDS = "low lower lowest newer newest wider widest low new now snow slow slower show shower new low"


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
    """The merges BPE learns on `text` (lowercase words, single spaces, special tokens), the slow obvious way."""
    pieces = re.split("|".join(re.escape(s) for s in special_tokens), text) if special_tokens else [text]
    words = collections.Counter(tuple(w.encode()) for piece in pieces for w in re.findall(r" ?[a-z]+", piece))
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


def _merges_of(tok):
    assert tok.merges is not None, "fit must set self.merges (through self._set_merges)"
    return [tuple(int(i) for i in pair) for pair in tok.merges]


def _ids_of(tok, text):
    ids = tok.encode(text)
    assert isinstance(ids, np.ndarray), f"encode must return a NumPy array, got {type(ids).__name__}"
    assert ids.dtype == np.int32, f"encode must return int32 ids, got dtype {ids.dtype}"
    assert_shape(ids, (len(ids),), f"encode({text!r})")
    return ids


@pytest.mark.bonus
@pytest.mark.points(1)
def test_bpe_merge_pair_replaces_occurrences_left_to_right_without_overlap():
    cases = [
        ([1, 2, 3, 1, 2], (1, 2), 9, [9, 3, 9]),
        ([5, 5, 5], (5, 5), 9, [9, 5]),
        ([5, 5, 5, 5], (5, 5), 9, [9, 9]),
        ([1, 2], (2, 1), 9, [1, 2]),
        ([1], (1, 2), 9, [1]),
        ([], (1, 2), 9, []),
    ]
    for ids, pair, new_id, expected in cases:
        got = [int(i) for i in preprocess.merge_pair(list(ids), pair, new_id)]
        assert got == expected, f"merge_pair({ids}, {pair}, {new_id}): expected {expected}, got {got}"


@pytest.mark.bonus
@pytest.mark.points(2)
def test_bpe_fit_learns_the_reference_merges():
    num_merges = 40
    tok = preprocess.BPETokenizer(vocab_size=256 + num_merges).fit(WORDS)
    expected = _reference_merges(WORDS, num_merges)
    got = _merges_of(tok)
    assert len(got) == len(expected), (
        f"{WORDS!r} allows {len(expected)} merges (of {num_merges} asked); got {len(got)}: {got}"
    )
    for r, (g, e) in enumerate(zip(got, expected)):
        assert g == e, (
            f"merge {r} should be {e} ({_show(expected)[r]!r}), got {g} ({_show(got)[r]!r}); the merges before it: "
            f"{_show(expected)[:r]}. "
            "Count pairs inside each pre-token only, weighted by its count; ties go to the smallest pair"
        )
    assert tok.vocab_size == 256 + len(expected), f"expected vocab_size {256 + len(expected)}, got {tok.vocab_size}"


@pytest.mark.bonus
@pytest.mark.points(1)
def test_bpe_fit_breaks_ties_by_the_smallest_pair():
    tok = preprocess.BPETokenizer(vocab_size=257).fit("cd ab cd ab")
    got = _merges_of(tok)
    assert len(got) == 1, f"vocab_size=257 leaves room for exactly one merge; got {len(got)}: {got}"
    # 'cd', ' a' and 'ab' occur twice each (' c' once): the smallest of them is (32, 97), ' a'.
    assert got == [(32, 97)], f"ties go to the smallest pair: expected [(32, 97)] (' a'), got {got}"
    tok = preprocess.BPETokenizer(vocab_size=257).fit("cdcd abab")
    got = _merges_of(tok)
    # 'cd' and 'ab' occur twice, 'dc', ' a', 'ba' once: (97, 98) beats (99, 100) although 'cd' comes first.
    assert got == [(97, 98)], f"ties go to the smallest pair: expected [(97, 98)] ('ab'), got {got}"


@pytest.mark.bonus
@pytest.mark.points(1)
def test_bpe_special_tokens_are_single_ids_and_never_merged():
    text = EOT.join(["low lower", " lowest newer", "newest low", " new", ""]) * 3
    tok = preprocess.BPETokenizer(vocab_size=256 + 20 + 1, special_tokens=(EOT,)).fit(text)
    expected = _reference_merges(text, 20, special_tokens=(EOT,))
    got = _merges_of(tok)
    assert got == expected, (
        f"a special token is never part of a merge: fit on the text between the special tokens. "
        f"Expected merges {_show(expected)}, got {_show(got)}"
    )
    eot = tok.vocab_size - 1
    assert tok.special_ids == {EOT: eot}, f"the special token comes last: expected {{{EOT!r}: {eot}}}"
    ids = _ids_of(tok, EOT).tolist()
    assert ids == [eot], f"encode({EOT!r}) must be the single id [{eot}], got {ids}"
    ids = _ids_of(tok, f"low{EOT}low{EOT}").tolist()
    assert ids.count(eot) == 2 and ids[-1] == eot, f"'low{EOT}low{EOT}' must hold id {eot} twice, got {ids}"
    assert tok.decode(ids) == f"low{EOT}low{EOT}", "special tokens must decode to their text"
    ids = _ids_of(tok, "<|endoftext").tolist()
    assert eot not in ids and tok.decode(ids) == "<|endoftext", f"'<|endoftext' is not the special token, got {ids}"


@pytest.mark.bonus
@pytest.mark.points(2)
def test_bpe_encode_applies_merges_by_rank_not_by_position():
    text = "bc bc bc bc bc xab yab zab"
    tok = preprocess.BPETokenizer(vocab_size=256 + 3).fit(text)
    merges = _reference_merges(text, 3)  # 'bc', ' bc', 'ab': ('b', 'c') ranks before ('a', 'b')
    assert _merges_of(tok) == merges, f"expected merges {_show(merges)}, got {_show(_merges_of(tok))}"
    for word in ("abc", " abc", "xabc", "abcab", "bcbc", "aab", " bcab bc"):
        expected = [i for w in re.findall(r" ?[a-z]+", word) for i in _reference_encode(w, merges)]
        got = _ids_of(tok, word).tolist()
        assert got == expected, (
            f"encode({word!r}) with merges {_show(merges)}: expected {expected}, got {got}. Merge the pair of "
            "lowest rank first (('b', 'c') before ('a', 'b')), wherever it is in the word"
        )


@pytest.mark.bonus
@pytest.mark.points(2)
def test_bpe_round_trips_any_unicode_text():
    tok = preprocess.BPETokenizer(vocab_size=320).fit("naïve café, 日本語のテキスト 😀😀 — it's   new.\n\n" * 4)
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
    for text in texts:
        ids = _ids_of(tok, text)
        assert all(0 <= i < tok.vocab_size for i in ids.tolist()), f"ids of {text!r} outside [0, vocab_size): {ids}"
        assert tok.decode(ids) == text, f"decode(encode({text!r})) gave {tok.decode(ids)!r}"
    assert len(_ids_of(tok, "naïve café")) < len("naïve café".encode()), "learned merges must shorten fitted text"


@pytest.mark.bonus
@pytest.mark.points(1)
def test_bpe_saves_loads_and_respects_vocab_size(tmp_path):
    tok = preprocess.BPETokenizer(vocab_size=270, special_tokens=(EOT,)).fit(WORDS)
    assert tok.vocab_size == 270, f"vocab_size=270 with 1 special token learns 13 merges; got {tok.vocab_size}"
    assert len(_merges_of(tok)) == 13, f"expected 13 merges, got {len(_merges_of(tok))}"
    path = tmp_path / "bpe.json"
    tok.save(path)
    for again in (preprocess.BPETokenizer.load(path), preprocess.load_tokenizer(path)):
        assert type(again).__name__ == "BPETokenizer", f"load_tokenizer must rebuild a BPETokenizer, got {again}"
        assert again.vocab_size == 270
        sample = WORDS + EOT + " unseen ü"
        assert again.encode(sample).tolist() == tok.encode(sample).tolist(), "ids changed after save/load"
    with pytest.raises(ValueError, match="vocab_size"):
        preprocess.BPETokenizer(vocab_size=256, special_tokens=(EOT,))
