"""`python -m lmrun experiments`: the quantization helpers, the power-law fit, the frontier, the command line's
errors, and `--quick` runs of the four experiments (slow), including a sweep interrupted and resumed."""

import csv
import json
import math

import numpy as np
import pytest

from lmkit import quantization
from lmrun.experiments import fits, grok, quantize, scaling
from lmrun.experiments.cli import main

# ----------------------------------------------------------------------------------------------------------------
# Quantization helpers
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [8, 4, 3])
@pytest.mark.parametrize("group_size", [None, 16, 32])
def test_quantize_round_trip_is_within_half_a_step(bits, group_size):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 70)).astype(np.float32) * rng.uniform(0.01, 3, size=(6, 1)).astype(np.float32)
    q, scales = quantization.quantize(w, bits, group_size)
    qmax = 2 ** (bits - 1) - 1
    g = 70 if group_size is None else group_size
    assert q.shape == w.shape and q.dtype == np.int8
    assert scales.shape == (6, math.ceil(70 / g)) and scales.dtype == np.float16
    assert np.abs(q).max() <= qmax, f"codes must lie in [-{qmax}, {qmax}]; got up to {np.abs(q).max()}"
    per_element = np.repeat(scales.astype(np.float32), g, axis=1)[:, :70]
    error = np.abs(quantization.dequantize(q, scales, group_size) - w)
    assert (error <= per_element / 2 * (1 + 1e-5) + 1e-12).all(), (
        f"round trip off by more than half a step: worst {float((error / per_element).max()):.3f} steps"
    )
    # the scale is the group's largest magnitude over qmax (float16, never below it: nothing clips)
    padded = np.zeros((6, scales.shape[1] * g), np.float32)
    padded[:, :70] = w
    expected = np.abs(padded.reshape(6, -1, g)).max(-1) / qmax
    assert (scales.astype(np.float32) >= expected).all()
    np.testing.assert_allclose(scales.astype(np.float32), expected, rtol=2e-3)


def test_quantize_groups_are_independent_and_the_last_may_be_short():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(1, 40)).astype(np.float32) * 0.1
    w[0, 3] = 50.0  # an outlier in the first group only
    q, scales = quantization.quantize(w, 4, 16)
    assert scales.shape == (1, 3), f"40 values in groups of 16 make 3 groups (16, 16, 8); got {scales.shape}"
    assert float(scales[0, 0]) == pytest.approx(50 / 7, rel=1e-3)
    assert float(scales[0, 1]) == pytest.approx(np.abs(w[0, 16:32]).max() / 7, rel=1e-3)
    assert float(scales[0, 2]) == pytest.approx(np.abs(w[0, 32:]).max() / 7, rel=1e-3), "the short last group"
    restored = quantization.dequantize(q, scales, 16)
    assert np.abs(restored[0, 16:] - w[0, 16:]).max() < 0.02, "the outlier must not spoil the other groups"
    per_channel = quantization.dequantize(*quantization.quantize(w, 4, None), None)
    assert np.abs(per_channel[0, 16:] - w[0, 16:]).max() > 0.1, "one scale per row lets the outlier flatten it"


def test_quantize_all_zero_group_and_bad_arguments():
    q, scales = quantization.quantize(np.zeros((2, 8), np.float32), 8, 4)
    assert (q == 0).all() and (quantization.dequantize(q, scales, 4) == 0).all()
    with pytest.raises(ValueError, match="bits"):
        quantization.quantize(np.ones((2, 2)), 9)
    with pytest.raises(ValueError, match="group_size"):
        quantization.quantize(np.ones((2, 2)), 4, 0)


def test_int4_packing_two_per_byte_low_nibble_first():
    values = np.arange(-8, 8, dtype=np.int8)
    packed = quantization.pack_int4(values)
    assert packed.dtype == np.uint8 and packed.shape == (8,)
    assert quantization.pack_int4(np.array([1, -1], np.int8)).tolist() == [0xF1], (
        "element 0 in the low nibble, 1 in the high"
    )
    assert quantization.unpack_int4(packed, 16).tolist() == values.tolist()
    odd = np.array([7, -8, 3], np.int8)
    assert quantization.pack_int4(odd).shape == (2,), "3 values take ceil(3 / 2) = 2 bytes"
    assert quantization.unpack_int4(quantization.pack_int4(odd), 3).tolist() == [7, -8, 3]
    with pytest.raises(ValueError, match="int4"):
        quantization.pack_int4(np.array([8], np.int8))


