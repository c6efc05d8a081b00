"""Part 1, hidden tests (3 of the 15 points)."""

import numpy as np
import pytest


def tokenizer_round(options, fit_text, text):
    """Probe: encodes `text` with a fitted WordTokenizer, saves it, loads it back and encodes again."""
    import os
    import tempfile

    import numpy as np

    from assignment import preprocess

    tok = preprocess.WordTokenizer(**options).fit(fit_text)
    path = os.path.join(tempfile.mkdtemp(), "tok.json")
    tok.save(path)
    again = preprocess.WordTokenizer.load(path)
    return {
        "unk_id": tok.unk_id,
        "ids": np.asarray(tok.encode(text)),
        "loaded_vocab_size": again.vocab_size,
        "loaded_ids": np.asarray(again.encode(text)),
    }


def dataset_epochs(inputs, labels, kwargs, epochs):
    """Probe: the (inputs, labels) batches of `make_dataset`, as they come, for each of `epochs` epochs."""
    import numpy as np

    from assignment import preprocess

    dataset = preprocess.make_dataset(inputs, labels, **kwargs)
    return [[(np.asarray(x), np.asarray(y)) for x, y in dataset] for _ in range(epochs)]


@pytest.mark.points(1)
@pytest.mark.clause(
    "preprocess.WordTokenizer.encode: unknown -> `unk_id`",
    "preprocess.WordTokenizer.fit: cut so that `vocab_size <= max_vocab`",
)
def test_word_tokenizer_unknown_words_and_reload_keep_limits(student):
    out = student.run(tokenizer_round, {"max_vocab": 4, "lowercase": True}, " x x x y y z w", " X y q w z")
    # The vocabulary: <unk>, ' x' (3 times), ' y' (twice), then ' w' before ' z' (tied once each, alphabetically).
    ids = np.asarray(out["ids"]).tolist()
    assert out["unk_id"] == 0 and ids == [1, 2, 0, 3, 0], "' X' (lowercased) and ' y' are known, ' q' is not"
    assert out["loaded_vocab_size"] == 4
    assert np.asarray(out["loaded_ids"]).tolist() == ids, "a loaded tokenizer must encode exactly like the saved one"


@pytest.mark.points(0.5)
@pytest.mark.clause("preprocess.make_sequences: Window `n` covers `ids[n * stride : n * stride + seq_len + 1]`")
def test_make_sequences_stride_larger_than_seq_len_skips_tokens(student):
    inputs, labels = student.call("preprocess.make_sequences", np.arange(12), seq_len=2, stride=5)
    assert np.asarray(inputs).tolist() == [[0, 1], [5, 6]], f"stride=5, seq_len=2 on ids 0..11: got {inputs}"
    assert np.asarray(labels).tolist() == [[1, 2], [6, 7]], f"got labels {labels}"


@pytest.mark.points(1)
@pytest.mark.clause("preprocess.make_dataset: differently in every epoch")
def test_make_dataset_reshuffles_each_epoch_and_covers_everything(student):
    inputs = np.arange(300).reshape(150, 2)  # built here: sequence i starts with 2 * i
    labels = inputs + 1
    epochs = student.run(dataset_epochs, inputs, labels, {"batch_size": 10, "shuffle": True, "seed": 1}, 2)
    firsts = []
    for batches in epochs:
        x = np.concatenate([np.asarray(b[0]) for b in batches])
        y = np.concatenate([np.asarray(b[1]) for b in batches])
        assert sorted(map(tuple, x.tolist())) == sorted(map(tuple, inputs.tolist())), "every sequence once per epoch"
        assert np.array_equal(y, x + 1), "labels must stay with their inputs"
        firsts.append(x[:, 0].tolist())
    assert firsts[0] != firsts[1], "each epoch must be shuffled anew (reshuffle_each_iteration)"


def first_batches(inputs, labels, batch_size, epochs):
    """Probe: the first batch of inputs of each of `epochs` epochs of a shuffled make_dataset."""
    import numpy as np

    from assignment import preprocess

    dataset = preprocess.make_dataset(inputs, labels, batch_size=batch_size, shuffle=True, seed=3)
    return [np.asarray(next(iter(dataset))[0]) for _ in range(epochs)]


@pytest.mark.points(0.5)
@pytest.mark.clause("preprocess.make_dataset: the order of the sequences is shuffled (over all N)")
def test_make_dataset_shuffles_over_all_sequences(student):
    n = 3000
    inputs = np.stack([np.arange(n), np.arange(n)], axis=1).astype(np.int32)  # sequence i starts with i
    for epoch, batch in enumerate(student.run(first_batches, inputs, inputs + 1, 32, 2)):
        assert batch[:, 0].max() >= n // 2, (
            f"epoch {epoch}: the first batch of 32 holds only sequences from the first half of the {n} "
            f"(largest index {batch[:, 0].max()}): a shuffle over all N draws one there with probability 1 - 2^-32. "
            "A shuffle buffer smaller than N only mixes neighbours: use buffer_size=len(inputs)"
        )
