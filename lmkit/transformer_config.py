"""The transformer's configuration, a dataclass of the lecture's table of 7B models (given, not graded).

Import it from `assignment.transformer` (``from assignment.transformer import TransformerConfig``); it lives in its
own file only to keep `transformer.py` about the model.
"""

import dataclasses
import json

NORMS = ("layernorm", "rmsnorm", "nonparametric")
POSITIONS = ("learned", "sinusoidal", "rope")
BIASES = ("none", "norm_only", "all")
BLOCKS = ("sequential", "parallel")
ACTIVATIONS = ("gelu", "swiglu")

# The lecture's table (OLMo paper, Groeneveld et al. 2024, Table "LM architecture comparison at the 7-8B scale"),
# plus GPT-2. Attention: "full" = num_kv_heads == num_heads, "mqa" = one key/value head, "gqa" = half as many
# key/value heads as query heads (rounded down to a divisor of num_heads), so every preset scales to any width.
PRESETS = {
    "gpt2": dict(
        norm="layernorm",
        positions="learned",
        attention="full",
        bias="all",
        block="sequential",
        activation="gelu",
        mlp_ratio=4.0,
        tie_embeddings=True,
    ),
    "olmo": dict(
        norm="nonparametric",
        positions="rope",
        attention="full",
        bias="none",
        block="sequential",
        activation="swiglu",
        mlp_ratio=8 / 3,
        tie_embeddings=False,
    ),
    "llama2": dict(
        norm="rmsnorm",
        positions="rope",
        attention="gqa",
        bias="none",
        block="sequential",
        activation="swiglu",
        mlp_ratio=8 / 3,
        tie_embeddings=False,
    ),
    "openlm": dict(
        norm="layernorm",
        positions="rope",
        attention="full",
        bias="norm_only",
        block="sequential",
        activation="swiglu",
        mlp_ratio=8 / 3,
        tie_embeddings=False,
    ),
    "falcon": dict(
        norm="layernorm",
        positions="rope",
        attention="mqa",
        bias="norm_only",
        block="parallel",
        activation="gelu",
        mlp_ratio=4.0,
        tie_embeddings=False,
    ),
    "palm": dict(
        norm="layernorm",
        positions="rope",
        attention="mqa",
        bias="none",
        block="parallel",
        activation="swiglu",
        mlp_ratio=4.0,
        tie_embeddings=True,
    ),
}


def _check_option(name, value, valid):
    if value not in valid:
        raise ValueError(f"`{name}` must be one of {', '.join(map(repr, valid))}; got {name}={value!r}")


