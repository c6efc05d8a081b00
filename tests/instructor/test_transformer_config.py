"""The transformer's scaffolding (not graded): presets, config validation and JSON, bad input, XLA, the KV cache API."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from assignment import transformer
from assignment.transformer import TransformerConfig

TINY = dict(vocab_size=11, context_length=8, d_model=16, num_heads=4, num_layers=2)


def _tokens(batch, time, vocab=11, seed=0):
    return tf.constant(np.random.default_rng(seed).integers(0, vocab, size=(batch, time)), tf.int32)


# -- presets: the rows of the lecture's table ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        (
            "gpt2",
            dict(
                norm="layernorm",
                positions="learned",
                bias="all",
                block="sequential",
                activation="gelu",
                tie_embeddings=True,
                num_kv_heads=4,
            ),
        ),
        (
            "olmo",
            dict(
                norm="nonparametric",
                positions="rope",
                bias="none",
                block="sequential",
                activation="swiglu",
                tie_embeddings=False,
                num_kv_heads=4,
            ),
        ),
        (
            "llama2",
            dict(
                norm="rmsnorm",
                positions="rope",
                bias="none",
                block="sequential",
                activation="swiglu",
                tie_embeddings=False,
                num_kv_heads=2,
            ),
        ),
        (
            "openlm",
            dict(
                norm="layernorm",
                positions="rope",
                bias="norm_only",
                block="sequential",
                activation="swiglu",
                tie_embeddings=False,
                num_kv_heads=4,
            ),
        ),
        (
            "falcon",
            dict(
                norm="layernorm",
                positions="rope",
                bias="norm_only",
                block="parallel",
                activation="gelu",
                tie_embeddings=False,
                num_kv_heads=1,
            ),
        ),
        (
            "palm",
            dict(
                norm="layernorm",
                positions="rope",
                bias="none",
                block="parallel",
                activation="swiglu",
                tie_embeddings=True,
                num_kv_heads=1,
            ),
        ),
    ],
)
def test_presets_follow_the_table(name, expected):
    config = TransformerConfig.preset(name, **TINY)
    for field, value in expected.items():
        assert getattr(config, field) == value, (name, field)
    assert config.d_model == 16 and config.vocab_size == 11  # sizes come from the overrides


@pytest.mark.parametrize("num_heads, kv_heads", [(1, 1), (2, 1), (3, 1), (4, 2), (6, 3), (8, 4), (12, 6)])
def test_llama2_keeps_half_as_many_kv_heads_at_any_width(num_heads, kv_heads):
    config = TransformerConfig.preset("llama2", d_model=96, num_heads=num_heads)
    assert config.kv_heads == kv_heads and config.num_heads % config.kv_heads == 0


def test_preset_overrides_win_including_num_kv_heads():
    config = TransformerConfig.preset("llama2", num_kv_heads=4, tie_embeddings=True, **TINY)
    assert config.num_kv_heads == 4 and config.tie_embeddings


def test_config_round_trips_through_json():
    for name in ("gpt2", "olmo", "llama2", "openlm", "falcon", "palm"):
        config = TransformerConfig.preset(name, **TINY)
        text = json.dumps(config.to_dict())
        assert TransformerConfig.from_dict(json.loads(text)) == config
        assert TransformerConfig.from_dict(text) == config


# -- bad input: a ValueError naming the value and what is valid ---------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(d_model=128, num_heads=3), ["num_heads=3", "d_model=128", "must divide"]),
        (dict(num_heads=4, num_kv_heads=3), ["num_kv_heads=3", "num_heads=4", "[1, 2, 4]"]),
        (dict(norm="batchnorm"), ["norm='batchnorm'", "'rmsnorm'"]),
        (dict(positions="alibi"), ["positions='alibi'", "'rope'"]),
        (dict(bias="some"), ["bias='some'", "'norm_only'"]),
        (dict(block="fused"), ["block='fused'", "'parallel'"]),
        (dict(activation="relu"), ["activation='relu'", "'swiglu'"]),
        (dict(vocab_size=0), ["vocab_size=0"]),
        (dict(dropout=1.0), ["dropout=1.0"]),
        (dict(d_model=12, num_heads=4, positions="rope"), ["head size", "even"]),
    ],
)
def test_bad_config_raises_a_value_error_naming_the_value(kwargs, words):
    with pytest.raises(ValueError) as info:
        TransformerConfig(**kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_unknown_preset_or_field_is_refused_with_the_valid_names():
    with pytest.raises(ValueError, match="unknown preset 'gpt3'.*gpt2, olmo, llama2, openlm, falcon, palm"):
        TransformerConfig.preset("gpt3")
    with pytest.raises(ValueError, match="unknown config field.*'n_embd'.*valid fields"):
        TransformerConfig.preset("gpt2", n_embd=64)
    with pytest.raises(ValueError, match="unknown config field.*'n_head'"):
        TransformerConfig.from_dict({"n_head": 4})


def test_sequence_longer_than_the_context_is_refused():
    model = transformer.TransformerLanguageModel(TransformerConfig(**TINY))
    with pytest.raises(ValueError, match="length 9 is longer than the model's context_length=8"):
        model(_tokens(1, 9))
    with pytest.raises(ValueError, match="1 <= T <= context_length=8"):
        model.prefill(_tokens(1, 9))
    logits, cache = model.prefill(_tokens(1, 8))
    with pytest.raises(ValueError, match="KV cache is full"):
        model.decode_step(_tokens(1, 1), cache)


def test_attention_refuses_heads_that_do_not_divide_the_width():
    with pytest.raises(ValueError, match="num_heads=3, d_model=16"):
        transformer.MultiHeadSelfAttention(num_heads=3)(tf.zeros((1, 2, 16)))
    with pytest.raises(ValueError, match="num_kv_heads=3, num_heads=4"):
        transformer.MultiHeadSelfAttention(num_heads=4, num_kv_heads=3)


# -- compilation, the cache API, serialization ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gpt2", "llama2", "falcon"])
def test_train_step_compiles_with_xla_and_matches_graph_mode(name):
    config = TransformerConfig.preset(name, **TINY)
    tokens = _tokens(2, 8)
    losses = []
    for jit in (False, True):
        keras.utils.set_random_seed(0)
        model = transformer.TransformerLanguageModel(config)
        optimizer = keras.optimizers.AdamW(1e-3)

        @tf.function(jit_compile=jit)
        def step():
            with tf.GradientTape() as tape:
                logits = model(tokens, training=True)
                loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(tokens, logits))
            optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_weights), model.trainable_weights))
            return loss

        losses.append([float(step()) for _ in range(3)])
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-4)


def test_decode_step_is_traced_once_and_keeps_the_cache_shape():
    config = TransformerConfig.preset("llama2", **TINY)
    model = transformer.TransformerLanguageModel(config)
    logits, cache = model.prefill(_tokens(3, 2))
    for t in range(2, 8):
        logits, cache = model.decode_step(_tokens(3, 1, seed=t), cache)
        assert len(cache["keys"]) == len(cache["values"]) == 2  # one per layer
        assert all(tuple(k.shape) == (3, 2, 8, 4) for k in cache["keys"] + cache["values"])  # (B, nkv, C, hs)
        assert int(cache["index"]) == t + 1
    model.prefill(_tokens(1, 5))  # another batch size and prompt length: still the same trace
    logits, cache = model.decode_step(tf.zeros((1,), tf.int32), model.prefill(_tokens(1, 5))[1])
    assert logits.shape == (1, 1, 11)
    assert model._decode_fn.experimental_get_tracing_count() == 1


def test_model_round_trips_through_get_config_and_checkpoints(tmp_path):
    config = TransformerConfig.preset("palm", **TINY)
    model = transformer.TransformerLanguageModel(config)
    model.decode_step(_tokens(1, 1), model.prefill(_tokens(1, 3))[1])  # the compiled step must not break saving
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    clone = transformer.TransformerLanguageModel.from_config(model.get_config())
    assert clone.config == config
    tf.train.Checkpoint(model=clone).restore(path).assert_existing_objects_matched()
    np.testing.assert_allclose(clone(_tokens(2, 8)), model(_tokens(2, 8)), atol=1e-6)
