"""Benchmarks of part 4: training throughput on nanoGPT's CPU configuration, and generation with and without a KV cache.

Prints figures; nothing passes or fails. Run from the repository root:

    .venv/bin/python bench/bench_transformer.py              # both benchmarks (about 2 minutes)
    .venv/bin/python bench/bench_transformer.py --only train  # or --only generate

(a) Training: nanoGPT's CPU run of tiny Shakespeare (`--n_layer=4 --n_head=4 --n_embd=128 --block_size=64
    --batch_size=12 --dropout=0.0`, character level, 65 symbols; nanoGPT's defaults: no biases, tied embeddings,
    learned positions, GELU), i.e. `TransformerConfig.preset("gpt2", bias="none")` at that size, trained with AdamW
    on random token ids (the speed does not depend on the text). One train step is a `tf.function`, with and without
    XLA (`jit_compile=True`). Figures: tokens/s (batch * block_size / seconds per step) over several rounds, median
    and spread. Reference: the PyTorch implementation trains at about 16,000 tokens/s on this 2-core machine class;
    the target is at least 20,000.
(b) Generation: 256 new tokens (greedy) after an 8-token prompt, with the KV cache (`prefill` then `decode_step`,
    compiled once) versus full recomputation (the whole sequence re-read at every step by a `tf.function` traced
    once for any length), and the time of one step at positions 10, 100 and 250. Targets: the cache at least 5x
    faster, and flat (position 250 within 1.5x of position 10).

The machine is shared: other processes steal cores and make single runs noisy, which is why each figure is a
median over rounds; the load average is printed next to the figures.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from assignment.transformer import TransformerConfig, TransformerLanguageModel  # noqa: E402

NANOGPT_CPU = dict(vocab_size=65, context_length=64, d_model=128, num_heads=4, num_layers=4, dropout=0.0, bias="none")
BATCH = 12


def _load():
    return f"load average {os.getloadavg()[0]:.2f}"


def _spread(values):
    values = np.asarray(values)
    return (
        f"median {np.median(values):8,.0f}   min {values.min():8,.0f}   max {values.max():8,.0f}   "
        f"IQR {np.percentile(values, 25):,.0f}-{np.percentile(values, 75):,.0f}"
    )


def train_step_fn(model, optimizer, jit_compile):
    """Returns a compiled train step: forward, cross-entropy, gradients, AdamW update."""

    @tf.function(jit_compile=jit_compile)
    def train_step(inputs, labels):
        with tf.GradientTape() as tape:
            logits = model(inputs, training=True)  # (B, T, V)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return train_step


def bench_train(rounds, steps):
    config = TransformerConfig.preset("gpt2", **NANOGPT_CPU)
    rng = np.random.default_rng(0)
    batches = [
        tuple(
            tf.constant(rng.integers(0, config.vocab_size, (BATCH, config.context_length)), tf.int32) for _ in range(2)
        )
        for _ in range(8)
    ]
    tokens_per_step = BATCH * config.context_length
    print(f"(a) training: nanoGPT CPU config {NANOGPT_CPU}, batch {BATCH}, AdamW; {tokens_per_step} tokens per step")
    variants = {}
    for jit in (True, False):
        keras.utils.set_random_seed(0)
        model = TransformerLanguageModel(config)
        optimizer = keras.optimizers.AdamW(learning_rate=1e-3, weight_decay=0.1, beta_2=0.99)
        step = train_step_fn(model, optimizer, jit)
        start = time.perf_counter()
        loss = step(*batches[0])
        first = time.perf_counter() - start
        for i in range(10):
            loss = step(*batches[i % len(batches)])
        float(loss)
        variants["XLA (jit_compile=True)" if jit else "graph (tf.function)"] = (step, first)
    rates = {name: [] for name in variants}
    cpu_ms = {name: [] for name in variants}
    for _ in range(rounds):  # the variants take turns, so background load hits both alike
        for name, (step, _) in variants.items():
            start, cpu = time.perf_counter(), time.process_time()
            for i in range(steps):
                loss = step(*batches[i % len(batches)])
            float(loss)
            rates[name].append(steps * tokens_per_step / (time.perf_counter() - start))
            cpu_ms[name].append((time.process_time() - cpu) / steps * 1000)
    print(f"    {rounds} rounds of {steps} steps, {_load()} ({os.cpu_count()} CPUs)")
    for name, (_step, first) in variants.items():
        wall_ms = 1000 * tokens_per_step / np.median(rates[name])
        print(f"    {name:24s} tokens/s {_spread(rates[name])}")
        print(
            f"    {'':24s} CPU time {np.median(cpu_ms[name]):.1f} ms per step over {wall_ms:.1f} ms of wall time "
            f"(cores used: {np.median(cpu_ms[name]) / wall_ms:.2f}); first step, with compilation: {first:.1f} s"
        )
    return {name: float(np.median(r)) for name, r in rates.items()}


def bench_generate(rounds, new_tokens, prompt_length=8, context_length=512):
    config = TransformerConfig.preset("gpt2", **{**NANOGPT_CPU, "context_length": context_length})
    keras.utils.set_random_seed(0)
    model = TransformerLanguageModel(config)
    prompt = tf.constant(np.random.default_rng(1).integers(0, config.vocab_size, (1, prompt_length)), tf.int32)
    forward = tf.function(lambda tokens: model(tokens), input_signature=[tf.TensorSpec((1, None), tf.int32)])

    def greedy(logits):  # the most likely next token, on the host as a sampler needs it
        return int(np.argmax(logits[0, -1].numpy()))

    def with_cache():
        times = []
        logits, cache = model.prefill(prompt)
        for _ in range(new_tokens):
            start = time.perf_counter()
            next_id = tf.constant([[greedy(logits)]], tf.int32)  # (1, 1)
            logits, cache = model.decode_step(next_id, cache)  # (1, 1, V)
            times.append(time.perf_counter() - start)
        return times

    def recompute():
        times = []
        ids = [int(i) for i in prompt[0]]
        for _ in range(new_tokens):
            start = time.perf_counter()
            logits = forward(tf.constant([ids], tf.int32))  # (1, T, V), T growing
            ids.append(greedy(logits))
            times.append(time.perf_counter() - start)
        return times

    print(
        f"\n(b) generation: {new_tokens} new tokens after a {prompt_length}-token prompt, batch 1, "
        f"context_length {context_length}, same model size"
    )
    runs = {"KV cache (decode_step, XLA)": with_cache, "full recomputation": recompute}
    for run in runs.values():  # compile and warm up
        run()
    totals = {name: [] for name in runs}
    per_token = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            times = run()
            totals[name].append(new_tokens / (time.perf_counter() - start))
            per_token[name].append(times)
    print(f"    {rounds} rounds, {_load()}")
    positions = (10, 100, 250)
    for name in runs:
        step_ms = np.median(np.asarray(per_token[name]), axis=0) * 1000  # (new_tokens,) ms of each step
        at = {p: float(np.median(step_ms[p - prompt_length - 2 : p - prompt_length + 3])) for p in positions}
        print(f"    {name:28s} tokens/s {_spread(totals[name])}")
        print(
            f"    {'':28s} ms per token at position "
            + ", ".join(f"{p}: {at[p]:.2f}" for p in positions)
            + f"  (250 / 10 = {at[250] / at[10]:.2f}x)"
        )
    names = list(runs)
    speedup = np.median(totals[names[0]]) / np.median(totals[names[1]])
    print(f"    the KV cache generates {speedup:.1f}x faster than full recomputation")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("train", "generate"))
    parser.add_argument("--rounds", type=int, default=7, help="rounds per figure (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=40, help="train steps per round (default: %(default)s)")
    parser.add_argument("--new-tokens", type=int, default=256, help="tokens to generate (default: %(default)s)")
    args = parser.parse_args(argv)
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}")
    if args.only in (None, "train"):
        bench_train(args.rounds, args.steps)
    if args.only in (None, "generate"):
        bench_generate(max(3, args.rounds // 2), args.new_tokens)


if __name__ == "__main__":
    main()
