"""Corpora: the offline default, named corpora downloaded on request, or any UTF-8 file (given, not graded).

`load_corpus(name_or_path)` is the one way in. Named corpora are listed in `data/corpora.json` with their URL,
size and SHA-256; a download goes to a temporary file with a progress bar and is renamed into `data/` only once
its checksum matches, so an interrupted or corrupted download never leaves a file that looks complete.
"""

import argparse
import hashlib
import http.client
import json
import os
import sys
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

DATA_DIR = Path(os.environ.get("LM_DATA_DIR", Path(__file__).resolve().parent.parent / "data"))
MANIFEST = Path(__file__).resolve().parent.parent / "data" / "corpora.json"
DEFAULT_CORPUS = "pyref"


def _manifest():
    """Returns the named downloadable corpora: {name: {url, bytes, sha256, file, description}}."""
    if not MANIFEST.exists():
        return {}
    return json.loads(MANIFEST.read_text(encoding="utf-8"))


def corpus_names() -> list[str]:
    """Returns every name `load_corpus` accepts besides a path."""
    return [DEFAULT_CORPUS] + sorted(_manifest())


def python_reference() -> str:
    """Returns the Python Language Reference that ships with CPython (`pydoc_data.topics`), about 465 KB."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def sha256_of(path: str | os.PathLike) -> str:
    """The SHA-256 of the file at `path`, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: str | os.PathLike, sha256: str, num_bytes: int | None = None, timeout: float = 30) -> Path:
    """Downloads `url` to `dest`, verified by SHA-256, and returns `dest`.

    The bytes go to `dest` + ".part" first, with a progress bar; only a complete file whose checksum matches is
    renamed to `dest`. On any failure the partial file is removed and the error says what happened.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or num_bytes or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {dest.name}") as bar:
                for block in iter(lambda: response.read(1 << 16), b""):
                    out.write(block)
                    bar.update(len(block))
        received = part.stat().st_size
        expected = num_bytes or total
        if expected is not None and received != expected:
            raise OSError(f"download of {url} was cut short: received {received} of {expected} bytes")
        digest = sha256_of(part)
        if digest != sha256:
            raise OSError(
                f"checksum mismatch for {url}: expected SHA-256 {sha256}, got {digest}; the file was discarded"
            )
    except BaseException as error:
        part.unlink(missing_ok=True)
        if isinstance(error, (OSError, http.client.HTTPException)) and not isinstance(error, FileNotFoundError):
            raise OSError(f"could not download {dest.name}: {error}") from error
        raise
    os.replace(part, dest)
    return dest


def fetch(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Returns the path of the named corpus in `data_dir`, downloading and verifying it first if needed."""
    corpora = _manifest()
    if name not in corpora:
        raise ValueError(f"unknown corpus {name!r}: downloadable corpora are {sorted(corpora)}")
    entry = corpora[name]
    path = Path(data_dir or DATA_DIR) / entry["file"]
    if path.exists() and sha256_of(path) == entry["sha256"]:
        return path
    return download(entry["url"], path, entry["sha256"], entry.get("bytes"))


def read_text_file(path: str | os.PathLike) -> str:
    """Returns the contents of a UTF-8 text file, with an error that names the file and the byte otherwise."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path} is not UTF-8 text: byte {error.start} is 0x{data[error.start]:02x}; convert the file to UTF-8"
        ) from None


def load_corpus(name_or_path: str | os.PathLike = DEFAULT_CORPUS, data_dir: str | os.PathLike | None = None) -> str:
    """Returns the text of a corpus: `"pyref"` (offline default), a name from `data/corpora.json`, or a path.

    Raises:
        ValueError: for an unknown name, a file that is not UTF-8, or an empty corpus.
    """
    name_or_path = str(name_or_path)
    if name_or_path == DEFAULT_CORPUS:
        text = python_reference()
    elif name_or_path in _manifest():
        text = read_text_file(fetch(name_or_path, data_dir))
    elif Path(name_or_path).is_file():
        text = read_text_file(name_or_path)
    else:
        raise ValueError(
            f"unknown corpus {name_or_path!r}: expected one of {corpus_names()} or the path of a UTF-8 text file"
        )
    if not text.strip():
        raise ValueError(f"corpus {name_or_path!r} is empty (or only whitespace): there is nothing to train on")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Download and verify the named corpora into data/.")
    parser.add_argument(
        "--download",
        nargs="+",
        metavar="NAME",
        default=["all"],
        help=f"corpora to fetch: any of {sorted(_manifest())}, or 'all' (default)",
    )
    args = parser.parse_args(argv)
    names = sorted(_manifest()) if "all" in args.download else args.download
    for name in names:
        try:
            path = fetch(name)
        except (OSError, ValueError) as error:
            url = _manifest().get(name, {}).get("url", "")
            print(
                f"error: {error}; nothing was written. Check the network and run it again, or download {url} "
                f"yourself and train with --corpus PATH",
                file=sys.stderr,
            )
            return 2
        print(f"{name}: {path} ({path.stat().st_size:,} bytes, SHA-256 verified)")
    return 0
