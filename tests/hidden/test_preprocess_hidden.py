"""Part 1, hidden tests (3 of the 15 points)."""

import numpy as np
import pytest

from assignment import preprocess


@pytest.mark.points(1)
def test_word_tokenizer_unknown_words_and_reload_keep_limits(tmp_path):
    tok = preprocess.WordTokenizer(max_vocab=4, lowercase=True).fit(" x x x y y z w")
    ids = tok.encode(" X y q")
    assert ids.tolist()[2] == tok.unk_id, "' q' was never seen and must be unknown"
    assert tok.unk_id not in ids.tolist()[:2], "' X' (lowercased) and ' y' are known"
    path = tmp_path / "tok.json"
    tok.save(path)
    again = preprocess.WordTokenizer.load(path)
    assert again.vocab_size == 4
    assert again.encode(" X y q").tolist() == ids.tolist(), "a loaded tokenizer must encode exactly like the saved one"


@pytest.mark.points(1)
def test_make_sequences_stride_larger_than_seq_len_skips_tokens():
    inputs, labels = preprocess.make_sequences(np.arange(12), seq_len=2, stride=5)
    assert inputs.tolist() == [[0, 1], [5, 6]], f"stride=5, seq_len=2 on ids 0..11: got {inputs.tolist()}"
    assert labels.tolist() == [[1, 2], [6, 7]], f"got labels {labels.tolist()}"


@pytest.mark.points(1)
def test_make_dataset_reshuffles_each_epoch_and_covers_everything():
    inputs, labels = preprocess.make_sequences(np.arange(300), seq_len=2)
    dataset = preprocess.make_dataset(inputs, labels, batch_size=10, shuffle=True, seed=1)
    epochs = [np.concatenate([x.numpy()[:, 0] for x, _ in dataset]).tolist() for _ in range(2)]
    assert epochs[0] != epochs[1], "each epoch must be shuffled anew (reshuffle_each_iteration)"
    for epoch in epochs:
        assert sorted(epoch) == sorted(inputs[:, 0].tolist()), "every sequence appears once per epoch"
