"""Speed and memory of capsrun's steps on this machine (the engine of `capsrun bench`).

In one process and one run, for every batch size, on a real batch of the training pipeline:
capsrun's train and eval steps, the same steps of the plain reference CapsNet
(capsrun/models/reference.py: same parameters, weights and loss), the convolutions alone (the
conv-only bound), the digit-capsule layers alone (the timing split; see `model_steps`), and the
input pipeline alone; then, at `routing_batch_size`, every routing of `routings` (see
`routing_contestants`). For model=em_capsnet the reference is the plain EM CapsNet
(capsrun/models/em_reference.py, up to `reference_max_batch_size`) and the capsule-layer rows are
its three EM layers; it has no conv-only, routing or loop rows. The steps are timed round-robin
(see `measure_interleaved`); ms/step is the median of `timed_steps` steps after `warmup_steps`,
images/s = batch size / median; memory is the process's peak resident set size during each row's
warm-up. docs/performance.md explains.

Shapes: B batch, I primary capsules, K primary capsule dimensions.
"""
import ctypes
import gc
import itertools
import logging
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import keras
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf

from capsrun.data import pipeline
from capsrun.data.pipeline import unpack
from capsrun.data.splits import DataSplits, load_splits
from capsrun.errors import CapsrunError
from capsrun.models.base import InputSpec
from capsrun.models.cost import count_macs
from capsrun.models.em_reference import build_plain
from capsrun.models.reference import build_reference, plain_route
from capsrun.models.registry import build_model
from capsrun.training.distribute import setup_devices, use_jit
from capsrun.training.steps import batch_sums
from capsrun.training.trainer import make_optimizer

log = logging.getLogger(__name__)


PROC_STATUS = Path("/proc/self/status")


CLEAR_REFS = Path("/proc/self/clear_refs")


ROWS = [  # (key, label); measurements of every batch size
    ("capsrun_train", "capsrun train"), ("capsrun_eval", "capsrun eval"), ("reference_train", "reference train"),
    ("reference_eval", "reference eval"), ("conv_only", "conv-only bound (fwd+bwd)"),
    ("digit_caps_capsrun", "digit caps capsrun (fwd+bwd)"),
    ("digit_caps_reference", "digit caps reference (fwd+bwd)"),
    ("capsule_layers_capsrun", "capsule layers capsrun (fwd+bwd)"),
    ("capsule_layers_reference", "capsule layers ref. (fwd+bwd)"), ("pipeline", "input pipeline"),
]


RATIOS = [  # (key, label, numerator row, denominator row, format)
    ("train_vs_reference", "capsrun train vs reference", "capsrun_train", "reference_train", "{:.2f}x"),
    ("eval_vs_reference", "capsrun eval vs reference", "capsrun_eval", "reference_eval", "{:.2f}x"),
    ("train_of_conv_bound", "capsrun train / conv-only bound", "capsrun_train", "conv_only", "{:.0%}"),
    ("digit_caps_vs_reference", "digit caps capsrun vs reference", "digit_caps_capsrun", "digit_caps_reference",
     "{:.2f}x"),
    ("capsule_layers_vs_reference", "capsule layers capsrun vs ref.", "capsule_layers_capsrun",
     "capsule_layers_reference", "{:.2f}x"),
    ("pipeline_vs_train", "input pipeline / capsrun train", "pipeline", "capsrun_train", "{:.0f}x"),
]


MODEL_LABELS = {"capsnet": "CapsNet", "efficient_capsnet": "Efficient-CapsNet", "em_capsnet": "EM CapsNet"}
"""How the table names the measured `model.name`."""


EM_REFERENCE_MAX_BATCH = 32
"""`reference_max_batch_size` when null for model=em_capsnet: its plain reference (Procedure 1,
autodiff through every iteration) peaks near 13 GiB at batch 32 and would not fit at 128."""


ROUTING_COLUMNS = "routing", "layer ms", "plain ms", "vs plain", "vs dynamic", "train img/s", "train ms"
"""Columns of the routing table (`format_routing_table`)."""