def test_stored_size_counts_codes_and_float16_scales():
    assert quantization.stored_bytes(1024, 8, 32) == 1024 + 64
    assert quantization.stored_bytes(1024, 4, 32) == 512 + 64  # 4.5 bits per weight with groups of 32
    assert 8 * quantization.stored_bytes(1024, 4, 32) / 1024 == 4.5


def test_quantized_kv_cache_at_full_precision_matches_the_full_forward_pass():
    import tensorflow as tf

    from assignment.transformer import TransformerConfig, TransformerLanguageModel

    model = TransformerLanguageModel(
        TransformerConfig.preset("llama2", vocab_size=13, d_model=32, num_heads=4, num_layers=2, context_length=12)
    )
    windows = np.random.default_rng(0).integers(0, 13, size=(3, 13)).astype(np.int32)
    logits = model(tf.constant(windows[:, :-1]))
    full = float(tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=windows[:, 1:], logits=logits)))
    assert quantize.cached_loss(quantize.QuantizedKVCache(model, 32), windows) == pytest.approx(full, abs=1e-4)
    int4 = quantize.cached_loss(quantize.QuantizedKVCache(model, 4), windows)
    assert int4 != pytest.approx(full, abs=1e-7), "an int4 cache must change the logits a little"
    assert int4 == pytest.approx(full, abs=0.05)
    config = model.config  # 2 layers x (K, V) x 2 kv heads x 12 positions x head size 8
    assert quantize.kv_cache_bytes(config, 32) == 2 * 2 * 2 * 12 * 8 * 4
    assert quantize.kv_cache_bytes(config, 4) == 2 * 2 * 2 * 12 * 8 // 2 + 2 * (2 * 2 * 2 * 12)


# ----------------------------------------------------------------------------------------------------------------
# The fit and the frontier
# ----------------------------------------------------------------------------------------------------------------


def test_fit_recovers_known_power_law():
    c = np.geomspace(1e9, 1e13, 12)
    exact = fits.fit_power_law(c, 40.0 * c**-0.12 + 1.3)
    assert exact["alpha"] == pytest.approx(0.12, abs=0.003)
    assert exact["l_inf"] == pytest.approx(1.3, abs=0.01)
    assert exact["a"] == pytest.approx(40.0, rel=0.1)
    noisy = 40.0 * c**-0.12 + 1.3 + np.random.default_rng(0).normal(0, 0.005, c.shape)
    fit = fits.fit_power_law(c, noisy)
    assert fit["alpha"] == pytest.approx(0.12, abs=0.03) and fit["l_inf"] == pytest.approx(1.3, abs=0.1)


def test_fit_without_a_floor_and_its_bootstrap():
    n = np.geomspace(1e3, 1e6, 8)
    fit = fits.fit_power_law(n, 5.0 * n**-0.3)
    assert fit["alpha"] == pytest.approx(0.3, abs=0.005) and fit["l_inf"] == pytest.approx(0.0, abs=0.01)
    rng = np.random.default_rng(1)
    rows = [dict(x=x, val_loss=5.0 * x**-0.3 + 0.5 + rng.normal(0, 0.002)) for x in np.geomspace(1e3, 1e6, 10)]
    alphas = fits.bootstrap_exponent(rows, "x", lambda rs: rs, samples=200)
    assert len(alphas) > 150
    low, high = np.percentile(alphas, [2.5, 97.5])
    assert low < 0.3 < high and high - low < 0.2


