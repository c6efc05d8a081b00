"""Run directories: what `python -m lmrun train`, `generate` and `compare` share (given, not graded).

`RunRequest` holds everything a training run is asked for (the command line's flags, with the same defaults);
`run(request)` checks it, prepares the run directory (config.json, tokenizer.json), trains through
`assignment.train.train` and prints the figures. `load_run(run_dir)` rebuilds a trained model for `generate`.
"""

import dataclasses
import hashlib
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from assignment.train import FUNCTIONS, train
from lmkit.checkpoints import freeze, load_weights
from lmkit.data import ValidationCharacters, check_data_size, token_characters
from lmkit.distribute import is_chief, make_strategy
from lmkit.errors import UsageError
from lmkit.loop import TrainConfig
from lmkit.optim import LR_SCALE, OPTIMIZERS, evaluation_weights
from lmrun.configs import ARCHITECTURES, CONFIGS, MODELS, describe
from lmrun.run_files import (
    RunConfig,
    check_same_tokenizer,
    read_run_config,
    read_shards,
    read_tokenizer,
    save_tokenizer,
    shard_characters,
    write_json,
)

# What makes a run directory's run: resuming with any of these changed would silently train something else.
# (steps, evaluation, logging and checkpoint frequencies may change between invocations.)
IDENTITY = ("model", "model_config", "tokenizer", "corpus", "corpus_sha256", "val_fraction", "init_from", "freeze")
TRAIN_IDENTITY = (
    "batch_size",
    "seq_len",
    "optimizer",
    "lr",
    "min_lr_ratio",
    "warmup_steps",
    "weight_decay",
    "beta_1",
    "beta_2",
    "clip_norm",
    "seed",
)


@dataclasses.dataclass
class RunRequest:
    """What a training run is asked for: the command line's flags (see `python -m lmrun train --help`).

    None means "the named config's value". `compare` and the tests build one directly instead of an argv.
    """

    run_dir: str = "runs/main"
    config: str = "main"  # a key of CONFIGS
    model: str | None = None  # one of MODELS (default: transformer, or the --init-from run's)
    preset: str | None = None
    d_model: int | None = None
    num_heads: int | None = None
    num_layers: int | None = None
    context_length: int | None = None
    dropout: float | None = None
    embed_dim: int | None = None
    hidden_dim: int | None = None
    set: list = dataclasses.field(default_factory=list)  # KEY=VALUE TransformerConfig fields
    corpus: str = "pyref"
    tokenizer: str = "char"
    data: str | None = None  # a shard directory from `python -m lmrun prepare`: its tokenizer and split
    val_fraction: float = 0.1
    steps: int | None = None
    batch_size: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    min_lr_ratio: float | None = None
    warmup_steps: int | None = None
    weight_decay: float | None = None
    beta1: float | None = None
    beta2: float | None = None
    clip_norm: float | None = None
    seed: int | None = None
    no_jit: bool = False
    overwrite: bool = False
    eval_every: int | None = None
    eval_batch_size: int | None = None
    eval_batches: int | None = None
    log_every: int | None = None
    save_every_steps: int | None = None
    save_every_minutes: float | None = None
    keep_last: int | None = None
    time_budget: float | None = None
    sample_prompt: str = "The "
    sample_tokens: int = 200
    eval_samples: bool | None = None  # a sample at each evaluation (None: the config's)
    no_progress: bool = False
    wandb: bool = False  # also track the run with Weights & Biases (offline unless W&B is set up)
    init_from: str | None = None
    freeze: list | None = None
    strategy: str = "default"
    cpu_replicas: int = 0


# Each flag's allowed values: (lowest, lowest included, highest, highest included, what it means).
BOUNDS = {
    "d_model": (1, True, None, None, "a width"),
    "num_heads": (1, True, None, None, "a count"),
    "num_layers": (1, True, None, None, "a count"),
    "context_length": (1, True, None, None, "tokens"),
    "dropout": (0, True, 1, False, "a rate"),
    "embed_dim": (1, True, None, None, "a width"),
    "hidden_dim": (1, True, None, None, "a width"),
    "val_fraction": (0, False, 1, False, "the share of the corpus held out"),
    "steps": (1, True, None, None, "a count"),
    "batch_size": (1, True, None, None, "sequences per step"),
    "lr": (0, False, None, None, "the peak learning rate"),
    "min_lr_ratio": (0, True, 1, True, "a share of the peak learning rate"),
    "warmup_steps": (0, True, None, None, "steps"),
    "weight_decay": (0, True, 1, True, "a rate"),
    "beta1": (0, True, 1, False, "a decay rate"),
    "beta2": (0, True, 1, False, "a decay rate"),
    "clip_norm": (0, False, None, None, "a norm"),
    "eval_every": (1, True, None, None, "steps"),
    "eval_batch_size": (1, True, None, None, "sequences"),
    "eval_batches": (0, True, None, None, "batches (0: all)"),
    "log_every": (1, True, None, None, "steps"),
    "save_every_steps": (0, True, None, None, "steps (0: never by step count)"),
    "save_every_minutes": (0, True, None, None, "minutes (0: never by time)"),
    "keep_last": (1, True, None, None, "checkpoints kept (the run resumes from the latest)"),
    "time_budget": (0, True, None, None, "minutes (0: no limit)"),
    "sample_tokens": (0, True, None, None, "tokens (0: no samples)"),
    "cpu_replicas": (0, True, None, None, "logical CPU devices (0: leave the CPU whole)"),
}


