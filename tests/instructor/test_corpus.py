"""The corpus loader: the offline default, local files, bad input, and downloads against a local HTTP server."""

import hashlib
import http.server
import threading

import pytest

from lmrun import corpus

PAYLOAD = ("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 2000).encode("utf-8")
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        if self.path == "/dropped":
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 3])  # then close the connection midway
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(PAYLOAD)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_default_corpus_is_offline_python_reference():
    text = corpus.load_corpus()
    assert 400_000 < len(text) < 600_000
    assert "assert" in text and "statement" in text


def test_download_verifies_and_renames(server, tmp_path):
    dest = corpus.download(f"{server}/good", tmp_path / "c.txt", SHA, len(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"], "no temporary file may be left behind"


def test_download_with_wrong_checksum_leaves_nothing(server, tmp_path):
    with pytest.raises(OSError, match="checksum mismatch"):
        corpus.download(f"{server}/good", tmp_path / "c.txt", "0" * 64, len(PAYLOAD))
    assert list(tmp_path.iterdir()) == []


def test_interrupted_download_leaves_nothing(server, tmp_path):
    with pytest.raises(OSError):
        corpus.download(f"{server}/dropped", tmp_path / "c.txt", SHA, len(PAYLOAD))
    assert list(tmp_path.iterdir()) == []


def test_named_corpus_is_fetched_once_then_cached(server, tmp_path, monkeypatch):
    manifest = {"tiny": {"url": f"{server}/good", "bytes": len(PAYLOAD), "sha256": SHA, "file": "tiny.txt"}}
    monkeypatch.setattr(corpus, "_manifest", lambda: manifest)
    assert corpus.load_corpus("tiny", data_dir=tmp_path) == PAYLOAD.decode()
    manifest["tiny"]["url"] = f"{server}/dropped"  # a second download would now fail
    assert corpus.load_corpus("tiny", data_dir=tmp_path) == PAYLOAD.decode()


def test_bad_corpora_get_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown corpus 'nope'.*pyref"):
        corpus.load_corpus("nope")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        corpus.load_corpus(empty)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8.*byte 3"):
        corpus.load_corpus(latin)


def test_shakespeare_manifest_matches_the_design():
    entry = corpus._manifest()["shakespeare"]
    assert entry["bytes"] == 1115394
    assert entry["sha256"] == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def test_make_data_offline_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    closed = "http://127.0.0.1:9/input.txt"  # the discard port: nothing listens, the connection is refused
    manifest = {"tiny": {"url": closed, "bytes": len(PAYLOAD), "sha256": SHA, "file": "tiny.txt"}}
    monkeypatch.setattr(corpus, "_manifest", lambda: manifest)
    monkeypatch.setattr(corpus, "DATA_DIR", tmp_path)
    assert corpus.main(["--download", "all"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: could not download tiny.txt") and closed in lines[0], err
    assert list(tmp_path.iterdir()) == []
