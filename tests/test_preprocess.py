"""Part 1 (15 points with the hidden tests): tokenizers, training sequences, the split and the tf.data pipeline."""

import json

import numpy as np
import pytest
from checks import assert_shape

from assignment import preprocess

TEXT = "To be, or not to be: that is the question.\nWhether 'tis nobler in the mind to suffer\n"


def _ids_of(tokenizer, text):
    ids = tokenizer.encode(text)
    assert isinstance(ids, np.ndarray), f"encode must return a NumPy array, got {type(ids).__name__}"
    assert ids.dtype == np.int32, f"encode must return int32 ids, got dtype {ids.dtype}"
    return ids


@pytest.mark.points(1)
def test_char_tokenizer_round_trips_known_text():
    tok = preprocess.CharTokenizer().fit(TEXT)
    ids = _ids_of(tok, TEXT)
    assert_shape(ids, (len(TEXT),), "CharTokenizer.encode(text)")
    assert tok.decode(ids) == TEXT, "decode(encode(text)) must give back the text the tokenizer was fitted on"
    assert tok.decode(list(ids)) == TEXT, "decode must also accept a Python list of ids"


@pytest.mark.points(1)
def test_char_vocab_has_one_id_per_character_plus_unknown():
    tok = preprocess.CharTokenizer().fit("abcab")
    assert tok.vocab_size == 4, (
        f"'abcab' has 3 distinct characters plus <unk>: expected vocab_size 4, got {tok.vocab_size}"
    )
    ids = _ids_of(tok, "abc")
    assert len(set(ids.tolist())) == 3, f"'a', 'b', 'c' must get three different ids, got {ids.tolist()}"
    assert tok.unk_id not in ids.tolist(), "a known character must not be encoded as the unknown id"
    assert all(0 <= i < tok.vocab_size for i in ids.tolist()), f"ids {ids.tolist()} must lie in [0, vocab_size)"


@pytest.mark.points(0.5)
def test_char_unknown_character_maps_to_unk_id():
    tok = preprocess.CharTokenizer().fit("abc")
    ids = _ids_of(tok, "azb")
    assert ids.tolist()[1] == tok.unk_id, f"'z' was never seen: expected unk_id {tok.unk_id}, got {ids.tolist()[1]}"
    assert ids.tolist()[0] != tok.unk_id and ids.tolist()[2] != tok.unk_id


@pytest.mark.points(1)
def test_word_tokenizer_splits_words_and_punctuation_and_round_trips():
    tok = preprocess.WordTokenizer().fit(TEXT)
    ids = _ids_of(tok, "To be, or not")
    assert_shape(ids, (5,), "WordTokenizer.encode('To be, or not') (tokens: 'To', ' be', ',', ' or', ' not')")
    assert tok.decode(_ids_of(tok, TEXT)) == TEXT, "decode(encode(text)) must give back the fitted text"


@pytest.mark.points(0.5)
def test_word_tokenizer_lowercase_merges_cases():
    lower = preprocess.WordTokenizer(lowercase=True).fit("Dog dog DOG")
    assert lower.encode("DOG dOg").tolist() == lower.encode("dog dog").tolist()
    assert lower.unk_id not in lower.encode("DOG dOg").tolist(), "with lowercase=True, 'DOG' is the known word 'dog'"
    cased = preprocess.WordTokenizer().fit("Dog dog DOG")
    assert cased.vocab_size == lower.vocab_size + 1, (
        f"without lowercasing 'Dog', ' dog', ' DOG' are 3 tokens (vocab_size 4), with it 'dog', ' dog' are 2 "
        f"(vocab_size 3); got {cased.vocab_size} and {lower.vocab_size}"
    )


@pytest.mark.points(1)
def test_word_max_vocab_keeps_the_most_frequent_tokens():
    text = " a" * 5 + " b" * 3 + " c"
    tok = preprocess.WordTokenizer(max_vocab=3).fit(text)
    assert tok.vocab_size == 3, f"max_vocab=3 counts <unk>: expected vocab_size 3, got {tok.vocab_size}"
    assert tok.encode(" c").tolist() == [tok.unk_id], "' c' is the rarest token and must fall outside max_vocab=3"
    assert tok.unk_id not in tok.encode(" a b").tolist(), "' a' and ' b' are the two most frequent tokens"


@pytest.mark.points(0.5)
def test_word_min_freq_drops_rare_tokens():
    tok = preprocess.WordTokenizer(min_freq=2).fit(" a a a b b c")
    assert tok.vocab_size == 3, (
        f"with min_freq=2 only ' a' and ' b' (plus <unk>) remain; got vocab_size {tok.vocab_size}"
    )
    assert tok.encode(" c").tolist() == [tok.unk_id]


@pytest.mark.points(1)
def test_tokenizers_save_and_load_as_json(tmp_path):
    for tok in (preprocess.CharTokenizer().fit(TEXT), preprocess.WordTokenizer(max_vocab=12).fit(TEXT)):
        path = tmp_path / f"{type(tok).__name__}.json"
        tok.save(path)
        json.loads(path.read_text(encoding="utf-8"))  # must be JSON
        again = type(tok).load(path)
        assert again.vocab_size == tok.vocab_size, f"{type(tok).__name__}: vocab_size changed after save/load"
        assert again.encode(TEXT).tolist() == tok.encode(TEXT).tolist(), f"{type(tok).__name__}: ids changed after load"
        assert again.decode(tok.encode(TEXT)) == tok.decode(tok.encode(TEXT))


