"""The files of a run directory and of a shard directory, read with one clear error each (given, not graded).

A run directory holds `config.json` (a `RunConfig`), `tokenizer.json`, `history.jsonl` and the checkpoints; a shard
directory (`python -m lmrun prepare`) holds `train.bin`, `val.bin`, `meta.json` and its tokenizer. Everything
is written atomically (a temporary name, then a rename), so a killed run never leaves half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import numpy as np

from lmkit.data import ValidationCharacters, characters_per_id
from lmkit.errors import PrepareError, UsageError

if TYPE_CHECKING:  # both import TensorFlow: loaded only when a tokenizer is read
    from assignment.preprocess import BPETokenizer, CharTokenizer, WordTokenizer
    from lmrun.prepare import ShardMeta


class RunConfig(TypedDict, total=False):
    """`config.json` of a run directory: what the run is (checked on every resume) and how it trains."""

    model: str  # one of MODELS
    preset: str | None  # the transformer's TransformerConfig preset, None for a custom one or a recurrent model
    model_config: dict  # the keyword arguments that rebuild the model (`build_model`), vocabulary size included
    tokenizer: str  # "char" or "word" ("bpe" with --data shards)
    corpus: str  # a corpus name or path
    corpus_sha256: str  # of the corpus text (or of the shards' meta.json): another text is another run
    val_fraction: float
    vocab_size: int
    train: dict  # the `TrainConfig` fields
    init_from: str | None  # the run whose best weights a fine-tuning run started from
    freeze: dict | None  # {"embeddings": bool, "first_layers": int}
    data: str | None  # a shard directory of `python -m lmrun prepare`


def read_run_config(run_dir: str | os.PathLike) -> RunConfig | None:
    """Returns the dict of `run_dir/config.json`, or None when there is none; `UsageError` when it is damaged."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        return None
    try:
        config = json.loads(path.read_text())
        if not isinstance(config, dict) or not {"model", "model_config", "train"} <= set(config):
            raise ValueError("not a run's config")
    except ValueError as error:
        raise UsageError(
            f"{path} is damaged ({str(error).splitlines()[0]}); the checkpoints are intact: restore config.json from a "
            f"copy, or pass --overwrite to delete the run and start again"
        ) from None
    return config


def write_json(path: str | os.PathLike, value: object) -> None:
    """Writes `value` as JSON to `path` atomically: a killed run never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


def read_tokenizer(path: str | os.PathLike) -> CharTokenizer | WordTokenizer | BPETokenizer:
    """Returns the tokenizer saved at `path`; `UsageError` when it is missing or damaged."""
    from assignment.preprocess import load_tokenizer

    try:
        return load_tokenizer(path)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UsageError(
            f"{path} cannot be read ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
            f"restore it from a copy, or pass --overwrite to start the run again"
        ) from None


def save_tokenizer(tokenizer: CharTokenizer | WordTokenizer | BPETokenizer, path: str | os.PathLike) -> None:
    """Saves `tokenizer` to `path` atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tokenizer.save(tmp)
    os.replace(tmp, path)


def read_shards(
    data_dir: str | os.PathLike,
) -> tuple[np.memmap, np.memmap, CharTokenizer | WordTokenizer | BPETokenizer, ShardMeta]:
    """Returns `(train_ids, val_ids, tokenizer, meta)` of a shard directory written by `lmrun.prepare`, the ids
    memory-mapped; `UsageError` when it is not one or a shard does not match its header."""
    from lmrun import prepare

    data_dir = Path(data_dir)
    try:
        meta = prepare.read_meta(data_dir)
        train_ids = prepare.open_shard(data_dir / "train.bin")
        val_ids = prepare.open_shard(data_dir / "val.bin")
    except (PrepareError, OSError) as error:
        raise UsageError(f"--data {data_dir}: {error}") from None
    tokenizer = read_tokenizer(data_dir / meta["tokenizer"])
    if tokenizer.vocab_size != meta["vocab_size"]:
        raise UsageError(
            f"--data {data_dir}: its tokenizer has {tokenizer.vocab_size} ids, meta.json says {meta['vocab_size']}"
        )
    return train_ids, val_ids, tokenizer, meta


def check_same_tokenizer(data_dir: str | os.PathLike, meta: ShardMeta, init_from: str | os.PathLike) -> None:
    """Raises `UsageError` unless the shards of `data_dir` were encoded by the tokenizer of the run `init_from`
    (the same saved tokenizer: the same ids for the same text), or when that cannot be checked."""
    shards_path, run_path = Path(data_dir) / meta["tokenizer"], Path(init_from) / "tokenizer.json"
    try:
        shards_tok, run_tok = (json.loads(p.read_text(encoding="utf-8")) for p in (shards_path, run_path))
    except (OSError, ValueError) as error:
        raise UsageError(
            f"--data {data_dir} with --init-from {init_from}: cannot check that they share a tokenizer "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
        ) from None
    if shards_tok != run_tok:
        run_vocab = (read_run_config(init_from) or {}).get("vocab_size", "?")
        raise UsageError(
            f"--data {data_dir} was encoded by another tokenizer than --init-from {init_from} "
            f"({meta['tokenizer_kind']}, {meta['vocab_size']} ids, against the run's {run_tok.get('kind')}, "
            f"{run_vocab} ids): prepare the shards with the run's, python -m lmrun prepare --tokenizer "
            f"{run_path} --out DIR"
        )


def shard_characters(
    tokenizer: CharTokenizer | WordTokenizer | BPETokenizer, val_ids: np.ndarray, meta: ShardMeta
) -> ValidationCharacters:
    """Returns the characters counter of a memory-mapped validation shard (`ValidationCharacters`): from the
    characters each id stands for, a word tokenizer's unknown words at the mean length the header records."""
    id_counts = characters_per_id(tokenizer)
    val = meta["shards"]["val.bin"]
    if np.isnan(id_counts).any() and val.get("unk_tokens"):
        id_counts[np.isnan(id_counts)] = val["unk_chars"] / val["unk_tokens"]
    return ValidationCharacters(val_ids, id_counts=id_counts)
