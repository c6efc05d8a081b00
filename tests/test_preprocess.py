"""Part 1 (15 points with the hidden tests): tokenizers, training sequences, the split and the tf.data pipeline."""

import collections
import json
import re

import numpy as np
import pytest
from checks import assert_shape, step_value

TEXT = "To be, or not to be: that is the question.\nWhether 'tis nobler in the mind to suffer\n"
UNK = "<unk>"
# The word pattern of the docstring, copied: the references below split text as WordTokenizer must.
WORD_PATTERN = re.compile(r" ?\w+| ?[^\w\s]|\s+(?!\S)|\s+")


# ---------------------------------------------------------------------------------------------------------------
# Probes: they run where the student's code runs and return plain data (see grading/runtime/probes.py)
# ---------------------------------------------------------------------------------------------------------------


def tokenizer_session(kind, options, fit_text, steps, save=False):
    """Probe: fits `preprocess.<kind>(**options)` on `fit_text`, then calls each (method, args) of `steps` on it.

    Returns its vocab (the list of token strings), vocab_size and unk_id, and for each step the value it returned
    (or the exception it raised); with `save`, also the saved JSON text and the same on the tokenizer loaded back."""
    import os
    import tempfile

    from assignment import preprocess

    cls = getattr(preprocess, kind)
    tok = cls(**options).fit(fit_text)

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

    vocab = None if tok.vocab is None else list(tok.vocab)
    out = {"vocab": vocab, "vocab_size": tok.vocab_size, "unk_id": getattr(tok, "unk_id", None), "results": run(tok)}
    if save:
        path = os.path.join(tempfile.mkdtemp(), "tokenizer.json")
        tok.save(path)
        with open(path, encoding="utf-8") as f:
            out["saved"] = f.read()
        again = cls.load(path)
        vocab = None if again.vocab is None else list(again.vocab)
        out["loaded"] = {"vocab": vocab, "vocab_size": again.vocab_size, "results": run(again)}
    return out


def dataset_batches(inputs, labels, kwargs, epochs=1):
    """Probe: the (inputs, labels) batches of `preprocess.make_dataset(inputs, labels, **kwargs)`, per epoch."""
    import numpy as np

    from assignment import preprocess

    dataset = preprocess.make_dataset(inputs, labels, **kwargs)
    return [[(np.asarray(x), np.asarray(y)) for x, y in dataset] for _ in range(epochs)]


def _session(student, kind, fit_text, steps, options=None, save=False):
    return student.run(tokenizer_session, kind, options or {}, fit_text, steps, save=save)


# ---------------------------------------------------------------------------------------------------------------
# Independent references, computed here from the texts and arrays the tests choose
# ---------------------------------------------------------------------------------------------------------------


def step_ids(result, what):
    """The ids one step returned, checked here to be a 1-D int32 NumPy array (the student's raw value)."""
    ids = step_value(result, what)
    assert isinstance(ids, np.ndarray), f"{what} must return a NumPy array, got {type(ids).__name__}"
    assert ids.dtype == np.int32, f"{what} must return int32 ids, got dtype {ids.dtype}"
    assert_shape(ids, (ids.size,), what)
    return ids


def char_vocab(session, fit_text, lowercase=False):
    """The CharTokenizer's vocabulary, checked against the characters of `fit_text`: `<unk>` first, then each
    distinct character once, in an order of the student's choosing (the docstring fixes none)."""
    vocab = session["vocab"]
    chars = set(fit_text.lower() if lowercase else fit_text)
    assert isinstance(vocab, list) and vocab[:1] == [UNK], f"the vocabulary must start with {UNK!r}; got {vocab!r}"
    assert sorted(vocab[1:]) == sorted(chars), (
        f"fitted on {fit_text!r}, the vocabulary must be {UNK!r} then each of its {len(chars)} distinct characters "
        f"once; got {vocab!r}"
    )
    assert session["vocab_size"] == len(vocab), f"vocab_size must be {len(vocab)}, got {session['vocab_size']}"
    return vocab


def char_ids(vocab, text):
    """The ids of `text` under `vocab`: each character's index, 0 (`<unk>`) for one not in it."""
    index = {c: i for i, c in enumerate(vocab) if i}
    return [index.get(c, 0) for c in text]


