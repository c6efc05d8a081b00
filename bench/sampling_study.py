"""What top-k and top-p change in the samples of a trained run: diversity, repetition, made-up words, likelihood,
and how many tokens each filter keeps per step (a figure).

    python bench/sampling_study.py --run-dir runs/main            # after `make train`
    python bench/sampling_study.py --run-dir runs/main --top-k 5 40 --top-p 0.5 0.9 --tokens 300

Every setting draws `--samples` continuations of `--prompt` with `sampling.generate` (same seed for every setting),
then measures on the generated words (the decoded text split on whitespace):
    distinct-1/2  distinct words / distinct word pairs over all of them, pooled over the samples (higher: more varied)
    rep-3         share of a sample's word trigrams that already occurred earlier in the same sample (loops)
    unseen        share of generated words that never occur in the training corpus (made-up words, from the tail)
    nll           mean negative log-likelihood per token of the samples under the unfiltered model (T = 1)
    kept          mean number of tokens the filter keeps per step (V without a filter)
and writes a figure of the kept-set size per step: top-p adapts it to the model's confidence, a fixed k does not.
A benchmark prints figures; nothing passes or fails.
"""

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the repository's `assignment`

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from assignment import sampling  # noqa: E402


def context_length(model):
    """Returns the model's context length (`model.config.context_length` or `model.context_length`), or None."""
    for owner in (getattr(model, "config", None), model):
        length = getattr(owner, "context_length", None)
        if length is not None:
            return int(length)
    return None


def step_logits(model, ids, start, chunk=256):
    """Returns the logits `(B, N, V)` the model gave each generated token `ids[:, start:]`, recomputed the way
    `generate` reads the context: the whole prefix, or its last `context_length` tokens."""
    length = context_length(model)
    if length is None or ids.shape[1] - 1 <= length:
        return model(tf.constant(ids[:, :-1]))[:, start - 1 :, :].numpy()  # (B, N, V)
    parts = []
    if start <= length:  # tokens start .. length: one causal pass over the first `length` tokens
        parts.append(model(tf.constant(ids[:, :length]))[:, start - 1 :, :].numpy())
    later = range(max(start, length + 1), ids.shape[1])  # token t: the window ids[:, t - length:t]
    windows = np.stack([ids[:, t - length : t] for t in later], axis=1).reshape(-1, length)  # (B * N', L)
    last = [model(tf.constant(windows[i : i + chunk]))[:, -1, :].numpy() for i in range(0, len(windows), chunk)]
    parts.append(np.concatenate(last).reshape(ids.shape[0], len(later), -1))  # (B, N', V)
    return np.concatenate(parts, axis=1)  # (B, N, V)


def kept_sizes(logits, setting):
    """Returns how many tokens the setting's filters keep at each step: `(B, N)` ints."""
    flat = logits.reshape(-1, logits.shape[-1])  # (B * N, V)
    if setting.get("greedy"):
        return np.ones(logits.shape[:2], dtype=int)
    flat = sampling.apply_temperature(flat, setting.get("temperature", 1.0))
    if setting.get("top_k") is not None:
        flat = sampling.top_k_filter(flat, setting["top_k"])
    if setting.get("top_p") is not None:
        flat = sampling.top_p_filter(flat, setting["top_p"])
    return np.isfinite(np.asarray(flat)).sum(axis=-1).reshape(logits.shape[:2])


def word_metrics(texts, corpus_words):
    """Returns distinct-1, distinct-2, rep-3 and the unseen-word share of the generated texts."""
    samples = [text.split() for text in texts]
    words = [w for sample in samples for w in sample]
    pairs = [tuple(s[i : i + 2]) for s in samples for i in range(len(s) - 1)]
    reps = []
    for s in samples:
        trigrams = [tuple(s[i : i + 3]) for i in range(len(s) - 2)]
        seen, repeated = set(), 0
        for g in trigrams:
            repeated += g in seen
            seen.add(g)
        if trigrams:
            reps.append(repeated / len(trigrams))
    return {
        "distinct-1": len(set(words)) / max(len(words), 1),
        "distinct-2": len(set(pairs)) / max(len(pairs), 1),
        "rep-3": float(np.mean(reps)) if reps else 0.0,
        "unseen": sum(w not in corpus_words for w in words) / max(len(words), 1),
    }