def test_loss_surface_fit_recovers_known_parameters_and_its_optimal_split():
    n, d = np.meshgrid(np.geomspace(1e3, 1e6, 6), np.geomspace(1e5, 1e7, 4))
    n, d = n.reshape(-1), d.reshape(-1)
    fit = fits.fit_loss_surface(n, d, 1.1 + 8.0 / n**0.4 + 300.0 / d**0.5, grid=59)
    assert fit["alpha"] == pytest.approx(0.4, abs=0.05) and fit["beta"] == pytest.approx(0.5, abs=0.05)
    assert fit["e"] == pytest.approx(1.1, abs=0.05)
    n_opt, d_opt = fits.optimal_allocation(dict(e=0, a=1.0, b=1.0, alpha=0.5, beta=0.5), np.array([6e6, 6e10]))
    np.testing.assert_allclose(n_opt, d_opt)  # equal exponents and coefficients: N = D
    np.testing.assert_allclose(6 * n_opt * d_opt, [6e6, 6e10])


def test_pareto_frontier_keeps_runs_no_cheaper_run_beats():
    compute = [1, 2, 2, 4, 8, 16]
    loss = [3.0, 2.5, 2.7, 2.6, 2.0, 2.1]
    assert fits.pareto_frontier(compute, loss) == [0, 1, 4]