def word_vocab(fit_text, lowercase=False, max_vocab=None, min_freq=1):
    """WordTokenizer's vocabulary, as documented: `<unk>`, then the tokens seen at least min_freq times, most
    frequent first, ties alphabetical, cut to max_vocab."""
    counts = collections.Counter(WORD_PATTERN.findall(fit_text.lower() if lowercase else fit_text))
    tokens = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
    return [UNK] + tokens[: None if max_vocab is None else max_vocab - 1]


def word_ids(vocab, text, lowercase=False):
    index = {t: i for i, t in enumerate(vocab) if i}
    return [index.get(t, 0) for t in WORD_PATTERN.findall(text.lower() if lowercase else text)]


def rows(a):
    """The rows of a 2-D array as a sorted list of tuples: what a batching or a shuffle must keep."""
    return sorted(tuple(r) for r in np.asarray(a).tolist())


# ---------------------------------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.points(1)
@pytest.mark.clause(
    "preprocess.CharTokenizer: every character is one token",
    "preprocess.CharTokenizer.encode: int32 array of shape `(len(text),)`",
    "preprocess.CharTokenizer.decode: Returns the text for `ids` (a sequence of ints of shape `(T,)`)",
)
def test_char_tokenizer_round_trips_known_text(student):
    s = _session(student, "CharTokenizer", TEXT, [("encode", [TEXT])])
    vocab = char_vocab(s, TEXT)
    ids = step_ids(s["results"][0], "CharTokenizer.encode(text)")
    assert_shape(ids, (len(TEXT),), "CharTokenizer.encode(text)")
    assert ids.tolist() == char_ids(vocab, TEXT), (
        "CharTokenizer.encode(text) must give each character its index in tok.vocab; "
        f"expected {char_ids(vocab, TEXT)[:12]}..., got {ids.tolist()[:12]}..."
    )
    # decode is checked on ids chosen here too, not only on encode's: it spells any ids from the vocabulary.
    mixed = [len(vocab) - 1, 1, 2, 1, len(vocab) // 2]
    steps = [("decode", [ids]), ("decode", [ids.tolist()]), ("decode", [np.array(mixed, dtype=np.int64)])]
    s = _session(student, "CharTokenizer", TEXT, steps)
    vocab = char_vocab(s, TEXT)
    assert step_value(s["results"][0], "decode") == TEXT, (
        "decode(encode(text)) must give back the text the tokenizer was fitted on"
    )
    assert step_value(s["results"][1], "decode of a list") == TEXT, "decode must also accept a Python list of ids"
    expected = "".join(vocab[i] for i in mixed)
    got = step_value(s["results"][2], f"decode({mixed})")
    assert got == expected, f"decode({mixed}) must spell tok.vocab[i] for each id: expected {expected!r}, got {got!r}"


@pytest.mark.points(1)
@pytest.mark.clause(
    "preprocess.CharTokenizer.fit: Builds the vocabulary from the characters of `text` and returns `self`.",
    "preprocess.CharTokenizer.fit: The vocabulary is `<unk>` (id 0) followed by every distinct character of `text`,",
)
def test_char_vocab_has_one_id_per_character_plus_unknown(student):
    s = _session(student, "CharTokenizer", "abcab", [("encode", ["abc"]), ("encode", ["cba"])])
    assert s["vocab_size"] == 4, (
        f"'abcab' has 3 distinct characters plus <unk>: expected vocab_size 4, got {s['vocab_size']}"
    )
    vocab = char_vocab(s, "abcab")
    assert s["unk_id"] == 0, f"<unk> is id 0; got unk_id {s['unk_id']}"
    for r, text in zip(s["results"], ("abc", "cba")):
        ids = step_ids(r, f"encode({text!r})").tolist()
        assert ids == char_ids(vocab, text), (
            f"with tok.vocab == {vocab!r}, encode({text!r}) must be {char_ids(vocab, text)}; got {ids}"
        )


@pytest.mark.points(0.5)
@pytest.mark.clause("preprocess.CharTokenizer.encode: A character missing from the vocabulary becomes `self.unk_id`.")
def test_char_unknown_character_maps_to_unk_id(student):
    s = _session(student, "CharTokenizer", "abc", [("encode", ["azb"])])
    vocab = char_vocab(s, "abc")
    ids = step_ids(s["results"][0], "encode('azb')").tolist()
    unk = s["unk_id"]
    assert unk == 0 and ids[1] == unk, f"'z' was never seen: expected unk_id 0, got {ids[1]} (unk_id {unk})"
    assert ids == char_ids(vocab, "azb"), f"encode('azb') must be {char_ids(vocab, 'azb')}, got {ids}"


@pytest.mark.points(1)
@pytest.mark.clause(
    "preprocess.WordTokenizer: words, punctuation marks and whitespace runs are separate tokens",
    "preprocess.WordTokenizer: `decode(encode(text)) == text` for text whose tokens are all in the vocabulary",
    "preprocess.WordTokenizer.fit: Builds the vocabulary from `text` and returns `self`.",
    "preprocess.WordTokenizer.encode: int32 array of shape `(num_tokens,)`",
    "preprocess.WordTokenizer.decode: the tokens concatenated",
)
def test_word_tokenizer_splits_words_and_punctuation_and_round_trips(student):
    vocab = word_vocab(TEXT)
    s = _session(student, "WordTokenizer", TEXT, [("encode", ["To be, or not"]), ("encode", [TEXT])])
    ids = step_ids(s["results"][0], "WordTokenizer.encode('To be, or not')")
    assert_shape(ids, (5,), "WordTokenizer.encode('To be, or not') (tokens: 'To', ' be', ',', ' or', ' not')")
    assert s["vocab"] == vocab, f"fitted on the text, the vocabulary must be {vocab}; got {s['vocab']}"
    assert ids.tolist() == word_ids(vocab, "To be, or not"), (
        f"encode('To be, or not') must be {word_ids(vocab, 'To be, or not')}, got {ids.tolist()}"
    )
    all_ids = step_ids(s["results"][1], "WordTokenizer.encode(text)")
    assert all_ids.tolist() == word_ids(vocab, TEXT), "encode(text) must give each token its index in the vocabulary"
    mixed = [3, len(vocab) - 1, 1, 2]
    s = _session(student, "WordTokenizer", TEXT, [("decode", [all_ids]), ("decode", [mixed])])
    assert step_value(s["results"][0], "decode") == TEXT, "decode(encode(text)) must give back the fitted text"
    expected = "".join(vocab[i] for i in mixed)
    got = step_value(s["results"][1], f"decode({mixed})")
    assert got == expected, f"decode({mixed}) must concatenate the tokens: expected {expected!r}, got {got!r}"


@pytest.mark.points(0.5)
@pytest.mark.clause("preprocess.WordTokenizer: lowercase: if True, text is lowercased before fitting and encoding.")
def test_word_tokenizer_lowercase_merges_cases(student):
    lower = _session(
        student, "WordTokenizer", "Dog dog DOG", [("encode", ["DOG dOg"]), ("encode", ["dog dog"])], {"lowercase": True}
    )
    vocab = word_vocab("Dog dog DOG", lowercase=True)  # <unk>, ' dog' (twice), 'dog'
    assert lower["vocab"] == vocab, f"with lowercase=True the vocabulary is {vocab}; got {lower['vocab']}"
    for r, text in zip(lower["results"], ("DOG dOg", "dog dog")):
        ids = step_ids(r, f"encode({text!r})").tolist()
        assert ids == [2, 1], f"with lowercase=True, encode({text!r}) is 'dog', ' dog': expected [2, 1], got {ids}"
    cased = _session(student, "WordTokenizer", "Dog dog DOG", [])
    assert cased["vocab_size"] == lower["vocab_size"] + 1, (
        f"without lowercasing 'Dog', ' dog', ' DOG' are 3 tokens (vocab_size 4), with it 'dog', ' dog' are 2 "
        f"(vocab_size 3); got {cased['vocab_size']} and {lower['vocab_size']}"
    )
    assert cased["vocab"] == word_vocab("Dog dog DOG"), f"got vocabulary {cased['vocab']} without lowercase"


@pytest.mark.points(1)
@pytest.mark.clause(
    "preprocess.WordTokenizer: max_vocab: largest vocabulary size, `<unk>` included; the most frequent tokens are",
    "preprocess.WordTokenizer.fit: cut so that `vocab_size <= max_vocab`",
    "preprocess.WordTokenizer.encode: unknown -> `unk_id`",
)
def test_word_max_vocab_keeps_the_most_frequent_tokens(student):
    text = " a" * 5 + " b" * 3 + " c"
    s = _session(student, "WordTokenizer", text, [("encode", [" c"]), ("encode", [" a b c a"])], {"max_vocab": 3})
    assert s["vocab_size"] == 3, f"max_vocab=3 counts <unk>: expected vocab_size 3, got {s['vocab_size']}"
    rare = step_ids(s["results"][0], "encode(' c')").tolist()
    assert rare == [s["unk_id"]] == [0], "' c' is the rarest token and must fall outside max_vocab=3"
    got = step_ids(s["results"][1], "encode(' a b c a')").tolist()
    assert got == [1, 2, 0, 1], (
        f"max_vocab=3 keeps <unk>, ' a' (5 times), ' b' (3 times): encode(' a b c a') must be [1, 2, 0, 1], got {got}"
    )


@pytest.mark.points(0.5)
@pytest.mark.clause(
    "preprocess.WordTokenizer: min_freq: a token must occur at least this often in the fitted text to enter the",
    "preprocess.WordTokenizer.fit: the tokens seen at least `min_freq` times",
)
def test_word_min_freq_drops_rare_tokens(student):
    s = _session(student, "WordTokenizer", " a a a b b c", [("encode", [" c b a"])], {"min_freq": 2})
    assert s["vocab_size"] == 3, (
        f"with min_freq=2 only ' a' and ' b' (plus <unk>) remain; got vocab_size {s['vocab_size']}"
    )
    got = step_ids(s["results"][0], "encode(' c b a')").tolist()
    assert got == [0, 2, 1], f"with min_freq=2 the vocabulary is <unk>, ' a', ' b': expected [0, 2, 1], got {got}"


@pytest.mark.points(0.5)
def test_tokenizers_save_and_load_as_json(student):
    for kind, options in (("CharTokenizer", {}), ("WordTokenizer", {"max_vocab": 12})):
        s = _session(student, kind, TEXT, [("encode", [TEXT])], options, save=True)
        json.loads(s["saved"])  # must be JSON
        again = s["loaded"]
        if kind == "CharTokenizer":
            vocab = char_vocab(s, TEXT)
            expected = char_ids(vocab, TEXT)
        else:
            vocab = word_vocab(TEXT, max_vocab=12)
            assert s["vocab"] == vocab, f"WordTokenizer(max_vocab=12): expected vocabulary {vocab}, got {s['vocab']}"
            expected = word_ids(vocab, TEXT)
        assert again["vocab"] == vocab, f"{kind}: the vocabulary changed after save/load: {again['vocab']}"
        assert again["vocab_size"] == len(vocab), f"{kind}: vocab_size changed after save/load"
        ids = step_ids(s["results"][0], f"{kind}.encode")
        assert ids.tolist() == expected, f"{kind}.encode(text) before saving: expected {expected}, got {ids.tolist()}"
        assert step_ids(again["results"][0], f"{kind}.encode after load").tolist() == expected, (
            f"{kind}: ids changed after load"
        )
        s = _session(student, kind, TEXT, [("decode", [ids])], options, save=True)
        decoded = "".join(" " + UNK if i == 0 else vocab[i] for i in expected) if kind == "WordTokenizer" else TEXT
        assert step_value(s["results"][0], "decode") == decoded, f"{kind}: decode(encode(text)) must be {decoded!r}"
        assert step_value(s["loaded"]["results"][0], "decode after load") == decoded, f"{kind}: decode after load"


@pytest.mark.points(0.5)
@pytest.mark.clause("preprocess.CharTokenizer.decode: ValueError: if an id is outside `[0, vocab_size)`.")
def test_decode_rejects_ids_outside_the_vocabulary(student):
    s = _session(student, "CharTokenizer", "abc", [("decode", [[3, 1, 2]])])
    vocab = char_vocab(s, "abc")
    expected = "".join(vocab[i] for i in (3, 1, 2))
    got = step_value(s["results"][0], "decode([3, 1, 2])")
    assert got == expected, f"decode([3, 1, 2]) with tok.vocab == {vocab!r} must be {expected!r}, got {got!r}"
    bad = s["vocab_size"] + 3
    s = _session(student, "CharTokenizer", "abc", [("decode", [[1, bad]]), ("decode", [[-1]])])
    for result, ids in zip(s["results"], ([1, bad], [-1])):
        assert result.get("error") == "ValueError", f"decode({ids}) must raise ValueError; got {result}"
    assert str(bad) in s["results"][0]["message"], (
        f"the ValueError of decode([1, {bad}]) must quote the bad id {bad}; got {s['results'][0]['message']!r}"
    )


@pytest.mark.points(0.5)
@pytest.mark.clause(
    "preprocess.CharTokenizer: lowercase: if True",
    "preprocess.CharTokenizer.decode: `<unk>` decodes to U+FFFD",
    'preprocess.WordTokenizer.decode: `<unk>` written as " <unk>"',
    "preprocess.WordTokenizer.decode: ValueError: if an id is outside",
)
def test_decode_writes_unknown_ids_as_documented(student):
    s = _session(student, "CharTokenizer", "abc", [("encode", ["azb"])])
    ids = step_ids(s["results"][0], "CharTokenizer.encode('azb')")
    s = _session(student, "CharTokenizer", "abc", [("decode", [ids])])
    got = step_value(s["results"][0], "CharTokenizer.decode")
    assert got == "a\ufffdb", (
        f"CharTokenizer: the unknown id must decode to U+FFFD (the replacement character '\ufffd'), one character "
        f"like every other id: decode(encode('azb')) fitted on 'abc' must be 'a\ufffdb', got {got!r}"
    )
    s = _session(student, "WordTokenizer", " a b", [("encode", [" a q b"])])
    ids = step_ids(s["results"][0], "WordTokenizer.encode(' a q b')")
    s = _session(student, "WordTokenizer", " a b", [("decode", [ids]), ("decode", [[s["vocab_size"]]])])
    got = step_value(s["results"][0], "WordTokenizer.decode")
    assert got == " a <unk> b", (
        "WordTokenizer: the unknown id must decode to ' <unk>' (with its leading space, like the words around it): "
        f"decode(encode(' a q b')) fitted on ' a b' must be ' a <unk> b', got {got!r}"
    )
    assert s["results"][1].get("error") == "ValueError", (
        f"WordTokenizer.decode([vocab_size]) must raise ValueError (ids lie in [0, vocab_size)); got {s['results'][1]}"
    )
    s = _session(student, "CharTokenizer", "abC", [("encode", ["ABC"])], {"lowercase": True})
    assert s["vocab_size"] == 4, (
        f"CharTokenizer(lowercase=True) fitted on 'abC' knows 'a', 'b', 'c' (vocab_size 4); got {s['vocab_size']}"
    )
    vocab = char_vocab(s, "abC", lowercase=True)
    got = step_ids(s["results"][0], "encode('ABC')").tolist()
    assert got == char_ids(vocab, "abc"), (
        f"CharTokenizer(lowercase=True) encodes 'ABC' as 'abc': expected {char_ids(vocab, 'abc')}, got {got}"
    )


@pytest.mark.points(0.5)
@pytest.mark.clause("preprocess.WordTokenizer.fit: most frequent first (ties broken alphabetically)")
def test_word_vocabulary_is_ordered_by_frequency_then_alphabetically(student):
    text = " d b c a c"  # ' c' twice; ' a', ' b', ' d' once each, seen in the order d, b, a
    s = _session(student, "WordTokenizer", text, [("encode", [" c a b d"])])
    ids = step_ids(s["results"][0], "encode(' c a b d')").tolist()
    assert ids == [1, 2, 3, 4], (
        f"fitted on {text!r}, the vocabulary is <unk> (id 0), ' c' (the most frequent), then the ties ' a', ' b', "
        f"' d' in alphabetical order, not in the order first seen: encode(' c a b d') must be [1, 2, 3, 4], got {ids}"
    )
    s = _session(student, "WordTokenizer", text, [("encode", [" a b"])], {"max_vocab": 3})
    ids = step_ids(s["results"][0], "encode(' a b')").tolist()
    assert ids == [2, s["unk_id"]], (
        f"max_vocab=3 on {text!r} keeps <unk>, ' c' and ' a' (the alphabetically first of the ties): "
        f"encode(' a b') must be [2, {s['unk_id']}], got {ids}"
    )
    # Eight tokens tied: neither the order first seen nor a set's (hash) order is alphabetical, but for 1 in 8!.
    ties = " hh ee bb gg aa ff dd cc" * 2 + " zz"
    s = _session(student, "WordTokenizer", ties, [("encode", [" aa bb zz hh"])])
    expected = word_vocab(ties)
    assert s["vocab"] == expected, (
        f"fitted on {ties!r}, the vocabulary is <unk>, then the eight tied tokens alphabetically, then ' zz' "
        f"(seen once): expected {expected}, got {s['vocab']}. Sort by (-count, token), not in the order a set or "
        "a Counter yields them"
    )
    got = step_ids(s["results"][0], "encode(' aa bb zz hh')").tolist()
    assert got == [1, 2, 9, 8], f"encode(' aa bb zz hh') must be [1, 2, 9, 8], got {got}"


# ---------------------------------------------------------------------------------------------------------------
# Sequences, split, dataset
# ---------------------------------------------------------------------------------------------------------------


def _sequences(student, ids, seq_len, **kwargs):
    inputs, labels = student.call("preprocess.make_sequences", ids, seq_len=seq_len, **kwargs)
    return np.asarray(inputs), np.asarray(labels)


@pytest.mark.points(0.5)
@pytest.mark.clause(
    "preprocess.make_sequences: both int32 arrays of shape `(N, seq_len)`",
    "preprocess.make_sequences: `labels[n, t] == inputs[n, t + 1]`",
    "preprocess.make_sequences: defaults to `seq_len`",
    "preprocess.make_sequences: ids = [0, 1, 2, 3, 4, 5, 6], seq_len = 3 -> inputs [[0, 1, 2], [3, 4, 5]], labels",
)
def test_make_sequences_cuts_windows_with_labels_shifted_by_one(student):
    inputs, labels = _sequences(student, np.arange(7), 3)
    assert_shape(inputs, (2, 3), "inputs")
    assert_shape(labels, (2, 3), "labels")
    assert inputs.dtype == np.int32 and labels.dtype == np.int32, f"expected int32, got {inputs.dtype}/{labels.dtype}"
    assert inputs.tolist() == [[0, 1, 2], [3, 4, 5]], f"inputs for ids 0..6, seq_len=3: got {inputs.tolist()}"
    assert labels.tolist() == [[1, 2, 3], [4, 5, 6]], (
        f"labels must be the inputs shifted by one token: expected [[1, 2, 3], [4, 5, 6]], got {labels.tolist()}"
    )


@pytest.mark.points(1)
@pytest.mark.clause(
    "preprocess.make_sequences: Window `n` covers `ids[n * stride : n * stride + seq_len + 1]`",
    "preprocess.make_sequences: A final window with fewer than `seq_len + 1` tokens is dropped.",
)
def test_make_sequences_stride_and_dropped_remainder(student):
    inputs, labels = _sequences(student, np.arange(6), 3, stride=1)
    assert inputs.tolist() == [[0, 1, 2], [1, 2, 3], [2, 3, 4]], f"stride=1 on ids 0..5: got {inputs.tolist()}"
    assert labels.tolist() == [[1, 2, 3], [2, 3, 4], [3, 4, 5]]
    inputs, labels = _sequences(student, np.arange(10), 4)
    assert inputs.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]], (
        f"ids 0..9 with seq_len=4: the window starting at 8 lacks tokens and is dropped; got {inputs.tolist()}"
    )
    assert labels.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]