def run_bench(cfg: DictConfig) -> dict:
    """All measurements of `cfg`; returns the report (a JSON-ready dict)."""
    setup_devices(cfg.trainer, cfg.seed)
    splits = load_splits(cfg.data, cfg.seed)
    if splits.num_targets != 1:
        raise CapsrunError("capsrun bench needs one label per image; choose another data set than multimnist")
    capsnet_family = cfg.model.name != "em_capsnet"  # the routing and loop rows time the CapsNet family
    largest = max([*cfg.batch_sizes, *([cfg.routing_batch_size] if cfg.routings and capsnet_family else [])])
    if len(splits.train) < largest:
        raise CapsrunError(f"only {len(splits.train)} training images for batch size {largest}")
    jit = use_jit(cfg.trainer)
    report = {"machine": machine_info(), "load_average_before": list(os.getloadavg()), "config": {
        "batch_sizes": list(cfg.batch_sizes), "warmup_steps": cfg.warmup_steps, "timed_steps": cfg.timed_steps,
        "mixed_precision": cfg.trainer.mixed_precision, "jit_compile": jit, "data": cfg.data.name,
        "model": cfg.model.name, "routing_iterations": cfg.model.routing_iterations,
        "routings": list(cfg.routings or []), "routing_batch_size": cfg.routing_batch_size,
    }}
    by_size = {}
    for batch_size in sorted(set(cfg.batch_sizes), reverse=True):  # the largest first, in a fresh process
        batch = next(iter(pipeline.train_dataset(splits.train, batch_size, cfg.seed, 0, cfg.data.shift_pixels)))
        results = {"batch_size": batch_size}
        results.update(measure_interleaved(_contestants(cfg, splits, batch, batch_size, jit, report),
                                           batch_size, cfg.warmup_steps, cfg.timed_steps))
        log.info(f"batch {batch_size}: input pipeline")
        results["pipeline"] = measure_pipeline(
            pipeline.train_dataset(splits.train, batch_size, cfg.seed, 1, cfg.data.shift_pixels),
            batch_size, cfg.pipeline_batches)
        results["ratios"] = {key: results[top]["images_per_second"] / results[bottom]["images_per_second"]
                             for key, _, top, bottom, _ in RATIOS if top in results and bottom in results}
        by_size[batch_size] = results
    report["results"] = [by_size[batch_size] for batch_size in cfg.batch_sizes]
    if not capsnet_family and (cfg.routings or cfg.loop_models):
        log.info(f"model={cfg.model.name}: no routing or steps_per_loop rows (they time the CapsNet family)")
    if cfg.routings and capsnet_family:
        report["routings"] = run_routings(cfg, splits, jit)
    if cfg.loop_models and capsnet_family:
        report["loops"] = run_loops(cfg, splits)
    report["load_average_after"] = list(os.getloadavg())
    report["peak_rss_mib_process"] = _process_peak_mib()
    return report