# ----------------------------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["ablate", "--seeds", "1"], "--seeds"),
        (["ablate", "--rows", "norm-nope"], "--rows"),
        (["scaling", "--steps", "100", "100"], "--steps"),
        (["scaling", "--steps", "0", "10"], "--steps"),
        (["grok", "--p", "12"], "--p"),
        (["grok", "--train-fraction", "1.5"], "--train-fraction"),
        (["grok", "--d-model", "30"], "--d-model"),
        (["quantize", "--run-dir", "no/such/run"], "--run-dir"),
        (["sideways"], "invalid choice"),
    ],
)
def test_bad_flags_are_one_line_naming_the_flag(argv, flag, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["--out", str(tmp_path / "out")] if argv[0] != "sideways" else argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, f"expected one line, got:\n{err}"
    assert flag in err
    assert not (tmp_path / "out").exists(), "nothing may be written for a bad flag"


def test_overwrite_refuses_a_directory_that_is_not_an_experiments(capsys, tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    assert main(["grok", "--quick", "--overwrite", "--out", str(tmp_path)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "precious.txt").exists()


# ----------------------------------------------------------------------------------------------------------------
# --quick runs (slow: each trains a handful of tiny models)
# ----------------------------------------------------------------------------------------------------------------


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_scaling_quick_writes_table_fits_and_plots(tmp_path, capsys):
    out = tmp_path / "scaling"
    assert main(["scaling", "--quick", "--no-progress", "--out", str(out)]) == 0
    rows = _csv(out / "scaling.csv")
    assert len(rows) == len(scaling.QUICK_SIZES) * len(scaling.QUICK_STEPS)
    sizes = sorted({int(r["non-embedding params N"]) for r in rows})
    assert len(sizes) == len(scaling.QUICK_SIZES) and sizes[-1] / sizes[0] >= 30
    for r in rows:  # C = 6 N D
        assert float(r["compute C = 6ND"]) == pytest.approx(6 * int(r["non-embedding params N"]) * int(r["tokens D"]))
    assert any(r["frontier"] == "yes" for r in rows)
    text = (out / "scaling.md").read_text()
    assert "L(C) on the compute-optimal frontier" in text and "Chinchilla" in text
    for name in ("scaling_loss_vs_compute.png", "scaling_loss_vs_params.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "trained 8 runs, re-used 0" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_an_interrupted_sweep_resumes_and_never_trains_a_finished_run_twice(tmp_path, capsys, monkeypatch):
    from lmrun import runs

    real_train = runs.train
    trainings = []

    def counting_train(*args, **kwargs):
        if interrupt_at is not None and len(trainings) == interrupt_at:
            raise KeyboardInterrupt  # Ctrl-C as the third run starts
        result = real_train(*args, **kwargs)
        if not result["already_done"]:
            trainings.append(str(args[4]))
        return result

    monkeypatch.setattr(runs, "train", counting_train)
    out = tmp_path / "ablate"
    argv = ["ablate", "--quick", "--no-progress", "--rows", "norm-layernorm", "--out", str(out)]  # 2 x 2 runs
    interrupt_at = 2
    assert main(argv) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    assert len(trainings) == 2
    first = list(trainings)

    interrupt_at = None
    capsys.readouterr()
    assert main(argv) == 0
    output = capsys.readouterr().out
    assert len(trainings) == 4, f"the resumed sweep trains only the 2 runs left; trained {trainings[2:]}"
    assert not set(first) & set(trainings[2:]), "a finished run was trained again"
    assert output.count("already trained") == 2
    assert "trained 2 runs, re-used 2" in output

    assert main(argv) == 0
    assert len(trainings) == 4, "a finished sweep trains nothing"
    output = capsys.readouterr().out
    assert output.count("already trained") == 4
    rows = _csv(out / "ablate.csv")
    assert [r["variant"] for r in rows] == ["llama2 (base)", "norm: LayerNorm"]
    assert (out / "ablate_val_loss.png").exists()

    config_path = out / "norm-layernorm-seed1" / "config.json"  # a run directory of other settings: one line
    config = json.loads(config_path.read_text())
    config["train"]["lr"] = 0.5
    config_path.write_text(json.dumps(config))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lr" in err and "--out" in err and "--overwrite" in err, err
    assert len(trainings) == 4


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ablate_quick_table_has_mean_spread_and_verdict(tmp_path):
    out = tmp_path / "ablate"
    assert main(["ablate", "--quick", "--no-progress", "--out", str(out)]) == 0
    rows = _csv(out / "ablate.csv")
    assert [r["variant"] for r in rows] == ["llama2 (base)", "norm: LayerNorm", "embeddings: tied"]
    tied = rows[2]
    assert int(tied["params"]) < int(rows[0]["params"]), "tying removes the output projection's parameters"
    for r in rows:
        assert float(r["seed spread (max - min)"]) >= 0 and float(r["tokens/s"]) > 0
    assert "cannot" in (out / "ablate.md").read_text(), "the table says which rows it cannot express"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quantize_quick_reports_sizes_perplexities_and_samples(tmp_path):
    out = tmp_path / "quantize"
    assert main(["quantize", "--quick", "--no-progress", "--out", str(out)]) == 0
    rows = {r["weights"]: r for r in _csv(out / "quantize.csv")}
    assert float(rows["float32"]["bits per weight (matrices, with scales)"]) == 32
    assert float(rows["int4, groups of 32"]["bits per weight (matrices, with scales)"]) == pytest.approx(4.5)
    base = float(rows["float32"]["val perplexity"])
    assert float(rows["int8, groups of 32"]["val perplexity"]) == pytest.approx(base, rel=0.01)
    kv = {r["KV cache"]: r for r in _csv(out / "quantize_kv.csv")}
    assert set(kv) == {"float32", "float16", "int8", "int4"}
    text = (out / "quantize.md").read_text()
    assert text.count("`The ") >= 10, "a sample for every weight and KV scheme"
    assert (out / "quantize.png").exists()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_grok_quick_writes_curves_and_resumes_as_done(tmp_path, capsys):
    out = tmp_path / "grok"
    assert main(["grok", "--quick", "--no-progress", "--out", str(out)]) == 0
    history = _csv(out / "grok_history.csv")
    assert history[0]["step"] == "0" and history[-1]["step"] == "30"
    assert all(0 <= float(r["train_acc"]) <= 1 and 0 <= float(r["val_acc"]) <= 1 for r in history)
    assert (out / "grok.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert main(["grok", "--quick", "--no-progress", "--out", str(out)]) == 0
    assert "already trained" in capsys.readouterr().out
    assert len(_csv(out / "grok_history.csv")) == len(history)


def test_first_step_is_the_first_record_reaching_the_threshold():
    records = [dict(step=s, acc=a) for s, a in [(0, 0.1), (10, 0.98), (20, 0.995), (30, 0.5), (40, 1.0)]]
    assert grok.first_step(records, "acc", 0.99) == 20
    assert grok.first_step(records[:2], "acc", 0.99) is None


def test_modular_addition_split_covers_every_pair_once():
    (tx, ty, tw), (vx, vy, vw) = grok.modular_addition(7, 0.4)
    pairs = {tuple(x[:2]) for x in np.concatenate([tx, vx])}
    assert len(pairs) == 49 and len(tx) == round(0.4 * 49)
    assert ((tx[:, 0] + tx[:, 1]) % 7 == ty[:, 2]).all() and (tx[:, 2] == 7).all()
    assert (tw[:, :2] == 0).all() and (tw[:, 2] == 1).all()