@pytest.mark.points(0.5)
@pytest.mark.clause(
    "preprocess.make_sequences: at least 1 and at most `num_tokens - 1`",
    "preprocess.make_sequences: seq_len: tokens per training sequence, `T`",
)
def test_make_sequences_rejects_bad_lengths(student):
    for seq_len in (0, 10):  # 10 needs 11 tokens
        error = student.call_error("preprocess.make_sequences", np.arange(10), seq_len=seq_len)
        assert error is not None and error.type_name == "ValueError" and "seq_len" in error.message, (
            f"make_sequences(ids 0..9, seq_len={seq_len}) must raise a ValueError naming seq_len; got {error}"
        )
    ids = np.arange(10) * 3 + 7
    inputs, labels = _sequences(student, ids, 9)  # exactly enough: one window, which stays a batch of one
    assert_shape(inputs, (1, 9), "inputs (one window of 9 tokens)")
    assert_shape(labels, (1, 9), "labels (one window of 9 tokens)")
    assert inputs.tolist() == [ids[:9].tolist()] and labels.tolist() == [ids[1:].tolist()], (
        f"make_sequences({ids.tolist()}, seq_len=9): expected inputs {[ids[:9].tolist()]} and labels "
        f"{[ids[1:].tolist()]}, got {inputs.tolist()} and {labels.tolist()}"
    )
    inputs, labels = _sequences(student, ids[:4], 1)  # seq_len=1: windows of one token, still 2-D
    assert_shape(inputs, (3, 1), "inputs (seq_len=1)")
    assert inputs.tolist() == [[7], [10], [13]] and labels.tolist() == [[10], [13], [16]], (
        f"make_sequences({ids[:4].tolist()}, seq_len=1): expected inputs [[7], [10], [13]] and labels "
        f"[[10], [13], [16]], got {inputs.tolist()} and {labels.tolist()}"
    )


