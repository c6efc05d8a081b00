"""Experiment 4, grokking on a + b mod p: training accuracy long before validation accuracy (given, not graded)."""

import csv
import math
import time
from pathlib import Path

import numpy as np

from lmkit.errors import ExperimentError
from lmrun.experiments.sweeps import pyplot, write_table


def modular_addition(p, train_fraction, seed=0):
    """Returns `(train, val)`, each `(inputs, labels, weights)` int32/float32 `(N, 3)`: the sequences `a b =`
    with every label 0 but the last, `(a + b) mod p`, the only one weighted. All p^2 pairs, shuffled, split."""
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    order = np.random.default_rng(seed).permutation(p * p)
    inputs = np.stack([a, b, np.full_like(a, p)], axis=1).astype(np.int32)[order]  # (p^2, 3): token p is "="
    labels = np.zeros_like(inputs)
    labels[:, -1] = ((a + b) % p)[order]
    weights = np.zeros(inputs.shape, np.float32)
    weights[:, -1] = 1.0
    cut = int(round(train_fraction * p * p))
    return (inputs[:cut], labels[:cut], weights[:cut]), (inputs[cut:], labels[cut:], weights[cut:])


def _grok_settings(args):
    if args.quick:
        return dict(
            p=11,
            train_fraction=0.5,
            steps=30,
            batch_size=32,
            d_model=32,
            num_heads=2,
            num_layers=1,
            lr=1e-2,
            weight_decay=1.0,
            seed=0,
            eval_every=10,
        )
    return dict(
        p=args.p,
        train_fraction=args.train_fraction,
        steps=args.steps,
        batch_size=args.batch_size,
        d_model=args.d_model,
        num_heads=4,
        num_layers=args.num_layers,
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        eval_every=args.eval_every,
    )


