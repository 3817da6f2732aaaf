"""The one place that starts or joins Ray.

Every Ray process we start (embedded `ray.init`, `ray start` in slurm/tune.sh, trial
workers) must agree on a handful of environment settings, or it fails in ways that are
slow to diagnose on a shared machine:

- `RAY_USAGE_STATS_ENABLED=0`: no telemetry from an HPC node without internet.
- `RAY_AUTH_MODE` set explicitly: when `~/.ray/auth_token` exists, an unset mode turns
  token auth on for some processes and not others, and a second raylet cannot join.
  Single-machine sweeps bind loopback only and keep it `disabled`; a sweep on Slurm
  (slurm/tune.sh) binds the nodes' addresses and uses `token`: a fresh secret per job in a
  file only the job's user can read (`write_token_file`), found by every Ray process of the
  job through `RAY_AUTH_TOKEN_PATH`.
- loopback only by default (`127.0.0.1`), no dashboard, a small object store (trials pass
  configs and scalars, not tensors), and a short temp dir (Ray's Unix socket paths must
  stay under 107 bytes).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

# Custom resource that a Ray Train trial's driver holds instead of a CPU: on a 2-CPU
# node a driver holding a CPU leaves too few for its workers and the trial hangs.
TRAIN_DRIVER_RESOURCE = "TRAIN_DRIVER"
OBJECT_STORE_BYTES = 80 * 1024 * 1024  # Ray's floor is 75 MiB.
DEFAULT_AUTH_MODE = "disabled"


def ray_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for any Ray process; caller-set values win except for telemetry."""
    env = dict(os.environ if base is None else base)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.setdefault("RAY_AUTH_MODE", DEFAULT_AUTH_MODE)
    env.setdefault("OMP_NUM_THREADS", "1")
    # Ray Train/Tune otherwise redirect worker prints into files only.
    env.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    # Starting 2 torch workers on a loaded 2-CPU node can take over Ray Train's default
    # 60 s; its retry then leaks the first placement group (its cleaner needs the
    # dashboard's state API, which we do not run) and the trial waits forever.
    env.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600")
    return env


def write_token_file(path: str | Path) -> Path:
    """A new random token in `path`, created with mode 0600 (never widening an old file's
    mode: it is replaced, not rewritten), in a directory only this user can enter."""
    import secrets

    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
    return path


def default_temp_dir() -> str:
    """Short per-user path: Ray's socket paths live under it and must stay short."""
    return str(Path(tempfile.gettempdir()) / f"ray-lus-{os.getuid()}")


@dataclass(frozen=True)
class RayOptions:
    """How to reach Ray: embedded local cluster (address None) or an existing one."""

    address: str | None = None
    num_cpus: int | None = None
    num_gpus: int | None = None   # logical GPUs for the embedded Ray (None: Ray detects)
    node_ip: str = "127.0.0.1"
    temp_dir: str = field(default_factory=default_temp_dir)
    object_store_bytes: int = OBJECT_STORE_BYTES
    train_driver_slots: int = 1
    log_to_driver: bool = True   # the trials' own output in the driver's (lus tune --verbose)


# Ray Train's placement-group cleaner asks the dashboard's state API every second whether
# its trial's controller lives; without a dashboard (we run none) it warns each time, dozens
# of lines per trial. ReleaseTrainGroups (tune.trainables) frees the groups instead.
PG_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
PG_CLEANER_WARNING = "Failed to query Ray Train Controller actor state"


def quiet_worker_logs() -> None:
    """Ray's worker_process_setup_hook: runs in every worker process of the sweep."""
    import logging

    logging.getLogger(PG_CLEANER_LOGGER).addFilter(
        lambda record: not record.getMessage().startswith(PG_CLEANER_WARNING))


RUNTIME_ENV = {"worker_process_setup_hook": f"{__name__}.quiet_worker_logs"}


def init_kwargs(opts: RayOptions) -> dict:
    """Keyword arguments for `ray.init` (pure, so the test can check the loopback bind)."""
    if opts.address:
        # Joining: resources, object store and temp dir belong to the running cluster.
        return {"address": opts.address, "include_dashboard": False,
                "log_to_driver": opts.log_to_driver, "configure_logging": False,
                "runtime_env": RUNTIME_ENV}
    # "local": always a new instance of our own, never the latest `ray start` cluster on the
    # machine (which ray.init() would otherwise join: another user's, or one inside a Slurm
    # job's network namespace that this process cannot even reach).
    return {
        "address": "local",
        "num_cpus": opts.num_cpus,
        "num_gpus": opts.num_gpus,
        "resources": {TRAIN_DRIVER_RESOURCE: opts.train_driver_slots},
        "object_store_memory": opts.object_store_bytes,
        "_node_ip_address": opts.node_ip,
        "_temp_dir": opts.temp_dir,
        "include_dashboard": False,
        "log_to_driver": opts.log_to_driver,
        "configure_logging": False,
        "runtime_env": RUNTIME_ENV,
    }


def start_ray(opts: RayOptions) -> None:
    """Start an embedded Ray or join `opts.address` (idempotent within a process)."""
    os.environ.update(ray_env())
    import ray

    if ray.is_initialized():
        return
    Path(opts.temp_dir).mkdir(parents=True, exist_ok=True)
    ray.init(**init_kwargs(opts))


def stop_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def node_ips() -> list[str]:
    """Addresses of the live Ray nodes (the test asserts they are all loopback)."""
    import ray

    return sorted({n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")})


def wait_for_nodes(address: str, nodes: int, timeout_s: float) -> list[str]:
    """Block until `nodes` Ray nodes are alive at `address` (slurm/tune.sh start-up)."""
    import time

    import ray

    os.environ.update(ray_env())
    deadline = time.monotonic() + timeout_s
    last_error = "no answer"
    while time.monotonic() < deadline:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
            try:
                ips = [n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")]
            finally:
                ray.shutdown()
            if len(ips) >= nodes:
                return ips
            last_error = f"{len(ips)} of {nodes} nodes alive"
        except (ConnectionError, RuntimeError) as exc:
            last_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        time.sleep(2)
    raise TimeoutError(f"Ray at {address}: {last_error} after {timeout_s:.0f} s")


def _main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m tune.ray_env",
                                description="slurm/tune.sh helpers: wait until a Ray cluster has "
                                            "N live nodes; write a job's auth token file",
                                epilog="examples: python -m tune.ray_env wait --address "
                                       "10.0.0.1:6379 --nodes 2 --timeout 120\n"
                                       "          python -m tune.ray_env token --out ~/.lus/t/job-7")
    p.add_argument("action", choices=["wait", "token"])
    p.add_argument("--address")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--out", help="token: the file to write (mode 0600)")
    args = p.parse_args(argv)
    if args.action == "token":
        if not args.out:
            p.error("token needs --out FILE")
        try:
            print(f"tune.ray_env: wrote a new Ray auth token to {write_token_file(args.out)} (mode 0600)")
        except OSError as exc:
            print(f"tune.ray_env: cannot write the token file {args.out}: {exc.strerror}", file=sys.stderr)
            return 2
        return 0
    if not args.address:
        p.error("wait needs --address HOST:PORT")
    try:
        ips = wait_for_nodes(args.address, args.nodes, args.timeout)
    except TimeoutError as exc:
        print(f"tune.ray_env: {exc}", file=sys.stderr)
        return 1
    print(f"tune.ray_env: {len(ips)} Ray node(s) alive at {args.address}: {sorted(ips)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