@pytest.mark.points(1)
@pytest.mark.clause(
    "preprocess.train_val_split: the first `1 - val_fraction` of the stream, and the rest",
    "preprocess.train_val_split: The split is contiguous, not shuffled",
    "preprocess.train_val_split: strictly between 0 and 1",
)
def test_train_val_split_is_contiguous_and_complete(student):
    ids = np.arange(100)
    train, val = student.call("preprocess.train_val_split", ids, val_fraction=0.2)
    assert len(train) == 80 and len(val) == 20, f"expected 80/20 tokens, got {len(train)}/{len(val)}"
    assert np.concatenate([train, val]).tolist() == ids.tolist(), "train + val must be the stream, in order"
    # A validation share smaller than one token: the training head keeps the first 1 - val_fraction of the stream.
    train, val = student.call("preprocess.train_val_split", np.arange(5), val_fraction=0.1)
    assert 4 <= len(train) <= 5 and np.concatenate([train, val]).tolist() == list(range(5)), (
        f"train_val_split(arange(5), 0.1) must keep the first 4.5 tokens, rounded either way, for training; got "
        f"{len(train)} training and {len(val)} validation tokens (a tail of int(5 * 0.1) = 0 tokens cut off with "
        "ids[:-0] leaves nothing to train on)"
    )
    for bad in (0, 1, -0.1, 1.5):
        error = student.call_error("preprocess.train_val_split", ids, val_fraction=bad)
        assert error is not None and error.type_name == "ValueError" and "val_fraction" in error.message, (
            f"train_val_split(val_fraction={bad}) must raise a ValueError naming val_fraction; got {error}"
        )


