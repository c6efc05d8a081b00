"""Experiment 3, quantization of a trained run: its weights, then a quantized KV cache (given, not graded)."""

import math
from pathlib import Path

import numpy as np

from lmkit.errors import ExperimentError
from lmkit.quantization import (
    dequantize,
    fake_quantize,
    pack_int4,
    quantize,
    stored_bytes,
    unpack_int4,
)
from lmrun.experiments.sweeps import pyplot, quick_corpus, write_table

WEIGHT_SCHEMES = (  # (label, bits, group size); None: one scale per output channel (the whole input axis)
    ("float32", 32, None),
    ("int8, per channel", 8, None),
    ("int8, groups of 32", 8, 32),
    ("int4, per channel", 4, None),
    ("int4, groups of 32", 4, 32),
    ("int4, groups of 16", 4, 16),
)
KV_SCHEMES = (("float32", 32), ("float16", 16), ("int8", 8), ("int4", 4))  # one scale per head and position


def quantizable(model):
    """Returns `[(variable, transpose)]`: every weight matrix of `model`, and whether its input axis is the first
    (a linear layer's `(D_in, D_out)`, quantized per output channel along D_in) rather than the last (the token
    embedding `(V, D)`, read along D both by the lookup and by the tied output projection)."""
    pairs = []
    for v in model.trainable_variables:
        if len(v.shape) != 2:
            continue  # norm gains and biases stay float32
        is_embedding = v is getattr(model, "token_embedding", None) or v is getattr(model, "position_embedding", None)
        pairs.append((v, not is_embedding))
    return pairs


def quantize_model_weights(model, bits, group_size):
    """Replaces every weight matrix of `model` by its round trip through `bits`-bit codes; returns
    `(stored_bytes, quantized_values, float_values)` of the whole model as it would be stored."""
    quantized = {id(v) for v, _ in quantizable(model)}
    total_bytes, q_values, f_values = 0, 0, 0
    for v, transpose in quantizable(model):
        w = v.numpy().T if transpose else v.numpy()  # (rows, K): groups along K, the axis the matmul sums over
        if bits >= 32:
            total_bytes += 4 * w.size
            f_values += w.size
            continue
        q, scales = quantize(w, bits, group_size)
        restored = dequantize(
            unpack_int4(pack_int4(q), q.size).reshape(q.shape) if bits == 4 else q, scales, group_size
        )
        v.assign(restored.T if transpose else restored)
        total_bytes += stored_bytes(q.size, bits, scales.size)
        q_values += q.size
    for v in model.trainable_variables:
        if id(v) not in quantized:
            total_bytes += 4 * int(np.prod(v.shape))
            f_values += int(np.prod(v.shape))
    return total_bytes, q_values, f_values


class QuantizedKVCache:
    """A transformer whose KV cache stores every key and value at `bits` bits (one float16 scale per head and
    position): each new position is rounded when it is written, after the step that wrote it has attended to it.

    It follows the generation protocol (`prefill`, `decode_step`, `config`), so `sampling.generate` uses it.
    """

    def __init__(self, model, bits):
        self.model = model
        self.config = model.config
        self.bits = bits

    def __call__(self, tokens, **kwargs):
        return self.model(tokens, **kwargs)

    def _round(self, cache, start, end):
        import tensorflow as tf

        if self.bits >= 32:
            return cache
        rounded = {}
        for part in ("keys", "values"):
            layers = []
            for tensor in cache[part]:
                array = tensor.numpy()  # (B, nkv, C, hs)
                if self.bits == 16:
                    array[:, :, start:end] = array[:, :, start:end].astype(np.float16).astype(np.float32)
                else:
                    array[:, :, start:end] = fake_quantize(array[:, :, start:end], self.bits)
                layers.append(tf.constant(array))
            rounded[part] = tuple(layers)
        rounded["index"] = cache["index"]
        return rounded

    def prefill(self, tokens):
        logits, cache = self.model.prefill(tokens)
        return logits, self._round(cache, 0, int(cache["index"]))

    def decode_step(self, next_ids, cache):
        start = int(cache["index"])
        logits, cache = self.model.decode_step(next_ids, cache)
        return logits, self._round(cache, start, start + 1)


def cached_loss(model, windows):
    """Returns the mean cross-entropy of predicting `windows[:, 1:]` `(B, T)` token by token through the model's
    KV cache (prefill the first token, then one decode step per position)."""
    import tensorflow as tf

    windows = np.asarray(windows, np.int32)
    logits, cache = model.prefill(tf.constant(windows[:, :1]))
    steps = [logits[:, -1]]
    for t in range(1, windows.shape[1] - 1):
        logits, cache = model.decode_step(tf.constant(windows[:, t : t + 1]), cache)
        steps.append(logits[:, -1])
    logits = tf.stack(steps, axis=1)  # (B, T, V)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=windows[:, 1:], logits=logits)
    return float(tf.reduce_mean(ce))


def kv_cache_bytes(config, bits, batch_size=1):
    """Returns the bytes of a full KV cache (L layers x keys and values x B x nkv x C x hs), with one float16 scale
    per head and position below 16 bits."""
    values = 2 * config.num_layers * batch_size * config.kv_heads * config.context_length * config.head_size
    if bits >= 16:
        return values * bits // 8
    return stored_bytes(values, bits, values // config.head_size)


def quantize_run(args):
    """Quantizes a trained run's weights and KV cache; writes quantize.md/.csv and a plot. Returns the rows."""
    from tqdm.auto import tqdm

    from assignment import preprocess, sampling
    from assignment.train import evaluate
    from lmkit.data import validation_batches
    from lmrun import run_files, runs
    from lmrun.corpus import load_corpus

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run_dir = Path(args.run_dir or (out / "model" if args.quick else "runs/main"))
    if run_files.read_run_config(run_dir) is None or not (run_dir / "best").is_dir():
        print(
            f"{run_dir} holds no trained run: training it ({'tiny config' if args.quick else 'make train'}'s settings)"
        )
        request = runs.RunRequest(
            run_dir=str(run_dir),
            config="tiny" if args.quick else "main",
            corpus=quick_corpus(out) if args.quick else "pyref",
            time_budget=0,  # the whole schedule, however busy the machine
            sample_tokens=0,
            no_progress=args.no_progress,
            no_jit=args.quick,
        )
        try:
            runs.run(request)
        except runs.UsageError as error:
            raise ExperimentError(f"--run-dir {run_dir}: {str(error).splitlines()[0]}") from None
    model, tokenizer, config, path = runs.load_run(run_dir)
    text = load_corpus(config["corpus"])
    _, val_ids = preprocess.train_val_split(tokenizer.encode(text), config["val_fraction"])
    seq_len = config["train"]["seq_len"]
    val_batches = validation_batches(val_ids, seq_len, 64, max_batches=2 if args.quick else 0)
    prompt = tokenizer.encode(args.prompt)
    sample_tokens = 40 if args.quick else args.sample_tokens

    def sample(m):
        ids = sampling.generate(m, prompt, sample_tokens, temperature=0.8, seed=0)
        return tokenizer.decode(ids).replace("\n", " ")

    original = [v.numpy() for v in model.trainable_variables]
    weight_rows = []
    bar = tqdm(total=len(WEIGHT_SCHEMES) + len(KV_SCHEMES), unit="variant", desc="quantize", disable=args.no_progress)
    for label, bits, group in WEIGHT_SCHEMES:
        bar.set_postfix_str(label)
        for v, value in zip(model.trainable_variables, original):
            v.assign(value)
        size, q_values, f_values = quantize_model_weights(model, bits, group)
        loss, perplexity = evaluate(model, val_batches)
        matrix_bits = 32.0 if bits >= 32 else 8 * (size - 4 * f_values) / q_values
        weight_rows.append(
            dict(
                name=label,
                bits=bits,
                group=group or "channel",
                bits_per_weight=matrix_bits,
                bytes=size,
                val_loss=loss,
                val_perplexity=perplexity,
                sample=sample(model),
            )
        )
        bar.update(1)
    for v, value in zip(model.trainable_variables, original):
        v.assign(value)
    base = weight_rows[0]
    for row in weight_rows:
        row["change"] = f"{100 * (row['val_perplexity'] / base['val_perplexity'] - 1):+.2f}%"
        row["size"] = f"{row['bytes'] / 1024:,.1f} KiB"

    # The KV cache: token by token on the first validation windows (the full context), each scheme on the same ones.
    count = 4 if args.quick else args.kv_windows
    inputs, labels = preprocess.make_sequences(val_ids, seq_len)
    windows = np.concatenate([inputs[:count], labels[:count, -1:]], axis=1)  # (B, T + 1)
    mc = model.config
    kv_rows = []
    for label, bits in KV_SCHEMES:
        bar.set_postfix_str(f"KV {label}")
        wrapped = QuantizedKVCache(model, bits)
        loss = cached_loss(wrapped, windows)
        kv_rows.append(
            dict(
                name=label,
                bits=bits,
                bits_per_value=bits if bits >= 16 else bits + 16 / mc.head_size,
                bytes=kv_cache_bytes(mc, bits),
                val_loss=loss,
                val_perplexity=math.exp(loss),
                sample=sample(wrapped),
            )
        )
        bar.update(1)
    bar.close()
    for row in kv_rows:
        row["change"] = f"{100 * (row['val_perplexity'] / kv_rows[0]['val_perplexity'] - 1):+.2f}%"
        row["size"] = f"{row['bytes'] / 1024:,.1f} KiB"

    weights_header = [
        ("weights", "name"),
        ("bits per weight (matrices, with scales)", "bits_per_weight", ".2f"),
        ("stored size (whole model)", "size"),
        ("val loss", "val_loss"),
        ("val perplexity", "val_perplexity", ".3f"),
        ("change", "change"),
    ]
    kv_header = [
        ("KV cache", "name"),
        ("bits per value (with scales)", "bits_per_value", ".2f"),
        (f"size at context {mc.context_length} (batch 1)", "size"),
        ("val loss (token by token)", "val_loss"),
        ("val perplexity", "val_perplexity", ".3f"),
        ("change", "change"),
    ]
    samples = "\n".join(f"- {r['name']}: `{r['sample']}`" for r in weight_rows)
    kv_samples = "\n".join(f"- KV {r['name']}: `{r['sample']}`" for r in kv_rows)
    notes = (
        f"Run {run_dir} ({path}): {model.count_params():,} parameters, "
        f"{sum(v.numpy().size for v, _ in quantizable(model)):,} of them in weight matrices (quantized; norm gains "
        f"stay float32). Symmetric round-to-nearest, one float16 scale per group along each matrix's input axis; "
        f"int4 codes packed two per byte. Perplexity over the whole validation split "
        f"({len(val_ids):,} tokens{', 2 batches in --quick' if args.quick else ''}). Samples: prompt "
        f"{args.prompt!r}, {sample_tokens} tokens, temperature 0.8, seed 0 for all.\n\n{samples}\n"
    )
    kv_notes = (
        f"Keys and values: {mc.num_layers} layers x {mc.kv_heads} key/value heads x {mc.context_length} positions x "
        f"head size {mc.head_size}. Perplexity predicted token by token through the cache over the first {count} "
        f"validation windows of {seq_len} tokens (the same windows for every row; each new key and value is rounded "
        f"after the step that wrote it). Samples as above.\n\n{kv_samples}\n"
    )
    text = write_table(out, "quantize", weights_header, weight_rows, notes=notes)
    text += "\n" + write_table(out, "quantize_kv", kv_header, kv_rows, notes=kv_notes)
    (out / "quantize.md").write_text(text)
    plot_quantization(weight_rows, kv_rows, out)
    print(text)
    print(f"wrote {out / 'quantize.md'}, {out / 'quantize.csv'}, {out / 'quantize_kv.csv'}")
    return dict(weights=weight_rows, kv=kv_rows)


def plot_quantization(weight_rows, kv_rows, out):
    """Saves quantize.png: perplexity against stored size, for the weights and for the KV cache."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), dpi=120)
    for ax, rows, what in ((axes[0], weight_rows, "weights"), (axes[1], kv_rows, "KV cache")):
        ax.plot([r["bytes"] / 1024 for r in rows], [r["val_perplexity"] for r in rows], "o")
        for i, r in enumerate(rows):  # labels alternate above and below: neighbours of equal size do not overlap
            ax.annotate(
                r["name"],
                (r["bytes"] / 1024, r["val_perplexity"]),
                fontsize=7,
                xytext=(3, 3 if i % 2 == 0 else -10),
                textcoords="offset points",
            )
        ax.set_xscale("log")
        ax.set_xlabel(f"stored size of the {what} (KiB)")
        ax.set_ylabel("validation perplexity")
        ax.set_title(f"{what}: perplexity against size")
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(out / "quantize.png")
    plt.close(fig)
