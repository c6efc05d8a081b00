"""Token shards: a corpus encoded once into train.bin / val.bin, read through np.memmap (given, not graded).

    python -m lmrun prepare --corpus pyref --tokenizer bpe --vocab-size 4096 --out data/shards/pyref-bpe4096

The output directory holds `train.bin` and `val.bin` (the token ids back to back, little-endian `uint16`, or
`uint32` when the vocabulary has more than 65,536 ids), `tokenizer.json` and `meta.json`, the header: dtype,
vocabulary size, and each shard's tokens, characters and bytes (what bits per character needs; for a word
tokenizer also its unknown words and their characters, whose lengths the ids lose). `open_shard(path)`
checks a shard against the header and returns it memory-mapped, so a corpus larger than memory trains as well.

The corpus is read and encoded in chunks with a progress bar. Chunks are cut only at a newline between two
non-space characters: no pre-token (GPT-2's or `WORD_PATTERN`'s) spans such a newline, and a chunk boundary there
splits the text exactly as encoding it whole would. The split is contiguous, as in `train_val_split`: the first
`1 - val_fraction` of the corpus (by bytes, moved to the nearest such newline) trains, the rest validates; the
tokenizer is fitted on the training part only (at most `--fit-chars` characters of it). Everything is written to
a temporary directory that is renamed to `--out` once complete: an interrupted run leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import codecs
import json
import os
import re
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TypedDict

import numpy as np
from tqdm.auto import tqdm

from assignment import preprocess  # imports TensorFlow through lmkit, without its start-up chatter
from lmkit.errors import PrepareError
from lmrun import corpus

FORMAT = "lm-token-shards"
VERSION = 1
SHARDS = ("train.bin", "val.bin")
CHUNK_CHARS = 1 << 20  # characters encoded per step: small enough for a smooth bar, large enough to be fast
READ_BYTES = 1 << 20
SAFE_CUT = re.compile(r"(?<=\S\n)(?=\S)")  # a newline between two non-space characters: no pre-token spans it


class _ShardStats(TypedDict):
    tokens: int
    chars: int  # characters of the text it encodes
    bytes: int  # UTF-8 bytes of that text


class ShardStats(_ShardStats, total=False):
    """What meta.json says of one shard; a word tokenizer's shards also count their unknown words."""

    unk_tokens: int  # words encoded as <unk>
    unk_chars: int  # their characters, which the ids lose


class ShardMeta(TypedDict):
    """meta.json, the header of a shard directory."""

    format: str  # FORMAT
    version: int  # VERSION
    dtype: str  # of the ids in the .bin files: "uint16" or "uint32" (little-endian)
    vocab_size: int
    tokenizer: str  # the tokenizer's file, relative to the directory: "tokenizer.json"
    tokenizer_kind: str  # "char", "word" or "bpe"
    corpus: str  # the corpus name or the path of the text file
    val_fraction: float
    shards: dict[str, ShardStats]  # "train.bin" and "val.bin"


def first_cut(text: str, start: int) -> int | None:
    """Returns the first position >= `start` where `text` can be cut without changing its pre-tokens, or None."""
    match = SAFE_CUT.search(text, start)
    return match.start() if match else None


def nearest_cut(text: str, target: int) -> int | None:
    """Returns the safe cut of `text` closest to `target`, or None if `text` has none."""
    after = first_cut(text, target)
    before = None
    for m in SAFE_CUT.finditer(text, max(0, target - CHUNK_CHARS), target):
        before = m.start()
    candidates = [c for c in (before, after) if c is not None]
    return min(candidates, key=lambda c: abs(c - target)) if candidates else None


def _cut_pieces(buffer, chunk_chars, final):
    """Splits `buffer` into pieces of at least `chunk_chars` characters ending at safe cuts; returns
    `(pieces, rest)`, `rest` being what must wait for more text (nothing if `final`)."""
    pieces = []
    while len(buffer) > chunk_chars:
        cut = first_cut(buffer, chunk_chars)
        if cut is None:
            break
        pieces.append(buffer[:cut])
        buffer = buffer[cut:]
    if final and buffer:
        pieces.append(buffer)
        buffer = ""
    return pieces, buffer