def _pairs(n, seq_len, start=0):
    """`n` sequences built here: row i of the inputs is [start + i*seq_len, ...] (distinct first tokens), and its
    labels are the inputs plus 1000, so a pair torn apart by a shuffle is seen."""
    inputs = (start + np.arange(n * seq_len)).reshape(n, seq_len)
    return inputs, inputs + 1000


@pytest.mark.points(0.5)
@pytest.mark.clause("preprocess.make_dataset: the last batch may be smaller unless `drop_remainder`")
def test_make_dataset_batches_keep_pairs_together(student):
    inputs, labels = _pairs(49, 4)
    (batches,) = student.run(dataset_batches, inputs, labels, {"batch_size": 8, "shuffle": True, "seed": 3})
    assert len(batches) == 7, f"49 sequences in batches of 8 make 7 batches (the last one smaller); got {len(batches)}"
    for i, (x, y) in enumerate(batches):
        size = 8 if i < 6 else 1
        assert_shape(x, (size, 4), f"batch {i} of inputs")
        assert_shape(y, (size, 4), f"batch {i} of labels")
        assert np.array_equal(y, x + 1000), (
            f"batch {i}: each row of labels must be the labels of the same sequence as the row of inputs (here the "
            "inputs plus 1000): shuffling must move inputs and labels together"
        )
    seen = np.concatenate([x for x, _ in batches])
    assert rows(seen) == rows(inputs), "each of the 49 sequences must appear exactly once, unchanged"
    assert seen[:, 0].tolist() != inputs[:, 0].tolist(), "shuffle=True must change the order of the sequences"