@pytest.mark.points(0.5)
def test_decode_rejects_ids_outside_the_vocabulary():
    tok = preprocess.CharTokenizer().fit("abc")
    with pytest.raises(ValueError, match=str(tok.vocab_size + 3)):
        tok.decode([1, tok.vocab_size + 3])
    with pytest.raises(ValueError):
        tok.decode([-1])


@pytest.mark.points(1)
def test_make_sequences_cuts_windows_with_labels_shifted_by_one():
    inputs, labels = preprocess.make_sequences(np.arange(7), seq_len=3)
    assert_shape(inputs, (2, 3), "inputs")
    assert_shape(labels, (2, 3), "labels")
    assert inputs.dtype == np.int32 and labels.dtype == np.int32, f"expected int32, got {inputs.dtype}/{labels.dtype}"
    assert inputs.tolist() == [[0, 1, 2], [3, 4, 5]], f"inputs for ids 0..6, seq_len=3: got {inputs.tolist()}"
    assert labels.tolist() == [[1, 2, 3], [4, 5, 6]], (
        f"labels must be the inputs shifted by one token: expected [[1, 2, 3], [4, 5, 6]], got {labels.tolist()}"
    )


@pytest.mark.points(1)
def test_make_sequences_stride_and_dropped_remainder():
    inputs, labels = preprocess.make_sequences(np.arange(6), seq_len=3, stride=1)
    assert inputs.tolist() == [[0, 1, 2], [1, 2, 3], [2, 3, 4]], f"stride=1 on ids 0..5: got {inputs.tolist()}"
    assert labels.tolist() == [[1, 2, 3], [2, 3, 4], [3, 4, 5]]
    inputs, labels = preprocess.make_sequences(np.arange(10), seq_len=4)
    assert inputs.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]], (
        f"ids 0..9 with seq_len=4: the window starting at 8 lacks tokens and is dropped; got {inputs.tolist()}"
    )
    assert labels.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]


@pytest.mark.points(0.5)
def test_make_sequences_rejects_bad_lengths():
    with pytest.raises(ValueError, match="seq_len"):
        preprocess.make_sequences(np.arange(10), seq_len=0)
    with pytest.raises(ValueError, match="seq_len"):
        preprocess.make_sequences(np.arange(10), seq_len=10)  # needs 11 tokens
    inputs, _ = preprocess.make_sequences(np.arange(10), seq_len=9)  # exactly enough
    assert_shape(inputs, (1, 9), "inputs")


@pytest.mark.points(1)
def test_train_val_split_is_contiguous_and_complete():
    ids = np.arange(100)
    train, val = preprocess.train_val_split(ids, val_fraction=0.2)
    assert len(train) == 80 and len(val) == 20, f"expected 80/20 tokens, got {len(train)}/{len(val)}"
    assert np.concatenate([train, val]).tolist() == ids.tolist(), "train + val must be the stream, in order"
    for bad in (0, 1, -0.1, 1.5):
        with pytest.raises(ValueError, match="val_fraction"):
            preprocess.train_val_split(ids, val_fraction=bad)


def _batches(dataset):
    return [(x.numpy(), y.numpy()) for x, y in dataset]


@pytest.mark.points(1)
def test_make_dataset_batches_keep_pairs_together():
    inputs, labels = preprocess.make_sequences(np.arange(200), seq_len=4)  # 49 sequences
    batches = _batches(preprocess.make_dataset(inputs, labels, batch_size=8, shuffle=True, seed=3))
    assert len(batches) == 7, f"49 sequences in batches of 8 make 7 batches (the last one smaller); got {len(batches)}"
    for x, _ in batches[:-1]:
        assert_shape(x, (8, 4), "a batch of inputs")
    seen = np.concatenate([x for x, _ in batches])
    assert sorted(seen[:, 0].tolist()) == sorted(inputs[:, 0].tolist()), "each sequence must appear exactly once"
    for x, y in batches:
        assert np.array_equal(x[:, 1:], y[:, :-1]), "shuffling must move inputs and labels together"


@pytest.mark.points(0.5)
def test_make_dataset_shuffle_is_seeded():
    inputs, labels = preprocess.make_sequences(np.arange(400), seq_len=3)
    order = lambda **kw: np.concatenate(
        [
            x[:, 0]
            for x, _ in _batches(  # noqa: E731
                preprocess.make_dataset(inputs, labels, batch_size=16, **kw)
            )
        ]
    ).tolist()
    assert order(shuffle=False) == inputs[:, 0].tolist(), "shuffle=False must keep the original order"
    assert order(shuffle=True, seed=5) == order(shuffle=True, seed=5), "the same seed must give the same order"
    assert order(shuffle=True, seed=5) != order(shuffle=True, seed=6), "different seeds must give different orders"
    assert order(shuffle=True, seed=5) != inputs[:, 0].tolist(), "shuffle=True must change the order"
