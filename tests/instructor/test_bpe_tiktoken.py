"""Independent checks of the reference BPE: OpenAI's tiktoken, given our merges as ranks and the same pattern, encodes
the default corpus to exactly our ids; and the incremental pair counts learn exactly what recounting learns."""

import collections

import pytest

from assignment import preprocess
from lmrun import corpus

EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def pyref():
    return corpus.load_corpus("pyref")


@pytest.fixture(scope="module")
def fitted(pyref):
    return preprocess.BPETokenizer(vocab_size=256 + 4096 + 1, special_tokens=(EOT,)).fit(pyref)


def tiktoken_encoding(tok):
    """A tiktoken.Encoding with `tok`'s merges as mergeable ranks (id = rank), its pattern and special tokens."""
    tiktoken = pytest.importorskip("tiktoken")
    ranks = {tok.token_bytes(i): i for i in range(preprocess.NUM_BYTES + len(tok.merges))}
    assert len(ranks) == preprocess.NUM_BYTES + len(tok.merges), "two ids spell the same bytes"
    return tiktoken.Encoding(
        "lm-assignment-bpe", pat_str=preprocess.GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=tok.special_ids
    )


def test_tiktoken_with_our_merges_encodes_the_default_corpus_to_our_ids(pyref, fitted):
    enc = tiktoken_encoding(fitted)
    assert len(fitted.merges) == 4096, f"the corpus should allow 4096 merges, got {len(fitted.merges)}"
    ours = fitted.encode(pyref).tolist()
    theirs = enc.encode(pyref, allowed_special="all")
    first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    assert ours == theirs, (
        f"{len(ours):,} ids against tiktoken's {len(theirs):,}; first difference at id {first}: "
        f"ours {ours[first : first + 5]}, tiktoken {theirs[first : first + 5]}"
    )
    assert fitted.decode(ours) == pyref


def test_tiktoken_agrees_on_unseen_unicode_and_special_tokens(fitted):
    enc = tiktoken_encoding(fitted)
    texts = [
        f"def f(x):\n    return x ** 2{EOT}Ünïcödé naïve café 日本語 😀 👩\u200d👩\u200d👧",
        "they're we've I'll it's   spaced \t tabs\r\n\n\n  trailing  ",
        f"{EOT}{EOT}<|endoftext|<|endoftext|>>",
        "1234567890 3.14159 Ⅻ ½ ²",
    ]
    for text in texts:
        assert fitted.encode(text).tolist() == enc.encode(text, allowed_special="all"), text
        assert fitted.decode(fitted.encode(text)) == text


def _recount_merges(text, num_merges):
    """Plain BPE: recount every pair at every step (what the student's TODO describes)."""
    tok = preprocess.BPETokenizer(vocab_size=preprocess.NUM_BYTES)
    words = collections.Counter(tuple(p.encode()) for p in tok.pretokenize(text))
    merges = []
    for _ in range(num_merges):
        pairs = collections.Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        new_id = preprocess.NUM_BYTES + len(merges) - 1
        words = collections.Counter({tuple(preprocess.merge_pair(list(w), best, new_id)): c for w, c in words.items()})
    return merges


def test_incremental_pair_counts_learn_what_recounting_learns(pyref):
    text = pyref[:30_000]
    fast = preprocess.BPETokenizer(vocab_size=256 + 300).fit(text)
    assert fast.merges == _recount_merges(text, 300)