def label(setting):
    if setting.get("greedy"):
        return "greedy"
    parts = [f"T={setting.get('temperature', 1.0):g}"]
    parts += [f"top-k {setting['top_k']}"] if setting.get("top_k") is not None else []
    parts += [f"top-p {setting['top_p']:g}"] if setting.get("top_p") is not None else []
    return ", ".join(parts)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", required=True, help="a trained run directory (python -m lmrun train)")
    parser.add_argument("--which", default="best", help="checkpoint: best (default), latest, or a path")
    parser.add_argument("--prompt", default="The ", help="prompt of every sample (default: 'The ')")
    parser.add_argument("--tokens", type=int, default=200, help="new tokens per sample (default 200)")
    parser.add_argument("--samples", type=int, default=16, help="samples per setting (default 16)")
    parser.add_argument("--temperature", type=float, default=1.0, help="temperature of every sampled setting")
    parser.add_argument("--top-k", type=int, nargs="*", default=[5, 20], help="top-k values (default 5 20)")
    parser.add_argument("--top-p", type=float, nargs="*", default=[0.5, 0.9], help="top-p values (default 0.5 0.9)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws, the same for every setting")
    parser.add_argument("--out", default=None, help="figure path (default: <run-dir>/sampling_study.png)")
    args = parser.parse_args(argv)

    from lmrun.corpus import load_corpus
    from lmrun.runs import load_run

    model, tokenizer, config, checkpoint = load_run(args.run_dir, args.which)
    corpus_words = set(load_corpus(config.get("corpus", "pyref")).split())
    prompt = np.asarray(tokenizer.encode(args.prompt), dtype=np.int32)
    prompts = np.tile(prompt[None, :], (args.samples, 1))  # (B, T)
    print(
        f"run {args.run_dir} ({config.get('model')}, checkpoint {checkpoint}), vocab {tokenizer.vocab_size}, "
        f"{args.samples} samples x {args.tokens} tokens, prompt {args.prompt!r}, seed {args.seed}\n"
    )

    t = args.temperature
    settings = [dict(greedy=True), dict(temperature=t)]
    settings += [dict(temperature=t, top_k=k) for k in args.top_k]
    settings += [dict(temperature=t, top_p=p) for p in args.top_p]

    rows, kept_by_setting = [], {}
    for setting in settings:
        start = time.perf_counter()
        ids = sampling.generate(model, prompts, args.tokens, seed=args.seed, **setting)  # (B, T + N)
        seconds = time.perf_counter() - start
        logits = step_logits(model, ids, prompts.shape[1])  # (B, N, V)
        new = ids[:, prompts.shape[1] :]  # (B, N)
        log_probs = tf.nn.log_softmax(logits, axis=-1).numpy()
        nll = -float(np.mean(np.take_along_axis(log_probs, new[..., None], axis=-1)))
        kept = kept_sizes(logits, setting)  # (B, N)
        kept_by_setting[label(setting)] = kept
        texts = [tokenizer.decode(row) for row in new]
        rows.append((label(setting), word_metrics(texts, corpus_words), nll, kept.mean(), seconds, texts[0]))

    print("| setting | distinct-1 | distinct-2 | rep-3 | unseen words | nll/token | kept per step | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, m, nll, kept, seconds, _ in rows:
        print(
            f"| {name} | {m['distinct-1']:.3f} | {m['distinct-2']:.3f} | {m['rep-3']:.3f} | {m['unseen']:.3f} "
            f"| {nll:.3f} | {kept:.1f} | {seconds:.1f} |"
        )
    print("\nkept-set size per step (share of steps keeping 1 token; 10th / 50th / 90th percentile; max):")
    for name, kept in kept_by_setting.items():
        if "top-p" in name:
            p10, p50, p90 = np.percentile(kept, [10, 50, 90])
            print(f"  {name}: {np.mean(kept == 1):.0%} keep 1; {p10:.0f} / {p50:.0f} / {p90:.0f}; max {kept.max()}")
    print()
    for name, *_, text in rows:
        print(f"[{name}] {args.prompt}{text[:160]!r}")

    out = Path(args.out) if args.out else Path(args.run_dir) / "sampling_study.png"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("\nmatplotlib is missing: no figure")
        return
    fig, ax = plt.subplots(figsize=(9, 4))
    top_p_settings = [(name, kept) for name, kept in kept_by_setting.items() if "top-p" in name]
    for i, (name, kept) in enumerate(top_p_settings):
        ax.plot(kept[0], lw=1, color=f"C{i}", alpha=0.6, label=f"{name} (sample 0)")
        ax.plot(kept.mean(axis=0), lw=2, color=f"C{i}", ls="--", label=f"{name} (mean of {len(kept)} samples)")
    for k in args.top_k:
        ax.axhline(k, color="gray", lw=1, ls=":")
        ax.text(0, k, f" top-k {k}", va="bottom", color="gray")
    ax.set_yscale("log")
    ax.set_xlabel("generated token")
    ax.set_ylabel("tokens kept (log scale)")
    ax.set_title(f"kept-set size per step: top-p adapts, top-k is fixed ({config.get('model')}, T={t:g})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    print(f"\nfigure: {out}")


if __name__ == "__main__":
    main()
