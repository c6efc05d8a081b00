"""The lecture's questions, by experiment: scaling laws, 7B-table ablation, quantization, grokking (given, not graded).

    python -m lmrun experiments scaling    # loss against compute for 6 sizes x 4 token budgets; L(C) and L(N) fits
    python -m lmrun experiments ablate     # the llama2 preset with one row of the 7B table changed at a time
    python -m lmrun experiments quantize   # int8 / int4 weights and KV cache of a trained run (runs/main)
    python -m lmrun experiments grok       # a + b mod p: training accuracy long before validation accuracy

Every training run is an ordinary run directory trained by `runs.run`, so an interrupted sweep resumes where it
stopped (the run it was in resumes from its checkpoint) and a finished run is never trained twice: it says
"already trained" and its history is re-used. Each experiment writes a table (`<name>.md`, `<name>.csv`) and PNG
plots into its output directory (`runs/experiments/<name>` unless `--out`), and `--quick` shrinks everything to
seconds (what the tests run). Dimension letters: N non-embedding parameters, D training tokens, C = 6 N D FLOPs.

One file per concept: fits.py and quantization.py (the maths), sweeps.py (what the sweeps share), one file per
experiment (scaling.py, ablate.py, quantize.py, grok.py) and the command line in __main__.py.
"""
