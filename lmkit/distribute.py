"""Distribution strategies for `python -m lmrun train --strategy NAME` (given, not graded).

`make_strategy` builds one (none, mirrored over GPUs or logical CPUs, multi-worker); `is_chief` tells the one
process that writes the run directory.
"""

import tensorflow as tf


def make_strategy(name: str, cpu_replicas: int = 0) -> tf.distribute.Strategy | None:
    """Returns the `tf.distribute.Strategy` called `name`, or None for 'default' (one device).

    `cpu_replicas` splits the CPU into that many logical devices first, to try `mirrored` without GPUs; it must
    run before TensorFlow touches a device.
    """
    if cpu_replicas:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_replicas)
    if name == "default":
        return None
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        if gpus:
            return tf.distribute.MirroredStrategy()
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(cpus, cross_device_ops=tf.distribute.ReductionToOneDevice())
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()  # reads the cluster from the TF_CONFIG variable
    raise ValueError(f"unknown strategy {name!r}; valid: default, mirrored, multiworker")


def is_chief(strategy: tf.distribute.Strategy | None) -> bool:
    """Returns whether this process writes the run directory (always, except on non-chief multi-worker tasks)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief
