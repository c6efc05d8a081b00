"""Bits per character, the validation loss every tokenizer shares: the total in nats over the validation text
evaluated, divided by the characters that text holds and by ln 2. The expected values here count the characters
by decoding the evaluated ids (or from the text), independently of `lmkit.data`'s counters."""

import json
import math

import numpy as np
import pytest

from assignment import preprocess
from lmkit import data
from lmrun import cli, prepare

TINY = ["--config", "tiny", "--no-progress", "--no-jit", "--sample-tokens", 0]
# ASCII, so decoding any run of ids gives back exactly its characters; the validation tail has unseen words.
TEXT = "".join(f"Line {i}: the quick brown fox jumps over the lazy dog, again and again.\n" for i in range(400))
TEXT += "Zebras quietly vexed jovial wizards; sphinx of black quartz, judge my vow.\n" * 3


def main(capsys, *args):
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert code == 0, f"train returned {code}\n--- stdout\n{out}\n--- stderr\n{err}"
    return out


def history(run_dir):
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("bpc") / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_bpe_ids_count_every_character_once_even_when_cut_in_two():
    text = "naïve café — 東京 ½ 🙂🙂 " * 20 + "plain ascii words " * 20
    tok = preprocess.BPETokenizer(270).fit(text)  # few merges: multi-byte characters stay cut
    ids = tok.encode(text)
    assert any(len(tok.token_bytes(i).decode("utf-8", "ignore")) == 0 for i in ids), "no id cuts a character here"
    per_id = data.characters_per_id(tok)
    assert per_id[ids].sum() == len(text)
    counts = data.ValidationCharacters(ids, id_counts=per_id)
    assert counts(len(ids) - 1) == len(text) - per_id[ids[0]]


@pytest.mark.timeout(300)
def test_a_run_on_bpe_shards_reports_nats_over_the_characters_evaluated(corpus_file, tmp_path, capsys):
    shards = tmp_path / "bpe"
    prepare.prepare(corpus_file, shards, "bpe", vocab_size=300, progress=False)
    run_dir = tmp_path / "run"
    out = main(capsys, *TINY, "--data", shards, "--run-dir", run_dir, "--steps", 4, "--eval-every", 2,
               "--eval-batch-size", 2, "--eval-batches", 3)  # fmt: skip
    tok = preprocess.load_tokenizer(shards / "tokenizer.json")
    val = np.fromfile(shards / "val.bin", dtype="<u2")
    seq_len = 16
    first, last = history(run_dir)
    for record, windows in ((first, 2 * 3), (last, (len(val) - 1) // seq_len)):
        n = windows * seq_len  # the labels evaluated: val[1 : 1 + n]
        chars = len(tok.decode(val[1 : 1 + n]))
        assert chars > n, "BPE tokens hold several characters each"
        expected = record["val_loss"] / math.log(2) * n / chars
        assert record["val_bits_per_char"] == pytest.approx(expected, rel=1e-5), record
    assert f"{last['val_bits_per_char']:.4f} bits/char" in out, out


@pytest.mark.timeout(300)
def test_a_character_run_reports_the_loss_in_bits(corpus_file, tmp_path, capsys):
    run_dir = tmp_path / "run"
    main(capsys, *TINY, "--corpus", corpus_file, "--run-dir", run_dir, "--steps", 2, "--eval-every", 1)
    for record in history(run_dir):  # one character per token: bits per character is the loss over ln 2
        assert record["val_bits_per_char"] == pytest.approx(record["val_loss"] / math.log(2), rel=1e-5), record


def test_unknown_words_of_a_word_shard_count_their_characters(corpus_file, tmp_path):
    from lmrun import run_files

    meta = prepare.prepare(corpus_file, tmp_path / "word", "word", progress=False)
    val_meta = meta["shards"]["val.bin"]
    assert val_meta["unk_tokens"] > 0, "the validation tail holds words the training part has not"
    train_ids, val_ids, tok, meta = run_files.read_shards(tmp_path / "word")
    counts = run_files.shard_characters(tok, val_ids, meta)
    first = len(tok.vocab[val_ids[0]])  # the first id, never a label, is a known word here
    assert counts(len(val_ids) - 1) == pytest.approx(val_meta["chars"] - first)


@pytest.mark.timeout(600)
def test_compare_tokenizers_trains_each_on_the_same_validation_text(corpus_file, tmp_path, capsys):
    from lmrun import compare

    out_dir = tmp_path / "compare"
    args = [
        "--config",
        "tiny",
        "--models",
        "transformer",
        "--tokenizers",
        "char",
        "word",
        "bpe",
        "--vocab-size",
        300,
        "--steps",
        2,
        "--eval-every",
        1,
        "--corpus",
        corpus_file,
        "--runs-dir",
        out_dir,
        "--no-progress",
    ]
    assert compare.main([str(a) for a in args]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    metas = {t: json.loads((out_dir / "shards" / t / "meta.json").read_text()) for t in ("char", "word", "bpe")}
    assert len({m["shards"]["val.bin"]["chars"] for m in metas.values()}) == 1, "one validation text for all"
    summary = {r["name"]: r for r in json.loads((out_dir / "summary.json").read_text())}
    assert sorted(summary) == ["bpe", "char", "word"]
    for name, row in summary.items():
        (line,) = [line for line in out.splitlines() if line.startswith(f"| {name} |")]
        assert f"| {row['val_bits_per_char']:.4f} |" in line, f"bits per character in the table: {line}"
        last = history(out_dir / name)[-1]
        assert row["val_bits_per_char"] == last["val_bits_per_char"] and row["val_loss"] == last["val_loss"]
    char = summary["char"]
    assert char["val_bits_per_char"] == pytest.approx(char["val_loss"] / math.log(2), rel=1e-5)
    assert (out_dir / "bits_per_char.png").stat().st_size > 1000


@pytest.mark.parametrize("change", [["--corpus", "other.txt"], ["--vocab-size", 260]])
def test_compare_refuses_shards_of_another_corpus_or_vocabulary(change, corpus_file, tmp_path, capsys):
    from lmrun import compare

    out_dir = tmp_path / "compare"
    prepare.prepare(corpus_file, out_dir / "shards" / "bpe", "bpe", vocab_size=300, progress=False)
    (tmp_path / "other.txt").write_text(TEXT[::-1], encoding="utf-8")
    args = {"--corpus": corpus_file, "--vocab-size": 300}
    args[change[0]] = tmp_path / change[1] if change[0] == "--corpus" else change[1]
    argv = ["--config", "tiny", "--tokenizers", "bpe", "--runs-dir", out_dir, "--no-progress"]
    argv += [str(a) for pair in args.items() for a in pair]
    assert compare.main([str(a) for a in argv]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "holds shards of" in err[0] and "--overwrite" in err[0], err
    assert not (out_dir / "bpe").exists(), "nothing trained on them"