def validate(request: RunRequest) -> None:
    """Raises `UsageError` naming the first flag whose value cannot work, its value and what is allowed; nothing
    has been written when it does."""
    for name, (low, low_in, high, high_in, meaning) in BOUNDS.items():
        value = getattr(request, name)
        if value is None:
            continue
        flag = "--" + name.replace("_", "-")
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (value >= low if low_in else value > low)
        ok = ok and (high is None or (value <= high if high_in else value < high))
        if not ok:
            lower = f"{'>=' if low_in else '>'} {low}"
            upper = f" and {'<=' if high_in else '<'} {high}" if high is not None else ""
            raise UsageError(f"{flag} must be a number {lower}{upper} ({meaning}); got {flag} {value}")
    choices = dict(
        config=sorted(CONFIGS),
        model=MODELS,
        tokenizer=("char", "word"),
        optimizer=OPTIMIZERS,
        strategy=("default", "mirrored", "multiworker"),
    )
    for name, valid in choices.items():
        value = getattr(request, name)
        if value is not None and value not in valid:
            raise UsageError(f"--{name} {value!r} is not one of: {', '.join(valid)}")
    if request.preset is not None and request.preset not in ARCHITECTURES:
        raise UsageError(f"--preset {request.preset!r} is not one of: {', '.join(ARCHITECTURES)}")


def build_model(kind: str, model_config: dict) -> keras.Model:
    """Returns the language model `kind` ('rnn', 'lstm' or 'transformer') built from its config dict."""
    if kind == "transformer":
        from assignment.transformer import TransformerConfig, TransformerLanguageModel

        return TransformerLanguageModel(TransformerConfig.from_dict(model_config))
    if kind == "rnn":
        from assignment.rnn import RNNLanguageModel

        return RNNLanguageModel(**model_config)
    if kind == "lstm":
        from assignment.lstm import LSTMLanguageModel

        return LSTMLanguageModel(**model_config)
    raise UsageError(f"unknown model {kind!r}; valid models: {', '.join(MODELS)}")


