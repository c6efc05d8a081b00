"""Named configurations for `python -m lmrun train --config NAME` (given, not graded).

Any flag overrides them. Each setting carries its reason beside it. Given, not graded.
"""

MODELS = ("rnn", "lstm", "transformer")
ARCHITECTURES = ("gpt2", "llama2", "olmo", "openlm", "falcon", "palm")  # TransformerConfig.preset names

# Named configurations (`--config NAME`): sizes per model kind and training settings; any flag overrides them.
CONFIGS = {
    # `make train`: the reference transformer on the offline corpus, about 3-4 minutes on 2 CPU cores. LLaMA-2's
    # architecture (RoPE, RMSNorm, SwiGLU, GQA) and a context of 128 reach a lower validation loss on pyref for the
    # same compute than GPT-2's with a context of 64 (1.19 against 1.23 after 3.4M tokens); dropout only slowed
    # it down at this budget (1.21 with 0.1).
    "main": dict(
        transformer=dict(preset="llama2", d_model=128, num_heads=4, num_layers=4, context_length=128, dropout=0.0),
        rnn=dict(embed_dim=64, hidden_dim=256, num_layers=1),
        lstm=dict(embed_dim=64, hidden_dim=256, num_layers=1),
        train=dict(
            steps=1400,
            batch_size=16,
            lr=2e-3,
            warmup_steps=100,
            eval_every=200,
            save_every_steps=200,
            time_budget_minutes=4.25,
        ),  # a busy machine still ends `make train` within 5 minutes
    ),
    # nanoGPT's CPU run of train_shakespeare_char (README: "I only have a macbook"): 4 layers, 4 heads, width 128,
    # context 64, batch 12, dropout 0, no biases, 2000 iterations, lr 1e-3 -> 1e-4, warmup 100, beta2 0.99.
    "nanogpt-cpu": dict(
        transformer=dict(
            preset="gpt2", d_model=128, num_heads=4, num_layers=4, context_length=64, dropout=0.0, bias="none"
        ),
        rnn=dict(embed_dim=64, hidden_dim=256, num_layers=1),
        lstm=dict(embed_dim=64, hidden_dim=256, num_layers=1),
        train=dict(
            steps=2000,
            batch_size=12,
            lr=1e-3,
            min_lr_ratio=0.1,
            warmup_steps=100,
            weight_decay=0.1,
            beta_1=0.9,
            beta_2=0.99,
            clip_norm=1.0,
            eval_every=250,
            save_every_steps=500,
            max_eval_batches=4,  # 256 windows of 64 tokens, like nanoGPT's 20 x 12; the last: all
            sample_at_eval=False,  # nanoGPT samples nothing while it trains
        ),
    ),
    # The CPU speedrun: nanoGPT's validation loss on tiny Shakespeare in at most half its wall time, from the
    # lecture's improvements (LLaMA-2's architecture, Muon) and a learning rate and schedule tuned to them.
    "speedrun": dict(
        transformer=dict(preset="llama2", d_model=128, num_heads=4, num_layers=4, context_length=64, dropout=0.0),
        rnn=dict(embed_dim=64, hidden_dim=256, num_layers=1),
        lstm=dict(embed_dim=64, hidden_dim=256, num_layers=1),
        train=dict(
            steps=300,
            batch_size=16,
            optimizer="muon",
            lr=6e-3,
            min_lr_ratio=0.1,
            warmup_steps=30,
            weight_decay=0.1,
            beta_1=0.9,
            beta_2=0.99,
            clip_norm=1.0,
            eval_every=300,  # one evaluation, over the whole validation tail, at the end
            save_every_steps=0,
            save_every_minutes=0,
            sample_at_eval=False,
        ),
    ),
    # Seconds: for smoke tests and the instructor's end-to-end tests.
    "tiny": dict(
        transformer=dict(preset="gpt2", d_model=32, num_heads=2, num_layers=2, context_length=16, dropout=0.0),
        rnn=dict(embed_dim=16, hidden_dim=32, num_layers=1),
        lstm=dict(embed_dim=16, hidden_dim=32, num_layers=1),
        train=dict(
            steps=20,
            batch_size=4,
            lr=3e-3,
            warmup_steps=2,
            eval_every=10,
            eval_batch_size=256,
            max_eval_batches=4,
            log_every=5,
            save_every_steps=10,
        ),
    ),
}


def describe(config: dict) -> str:
    """Returns a one-line summary of a run's model: its preset, layers, heads and widths."""
    mc = config["model_config"]
    if config["model"] == "transformer":
        return (
            f"{config.get('preset') or 'custom'}, {mc['num_layers']} layers, {mc['num_heads']} heads, "
            f"width {mc['d_model']}, context {mc['context_length']}"
        )
    return f"{mc.get('num_layers', 1)} layer(s), embedding {mc['embed_dim']}, hidden {mc['hidden_dim']}"
