"""Optimizers and the learning-rate schedule of the training loop (given, not graded).

`make_optimizer(name, ...)` returns AdamW, Adam, Lion, Muon, schedule-free AdamW or SGD with nanoGPT's warmup and
cosine decay; `evaluation_weights` swaps in the weights schedule-free AdamW is evaluated at.
"""

import contextlib
import re
from collections.abc import Iterator

import keras
import tensorflow as tf
from keras import ops

OPTIMIZERS = ("adamw", "lion", "muon", "schedulefree", "adam", "sgd")

# Learning rate of each optimizer relative to `--lr` (which is tuned for AdamW) when `--lr` is not given: Lion's
# sign updates are larger than Adam's, so it wants a smaller step (its paper: 3-10x); SGD's steps are gradient-sized.
LR_SCALE = {"adamw": 1.0, "adam": 1.0, "lion": 0.3, "muon": 1.0, "schedulefree": 2.0, "sgd": 100.0}


def learning_rate_schedule(
    lr: float, steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.1
) -> keras.optimizers.schedules.LearningRateSchedule:
    """Returns nanoGPT's schedule: a linear warmup to `lr` over `warmup_steps`, then a cosine decay to
    `lr * min_lr_ratio` at step `steps` (constant after that)."""
    warmup_steps = max(0, min(int(warmup_steps), int(steps) - 1))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=lr / (warmup_steps + 1) if warmup_steps else lr,  # step 0 already moves
        decay_steps=max(int(steps) - warmup_steps, 1),
        alpha=min_lr_ratio,
        warmup_target=lr if warmup_steps else None,
        warmup_steps=warmup_steps,
    )


def _embedding_like(model):
    """Returns the 2-D variables Muon must leave to AdamW: embeddings and the projection to the vocabulary."""
    embedding_ids = {
        id(v) for layer in _sublayers(model) if isinstance(layer, keras.layers.Embedding) for v in layer.weights
    }
    vocab = int(model(tf.zeros((1, 1), tf.int32)).shape[-1])
    return [
        v
        for v in model.trainable_variables
        if len(v.shape) == 2 and (id(v) in embedding_ids or vocab in v.shape or "embed" in v.path.lower())
    ]


class ScheduleFreeAdamW(keras.optimizers.ScheduleFreeAdamW):
    """Keras 3's schedule-free AdamW (Defazio et al., 2024) with its update step corrected.

    The model holds y = (1 - b1) z + b1 x; the optimizer keeps z (`momentum`) and the Adam second moment. Each
    step recovers x from y and z, moves z by the Adam step, averages x toward z with weight 1 / t and writes the
    new y. Keras 3.15 reads z for that recovery after it has already moved z, which pushes x uphill by
    (1 - b1) / b1 of every step; here z is read first. Measured with `python -m lmrun compare --optimizers`
    (500 steps): with Keras' step, x had a validation loss of 2.62 where the training weights y had 1.65; with
    this one, 1.31 and 1.34, as the paper predicts (x better than y).
    """

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        step = ops.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = ops.cast(self.beta_1, dtype), ops.cast(self.beta_2, dtype)
        if self.warmup_steps > 0:
            lr = lr * ops.minimum(step / ops.cast(self.warmup_steps, dtype), 1.0)
        index = self._get_variable_index(variable)
        z, velocity = self._momentums[index], self._velocities[index]
        x = (ops.convert_to_tensor(variable) - (1 - beta_1) * ops.convert_to_tensor(z)) / beta_1  # before z moves
        self.assign_add(velocity, (ops.square(gradient) - velocity) * (1 - beta_2))
        denominator = ops.sqrt(velocity / (1 - ops.power(beta_2, step))) + ops.cast(self.epsilon, dtype)
        self.assign_sub(z, lr * gradient / denominator)
        x = (1 - 1 / step) * x + (1 / step) * ops.convert_to_tensor(z)
        self.assign(variable, (1 - beta_1) * z + beta_1 * x)


def make_optimizer(
    name: str,
    lr: float,
    steps: int,
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.1,
    weight_decay: float = 0.1,
    beta_1: float = 0.9,
    beta_2: float = 0.99,
    model: keras.Model | None = None,
    replicas: int = 1,
) -> keras.optimizers.Optimizer:
    """Returns the Keras optimizer `name` (one of `OPTIMIZERS`), following `learning_rate_schedule`.

    Schedule-free AdamW is the exception: it needs no schedule (only its own warmup), which is its point; it trains
    at one point and is evaluated at another (see `evaluation_weights`). Weight decay skips 1-D variables (norm
    gains, biases), as nanoGPT does. `replicas`: under `tf.distribute`, the optimizer sums the replicas'
    gradients; dividing each by the number of replicas first (Keras' `loss_scale_factor`) makes the sum a mean.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid optimizers: {', '.join(OPTIMIZERS)}")
    schedule = learning_rate_schedule(lr, steps, warmup_steps, min_lr_ratio)
    common = dict(loss_scale_factor=float(replicas) if replicas > 1 else None)
    if name == "adamw":
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=weight_decay, beta_1=beta_1, beta_2=beta_2, **common)
    elif name == "adam":
        optimizer = keras.optimizers.Adam(schedule, beta_1=beta_1, beta_2=beta_2, **common)
    elif name == "lion":
        optimizer = keras.optimizers.Lion(schedule, beta_1=beta_1, beta_2=beta_2, weight_decay=weight_decay, **common)
    elif name == "muon":
        exclude = [re.escape(v.path) for v in _embedding_like(model)] if model is not None else None
        optimizer = keras.optimizers.Muon(
            schedule,
            adam_beta_1=beta_1,
            adam_beta_2=beta_2,
            adam_weight_decay=weight_decay,
            weight_decay=weight_decay,
            exclude_layers=exclude,
            **common,
        )
    elif name == "schedulefree":
        optimizer = ScheduleFreeAdamW(
            lr, beta_1=beta_1, beta_2=beta_2, warmup_steps=warmup_steps, weight_decay=weight_decay, **common
        )
    else:
        optimizer = keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True, **common)
    if model is not None and getattr(optimizer, "weight_decay", None):
        optimizer.exclude_from_weight_decay(var_list=[v for v in model.trainable_variables if len(v.shape) < 2])
    return optimizer


@contextlib.contextmanager
def evaluation_weights(model: keras.Model, optimizer: keras.optimizers.Optimizer) -> Iterator[None]:
    """Inside the block, `model` holds the weights to evaluate and to save as the best checkpoint.

    Schedule-free AdamW trains at y = (1 - b1) z + b1 x but is evaluated at the average x = (y - (1 - b1) z) / b1;
    every other optimizer evaluates the weights it trains. The training weights come back on exit.
    """
    if not isinstance(optimizer, keras.optimizers.ScheduleFreeAdamW) or not optimizer.built:
        yield
        return
    variables = model.trainable_variables
    saved = [tf.identity(v) for v in variables]
    b1 = float(optimizer.beta_1)
    for v in variables:
        z = optimizer._momentums[optimizer._get_variable_index(v)]
        v.assign((v - (1 - b1) * z) / b1)
    try:
        yield
    finally:
        for v, value in zip(variables, saved):
            v.assign(value)


def _sublayers(model):
    """Returns every layer inside `model`, depth first (Keras 3's `_flatten_layers` without the model itself)."""
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)]