def _contestants(cfg: DictConfig, splits: DataSplits, batch: tuple, batch_size: int, jit: bool,
                 report: dict) -> List[tuple]:
    """[(row, compiled step, its input)] of one batch size: capsrun's, then the reference's."""
    keras.backend.clear_session()
    gc.collect()
    steps_per_epoch = max(len(splits.train) // batch_size, 1)
    spec = InputSpec(splits.image_shape, splits.num_classes)
    model = build_model(cfg.model, cfg.loss, spec)
    report["parameters"] = int(model.count_params())
    report["macs_per_image"] = count_macs(model)
    primary = model.primary_capsules(unpack(batch)[0])  # input of the digit-caps (capsule-layer) rows
    networks = [("capsrun", model)]
    is_capsnet, is_em = cfg.model.name == "capsnet", cfg.model.name == "em_capsnet"  # which reference exists
    if not is_capsnet and cfg.include_conv_bound:
        log.info(f"{cfg.model.name}: no conv-only rows (they are the CapsNet's)")
    if not is_capsnet and not is_em and cfg.include_reference:
        log.info(f"{cfg.model.name}: no reference rows (there are plain references of the CapsNet and EM CapsNet)")
    # the plain reference is the paper's CapsNet: no digit bias, leaky routing or primary scaling
    paper_shaped = not cfg.model.digit_bias and not cfg.model.leaky_routing and cfg.model.primary_scale == 1.0
    if cfg.include_reference and is_capsnet and not paper_shaped:
        log.info("no reference rows: model.digit_bias, leaky_routing and primary_scale are not in the plain reference")
    limit = cfg.reference_max_batch_size or (EM_REFERENCE_MAX_BATCH if is_em else None)
    if cfg.include_reference and limit is not None and batch_size > limit:
        log.info(f"batch {batch_size}: no reference rows (reference_max_batch_size={limit})")
    elif cfg.include_reference and is_capsnet and paper_shaped:
        reference = build_reference(cfg.model, cfg.loss, spec)
        reference.copy_weights(model)
        networks.append(("reference", reference))
    elif cfg.include_reference and is_em:
        networks.append(("reference", build_plain(model)))  # same weights
    rows = []
    for name, network in networks:
        optimizer = make_optimizer(cfg.optimizer, steps_per_epoch, cfg.trainer.mixed_precision)
        steps = model_steps(network, optimizer, batch_size)
        rows.append((f"{name}_train", steps["train"], batch))
        if cfg.include_eval:
            rows.append((f"{name}_eval", steps["eval"], batch))
        if cfg.include_conv_bound and network is model and is_capsnet:
            rows.append(("conv_only", steps["conv_only"], batch))
        if cfg.include_digit_caps:
            layers = "capsule_layers" if is_em else "digit_caps"
            rows.append((f"{layers}_{name}", steps[layers], primary))
    return [(key, tf.function(step, jit_compile=jit, reduce_retracing=True), inputs) for key, step, inputs in rows]


def run_routings(cfg: DictConfig, splits: DataSplits, jit: bool) -> dict:
    """The routing rows: for every name of `cfg.routings`, at `cfg.routing_batch_size`, the
    routing layer alone (its fast form) and its plain autodiff form, forward and backward, and the
    CapsNet's training step with that routing, all timed round-robin in one `measure_interleaved`.
    Returns {"batch_size", "rows": {routing: {"layer", "plain", "train": measurements,
    "layer_vs_plain": plain ms / layer ms, "layer_vs_dynamic": layer ms / dynamic's layer ms
    (when dynamic is measured), "parameters", "macs_per_image"}}, "other_processes_cpu_share"}."""
    batch_size = cfg.routing_batch_size
    batch = next(iter(pipeline.train_dataset(splits.train, batch_size, cfg.seed, 0, cfg.data.shift_pixels)))
    contestants, models = routing_contestants(cfg, splits, batch, batch_size, jit)
    # One compiled step per routing and part is the point here, so TensorFlow's warning about
    # "excessive retracing" (it counts the traces of model_steps' train function) is noise.
    tf_log = logging.getLogger("tensorflow")
    level = tf_log.level
    tf_log.setLevel(logging.ERROR)
    try:
        measured = measure_interleaved(contestants, batch_size, cfg.warmup_steps, cfg.timed_steps)
    finally:
        tf_log.setLevel(level)
    rows = {}
    for name, model in models.items():
        row = {part: measured[f"{part}_{name}"] for part in ("layer", "plain", "train")}
        row["layer_vs_plain"] = row["plain"]["ms_per_step"] / row["layer"]["ms_per_step"]
        row.update(parameters=int(model.count_params()), macs_per_image=count_macs(model))
        rows[name] = row
    if "dynamic" in rows:
        for row in rows.values():
            row["layer_vs_dynamic"] = row["layer"]["ms_per_step"] / rows["dynamic"]["layer"]["ms_per_step"]
    return {"batch_size": batch_size, "rows": rows,
            "other_processes_cpu_share": measured.get("other_processes_cpu_share")}


def run_loops(cfg: DictConfig, splits: DataSplits) -> List[dict]:
    """The steps_per_loop rows: for every model of `cfg.loop_models` at every batch size of
    `cfg.loop_batch_sizes`, capsrun's own Trainer with each `cfg.steps_per_loop` value N, timed
    through `Trainer.train_steps` (N steps per host sync) in interleaved rounds of the same number
    of steps (the least common multiple of the N values, at least `cfg.timed_steps`). Returns
    [{"model", "batch_size", "rows": {N: {"ms_per_step", "images_per_second"}}, "loop_vs_single":
    img/s of the largest N / img/s of N = 1 (when both are measured)}]."""
    import math
    import tempfile

    from capsrun.config.compose import compose
    from capsrun.training.trainer import Trainer

    values = sorted(set(cfg.steps_per_loop))
    span = math.lcm(*values)
    span *= max(1, -(-cfg.timed_steps // span))  # steps per timed round, a multiple of every N
    results = []
    for name, batch_size in itertools.product(cfg.loop_models, cfg.loop_batch_sizes):
        keras.backend.clear_session()
        gc.collect()
        trainers, iterators = {}, {}
        with tempfile.TemporaryDirectory(prefix="capsrun-bench-") as scratch:
            for value in values:
                train_cfg = compose("config", [f"model={name}", f"batch_size={batch_size}", f"seed={cfg.seed}",
                                               f"trainer.steps_per_loop={value}", "trainer.progress_bar=false",
                                               f"trainer.mixed_precision={cfg.trainer.mixed_precision}",
                                               f"trainer.jit_compile={cfg.trainer.jit_compile}"])
                trainer = Trainer(train_cfg, Path(scratch) / str(value), tf.distribute.get_strategy(), splits)
                dataset = pipeline.train_dataset(splits.train, batch_size, cfg.seed, 0, cfg.data.shift_pixels)
                trainers[value] = trainer
                iterators[value] = iter(trainer.strategy.experimental_distribute_dataset(dataset.repeat()))
            stop = tf.constant(0.0)
            timings = {value: [] for value in values}
            for round_index in range(1 + cfg.loop_rounds):  # round 0 traces and compiles: not timed
                for value in values:
                    start = time.perf_counter()
                    for _ in range(span // value):
                        float(trainers[value].train_steps(iterators[value], value, stop)["loss"])  # host sync
                    if round_index:
                        timings[value].append((time.perf_counter() - start) / span)
            for trainer in trainers.values():
                trainer.writer.close()
        rows = {value: {"ms_per_step": 1000 * statistics.median(timings[value]),
                        "images_per_second": batch_size / statistics.median(timings[value])} for value in values}
        entry = {"model": name, "batch_size": batch_size, "rows": rows}
        if 1 in rows and values[-1] != 1:
            entry["loop_vs_single"] = rows[values[-1]]["images_per_second"] / rows[1]["images_per_second"]
        log.info(f"steps_per_loop: {name} at batch {batch_size}: " + ", ".join(
            f"N={value} {row['images_per_second']:.0f} img/s" for value, row in rows.items()))
        results.append(entry)
    return results


def format_loop_table(loops: Sequence[dict]) -> str:
    """The steps_per_loop rows as text: model, batch, ms/step and img/s per N, the ratio."""
    values = sorted({value for entry in loops for value in entry["rows"]})
    header = ["model", "batch", *(f"N={value} ms/step" for value in values), *(f"N={value} img/s" for value in values),
              "largest N vs 1"]
    lines = ["  ".join(f"{cell:>14}" for cell in header)]
    for entry in loops:
        cells = [entry["model"], str(entry["batch_size"]),
                 *(f"{entry['rows'][v]['ms_per_step']:.1f}" if v in entry["rows"] else "-" for v in values),
                 *(f"{entry['rows'][v]['images_per_second']:.0f}" if v in entry["rows"] else "-" for v in values),
                 f"{entry['loop_vs_single']:.2f}x" if "loop_vs_single" in entry else "-"]
        lines.append("  ".join(f"{cell:>14}" for cell in cells))
    return "\n".join(lines)


def routing_contestants(cfg: DictConfig, splits: DataSplits, batch: tuple, batch_size: int,
                        jit: bool) -> Tuple[List[tuple], Dict[str, Any]]:
    """([(row, compiled step, its input)], {routing: its CapsNet}) for the routing rows: per
    routing `layer_NAME` and `plain_NAME` on the votes u_hat float32 [B, J, I, D] of one real batch
    (the CapsNet's own, from its digit capsules) and `train_NAME` on the batch."""
    keras.backend.clear_session()
    gc.collect()
    steps_per_epoch = max(len(splits.train) // batch_size, 1)
    spec = InputSpec(splits.image_shape, splits.num_classes)
    rows, models = [], {}
    for name in cfg.routings:
        model = build_model(OmegaConf.merge(cfg.model, {"routing": name}), cfg.loss, spec)
        models[name] = model
        router = model.digit_caps.router
        votes = model.digit_caps.votes(model.primary_capsules(unpack(batch)[0]))
        optimizer = make_optimizer(cfg.optimizer, steps_per_epoch, cfg.trainer.mixed_precision)
        rows += [(f"layer_{name}", routing_step(router, router), votes),
                 (f"plain_{name}", routing_step(lambda v, n=name, r=router: plain_route(n, r, v), router), votes),
                 (f"train_{name}", model_steps(model, optimizer, batch_size)["train"], batch)]
    compiled = [(key, tf.function(step, jit_compile=jit, reduce_retracing=True), inputs) for key, step, inputs in rows]
    return compiled, models


def routing_step(route: Any, layer: Any) -> Any:
    """route(votes [B, J, I, D]) -> (parents, coupling) forward and backward: the gradients of a
    loss of the parents with respect to the votes and every weight of the routing `layer`; one
    scalar back (fetching it makes sure the work is done)."""
    def step(votes: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            tape.watch(votes)
            loss = tf.reduce_sum(tf.square(route(votes)[0]))
        gradients = tape.gradient(loss, [votes, *layer.trainable_weights])
        return tf.add_n([loss] + [tf.reduce_sum(g) for g in gradients])

    return step


def model_steps(model: Any, optimizer: Any, batch_size: int) -> Dict[str, Any]:
    """The steps timed for `model`, as Python functions returning one scalar (fetching it makes
    sure the work is done):
      train(batch)      the training step of `capsrun train`: forward, losses, backward, Adam update;
      eval(batch)       the evaluation step: forward, losses, predictions;
      conv_only(batch)  conv1 and the primary-capsule convolution forward and backward (the
                        gradients of their weights, as in training), nothing else (CapsNet only;
                        its loss needs the forward values, so that no convolution is pruned);
      digit_caps(u)     the digit-capsule layer forward and backward (gradients of u and W) on
                        primary capsules u float32 [B, I, K];
      capsule_layers(primary)  the EM CapsNet's ConvCaps1, ConvCaps2 and class capsules forward
                        and backward (gradients of the primary poses and activations and of
                        every W, beta_u, beta_a) on its primary capsules (poses, activations).
    A batch is (uint8 images [B, H, W, C], int32 labels [B]) from the training pipeline."""
    def train(batch: tuple) -> tf.Tensor:
        images, labels, components = unpack(batch)
        variables = model.trainable_variables
        with tf.GradientTape() as tape:
            outputs = model(images, labels=labels, training=True)
            loss = batch_sums(model, outputs, images, labels, components)["loss"] / batch_size
            scaled_loss = optimizer.scale_loss(loss)
        optimizer.apply_gradients(zip(tape.gradient(scaled_loss, variables), variables))
        return loss

    def evaluate(batch: tuple) -> tf.Tensor:
        images, labels, components = unpack(batch)
        outputs = model(images, training=False)
        return batch_sums(model, outputs, images, labels, components)["loss"]

    def conv_only(batch: tuple) -> tf.Tensor:
        convs = [model.conv1, model.primary_caps.conv]
        with tf.GradientTape() as tape:
            features = convs[1](convs[0](tf.cast(unpack(batch)[0], model.compute_dtype)))
            loss = 0.5 * tf.reduce_sum(tf.square(tf.cast(features, tf.float32)))
        gradients = tape.gradient(loss, [v for conv in convs for v in conv.trainable_variables])
        return tf.add_n([loss] + [tf.reduce_sum(tf.cast(g, tf.float32)) for g in gradients])

    def digit_caps(inputs: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            loss = tf.reduce_sum(tf.square(model.digit_caps(inputs)))
        return tf.add_n([loss] + [tf.reduce_sum(g) for g in tape.gradient(loss, [inputs, model.digit_caps.kernel])])

    def capsule_layers(primary: Tuple[tf.Tensor, tf.Tensor]) -> tf.Tensor:
        poses, activations = primary
        layers = [model.conv_caps1, model.conv_caps2, model.class_caps]
        watched = [poses, activations, *[v for layer in layers for v in layer.trainable_variables]]
        with tf.GradientTape() as tape:
            tape.watch(watched[:2])
            class_poses, class_activations = model.capsule_layers((poses, activations))
            loss = tf.reduce_sum(tf.square(class_poses)) + tf.reduce_sum(class_activations)
        return tf.add_n([loss] + [tf.reduce_sum(g) for g in tape.gradient(loss, watched)])

    return {"train": train, "eval": evaluate, "conv_only": conv_only, "digit_caps": digit_caps,
            "capsule_layers": capsule_layers}


def measure_interleaved(rows: Sequence[tuple], batch_size: int, warmup: int, timed: int) -> dict:
    """Times the steps of `rows` [(row, step, input)] round-robin, so that every row sees the same
    machine (another process that slows one round slows all rows alike; the ratios stay fair).

    Each row first runs `warmup` untimed steps alone (the first traces the step); its memory
    peak is taken over them. Then `timed` rounds run each step once; each step fetches its
    scalar result, so that its work is done. Returns {row: ms per step (median, min, max, all),
    images/s, CPU cores busy on average, peak memory, first step (tracing included)}, plus the
    share of all CPU time that other processes used during the timed rounds (Linux)."""
    results = {}
    for key, step, inputs in rows:
        log.info(f"batch {batch_size}: {key} (warm-up)")
        resettable = _reset_peak()
        start = time.perf_counter()
        step(inputs).numpy()
        first = time.perf_counter() - start
        for _ in range(warmup - 1):
            step(inputs).numpy()
        results[key] = {"peak_rss_mib": _peak_mib(), "peak_rss_scope": "measurement" if resettable else "process",
                        "first_step_ms": 1000 * first}
        device_peak = _gpu_peak_mib()
        if device_peak is not None:
            results[key]["peak_gpu_mib"] = device_peak
    seconds = {key: [] for key, _, _ in rows}
    cpu_seconds = {key: [] for key, _, _ in rows}
    log.info(f"batch {batch_size}: {timed} timed rounds of {len(rows)} steps")
    jiffies = _cpu_jiffies()
    for _ in range(timed):
        for key, step, inputs in rows:
            start, cpu_start = time.perf_counter(), time.process_time()
            step(inputs).numpy()
            seconds[key].append(time.perf_counter() - start)
            cpu_seconds[key].append(time.process_time() - cpu_start)
    for key, times in seconds.items():
        median = statistics.median(times)
        results[key].update({
            "ms_per_step": 1000 * median, "ms_per_step_min": 1000 * min(times),
            "ms_per_step_max": 1000 * max(times), "ms_per_step_all": [1000 * t for t in times],
            "images_per_second": batch_size / median, "cpu_cores_busy": sum(cpu_seconds[key]) / sum(times),
        })
    after = _cpu_jiffies()
    if jiffies and after and after[0] > jiffies[0]:
        others = (after[1] - jiffies[1]) - (after[2] - jiffies[2])
        results["other_processes_cpu_share"] = max(others, 0) / (after[0] - jiffies[0])
    return results


def _cpu_jiffies() -> Optional[Tuple[int, int, int]]:
    """(all CPU time, busy CPU time of all processes, CPU time of this process) in clock ticks
    from /proc (Linux); None elsewhere."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        return sum(values), sum(values) - values[3] - values[4], int(own[11]) + int(own[12])
    except (OSError, ValueError, IndexError):
        return None


def measure_pipeline(dataset: tf.data.Dataset, batch_size: int, batches: int) -> dict:
    """Images/s of iterating `dataset` alone for `batches` batches after its first one (which
    pays for the start-up); stops early at the end of the epoch."""
    iterator = iter(dataset)
    next(iterator)
    start = time.perf_counter()
    count = sum(1 for _ in itertools.islice(iterator, batches))
    seconds = time.perf_counter() - start
    return {"images_per_second": count * batch_size / seconds, "batches": count,
            "ms_per_batch": 1000 * seconds / max(count, 1)}


def _reset_peak() -> bool:
    """Returns the freed heap to the system (glibc) and resets the kernel's peak-RSS counter of
    this process (Linux), so that the next peak is that of the next row; False where it cannot."""
    for device in tf.config.list_logical_devices("GPU")[:1]:
        tf.config.experimental.reset_memory_stats(device.name)
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def _peak_mib() -> Optional[float]:
    """Peak resident set size (VmHWM) in MiB since the last reset, else since the start."""
    try:
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return _process_peak_mib()


def _process_peak_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _gpu_peak_mib() -> Optional[float]:
    """TensorFlow's peak memory on the first GPU in MiB since the last reset; None without GPU."""
    gpus = tf.config.list_logical_devices("GPU")
    if not gpus:
        return None
    return tf.config.experimental.get_memory_info(gpus[0].name)["peak"] / 2**20


def machine_info() -> dict:
    """CPU model and cores, GPUs, Python, TensorFlow and its thread settings on this machine."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    return {
        "cpu": models[0] if models else platform.processor() or platform.machine(),
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")], "python": platform.python_version(),
        "tensorflow": tf.__version__, "platform": platform.platform(),
        "onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
    }


def format_table(report: dict) -> str:
    """The report as a text table: one row per measurement, one column group per batch size."""
    machine, config, results = report["machine"], report["config"], report["results"]
    device = ", ".join(machine["gpus"]) or f"{machine['cpu']}, {machine['cpu_cores']} CPU cores"
    model = config.get("model", "capsnet")
    lines = [
        f"capsrun bench: {device}, TensorFlow {machine['tensorflow']}, precision {config['mixed_precision']}, "
        f"XLA {'on' if config['jit_compile'] else 'off'}",
        f"{MODEL_LABELS.get(model, model)} with {report['parameters']:,} parameters"
        + (f", {report['macs_per_image'] / 1e6:,.1f}M MACs per image" if report.get("macs_per_image") else "")
        + f", {config['routing_iterations']} routing iterations; "
        f"ms/step = median of {config['timed_steps']} steps after {config['warmup_steps']} warm-up steps",
        "",
        f"{'':32}" + "".join(f"{'batch ' + str(r['batch_size']):>28}" for r in results),
        f"{'':32}" + f"{'img/s':>9}{'ms/step':>9}{'peak MiB':>10}" * len(results),
    ]
    lines += [f"{label:32}" + "".join(_cells(r.get(key)) for r in results)
              for key, label in ROWS if any(key in r for r in results)]
    lines.append("")
    for key, label, _, _, form in RATIOS:
        if any(key in r["ratios"] for r in results):
            lines.append(f"{label:32}" + "".join(
                f"{form.format(r['ratios'][key]) if key in r['ratios'] else '-':>28}" for r in results))
    shares = [r.get("other_processes_cpu_share") for r in results]
    if None not in shares:
        lines.append(f"{'other processes, share of CPU':32}" + "".join(f"{share:>28.0%}" for share in shares))
        if max(shares) > 0.05:
            lines += ["", "note: other processes used the CPUs while timing: absolute numbers are pessimistic; "
                          "the ratios (steps timed round-robin) suffer less"]
    if report.get("routings"):
        lines += ["", format_routing_table(report["routings"])]
    if report.get("loops"):
        lines += ["", "trainer.steps_per_loop (capsrun's Trainer, N training steps per host sync):",
                  format_loop_table(report["loops"])]
    return "\n".join(lines)


def format_routing_table(routings: dict) -> str:
    """The routing rows as a text table: per routing the layer's forward + backward (its fast form)
    and the plain autodiff form in ms/step, their ratio, the layer against dynamic routing's, and
    the CapsNet's training step."""
    lines = [f"routings at batch {routings['batch_size']} (routing layer = votes -> parents, forward + backward; "
             "vs plain = plain ms / layer ms; vs dynamic = layer ms / dynamic's)",
             f"{ROUTING_COLUMNS[0]:24}" + "".join(f"{column:>12}" for column in ROUTING_COLUMNS[1:])]
    for name, row in routings["rows"].items():
        versus = row.get("layer_vs_dynamic")
        lines.append(f"{name:24}{row['layer']['ms_per_step']:12.1f}{row['plain']['ms_per_step']:12.1f}"
                     f"{row['layer_vs_plain']:11.2f}x" + (f"{versus:11.2f}x" if versus is not None else f"{'-':>12}")
                     + f"{row['train']['images_per_second']:12.1f}{row['train']['ms_per_step']:12.1f}")
    share = routings.get("other_processes_cpu_share")
    if share is not None:
        lines.append(f"{'other processes, share of CPU':36}{share:>12.0%}")
    return "\n".join(lines)


def _cells(entry: Optional[dict]) -> str:
    """img/s, ms per step (or per batch) and peak MiB of one measurement; dashes for none."""
    if entry is None:
        return f"{'-':>28}"
    peak = entry.get("peak_rss_mib")
    return (f"{entry['images_per_second']:9.1f}{entry.get('ms_per_step', entry.get('ms_per_batch')):9.1f}"
            + (f"{peak:10.0f}" if peak else f"{'-':>10}"))
