"""`generate` keeps the transformer's KV cache working past its context length (the generation protocol in
CONVENTIONS.md): within the context the text is the text of re-reading the whole sequence, and past it every step's
logits are those of the model re-reading exactly the window the cache holds, for every positional scheme."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from assignment import sampling, transformer

CONTEXT = 8
VOCAB = 13


def _model(positions):
    keras.utils.set_random_seed(0)
    config = transformer.TransformerConfig.preset(
        "gpt2",
        vocab_size=VOCAB,
        context_length=CONTEXT,
        d_model=16,
        num_heads=2,
        num_layers=2,
        positions=positions,
    )
    model = transformer.TransformerLanguageModel(config)
    for i, weight in enumerate(model.weights):  # larger weights: logits far apart, no argmax decided by rounding
        weight.assign(weight + 0.3 * tf.random.stateless_normal(weight.shape, [i, 0]))
    return model


class ReReading:
    """The model without its cache: `generate` re-reads the context (cropped to its last CONTEXT tokens) each step."""

    def __init__(self, model):
        self.model, self.context_length = model, model.config.context_length

    def __call__(self, tokens):
        return self.model(tokens)


class Recorded:
    """The model with its cache, recording the window the cache holds and the last-step logits of every call."""

    def __init__(self, model):
        self.model, self.config = model, model.config
        self.window = None  # (B, w) tokens the cache holds
        self.steps = []  # (window (B, w), logits (B, V)) of every prefill and decode step

    def __call__(self, tokens):
        raise AssertionError("generate re-read the context instead of using the KV cache")

    def prefill(self, tokens):
        logits, cache = self.model.prefill(tokens)
        self.window = np.asarray(tokens)
        self.steps.append((self.window, logits[:, -1].numpy()))
        return logits, cache

    def decode_step(self, next_ids, cache):
        logits, cache = self.model.decode_step(next_ids, cache)
        self.window = np.concatenate([self.window, np.reshape(np.asarray(next_ids), (-1, 1))], axis=1)
        self.steps.append((self.window, logits[:, -1].numpy()))
        return logits, cache


class WindowReReading(Recorded):
    """The protocol of the cache without the cache: each step re-reads the window a cache would hold, whole."""

    def prefill(self, tokens):
        self.window = np.asarray(tokens)
        return self.model(tokens), None

    def decode_step(self, next_ids, cache):
        self.window = np.concatenate([self.window, np.reshape(np.asarray(next_ids), (-1, 1))], axis=1)
        assert self.window.shape[1] <= CONTEXT, f"decode_step on a full cache: window of {self.window.shape[1]}"
        return self.model(tf.constant(self.window))[:, -1:], None


SAMPLING = [dict(greedy=True), dict(temperature=1.0, seed=3), dict(temperature=0.8, top_p=0.9, seed=5)]
PROMPT = np.array([[1, 2, 3], [4, 0, 6]], dtype=np.int32)  # (2, 3)


@pytest.fixture(scope="module", params=["learned", "sinusoidal", "rope"])
def model(request):
    """One model per positional scheme, its decode step compiled once for every test below."""
    return _model(request.param)


def test_within_the_context_the_cache_gives_the_text_of_rereading(model):
    new = CONTEXT - PROMPT.shape[1] + 1  # the last token is drawn after reading exactly CONTEXT tokens
    for kwargs in SAMPLING:
        cached = Recorded(model)
        got = sampling.generate(cached, PROMPT, new, **kwargs)
        expected = sampling.generate(ReReading(model), PROMPT, new, **kwargs)
        np.testing.assert_array_equal(got, expected, err_msg=f"generate(**{kwargs})")
        assert len(cached.steps) == new
        for i, (window, _) in enumerate(cached.steps):
            np.testing.assert_array_equal(window, got[:, : PROMPT.shape[1] + i], err_msg=f"step {i} read a crop")


@pytest.mark.parametrize("prompt_length", [3, 11])  # 11: a prompt longer than the context
def test_past_the_context_each_step_reads_the_window_the_cache_holds(model, prompt_length):
    prompt = np.random.default_rng(prompt_length).integers(0, VOCAB, (2, prompt_length)).astype(np.int32)
    new = 2 * CONTEXT + 2
    for kwargs in SAMPLING:
        cached = Recorded(model)
        got = sampling.generate(cached, prompt, new, **kwargs)
        assert got.shape == (2, prompt_length + new)
        assert len(cached.steps) == new, "every step must go through prefill or decode_step"
        lengths = []
        for i, (window, logits) in enumerate(cached.steps):
            sequence = got[:, : prompt_length + i]  # what the model has to continue at step i
            w = window.shape[1]
            lengths.append(w)
            assert (CONTEXT + 1) // 2 <= w <= CONTEXT or w == prompt_length + i, f"step {i}: window of {w}"
            np.testing.assert_array_equal(window, sequence[:, -w:], err_msg=f"step {i}: not the last {w} tokens")
            reread = model(tf.constant(window))[:, -1].numpy()  # (B, V)
            np.testing.assert_allclose(logits, reread, atol=1e-4, err_msg=f"step {i}: logits differ from model(window)")
            if kwargs.get("greedy"):
                np.testing.assert_array_equal(got[:, prompt_length + i], reread.argmax(-1), err_msg=f"step {i}")
        assert max(lengths) == CONTEXT and min(lengths) < CONTEXT, f"windows read: {lengths}"
        # The same windows re-read whole give the same text, sampled or greedy.
        reread_text = sampling.generate(WindowReReading(model), prompt, new, **kwargs)
        np.testing.assert_array_equal(got, reread_text, err_msg=f"generate(**{kwargs})")