def text_pieces(text: str, chunk_chars: int = CHUNK_CHARS) -> Iterator[str]:
    """Yields `text` in pieces of about `chunk_chars` characters, each ending at a safe cut (or the end)."""
    yield from _cut_pieces(text, chunk_chars, final=True)[0]


def file_pieces(path: str | os.PathLike, chunk_chars: int = CHUNK_CHARS) -> Iterator[str]:
    """Yields the UTF-8 text of `path` in pieces ending at safe cuts, read a block at a time.

    Raises:
        PrepareError: for a binary file (a NUL byte) or bytes that are not UTF-8, naming the offset.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    buffer, offset = "", 0
    with open(path, "rb") as f:
        while True:
            block = f.read(READ_BYTES)
            if b"\0" in block:
                raise PrepareError(f"{path} looks binary, not text: a NUL byte at offset {offset + block.index(0)}")
            try:
                buffer += decoder.decode(block, final=not block)
            except UnicodeDecodeError as error:
                where = offset + error.start if block else offset
                raise PrepareError(f"{path} is not UTF-8 text (at byte {where}): convert it to UTF-8") from None
            offset += len(block)
            pieces, buffer = _cut_pieces(buffer, chunk_chars, final=not block)
            yield from pieces
            if not block:
                return


class Source:
    """A corpus to stream: a named corpus (held in memory by `corpus.load_corpus`) or a text file (read in blocks)."""

    def __init__(self, name_or_path: str | os.PathLike):
        self.name = str(name_or_path)
        path = Path(self.name)
        if self.name not in corpus.corpus_names() and path.is_file():
            self.path, self.text = path, None
            self.num_bytes = path.stat().st_size
            if self.num_bytes == 0:
                raise PrepareError(f"{path} is empty: there is nothing to encode")
        else:
            self.path = None
            try:
                self.text = corpus.load_corpus(self.name)
            except ValueError as error:
                raise PrepareError(str(error)) from None
            self.num_bytes = len(self.text.encode("utf-8"))

    def pieces(self, chunk_chars: int = CHUNK_CHARS) -> Iterator[str]:
        if self.path is None:
            return text_pieces(self.text, chunk_chars)
        return file_pieces(self.path, chunk_chars)

    def split(self, val_fraction: float, chunk_chars: int = CHUNK_CHARS) -> Iterator[tuple[str, str]]:
        """Yields `(shard name, piece)`: the pieces of the first `1 - val_fraction` of the bytes to train.bin, the
        rest to val.bin, the piece that crosses the split cut at its safe cut nearest to it."""
        split_at = int(self.num_bytes * (1 - val_fraction))
        done = 0
        in_train = True
        for piece in self.pieces(chunk_chars):
            size = len(piece.encode("utf-8"))
            if in_train and done + size > split_at:
                target = len(piece.encode("utf-8")[: split_at - done].decode("utf-8", "ignore"))
                # Near the split a safe cut is preferred; without one any cut will do: the two shards are
                # separate streams, so only cuts inside a shard must keep the pre-tokens whole.
                cut = nearest_cut(piece, target)
                cut = target if cut is None or abs(cut - target) > chunk_chars // 2 else cut
                if cut > 0:
                    yield "train.bin", piece[:cut]
                in_train = False
                if cut < len(piece):
                    yield "val.bin", piece[cut:]
            else:
                yield ("train.bin" if in_train else "val.bin"), piece
            done += size


def make_tokenizer(
    kind: str, vocab_size: int | None = None, special_tokens: Sequence[str] = ("<|endoftext|>",)
) -> preprocess.CharTokenizer | preprocess.WordTokenizer | preprocess.BPETokenizer:
    """Returns an unfitted tokenizer of `kind` ("char", "word" or "bpe")."""
    if kind == "char":
        return preprocess.CharTokenizer()
    if kind == "word":
        return preprocess.WordTokenizer(max_vocab=vocab_size)
    if kind == "bpe":
        size = vocab_size if vocab_size is not None else 4096
        try:
            return preprocess.BPETokenizer(size, special_tokens=special_tokens)
        except ValueError as error:
            raise PrepareError(str(error)) from None
    raise PrepareError(f"unknown tokenizer {kind!r}: expected char, word or bpe")


def dtype_for(vocab_size: int) -> np.dtype:
    """Returns the smallest unsigned dtype that holds every id: uint16 up to 65,536 ids, else uint32."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def prepare(
    source: str | os.PathLike | Source,
    out: str | os.PathLike,
    tokenizer: str | os.PathLike = "char",
    vocab_size: int | None = None,
    val_fraction: float = 0.1,
    fit_chars: int = 10_000_000,
    chunk_chars: int = CHUNK_CHARS,
    progress: bool = True,
) -> ShardMeta:
    """Writes the shards of `source` (a corpus name or path) to `out` and returns the header (meta.json's dict).

    `tokenizer` is "char", "word" or "bpe" (fitted on the training part), or the path of a saved tokenizer.json
    (loaded as is).
    """
    if not 0 < val_fraction < 1:
        raise PrepareError(f"val_fraction must be strictly between 0 and 1; got {val_fraction}")
    out = Path(out)
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / "meta.json").exists())):
        raise PrepareError(f"{out} exists and is not a shard directory (no meta.json): refusing to overwrite it")
    src = source if isinstance(source, Source) else Source(source)
    if Path(str(tokenizer)).suffix == ".json":
        try:
            tok = preprocess.load_tokenizer(tokenizer)
        except (OSError, ValueError, KeyError) as error:
            raise PrepareError(f"cannot load tokenizer {tokenizer}: {error}") from None
    else:
        tok = make_tokenizer(tokenizer, vocab_size)
        train_text, size = [], 0
        for shard, piece in src.split(val_fraction, chunk_chars):
            if shard != "train.bin" or size >= fit_chars:
                break
            train_text.append(piece[: fit_chars - size])
            size += len(train_text[-1])
        if size == 0:
            raise PrepareError(
                f"{src.name} is too small to split: train.bin would hold no text (val_fraction={val_fraction})"
            )
        if not "".join(train_text).strip():
            raise PrepareError(f"the training part of {src.name} is empty or only whitespace: nothing to fit on")
        if progress:
            print(f"fitting the {tokenizer} tokenizer on {size:,} characters of {src.name} ...", file=sys.stderr)
        tok.fit("".join(train_text))
    dtype = dtype_for(tok.vocab_size)

    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        stats = {name: {"tokens": 0, "chars": 0, "bytes": 0} for name in SHARDS}
        files = {name: open(partial / name, "wb") for name in SHARDS}
        try:
            bar = tqdm(
                total=src.num_bytes, unit="B", unit_scale=True, desc=f"encoding {src.name}", disable=not progress
            )
            with bar:
                for shard, piece in src.split(val_fraction, chunk_chars):
                    ids = np.asarray(tok.encode(piece))
                    files[shard].write(ids.astype(dtype).tobytes())
                    size = len(piece.encode("utf-8"))
                    stats[shard]["tokens"] += int(ids.size)
                    stats[shard]["chars"] += len(piece)
                    stats[shard]["bytes"] += size
                    if tok.kind == "word":  # an unknown word's length is lost in its id: bits per char needs it
                        unknown = [t for t in tok.tokenize(piece) if t not in tok.token_to_id]
                        stats[shard]["unk_tokens"] = stats[shard].get("unk_tokens", 0) + len(unknown)
                        stats[shard]["unk_chars"] = stats[shard].get("unk_chars", 0) + sum(map(len, unknown))
                    bar.update(size)
        finally:
            for f in files.values():
                f.close()
        for name in SHARDS:
            if stats[name]["tokens"] == 0:
                raise PrepareError(
                    f"{src.name} is too small to split: {name} would hold no tokens (val_fraction={val_fraction}); "
                    "use more text or another val_fraction"
                )
        tok.save(partial / "tokenizer.json")
        meta: ShardMeta = {
            "format": FORMAT,
            "version": VERSION,
            "dtype": dtype.name,
            "vocab_size": tok.vocab_size,
            "tokenizer": "tokenizer.json",
            "tokenizer_kind": tok.kind,
            "corpus": src.name,
            "val_fraction": val_fraction,
            "shards": stats,
        }
        (partial / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        for name in SHARDS:
            open_shard(partial / name)  # the header and the shards agree before anything is published
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():
            os.replace(out, old)
        os.replace(partial, out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return meta


def read_meta(directory: str | os.PathLike) -> ShardMeta:
    """Returns the header (meta.json) of a shard directory, checked for format and version."""
    path = Path(directory) / "meta.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PrepareError(f"{path} is missing: {directory} is not a shard directory (run lmrun.prepare)") from None
    except (OSError, ValueError) as error:
        raise PrepareError(f"{path} is not a readable header: {error}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise PrepareError(f"{path} is not a version-{VERSION} {FORMAT} header")
    return meta


def open_shard(path: str | os.PathLike) -> np.memmap:
    """Returns the token ids of a shard (`DIR/train.bin` or `DIR/val.bin`) as a read-only 1-D `np.memmap`.

    Raises:
        PrepareError: if the header is missing or the file's size does not match the tokens and dtype it states.
    """
    path = Path(path)
    meta = read_meta(path.parent)
    entry = meta.get("shards", {}).get(path.name)
    if entry is None:
        raise PrepareError(f"{path.name} is not listed in {path.parent / 'meta.json'}")
    dtype = np.dtype(meta["dtype"]).newbyteorder("<")
    expected = entry["tokens"] * dtype.itemsize
    size = path.stat().st_size if path.exists() else None
    if size != expected:
        raise PrepareError(
            f"{path} does not match its header: expected {entry['tokens']:,} {meta['dtype']} tokens "
            f"({expected:,} bytes), found {'no file' if size is None else f'{size:,} bytes'}"
        )
    return np.memmap(path, dtype=dtype, mode="r", shape=(entry["tokens"],))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Encode a corpus into train.bin / val.bin token shards.")
    parser.add_argument("--corpus", default=corpus.DEFAULT_CORPUS, help="a corpus name or the path of a text file")
    parser.add_argument(
        "--tokenizer", default="char", help="char, word or bpe (fitted on the training part), or a tokenizer.json"
    )
    parser.add_argument("--vocab-size", type=int, default=None, help="bpe: ids in all (default 4096); word: max_vocab")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share of the corpus for val.bin (0.1)")
    parser.add_argument(
        "--fit-chars", type=int, default=10_000_000, help="fit the tokenizer on at most this many characters"
    )
    parser.add_argument("--out", required=True, help="output directory (replaced if it holds shards)")
    args = parser.parse_args(argv)
    try:
        meta = prepare(args.corpus, args.out, args.tokenizer, args.vocab_size, args.val_fraction, args.fit_chars)
    except (PrepareError, OSError) as error:
        print(f"prepare: error: {error}", file=sys.stderr)
        return 2
    except NotImplementedError as error:  # the student release, before the tokenizer's TODOs are written
        from lmkit.errors import not_written_yet

        print(f"prepare: error: {not_written_yet(error)}", file=sys.stderr)
        return 2
    train, val = meta["shards"]["train.bin"], meta["shards"]["val.bin"]
    print(
        f"{args.out}: train.bin {train['tokens']:,} tokens, val.bin {val['tokens']:,} tokens ({meta['dtype']}, "
        f"vocabulary {meta['vocab_size']:,}, {train['chars'] / max(train['tokens'], 1):.2f} characters per token)"
    )
    return 0
