"""Byte-level BPE: training time with incremental pair counts, and encoding throughput beside tiktoken's.

For each corpus (the default `pyref`, and the tiny-Shakespeare stand-in if `data/shakespeare_standin.txt` exists;
`python bench/shakespeare_standin.py` builds it): train 4,096 merges with the reference `BPETokenizer.fit`
(incremental counts), time a few merges of the plain method (recount every pair at every step) for comparison,
then encode the whole corpus with our tokenizer (cold cache, then warm) and with a `tiktoken.Encoding` built from
the same merges and pattern, checking that the ids agree. Prints figures; nothing passes or fails.

    python bench/bench_bpe.py [--merges 4096] [--repeats 3] [--full-recount]
"""

import argparse
import collections
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from assignment import preprocess  # noqa: E402
from lmrun import corpus

STANDIN = Path(__file__).resolve().parent.parent / "data" / "shakespeare_standin.txt"
EOT = "<|endoftext|>"


def timed(fn, repeats):
    """Returns (median seconds, last result) over `repeats` calls."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def recount_seconds_per_merge(text, num_merges):
    """Seconds per merge of plain BPE (recount every pair at every step), over its first `num_merges` merges."""
    tok = preprocess.BPETokenizer(vocab_size=preprocess.NUM_BYTES)
    words = collections.Counter(tuple(p.encode()) for p in tok.pretokenize(text))
    start = time.perf_counter()
    for step in range(num_merges):
        pairs = collections.Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        best = min(pairs, key=lambda p: (-pairs[p], p))
        new_id = preprocess.NUM_BYTES + step
        words = collections.Counter({tuple(preprocess.merge_pair(list(w), best, new_id)): c for w, c in words.items()})
    return (time.perf_counter() - start) / num_merges


def bench(name, text, merges, repeats, full_recount=False):
    mb = len(text.encode("utf-8")) / 1e6
    print(f"== {name}: {len(text):,} characters, {mb:.2f} MB")
    build = lambda: preprocess.BPETokenizer(preprocess.NUM_BYTES + merges + 1, special_tokens=(EOT,)).fit(text)  # noqa: E731
    fit_s, tok = timed(build, repeats)
    print(f"  fit, {len(tok.merges):,} merges (incremental counts): {fit_s:.2f} s median of {repeats}")
    if full_recount:
        recount_s = recount_seconds_per_merge(text, len(tok.merges)) * len(tok.merges)
        print(f"  plain recount, all {len(tok.merges):,} merges: {recount_s:.1f} s ({recount_s / fit_s:.0f}x)")
    else:
        per_merge = recount_seconds_per_merge(text, 20)
        print(
            f"  plain recount, first 20 merges: {per_merge * 1e3:.0f} ms per merge (later merges cost less as the "
            f"pre-tokens shrink; --full-recount times all {merges:,})"
        )

    def cold():
        tok._cache.clear()
        return tok.encode(text)

    cold_s, ids = timed(cold, repeats)
    warm_s, _ = timed(lambda: tok.encode(text), repeats)
    print(
        f"  encode, ours: {mb / cold_s:.2f} MB/s cold cache, {mb / warm_s:.2f} MB/s warm "
        f"({len(ids):,} tokens, {len(text) / len(ids):.2f} characters per token)"
    )
    try:
        import tiktoken
    except ModuleNotFoundError:
        print("  tiktoken: not installed (pip install tiktoken), skipped")
        return
    ranks = {tok.token_bytes(i): i for i in range(preprocess.NUM_BYTES + len(tok.merges))}
    enc = tiktoken.Encoding(
        "bench", pat_str=preprocess.GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=tok.special_ids
    )
    tik_s, theirs = timed(lambda: enc.encode(text, allowed_special="all"), repeats)
    same = "identical ids" if theirs == ids.tolist() else "IDS DIFFER"
    print(f"  encode, tiktoken (same ranks, same pattern): {mb / tik_s:.2f} MB/s, {same}")
    print(f"  tiktoken / ours: {cold_s / tik_s:.1f}x cold, {warm_s / tik_s:.1f}x warm")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--merges", type=int, default=4096, help="merges to learn (default 4096)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each measurement (median)")
    parser.add_argument("--full-recount", action="store_true", help="time the plain method on every merge (slow)")
    parser.add_argument("--standin", default=str(STANDIN), help="the Shakespeare stand-in's path")
    args = parser.parse_args(argv)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPU(s) visible; one thread")
    bench("pyref (default corpus)", corpus.load_corpus("pyref"), args.merges, args.repeats, args.full_recount)
    if Path(args.standin).exists():
        bench(
            "tiny-Shakespeare stand-in", corpus.load_corpus(args.standin), args.merges, args.repeats, args.full_recount
        )
    else:
        print(f"== stand-in: {args.standin} missing (python bench/shakespeare_standin.py builds it), skipped")


if __name__ == "__main__":
    main()
