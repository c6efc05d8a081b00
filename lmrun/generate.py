"""Sample text from a trained run directory, `python -m lmrun generate` (given, not graded).

The run directory holds everything needed (config.json, tokenizer.json and the checkpoints), so nothing else is
read: the model is rebuilt from its config, its weights restored from the best checkpoint (or the latest), and
`sampling.generate` does the rest (KV cache for the transformer, carried state for the RNN and LSTM).
"""

import argparse
import sys
import time
from typing import TYPE_CHECKING

from lmkit.errors import LMError
from lmrun.cli import Parser

if TYPE_CHECKING:
    import keras


def build_parser() -> Parser:
    parser = Parser(
        prog="python -m lmrun generate",
        description="Generate text with a model trained by `python -m lmrun train` (or `make train`).",
        epilog="examples:\n"
        "  python -m lmrun generate                                  # runs/main, prompt 'The '\n"
        "  python -m lmrun generate --prompt 'def ' --temperature 0.5 --max-new-tokens 300\n"
        "  python -m lmrun generate --top-p 0.9 --num-samples 3 --seed 1\n"
        "  python -m lmrun generate --temperature 0     # greedy: always the most probable token",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--run-dir", default="runs/main", help="run directory written by assignment.train (default: runs/main)"
    )
    parser.add_argument(
        "--checkpoint",
        default="best",
        help="'best' (lowest validation loss; default), 'latest', or a checkpoint path such as "
        "runs/main/ckpt/ckpt-1000",
    )
    parser.add_argument(
        "--prompt",
        default="The ",
        help="text the model continues (default: 'The '); characters or words the tokenizer has "
        "not seen become the unknown token",
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=500, help="how many tokens to generate after the prompt (default: 500)"
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.8,
        help="divides the logits: below 1 is more conservative, above 1 more varied, 0 is greedy (default: 0.8)",
    )
    parser.add_argument(
        "--top-k", type=int, default=None, help="sample only among the k most probable tokens (default: no limit)"
    )
    parser.add_argument(
        "--top-p",
        type=float,
        default=None,
        help="nucleus sampling: only the most probable tokens whose probabilities add up to p (default: no limit)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="random seed: the same seed gives the same text (default: a different text each time)",
    )
    parser.add_argument("--num-samples", type=int, default=1, help="independent samples to print (default: 1)")
    parser.add_argument(
        "--stop", default=None, help="stop a sample once it produces this token (e.g. a newline: --stop $'\\n')"
    )
    return parser


def check_args(args: argparse.Namespace) -> str | None:
    """Returns what is wrong with the flags, naming the flag, its value and what is allowed; None when nothing."""
    if args.num_samples < 1:
        return f"--num-samples must be at least 1; got --num-samples {args.num_samples}"
    if args.max_new_tokens < 0:
        return f"--max-new-tokens must be >= 0; got --max-new-tokens {args.max_new_tokens}"
    if not args.temperature >= 0 or args.temperature == float("inf"):
        return f"--temperature must be a finite number >= 0 (0: greedy); got --temperature {args.temperature}"
    if args.top_k is not None and args.top_k < 1:
        return f"--top-k must be at least 1 (the number of tokens kept); got --top-k {args.top_k}"
    if args.top_p is not None and not 0 < args.top_p <= 1:
        return f"--top-p must be in (0, 1] (the probability mass kept); got --top-p {args.top_p}"
    return None


def warm_up(model: "keras.Model", prompt_ids: list[int]) -> None:
    """Generates two tokens after the prompt, twice, and throws them away: the first call compiles the transformer's
    decode step, the second its prefill as a graph (for the refills past the context), so the tokens/s printed after
    each sample measure the decoding loop alone (the prompt is read and every token is chosen as in the sample)."""
    from assignment import sampling

    for _ in range(2):
        sampling.generate(model, prompt_ids, 2, greedy=True)


def main(argv: list[str] | None = None) -> int:
    launched = time.perf_counter()
    args = build_parser().parse_args(argv)
    from assignment import sampling
    from lmrun.runs import load_run

    problem = check_args(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        model, tokenizer, config, path = load_run(args.run_dir, args.checkpoint)
    except (LMError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    prompt_ids = tokenizer.encode(args.prompt) if args.prompt else [tokenizer.unk_id]
    stop_id = None
    if args.stop is not None:
        stop_ids = tokenizer.encode(args.stop)
        if len(stop_ids) != 1:
            print(f"error: --stop must be exactly one token; {args.stop!r} is {len(stop_ids)}", file=sys.stderr)
            return 2
        stop_id = int(stop_ids[0])
    print(f"{args.run_dir}: {config['model']} from {path}", file=sys.stderr)
    try:
        warm_up(model, prompt_ids)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"(start-up: {time.perf_counter() - launched:.2f} s loading the run and compiling)", file=sys.stderr)
    for i in range(args.num_samples):
        seed = None if args.seed is None else args.seed + i
        started = time.perf_counter()
        try:
            ids = sampling.generate(
                model,
                prompt_ids,
                args.max_new_tokens,
                temperature=args.temperature,
                top_k=args.top_k,
                top_p=args.top_p,
                seed=seed,
                stop_id=stop_id,
            )
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        seconds = time.perf_counter() - started
        if args.num_samples > 1:
            print(f"--- sample {i + 1}")
        print(tokenizer.decode(ids))
        new = len(ids) - len(prompt_ids)
        rate = new / max(seconds, 1e-9)
        print(f"({new} tokens in {seconds:.2f} s, {rate:,.0f} tokens/s: the decoding loop alone)", file=sys.stderr)
    return 0