@pytest.mark.points(0.5)
@pytest.mark.clause(
    "preprocess.make_dataset: but the same for the same `seed`",
    "preprocess.make_dataset: seed: seed of the shuffle.",
)
def test_make_dataset_shuffle_is_seeded(student):
    inputs, labels = _pairs(133, 3, start=5)

    def order(**kw):
        (batches,) = student.run(dataset_batches, inputs, labels, dict(batch_size=16, **kw))
        firsts = np.concatenate([x[:, 0] for x, _ in batches])
        assert sorted(firsts.tolist()) == sorted(inputs[:, 0].tolist()), (
            f"make_dataset(batch_size=16, {kw}) must hold each of the 133 sequences once"
        )
        return firsts.tolist()

    assert order(shuffle=False) == inputs[:, 0].tolist(), "shuffle=False must keep the original order"
    assert order(shuffle=True, seed=5) == order(shuffle=True, seed=5), "the same seed must give the same order"
    assert order(shuffle=True, seed=5) != order(shuffle=True, seed=6), "different seeds must give different orders"
    assert order(shuffle=True, seed=5) != inputs[:, 0].tolist(), "shuffle=True must change the order"
    assert order(shuffle=True, seed=0) == order(shuffle=True, seed=0), (
        "seed=0 is a seed like any other: the same seed 0 must give the same order (is seed=0 treated as no seed?)"
    )
    assert order(shuffle=True, seed=0) != order(shuffle=True, seed=5), "seed=0 and seed=5 must give different orders"


