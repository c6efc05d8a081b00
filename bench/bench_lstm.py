"""Prints the training throughput (tokens/s) of our LSTMLanguageModel beside the same model built on keras.layers.LSTM.

Both models are embedding -> LSTM layers -> Dense of the same sizes, trained by the same compiled step
(tf.function, GradientTape, Adam) on the same batch. After a warm-up, the two steps are timed in alternating rounds,
so that a load spike on the machine costs both alike, and the median step time of each is reported.

    .venv/bin/python bench/bench_lstm.py                        # defaults: B=32 T=64 V=96 E=64 H=256
    .venv/bin/python bench/bench_lstm.py --hidden-dim 512 --batch-size 64
"""

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, without installing the package

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from assignment.lstm import LSTMLanguageModel  # noqa: E402

TARGET = 0.8  # our LSTM should train at no less than 0.8x the speed of Keras' own


def keras_lstm_model(vocab_size, embed_dim, hidden_dim, num_layers):
    """Returns the reference: the same architecture with keras.layers.LSTM (no cuDNN on a CPU: a tf.while_loop)."""
    layers = [keras.layers.Embedding(vocab_size, embed_dim)]
    layers += [keras.layers.LSTM(hidden_dim, return_sequences=True) for _ in range(num_layers)]
    layers += [keras.layers.Dense(vocab_size)]
    return keras.Sequential(layers)


def make_train_step(model, tokens, jit_compile=False):
    """Returns a compiled training step (one Adam update on `tokens`) for `model`."""
    optimizer = keras.optimizers.Adam(1e-3)
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    model(inputs)  # builds the weights outside the compiled step

    @tf.function(jit_compile=jit_compile)
    def step():
        with tf.GradientTape() as tape:
            logits = model(inputs, training=True)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))
        grads = tape.gradient(loss, model.trainable_weights)
        optimizer.apply_gradients(zip(grads, model.trainable_weights))
        return loss

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--vocab-size", type=int, default=96)
    parser.add_argument("--embed-dim", type=int, default=64)
    parser.add_argument("--hidden-dim", type=int, default=256)
    parser.add_argument("--num-layers", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per model (the first one traces)")
    parser.add_argument("--steps", type=int, default=15, help="timed steps per model")
    parser.add_argument("--jit", action="store_true", help="compile both steps with XLA (slower on CPU here)")
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    sizes = dict(
        vocab_size=args.vocab_size, embed_dim=args.embed_dim, hidden_dim=args.hidden_dim, num_layers=args.num_layers
    )
    tokens = tf.constant(
        np.random.default_rng(0).integers(0, args.vocab_size, (args.batch_size, args.seq_len + 1)), tf.int32
    )
    models = {
        "ours: LSTMLanguageModel": LSTMLanguageModel(**sizes),
        "keras.layers.LSTM": keras_lstm_model(**sizes),
    }
    steps = {}
    for name, model in models.items():
        steps[name] = make_train_step(model, tokens, jit_compile=args.jit)
        start = time.perf_counter()
        for _ in range(args.warmup):
            float(steps[name]())
        print(f"{name:24s} warm-up ({args.warmup} steps, with tracing) {time.perf_counter() - start:5.1f} s")

    times = {name: [] for name in steps}
    for _ in range(args.steps):  # alternate, so that load on the machine hits both models alike
        for name, step in steps.items():
            start = time.perf_counter()
            float(step())  # float() waits for the step to finish
            times[name].append(time.perf_counter() - start)

    tokens_per_step = args.batch_size * args.seq_len
    print(
        f"\nB={args.batch_size} T={args.seq_len} V={args.vocab_size} E={args.embed_dim} H={args.hidden_dim} "
        f"layers={args.num_layers} jit={args.jit}; TF {tf.__version__}, Keras {keras.__version__}, "
        f"{os.cpu_count()} CPUs; median of {args.steps} steps after {args.warmup} warm-up steps"
    )
    print(f"{'model':24s} {'ms/step':>9s} {'tokens/s':>10s}")
    medians = {name: float(np.median(t)) for name, t in times.items()}
    for name, median in medians.items():
        print(f"{name:24s} {1e3 * median:9.1f} {tokens_per_step / median:10.0f}")
    ratio = medians["keras.layers.LSTM"] / medians["ours: LSTMLanguageModel"]
    print(f"ours / keras: {ratio:.2f}x (target >= {TARGET}x: {'met' if ratio >= TARGET else 'NOT met'})")


if __name__ == "__main__":
    main()
