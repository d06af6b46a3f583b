"""`capsrun launch workers=N -- train ...`: a multi-worker cluster on this machine.

Starts N `capsrun train` processes with free localhost ports and a TF_CONFIG each, so that
TensorFlow's MultiWorkerMirroredStrategy connects them; streams their output with a
`[worker i]` prefix; stops all of them as soon as one fails. Worker 0 is the chief: it writes the
run folder. The other workers share the folder name (they restore the chief's checkpoints when
resuming) but write neither Hydra's files nor a log there.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from datetime import datetime
from typing import IO, List, Optional, Sequence, Tuple

from capsrun.commands.frontend import CommandSpec, command_config, help_text
from capsrun.commands.train import check_train_args
from capsrun.errors import CapsrunError

SPEC = CommandSpec("launch", "workers=N [host=H] -- train [overrides]")

GRACE_SECONDS = 15
NON_CHIEF_OVERRIDES = ["hydra.output_subdir=null", "hydra/job_logging=stdout"]


def parse_launch_args(args: Sequence[str]) -> Optional[Tuple[int, str, List[str]]]:
    """(workers, host, train overrides) from `workers=N [host=H] -- train ...`; None after
    `--cfg job` printed launch's own config."""
    args = list(args)
    if "--" not in args:
        raise CapsrunError("usage: capsrun launch workers=N -- train [overrides]; the `--` is missing")
    split = args.index("--")
    cfg = command_config(SPEC, args[:split])
    if cfg is None:
        return None
    command = args[split + 1:]
    if cfg.workers < 1:
        raise CapsrunError(f"workers must be a whole number >= 1, got '{cfg.workers}'")
    if not command or command[0] != "train":
        raise CapsrunError("capsrun launch runs `train` only: capsrun launch workers=N -- train [overrides]")
    if any(arg in ("-m", "--multirun") for arg in command):
        raise CapsrunError("capsrun launch runs one training job; sweeps are not supported inside it")
    return int(cfg.workers), str(cfg.host), command[1:]


def free_ports(count: int) -> List[int]:
    """`count` distinct free TCP ports (held open together, then released)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("localhost", 0))
        return [sock.getsockname()[1] for sock in sockets]


def worker_commands(workers: int, host: str, overrides: Sequence[str]) -> Tuple[str, List[tuple]]:
    """[(argv, env)] per worker; all share the chief's run folder and one cluster spec."""
    run_dirs = [o.split("=", 1)[1] for o in overrides if o.startswith("hydra.run.dir=")]
    run_dir = os.path.abspath(run_dirs[-1] if run_dirs else os.path.join(
        "outputs", datetime.now().strftime("%Y-%m-%d"), datetime.now().strftime("%H-%M-%S")))
    base = [o for o in overrides if not o.startswith(("hydra.run.dir=", "trainer.strategy="))]
    base += ["trainer.strategy=multi_worker", f"hydra.run.dir={run_dir}"]
    cluster = {"worker": [f"{host}:{port}" for port in free_ports(workers)]}
    commands = []
    for index in range(workers):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        argv = [sys.executable, "-m", "capsrun", "train", *base, *(NON_CHIEF_OVERRIDES if index else [])]
        commands.append((argv, env))
    return run_dir, commands


def _stream(pipe: IO[str], prefix: str, target: IO[str], lock: threading.Lock) -> None:
    for line in pipe:
        with lock:
            target.write(f"{prefix} {line}")
            target.flush()


def _stop_all(processes: Sequence[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    for process in processes:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _describe(code: int) -> str:
    return f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"


def launch_command(args: List[str]) -> int:
    """Runs the cluster; returns 0 when every worker succeeded, else the failing worker's status
    (1 when it was killed by a signal)."""
    options = args[:args.index("--")] if "--" in args else args
    if any(arg in ("-h", "--help") for arg in options):
        print(help_text(SPEC))
        return 0
    parsed = parse_launch_args(args)
    if parsed is None:
        return 0
    workers, host, overrides = parsed
    check_train_args(overrides)  # every worker's config, with the flags of train (-cd DIR, ...)
    run_dir, commands = worker_commands(workers, host, overrides)
    lock = threading.Lock()
    processes, threads = [], []
    for index, (argv, env) in enumerate(commands):
        process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        processes.append(process)
        print(f"capsrun launch: started worker {index} (pid {process.pid}){' [chief]' if index == 0 else ''}",
              flush=True)
        for pipe, target in ((process.stdout, sys.stdout), (process.stderr, sys.stderr)):
            thread = threading.Thread(target=_stream, args=(pipe, f"[worker {index}]", target, lock), daemon=True)
            thread.start()
            threads.append(thread)
    forwarded = []

    def forward(signum: int, frame: object) -> None:
        forwarded.append(signum)
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            codes = [process.poll() for process in processes]
            failed = [(i, code) for i, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                index, code = failed[0]
                if not forwarded:
                    _stop_all(processes)
                    for thread in threads:
                        thread.join(timeout=5)
                    print(f"capsrun launch: error: worker {index} (pid {processes[index].pid}) {_describe(code)}; "
                          "stopped the other workers", file=sys.stderr)
                    return code if code > 0 else 1
                if all(c is not None for c in codes):
                    return code
            elif all(code == 0 for code in codes):
                for thread in threads:
                    thread.join(timeout=5)
                print(f"capsrun launch: all {workers} workers finished; run folder {run_dir}", flush=True)
                return 0
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