@pytest.mark.points(0.5)
@pytest.mark.clause(
    "preprocess.make_dataset: batches, each int32 of shape `(B, T)`",
    "preprocess.make_dataset: drop_remainder: if True, drop the last batch",
)
def test_make_dataset_batches_are_int32_and_drop_remainder_drops_the_short_batch(student):
    inputs = np.arange(30, dtype=np.int64).reshape(10, 3)  # int64, as NumPy makes them; 10 sequences
    labels = inputs + 1
    (kept,) = student.run(dataset_batches, inputs, labels, {"batch_size": 4, "shuffle": False})
    sizes = [len(x) for x, _ in kept]
    assert sizes == [4, 4, 2], f"10 sequences in batches of 4 make batches of 4, 4 and 2; got sizes {sizes}"
    for i, (x, y) in enumerate(kept):
        assert x.dtype == np.int32 and y.dtype == np.int32, (
            f"batches must hold int32 inputs and labels whatever the arrays given (here int64); got {x.dtype} and "
            f"{y.dtype}: convert them with .astype(np.int32) before building the dataset"
        )
        assert x.tolist() == inputs[4 * i : 4 * i + 4].tolist() and y.tolist() == labels[4 * i : 4 * i + 4].tolist(), (
            f"with shuffle=False, batch {i} must be sequences {4 * i}..{min(4 * i + 4, 10) - 1} in order; got inputs "
            f"{x.tolist()}"
        )
    (dropped,) = student.run(
        dataset_batches, inputs, labels, {"batch_size": 4, "shuffle": False, "drop_remainder": True}
    )
    sizes = [len(x) for x, _ in dropped]
    assert sizes == [4, 4], (
        f"drop_remainder=True must drop the last batch of 2 (fewer than batch_size=4); got sizes {sizes}: "
        "pass drop_remainder to Dataset.batch"
    )
    assert np.concatenate([x for x, _ in dropped]).tolist() == inputs[:8].tolist(), "the first 8 sequences, in order"
    # A batch of one, and sequences of one token, stay 2-D: (B, T) = (1, 3), then (2, 1).
    (one,) = student.run(dataset_batches, inputs[:1], labels[:1], {"batch_size": 4, "shuffle": True, "seed": 1})
    assert len(one) == 1, f"one sequence makes one batch; got {len(one)}"
    assert_shape(one[0][0], (1, 3), "the batch of inputs of a data set of one sequence")
    assert one[0][0].tolist() == inputs[:1].tolist() and one[0][1].tolist() == labels[:1].tolist()
    (short,) = student.run(dataset_batches, inputs[:4, :1], labels[:4, :1], {"batch_size": 2, "shuffle": False})
    shapes = [np.shape(x) for x, _ in short]
    assert shapes == [(2, 1), (2, 1)], f"4 sequences of T=1 in batches of 2 make two batches of (2, 1); got {shapes}"
    assert np.concatenate([y for _, y in short]).tolist() == labels[:4, :1].tolist()
