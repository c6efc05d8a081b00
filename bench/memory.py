"""Where the resident memory of a training run goes: `make train`'s model, stage by stage.

Prints figures; nothing passes or fails. Each variant runs in a fresh process (memory never goes back to the
system reliably, so stages are measured as they add up in one process):

    python bench/memory.py                  # XLA (what `make train` runs) and plain graph mode
    python bench/memory.py --variants xla   # one of: xla, graph, xla-no-onednn, graph-no-onednn

Stages: Python alone; `import tensorflow, keras`; `make train`'s transformer and AdamW built; the first train
step (the compilation: XLA with `jit_compile=True`, or a plain `tf.function`); 20 more steps; an evaluation
pass over 8 batches of 64 windows; and glibc's `malloc_trim(0)`, which returns the freed heap glibc keeps. Each
line gives the resident set (VmRSS), its anonymous part (heap, the compiler's work) and its file-backed part (the
pages of TensorFlow's shared libraries that were touched; shared with other processes, but counted in the
resident set and in `/usr/bin/time -v`'s maximum), and the high-water mark (VmHWM).
"""

import argparse
import os
import subprocess
import sys

VARIANTS = {
    "xla": dict(JIT="1"),
    "graph": dict(JIT="0"),
    "xla-no-onednn": dict(JIT="1", TF_ENABLE_ONEDNN_OPTS="0"),
    "graph-no-onednn": dict(JIT="0", TF_ENABLE_ONEDNN_OPTS="0"),
}

CHILD = r"""
import ctypes, os, sys, time
sys.path.insert(0, os.getcwd())
def mb():
    d = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            d[key] = int(value.split()[0]) // 1024
    return d
def show(stage, started=None):
    d = mb()
    took = f"{time.perf_counter() - started:6.1f} s" if started else ""
    print(f"  {stage:<30} {d['VmRSS']:6,} MB  anon {d['RssAnon']:5,}  file {d['RssFile']:5,}  "
          f"peak {d['VmHWM']:6,}  {took}", flush=True)
show("python")
t = time.perf_counter()
import keras, tensorflow as tf
show("import tensorflow, keras", t)
from lmkit import loop, optim
from assignment import train
from assignment.transformer import TransformerConfig, TransformerLanguageModel
config = TransformerConfig.preset("llama2", vocab_size=104, d_model=128, num_heads=4, num_layers=4, context_length=128)
model = TransformerLanguageModel(config)
model(tf.zeros((1, 128), tf.int32))
optimizer = optim.make_optimizer("adamw", 2e-3, 1400, 100, model=model)
optimizer.build(model.trainable_variables)
show("model and optimizer built")
step = loop.compile_train_step(train.train_step, model, optimizer, 1.0, (), None, os.environ["JIT"] == "1")
x = tf.random.uniform((16, 128), 0, 104, tf.int32)
t = time.perf_counter()
float(step(x, x)[0])
show("first step (compilation)", t)
t = time.perf_counter()
for _ in range(20):
    float(step(x, x)[0])
show("20 more steps", t)
forward = loop.CompiledForward(model)
t = time.perf_counter()
data = tf.data.Dataset.from_tensor_slices((tf.zeros((512, 128), tf.int32),) * 2).batch(64)
train.evaluate(forward, data)
show("evaluation, 8 x 64 windows", t)
ctypes.CDLL("libc.so.6").malloc_trim(0)
show("after malloc_trim(0)")
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["xla", "graph"])
    args = parser.parse_args(argv)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name in args.variants:
        print(f"{name} (load average {os.getloadavg()[0]:.1f}):", flush=True)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **VARIANTS[name])
        subprocess.run([sys.executable, "-c", CHILD], cwd=root, env=env, check=True)


if __name__ == "__main__":
    main()