def _kv_heads_for(attention, num_heads):
    """Returns the number of key/value heads a preset's attention variant gives `num_heads` query heads."""
    if attention == "full":
        return num_heads
    if attention == "mqa":
        return 1
    return max(d for d in range(1, max(1, num_heads // 2) + 1) if num_heads % d == 0)  # gqa


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """The size and the architecture options of a `TransformerLanguageModel`.

    The defaults are nanoGPT's CPU run (4 layers, 4 heads, width 128, context 64) with GPT-2's architecture.
    `TransformerConfig.preset(name, **overrides)` gives the architectures of the lecture's table, at any size:

    | preset   | norm           | positions | attention (nkv) | biases     | block      | activation | MLP  | tied |
    | -------- | -------------- | --------- | --------------- | ---------- | ---------- | ---------- | ---- | ---- |
    | `gpt2`   | LayerNorm      | learned   | full            | all        | sequential | GELU       | 4    | yes  |
    | `olmo`   | non-parametric | RoPE      | full            | none       | sequential | SwiGLU     | 8/3  | no   |
    | `llama2` | RMSNorm        | RoPE      | GQA (nh // 2)   | none       | sequential | SwiGLU     | 8/3  | no   |
    | `openlm` | LayerNorm      | RoPE      | full            | in LN only | sequential | SwiGLU     | 8/3  | no   |
    | `falcon` | LayerNorm      | RoPE      | MQA (1)         | in LN only | parallel   | GELU       | 4    | no   |
    | `palm`   | LayerNorm      | RoPE      | MQA (1)         | none       | parallel   | SwiGLU     | 4    | yes  |

    Sources and choices: the five 7B columns follow the OLMo paper's comparison table (OLMo-7B, LLaMA2-7B,
    OpenLM-7B, Falcon-7B, PaLM-8B). "Non-parametric" is LayerNorm without gain or bias. The table lists GQA for
    LLaMA 2, which the 34B and 70B models use (70B: 64 query heads share 8 key/value heads; the 7B model has full
    attention); scaled down we keep half as many key/value heads as query heads, and `num_kv_heads=num_heads`
    turns it off. OLMo ties its embeddings only in the 1B model, so the 7B preset does not. GPT-2 has biases in
    every linear layer and LayerNorm, learned positions, GELU (tanh form) and tied embeddings. The output
    projection to the vocabulary never has a bias. Sizes (width, heads, layers, context, vocabulary) are not part
    of a preset: pass them as overrides.

    Args:
        vocab_size: V, the number of token ids.
        context_length: C, the longest sequence the model reads (and the size of the KV cache).
        d_model: D, the width of the residual stream; `num_heads` must divide it.
        num_heads: nh, the number of query heads; the head size is `d_model // num_heads`.
        num_layers: L, the number of decoder blocks.
        num_kv_heads: nkv, the number of key/value heads; None means `num_heads` (full attention), 1 is
            multi-query attention (MQA), anything between that divides `num_heads` is grouped-query (GQA).
        norm: `"layernorm"`, `"rmsnorm"` or `"nonparametric"` (LayerNorm without gain or bias).
        positions: `"learned"` or `"sinusoidal"` (added to the token embeddings) or `"rope"` (rotating
            queries and keys inside attention).
        bias: `"none"`, `"norm_only"` (LayerNorm offsets, no linear-layer biases) or `"all"`.
        block: `"sequential"` (attention, then MLP) or `"parallel"` (both read one normalized input).
        activation: `"gelu"` or `"swiglu"`.
        mlp_ratio: the feed-forward width F divided by D (F = round(mlp_ratio * D)).
        tie_embeddings: whether the output projection reuses the token embedding matrix.
        dropout: the dropout rate on the embeddings and on each residual branch.
        rope_base: the base of RoPE's frequencies.
        norm_epsilon: the epsilon of every norm.

    Examples:
    ```python
    config = TransformerConfig.preset("llama2", vocab_size=65, d_model=64, num_heads=4, num_layers=2)
    config.num_kv_heads  # 2: LLaMA 2 shares each key/value head between two query heads
    TransformerConfig.from_dict(config.to_dict()) == config  # True
    ```
    """

    vocab_size: int = 65  # tiny Shakespeare's characters; set it from your tokenizer
    context_length: int = 64  # nanoGPT's CPU run; attention costs grow with its square
    d_model: int = 128  # nanoGPT's CPU run: small enough to train on a laptop CPU
    num_heads: int = 4  # head size 128 / 4 = 32, as in nanoGPT's CPU run
    num_layers: int = 4  # nanoGPT's CPU run
    num_kv_heads: int | None = None  # None = num_heads: full multi-head attention, as in GPT-2
    norm: str = "layernorm"  # GPT-2's norm; RMSNorm and non-parametric are the table's alternatives
    positions: str = "learned"  # GPT-2's; every 7B model in the table uses "rope"
    bias: str = "all"  # GPT-2 has biases everywhere; the 7B models drop some or all
    block: str = "sequential"  # GPT-2's; Falcon and PaLM run attention and MLP in parallel
    activation: str = "gelu"  # GPT-2's; most of the table uses SwiGLU
    mlp_ratio: float = 4.0  # GPT-2's 4x; SwiGLU models use ~8/3 to keep the parameter count
    tie_embeddings: bool = True  # GPT-2 (and nanoGPT) share the input and output embeddings
    dropout: float = 0.0  # nanoGPT's CPU run: a tiny model overfits slowly enough without it
    rope_base: float = 10000.0  # RoFormer's and LLaMA's base
    norm_epsilon: float = 1e-5  # GPT-2's and LLaMA's LayerNorm/RMSNorm epsilon

    def __post_init__(self):
        for name in ("vocab_size", "context_length", "d_model", "num_heads", "num_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer; got {name}={value!r}")
        if self.d_model % self.num_heads:
            raise ValueError(
                f"`num_heads` must divide `d_model`; got num_heads={self.num_heads}, "
                f"d_model={self.d_model} (valid num_heads: "
                f"{[h for h in range(1, self.d_model + 1) if self.d_model % h == 0]})"
            )
        kv = self.num_kv_heads
        if kv is not None and (isinstance(kv, bool) or not isinstance(kv, int) or kv < 1 or self.num_heads % kv):
            raise ValueError(
                f"`num_kv_heads` must divide `num_heads` (or be None for full attention); got "
                f"num_kv_heads={kv!r}, num_heads={self.num_heads} (valid: None or "
                f"{[d for d in range(1, self.num_heads + 1) if self.num_heads % d == 0]})"
            )
        _check_option("norm", self.norm, NORMS)
        _check_option("positions", self.positions, POSITIONS)
        _check_option("bias", self.bias, BIASES)
        _check_option("block", self.block, BLOCKS)
        _check_option("activation", self.activation, ACTIVATIONS)
        if self.positions == "rope" and self.head_size % 2:
            raise ValueError(
                f"RoPE rotates pairs of dimensions, so the head size d_model // num_heads must be "
                f"even; got d_model={self.d_model}, num_heads={self.num_heads} "
                f"(head size {self.head_size})"
            )
        if not self.mlp_ratio > 0:
            raise ValueError(f"`mlp_ratio` must be positive; got mlp_ratio={self.mlp_ratio!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1); got dropout={self.dropout!r}")

    @property
    def head_size(self) -> int:
        """hs = d_model // num_heads."""
        return self.d_model // self.num_heads

    @property
    def kv_heads(self) -> int:
        """nkv: `num_kv_heads`, or `num_heads` when it is None."""
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @property
    def mlp_hidden(self) -> int:
        """F: the feed-forward width, round(mlp_ratio * d_model)."""
        return max(1, round(self.mlp_ratio * self.d_model))

    @classmethod
    def preset(cls, name: str, **overrides) -> "TransformerConfig":
        """Returns the config of a named architecture (`gpt2`, `olmo`, `llama2`, `openlm`, `falcon`, `palm`).

        Args:
            name: a key of the table in the class docstring.
            **overrides: any field, e.g. `vocab_size=65, d_model=64, num_heads=4, num_layers=2`. Unless
                `num_kv_heads` is given, it follows the preset's attention variant for the final `num_heads`.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"unknown config field(s) {unknown}; valid fields: {sorted(fields)}")
        options = dict(PRESETS[name])
        attention = options.pop("attention")
        options.update(overrides)
        if "num_kv_heads" not in overrides:
            options["num_kv_heads"] = _kv_heads_for(attention, options.get("num_heads", cls.num_heads))
        return cls(**options)

    def to_dict(self) -> dict:
        """Returns the fields as a JSON-serializable dict (for a run directory's config.json)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict | str) -> "TransformerConfig":
        """Returns the config of a dict made by `to_dict` (or a JSON string of one)."""
        if isinstance(values, str):
            values = json.loads(values)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"unknown config field(s) {unknown}; valid fields: {sorted(fields)}")
        return cls(**values)
