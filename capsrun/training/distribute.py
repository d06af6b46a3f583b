"""Device set-up and the tf.distribute strategy for a run (the same pieces serve train and eval).

Call `setup_devices` before anything else touches TensorFlow's devices.
"""
import logging
import os
from typing import Any, List

import keras
import tensorflow as tf

from capsrun.errors import CapsrunError

log = logging.getLogger(__name__)


def setup_devices(trainer_cfg: Any, seed: int) -> None:
    """Logical CPU devices, determinism, seeds and the mixed-precision policy.

    `trainer.cpu_devices=N` splits the CPU into N logical devices on machines without a GPU:
    MirroredStrategy then runs N replicas on the CPU (the stand-in for several GPUs in tests).
    """
    gpus = tf.config.list_physical_devices("GPU")
    if trainer_cfg.cpu_devices and not gpus:
        cpu = tf.config.list_physical_devices("CPU")[0]
        wanted = [tf.config.LogicalDeviceConfiguration()] * trainer_cfg.cpu_devices
        current = tf.config.get_logical_device_configuration(cpu)
        if current is None or len(current) != len(wanted):
            try:
                tf.config.set_logical_device_configuration(cpu, wanted)
            except RuntimeError:
                raise CapsrunError(
                    "trainer.cpu_devices cannot change after TensorFlow initialised its devices; "
                    "set it on the command line of a fresh process"
                ) from None
    keras.utils.set_random_seed(seed)
    if trainer_cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(
        "float32" if trainer_cfg.mixed_precision == "none" else trainer_cfg.mixed_precision
    )


def make_strategy(trainer_cfg: Any) -> tf.distribute.Strategy:
    """The strategy named by `trainer.strategy`.

    auto: MirroredStrategy over all GPUs when there are any (or over the logical CPUs when
    `trainer.cpu_devices` > 1), otherwise the default (single-device) strategy.
    mirrored: MirroredStrategy over `trainer.devices` (default: all GPUs, else all logical CPUs).
    one_device: the first GPU, else the CPU.
    multi_worker: MultiWorkerMirroredStrategy with the cluster from TF_CONFIG, or from SLURM's
        environment when TF_CONFIG is absent.
    """
    name = trainer_cfg.strategy
    if name == "multi_worker":
        # Collective ops must be configured before anything initialises TensorFlow's context.
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=_cluster_resolver())
    gpus = tf.config.list_logical_devices("GPU")
    cpus = tf.config.list_logical_devices("CPU")
    if trainer_cfg.devices:
        known = {device.name for device in gpus + cpus}
        full = [_full_device_name(device) for device in trainer_cfg.devices]
        unknown = [device for device, full_name in zip(trainer_cfg.devices, full) if full_name not in known]
        if unknown:
            raise CapsrunError(
                f"trainer.devices names unknown devices {unknown}; available: {sorted(known)}"
            )
    if name == "one_device":
        device = trainer_cfg.devices[0] if trainer_cfg.devices else (gpus or cpus)[0].name
        return tf.distribute.OneDeviceStrategy(device)
    devices = list(trainer_cfg.devices) if trainer_cfg.devices else [d.name for d in (gpus or cpus)]
    if name == "mirrored" or (name == "auto" and len(devices) > 1):
        return mirrored_strategy(devices)
    return tf.distribute.get_strategy()


COLLECTIVE_KEYS_PER_STRATEGY = 10_000
"""Group keys kept apart for each MirroredStrategy of a process (it uses a handful)."""


def mirrored_strategy(devices: List[str]) -> tf.distribute.MirroredStrategy:
    """A MirroredStrategy whose collective group keys no earlier one in this process used.

    Every MirroredStrategy starts its collective group keys at 1 + the class attribute
    `_collective_key_base` (0), so a second one over the same devices reuses the first one's
    group and instance keys. The runtime remembers each instance's tensor shape, and the second
    strategy's first differently shaped all-reduce fails ("Shape mismatch in the collective
    instance 100"): measured on 2 logical CPUs, a CapsNet step then an Efficient-CapsNet step
    in one process, which is a Hydra sweep over `model` with trainer.strategy=mirrored (jobs
    share a process), and any test module making several strategies. TensorFlow's own tests
    move the base for the same reason; so does this."""
    tf.distribute.MirroredStrategy._collective_key_base += COLLECTIVE_KEYS_PER_STRATEGY
    return tf.distribute.MirroredStrategy(devices)


def _cluster_resolver() -> tf.distribute.cluster_resolver.ClusterResolver:
    """TensorFlow's own resolvers: TF_CONFIG first, then SLURM (srun) variables."""
    if "TF_CONFIG" in os.environ:
        return tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if "SLURM_PROCID" in os.environ and "SLURM_STEP_NUM_TASKS" in os.environ:
        return tf.distribute.cluster_resolver.SlurmClusterResolver()
    raise CapsrunError(
        "trainer.strategy=multi_worker needs TF_CONFIG (or a SLURM job step started with srun); "
        "use `capsrun launch workers=N -- train ...` on one machine"
    )


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True for the process that writes the run's files: the only process of a single-worker
    strategy, else the `chief` task, or worker 0 of a cluster without one."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def _full_device_name(device: str) -> str:
    """'CPU:0', '/cpu:0' or '/device:CPU:0' -> '/device:CPU:0' (TensorFlow's logical device name)."""
    device = device.lstrip("/")
    if device.lower().startswith("device:"):
        device = device.split(":", 1)[1]
    return f"/device:{device.upper()}"


def use_jit(trainer_cfg: Any) -> bool:
    """Whether train and eval steps are XLA-compiled: `auto` means only when a GPU is visible
    (XLA made the CapsNet step about 25x slower on a 2-core CPU without oneDNN)."""
    setting = str(trainer_cfg.jit_compile).lower()
    if setting == "auto":
        return bool(tf.config.list_physical_devices("GPU"))
    return setting == "true"


def check_batch_size(batch_size: int, strategy: tf.distribute.Strategy) -> None:
    """The global batch must split evenly over the replicas."""
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise CapsrunError(
            f"batch_size={batch_size} does not divide by the {replicas} replicas; "
            f"use a multiple of {replicas}"
        )