def grok(args):
    """Trains a small transformer on a + b mod p with mini-batches and strong weight decay, evaluating
    accuracy on both splits; writes grok.md/.csv and grok.png. A finished run re-uses its history."""
    import tensorflow as tf
    from tqdm.auto import tqdm

    from assignment.train import FUNCTIONS, train_step
    from assignment.transformer import TransformerConfig, TransformerLanguageModel
    from lmkit.checkpoints import Checkpoints
    from lmkit.history import History
    from lmkit.optim import make_optimizer
    from lmrun import run_files

    settings = _grok_settings(args)
    out = Path(args.out)
    run_dir = out / "run"
    saved = run_files.read_run_config(run_dir) if (run_dir / "config.json").exists() else None
    if saved is not None and saved.get("grok") != settings:
        differences = [
            f"{k}: {settings[k]!r} here, {saved['grok'].get(k)!r} in the run"
            for k in settings
            if saved.get("grok", {}).get(k) != settings[k]
        ]
        raise ExperimentError(
            f"{run_dir} holds a grokking run with other settings ({'; '.join(differences)}); pass --out DIR for a "
            f"new one or --overwrite to start again"
        )
    (train_x, train_y, train_w), (val_x, val_y, val_w) = modular_addition(
        settings["p"], settings["train_fraction"], settings["seed"]
    )
    import keras

    keras.utils.set_random_seed(settings["seed"])
    config = TransformerConfig.preset(
        "gpt2",
        vocab_size=settings["p"] + 1,
        context_length=3,
        dropout=0.0,
        d_model=settings["d_model"],
        num_heads=settings["num_heads"],
        num_layers=settings["num_layers"],
    )
    model = TransformerLanguageModel(config)
    # Constant learning rate after a short warmup (min_lr_ratio 1), AdamW's decoupled weight decay, beta_2 0.98.
    optimizer = make_optimizer(
        "adamw",
        settings["lr"],
        settings["steps"],
        warmup_steps=10,
        min_lr_ratio=1.0,
        weight_decay=settings["weight_decay"],
        beta_1=0.9,
        beta_2=0.98,
        model=model,
    )
    optimizer.build(model.trainable_variables)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpts = Checkpoints(
        run_dir,
        model,
        optimizer,
        keep_last=1,
        save_every_steps=0,
        save_every_minutes=0.5,
        log=lambda line: None,
        functions=FUNCTIONS,
    )
    restored = ckpts.restore()
    history = History(run_dir / "history.jsonl")
    if restored is None and history.read():
        raise ExperimentError(f"{run_dir} has a history but no checkpoint; pass --overwrite to start again")
    history.truncate(int(ckpts.step))
    run_files.write_json(
        run_dir / "config.json", dict(model="transformer", model_config=config.to_dict(), train={}, grok=settings)
    )
    inputs, labels, weights = (tf.constant(a) for a in (train_x, train_y, train_w))

    @tf.function(jit_compile=True)
    def step_fn(picked):  # picked: int32 (B,), the training pairs of this step
        x, y, w = tf.gather(inputs, picked), tf.gather(labels, picked), tf.gather(weights, picked)
        loss, _ = train_step(model, optimizer, x, y, clip_norm=1.0, sample_weight=w)
        ckpts.step.assign_add(1)
        return loss

    def batch_at(step):  # depends only on (seed, step), so a resumed run draws the same batches
        n = len(train_x)
        if settings["batch_size"] >= n:
            return tf.range(n, dtype=tf.int32)
        rng = np.random.default_rng([settings["seed"], step])
        return tf.constant(rng.choice(n, settings["batch_size"], replace=False).astype(np.int32))

    @tf.function(jit_compile=True)
    def measure(x, y):  # accuracy and loss of the answer token
        logits = model(x, training=False)[:, -1]  # (N, V)
        correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y[:, -1]), tf.float32)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y[:, -1], logits=logits)
        return tf.reduce_mean(correct), tf.reduce_mean(ce)

    def evaluate_both(step):
        train_acc, train_loss = measure(inputs, labels)
        val_acc, val_loss = measure(tf.constant(val_x), tf.constant(val_y))
        weight_norm = math.sqrt(sum(float(tf.reduce_sum(tf.square(v))) for v in model.trainable_variables))
        record = dict(
            step=step,
            train_acc=float(train_acc),
            val_acc=float(val_acc),
            train_loss=float(train_loss),
            val_loss=float(val_loss),
            weight_norm=weight_norm,
            train_time=round(float(ckpts.train_time), 3),
        )
        history.append(record)
        return record

    def due(step):  # evaluate at log-spaced steps early on and then every eval_every: the plot's x axis is log
        return step == settings["steps"] or step % settings["eval_every"] == 0 or step in _log_steps(settings["steps"])

    step = int(ckpts.step)
    if step >= settings["steps"]:
        print(f"{run_dir}: already trained (step {step}): history re-used")
    else:
        print(
            f"{run_dir}: a + b mod {settings['p']}, {len(train_x):,} training / {len(val_x):,} validation pairs, "
            f"{model.count_params():,} parameters, weight decay {settings['weight_decay']}, lr {settings['lr']}; "
            + (f"restored from step {step}" if restored is not None else "starting from scratch")
        )
        if step == 0 and not history.read():
            evaluate_both(0)
        bar = tqdm(
            total=settings["steps"],
            initial=step,
            unit="step",
            desc="grok",
            disable=args.no_progress,
            dynamic_ncols=True,
        )
        try:
            while step < settings["steps"]:
                started = time.perf_counter()
                loss = float(step_fn(batch_at(step)))
                ckpts.train_time.assign_add(time.perf_counter() - started)
                step = int(ckpts.step)
                bar.update(1)
                if due(step):
                    record = evaluate_both(step)
                    bar.set_postfix(
                        loss=f"{loss:.3f}", train=f"{record['train_acc']:.3f}", val=f"{record['val_acc']:.3f}"
                    )
                ckpts.maybe_save()
        except KeyboardInterrupt:
            ckpts.save()
            bar.close()
            print(f"interrupted at step {int(ckpts.step)}: saved; run the same command to resume")
            raise
        bar.close()
        ckpts.save()
    records = history.read()
    summary = summarize_grok(records, settings)
    header = [
        ("step", "step"),
        ("train accuracy", "train_acc", ".3f"),
        ("val accuracy", "val_acc", ".3f"),
        ("train loss", "train_loss", ".4f"),
        ("val loss", "val_loss", ".4f"),
        ("weight norm", "weight_norm", ".1f"),
    ]
    shown = [r for r in records if r["step"] in _table_steps(records)]
    text = write_table(out, "grok", header, shown, notes=summary["text"])
    with open(out / "grok_history.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([h[1] for h in header])
        writer.writerows([[r[h[1]] for h in header] for r in records])
    plot_grok(records, summary, settings, out)
    print(text)
    print(f"wrote {out / 'grok.md'}, {out / 'grok.csv'}, {out / 'grok.png'}")
    return dict(summary, records=records)


def _log_steps(steps):
    return {int(round(s)) for s in np.geomspace(1, max(steps, 1), 60)}


def _table_steps(records):
    steps = [r["step"] for r in records]
    wanted = {steps[0], steps[-1]} | {int(10**e) for e in np.arange(0, 7, 0.5)}
    return {min(steps, key=lambda s: abs(math.log(s + 1) - math.log(w + 1))) for w in wanted}


def first_step(records, key, threshold):
    """Returns the first step whose `key` is at least `threshold`, or None."""
    return next((r["step"] for r in records if r[key] >= threshold), None)


def summarize_grok(records, settings):
    """Returns when each split first reached 99% accuracy and a text saying what that shows."""
    train_at = first_step(records, "train_acc", 0.99)
    val_at = first_step(records, "val_acc", 0.99)
    last = records[-1]
    if train_at is not None and val_at is not None:
        after = min(r["val_acc"] for r in records if r["step"] >= val_at)
        verdict = (
            f"Training accuracy first reached 99% at step {train_at:,} and validation accuracy at step {val_at:,}, "
            f"{val_at / max(train_at, 1):.1f}x later: "
            + ("grokking" if val_at >= 3 * max(train_at, 1) else "too close together to call it grokking")
            + f" (after that, validation accuracy stays at or above {after:.1%})."
        )
    elif train_at is not None:
        verdict = (
            f"Training accuracy first reached 99% at step {train_at:,}; validation accuracy did not (it ends at "
            f"{last['val_acc']:.1%} after {last['step']:,} steps): memorised, not (yet) generalised in this budget."
        )
    else:
        verdict = f"Training accuracy did not reach 99% in {last['step']:,} steps (it ends at {last['train_acc']:.1%})."
    text = (
        f"a + b mod {settings['p']}, {settings['train_fraction']:.0%} of the {settings['p'] ** 2:,} pairs for "
        f"training, AdamW on batches of {settings['batch_size']} (lr {settings['lr']}, weight decay "
        f"{settings['weight_decay']}), a "
        f"{settings['num_layers']}-block "
        f"GPT-2-style transformer of width {settings['d_model']}. {verdict} The weight norm goes from "
        f"{records[0]['weight_norm']:.1f} to {last['weight_norm']:.1f}."
    )
    return dict(train_at=train_at, val_at=val_at, text=text)


def plot_grok(records, summary, settings, out):
    """Saves grok.png: training and validation accuracy against step (log axis), and the two losses."""
    plt = pyplot()
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(6.4, 6), dpi=120, sharex=True)
    steps = [max(r["step"], 1) for r in records]
    ax.plot(steps, [r["train_acc"] for r in records], label="training accuracy")
    ax.plot(steps, [r["val_acc"] for r in records], label="validation accuracy")
    for at, color in ((summary["train_at"], "C0"), (summary["val_at"], "C1")):
        if at is not None:
            ax.axvline(max(at, 1), color=color, ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_ylabel("accuracy")
    ax.set_title(
        f"a + b mod {settings['p']}, {settings['train_fraction']:.0%} of pairs for training, "
        f"weight decay {settings['weight_decay']}"
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax2.plot(steps, [r["train_loss"] for r in records], label="training loss")
    ax2.plot(steps, [r["val_loss"] for r in records], label="validation loss")
    ax2.set_yscale("log")
    ax2.set_xlabel("step (log)")
    ax2.set_ylabel("cross-entropy")
    ax2.grid(alpha=0.3, which="both")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "grok.png")
    plt.close(fig)