def load_run(run_dir, which: str = "best") -> tuple[keras.Model, object, RunConfig, str]:
    """Returns `(model, tokenizer, config, checkpoint_path)` of a trained run directory: what `generate` needs."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    if config is None:
        raise UsageError(
            f"{run_dir} is not a run directory (no config.json); train one with "
            f"python -m lmrun train --run-dir {run_dir}"
        )
    tokenizer = read_tokenizer(run_dir / "tokenizer.json")
    model = build_model(config["model"], config["model_config"])
    model(tf.zeros((1, 1), tf.int32))
    path = load_weights(model, run_dir, which, restore_latest=FUNCTIONS.restore_latest)  # part 5 loads the best
    return model, tokenizer, config, path


def _parse_value(text):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def resolve_settings(request: RunRequest) -> dict:
    """Returns the run's settings from the named config and the flags: model kind and config (without the
    vocabulary size), tokenizer, corpus, validation share and a `TrainConfig` dict."""
    named = CONFIGS[request.config]
    source = read_run_config(request.init_from) if request.init_from else None
    if request.init_from and source is None:
        raise UsageError(f"--init-from {request.init_from}: not a run directory (no config.json)")
    kind = request.model or (source["model"] if source else "transformer")
    shape_flags = {
        name: getattr(request, name)
        for name in ("preset", "d_model", "num_heads", "num_layers", "context_length", "embed_dim", "hidden_dim")
    }
    if source is not None:
        given = [f"--{k.replace('_', '-')}" for k, v in shape_flags.items() if v is not None] + request.set
        if given or kind != source["model"]:
            raise UsageError(
                f"--init-from takes the model from {request.init_from} ({source['model']}); drop "
                f"{', '.join(given) or '--model'}"
            )
        model_config = dict(source["model_config"])
        if request.dropout is not None and kind == "transformer":
            model_config["dropout"] = request.dropout
        seq_len = source["train"]["seq_len"]
    elif kind == "transformer":
        model_config = dict(named["transformer"])
        for name in ("preset", "d_model", "num_heads", "num_layers", "context_length", "dropout"):
            if getattr(request, name) is not None:
                model_config[name] = getattr(request, name)
        for item in request.set:
            key, sep, value = item.partition("=")
            if not sep:
                raise UsageError(f"--set takes KEY=VALUE (a TransformerConfig field); got {item!r}")
            model_config[key.replace("-", "_")] = _parse_value(value)
        seq_len = model_config["context_length"]
    else:
        model_config = dict(named[kind])
        for name in ("embed_dim", "hidden_dim", "num_layers"):
            if getattr(request, name) is not None:
                model_config[name] = getattr(request, name)
        if request.preset is not None or request.set or request.d_model is not None or request.num_heads is not None:
            raise UsageError(f"--preset, --set, --d-model and --num-heads configure the transformer, not the {kind}")
        seq_len = request.context_length or named["transformer"]["context_length"]

    train_cfg = dataclasses.asdict(TrainConfig())
    train_cfg.update(named["train"])
    train_cfg["seq_len"] = seq_len
    flags = dict(
        steps=request.steps,
        batch_size=request.batch_size,
        optimizer=request.optimizer,
        lr=request.lr,
        min_lr_ratio=request.min_lr_ratio,
        warmup_steps=request.warmup_steps,
        weight_decay=request.weight_decay,
        beta_1=request.beta1,
        beta_2=request.beta2,
        clip_norm=request.clip_norm,
        seed=request.seed,
        eval_every=request.eval_every,
        eval_batch_size=request.eval_batch_size,
        max_eval_batches=request.eval_batches,
        log_every=request.log_every,
        save_every_steps=request.save_every_steps,
        save_every_minutes=request.save_every_minutes,
        keep_last=request.keep_last,
        time_budget_minutes=request.time_budget,
        sample_at_eval=request.eval_samples,
    )
    train_cfg.update({k: v for k, v in flags.items() if v is not None})
    if request.lr is None:
        train_cfg["lr"] = train_cfg["lr"] * LR_SCALE[train_cfg["optimizer"]]
    if request.no_jit or kind in ("rnn", "lstm"):  # XLA cannot compile their tf.while_loop over time steps
        train_cfg["jit_compile"] = False
    for name in ("steps", "batch_size", "seq_len", "eval_every", "log_every"):
        if train_cfg[name] < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1; got {train_cfg[name]}")
    embeddings, first_layers = parse_freeze(request.freeze)
    layers = model_config.get("num_layers", 1)
    if first_layers > layers:
        raise UsageError(f"--freeze {first_layers}: the {kind} has {layers} blocks/layers; freeze at most {layers}")
    return dict(
        model=kind,
        preset=source.get("preset") if source else model_config.get("preset"),
        model_config=model_config,
        tokenizer=source["tokenizer"] if source else request.tokenizer,
        corpus=request.corpus,
        val_fraction=request.val_fraction,
        train=train_cfg,
        init_from=str(request.init_from) if request.init_from else None,
        freeze=dict(embeddings=embeddings, first_layers=first_layers) if request.freeze else None,
    )


def full_model_config(kind: str, model_config: dict, vocab_size: int) -> dict:
    """Returns the complete config dict of the model (what `build_model` takes), checked."""
    model_config = dict(model_config, vocab_size=vocab_size)
    if kind == "transformer":
        from assignment.transformer import TransformerConfig

        preset = model_config.pop("preset", None)
        try:
            config = (
                TransformerConfig.preset(preset, **model_config)
                if preset
                else TransformerConfig.from_dict(model_config)
            )
        except (TypeError, ValueError) as error:
            raise UsageError(f"transformer config: {error}") from None
        return config.to_dict()
    return model_config


def check_same_run(saved: RunConfig, config: RunConfig, run_dir) -> None:
    """Raises `UsageError` listing the differences when `run_dir` was written by another model or config."""
    differences = []
    for key in IDENTITY:
        if saved.get(key) != config.get(key):
            if isinstance(saved.get(key), dict) and isinstance(config.get(key), dict):
                for sub in sorted(set(saved[key]) | set(config[key])):
                    if saved[key].get(sub) != config[key].get(sub):
                        differences.append(
                            f"{key}.{sub}: {config[key].get(sub)!r} here, {saved[key].get(sub)!r} in the run"
                        )
            else:
                differences.append(f"{key}: {config.get(key)!r} here, {saved.get(key)!r} in the run")
    for key in TRAIN_IDENTITY:
        if saved["train"].get(key) != config["train"].get(key):
            differences.append(f"{key}: {config['train'].get(key)!r} here, {saved['train'].get(key)!r} in the run")
    if differences:
        raise UsageError(
            f"{run_dir} holds a run of another model or config, so it cannot be resumed with these settings:\n  "
            + "\n  ".join(differences)
            + f"\nUse --run-dir DIR for a new run, or --overwrite to delete {run_dir} and start again."
        )


def make_sample_fn(
    tokenizer, prompt: str, max_new_tokens: int, temperature: float = 0.8, seed: int = 0
) -> Callable[[keras.Model], str]:
    """Returns `sample_fn(model) -> str`: the prompt and `max_new_tokens` sampled tokens, decoded."""
    from assignment import sampling

    prompt_ids = tokenizer.encode(prompt) if prompt else np.array([tokenizer.unk_id], np.int32)

    def sample_fn(model):
        ids = sampling.generate(model, prompt_ids, max_new_tokens, temperature=temperature, seed=seed)
        return tokenizer.decode(ids)

    return sample_fn


def _remove_run_dir(run_dir):
    if not run_dir.exists():
        return
    if any(run_dir.iterdir()) and not (run_dir / "config.json").exists():
        raise UsageError(f"refusing to delete {run_dir}: it is not a run directory (no config.json)")
    shutil.rmtree(run_dir)


def run(request: RunRequest, log: Callable[[str], None] = print) -> dict:
    """Trains as `request` (a `RunRequest`) says and returns the result dict of `train`."""
    from assignment import preprocess
    from lmrun.corpus import load_corpus

    validate(request)
    settings = resolve_settings(request)
    run_dir = Path(request.run_dir)
    strategy = make_strategy(request.strategy, request.cpu_replicas)
    chief = is_chief(strategy)
    if request.overwrite and chief:
        _remove_run_dir(run_dir)
    saved = read_run_config(run_dir)
    if saved is None and run_dir.exists() and any(p.name != "logs" for p in run_dir.iterdir()):
        raise UsageError(f"{run_dir} exists and is not a run directory (no config.json); choose another --run-dir")
    cfg = TrainConfig.from_dict(settings["train"])
    keras.utils.set_random_seed(cfg.seed)  # the initial weights

    if request.data:
        # Token shards: the tokenizer and the split are the shards'; the ids stay on disk, memory-mapped.
        train_ids, val_ids, tokenizer, meta = read_shards(request.data)
        if settings["init_from"]:
            check_same_tokenizer(request.data, meta, settings["init_from"])
        if saved is not None:
            tokenizer = read_tokenizer(run_dir / "tokenizer.json")
        settings = dict(
            settings,
            corpus=meta["corpus"],
            tokenizer=meta["tokenizer_kind"],
            val_fraction=meta["val_fraction"],
            data=str(request.data),
        )
        corpus_sha256 = hashlib.sha256((Path(request.data) / "meta.json").read_bytes()).hexdigest()
        val_chars = shard_characters(tokenizer, val_ids, meta)
    else:
        try:
            text = load_corpus(settings["corpus"])
        except (OSError, ValueError) as error:
            raise UsageError(str(error)) from None
        if saved is not None:
            tokenizer = read_tokenizer(run_dir / "tokenizer.json")
        elif settings["init_from"]:
            tokenizer = read_tokenizer(Path(settings["init_from"]) / "tokenizer.json")
        else:
            kind = preprocess.CharTokenizer if settings["tokenizer"] == "char" else preprocess.WordTokenizer
            tokenizer = kind().fit(text)
        ids = tokenizer.encode(text)
        train_ids, val_ids = preprocess.train_val_split(ids, settings["val_fraction"])
        corpus_sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
        val_chars = ValidationCharacters(val_ids, token_counts=token_characters(tokenizer, text, ids)[len(train_ids) :])
    config = dict(
        settings,
        model_config=full_model_config(settings["model"], settings["model_config"], tokenizer.vocab_size),
        corpus_sha256=corpus_sha256,
        vocab_size=tokenizer.vocab_size,
    )
    if saved is not None:
        check_same_run(saved, config, run_dir)
    check_data_size(train_ids, val_ids, cfg.batch_size, cfg.seq_len)
    if chief:
        run_dir.mkdir(parents=True, exist_ok=True)
        if saved is None:
            save_tokenizer(tokenizer, run_dir / "tokenizer.json")
        write_json(run_dir / "config.json", config)
    log(
        f"{run_dir}: {settings['model']} ({describe(config)}) on {settings['corpus']} "
        f"({len(train_ids):,} training / {len(val_ids):,} validation tokens, vocabulary {tokenizer.vocab_size}); "
        f"{cfg.steps} steps of {cfg.batch_size} x {cfg.seq_len} tokens, {cfg.optimizer} lr {cfg.lr:g}"
    )

    def setup_fn(model):
        log(f"parameters: {model.count_params():,}")
        if settings["init_from"]:
            load_weights(model, settings["init_from"], "best", log)
        if settings["freeze"]:
            frozen = freeze(model, **settings["freeze"])
            log(f"frozen: {len(frozen)} variables, {sum(int(np.prod(v.shape)) for v in frozen):,} parameters")

    sample_fn = make_sample_fn(tokenizer, request.sample_prompt, request.sample_tokens, seed=cfg.seed)
    # The samples logged at each evaluation stay short, and within a transformer's context: there they come from
    # the KV cache (a few ms a token); beyond it every token re-reads the whole context.
    room = config["model_config"].get("context_length", 10**9) - len(tokenizer.encode(request.sample_prompt))
    eval_sample_fn = make_sample_fn(
        tokenizer, request.sample_prompt, max(1, min(request.sample_tokens, 100, room)), seed=cfg.seed
    )
    trackers = []
    if request.wandb and chief:
        from lmkit.tracking import WandbTracker

        trackers.append(WandbTracker(run_dir, config, log=log))
    try:
        result = train(
            lambda: build_model(settings["model"], config["model_config"]),
            train_ids,
            val_ids,
            cfg,
            run_dir,
            strategy=strategy,
            trackers=trackers,
            setup_fn=setup_fn,
            sample_fn=eval_sample_fn if request.sample_tokens else None,
            progress=not request.no_progress,
            log=log,
            fresh_start=(
                f"fine-tuning: starting at step 0 from the best weights of {settings['init_from']}"
                if settings["init_from"]
                else "starting from scratch"
            ),
            val_chars=val_chars,
        )
    finally:
        for tracker in trackers:
            tracker.close()  # the loop has closed them unless it failed early; a second close does nothing
    if result["already_done"]:
        figures = (
            f": val loss {result['val_loss']:.4f}, perplexity {result['val_perplexity']:.2f}"
            + (f", {result['val_bits_per_char']:.4f} bits/char" if result["val_bits_per_char"] else "")
            if result["val_loss"] is not None
            else ""
        )
        log(
            f"{run_dir} is already trained to step {result['step']} of {cfg.steps}{figures}. Nothing to do: "
            f"pass --steps N (more than {result['step']}) to train further, --overwrite to start again, or "
            f"sample with python -m lmrun generate --run-dir {run_dir}"
        )
        return result
    if result["out_of_time"]:
        log(
            f"stopped at the time budget ({cfg.time_budget_minutes:g} minutes, --time-budget) at step "
            f"{result['step']} of {cfg.steps}: this machine is slower than planned (busy?); run the same command "
            f"again to finish the schedule, or pass --time-budget 0"
        )
    log(
        f"{'stopped' if result['stopped'] else 'done'}: step {result['step']} | val loss {result['val_loss']:.4f} | "
        f"val perplexity {result['val_perplexity']:.2f} | "
        + (f"{result['val_bits_per_char']:.4f} bits/char | " if result["val_bits_per_char"] else "")
        + f"{result['tokens_per_sec']:,.0f} tokens/s | training time "
        f"{format_time(result['train_time'])} (wall {format_time(result['wall_time'])})"
    )
    log(
        f"best checkpoint: {result['checkpoints'].best.latest_checkpoint} (val loss "
        f"{float(result['checkpoints'].best_val_loss):.4f})"
    )
    if request.sample_tokens and chief:
        with evaluation_weights(result["model"], result["optimizer"]):
            log("sample:\n" + sample_fn(result["model"]))
    return result


def parse_freeze(items) -> tuple[bool, int]:
    """Returns `(embeddings, first_layers)` from `--freeze` items such as `["embeddings", "2"]`."""
    embeddings, first_layers = False, 0
    for item in items or ():
        if item in ("embeddings", "embedding", "emb"):
            embeddings = True
        elif str(item).isdigit():
            first_layers = int(item)
        else:
            raise UsageError(f"--freeze takes 'embeddings' and/or a number of blocks/layers N; got {item!r}")
    return embeddings, first_layers


# ----------------------------------------------------------------------------------------------------------------


def format_time(seconds: float) -> str:
    """Returns `seconds` as `1m05s` or `42s`."""
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"
