"""The model being trained, wrapped for DDP or DeepSpeed, with its optimizer and schedule.

`Fit` hides the one real difference between the two backends (DeepSpeed owns backward,
step and its checkpoint files) so the loop never branches on the backend.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from hpc.device_plan import with_deepspeed_precision
from hpc.dist import init_one_rank_group, is_distributed
from lus_dist.io.config import ConfigError

from .checkpoint import unwrap
from .config import RunConfig
from .layout import LayoutProbe, convs_take_channels_last
from .session import Session


@dataclass
class Fit:
    """The wrapped model and its optimizer state; `backward` does accumulation and clipping."""
    model: torch.nn.Module          # DDP / DeepSpeed engine / plain module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    accum: int
    clip: float
    bf16: bool
    device: torch.device
    engine: Any = None              # the DeepSpeed engine when dist.backend=deepspeed
    ema: Any = None                 # lus_dist.engine.ema.EMA when train.ema_decay > 0
    layout: LayoutProbe | None = None   # what the convolutions computed in

    @property
    def net(self) -> torch.nn.Module:
        """The unwrapped module being trained."""
        return unwrap(self.model)

    @property
    def eval_net(self) -> torch.nn.Module:
        """What validation scores, best.pt holds and exports use: the EMA weights when on."""
        return self.ema.module if self.ema is not None else self.net

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def release(self) -> None:
        """Leave the process group through DeepSpeed when it ran: it caches its groups per
        process, and a later run in this process (a sweep, a test) would find stale ones
        ("Group ... is not registered")."""
        if self.engine is not None and is_distributed():
            import deepspeed.comm

            deepspeed.comm.destroy_process_group()

    def states(self) -> dict[str, Any]:
        """What a checkpoint must hold besides what DeepSpeed saves itself."""
        own = {} if self.engine is not None else {"model": self.net, "optimizer": self.optimizer}
        ema = {} if self.ema is None else {"ema": self.ema}
        return {**own, "scheduler": self.scheduler, **ema}

    def describe(self) -> dict[str, Any]:
        """What the run trained with, for summary.json (ZeRO stage as DeepSpeed applied it)."""
        stage = self.engine.zero_optimization_stage() if self.engine is not None else None
        return {"precision": "bf16" if self.bf16 else "fp32", "zero_stage": stage,
                "ema_decay": self.ema.decay if self.ema is not None else None,
                "memory_format": self.layout.result() if self.layout is not None else None}

    def autocast(self):
        if not self.bf16 or self.engine is not None:   # DeepSpeed casts the model itself
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def input_dtype(self) -> torch.dtype:
        if self.engine is not None and self.bf16:
            return torch.bfloat16
        return torch.float32

    def sync_context(self, micro: int):
        """Skip the DDP all-reduce on all but the last micro-batch of an accumulation."""
        last = (micro + 1) % self.accum == 0
        if self.engine is None and not last and hasattr(self.model, "no_sync"):
            return self.model.no_sync()
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, micro: int) -> bool:
        """Backward one micro-batch; step the optimizer at the accumulation boundary."""
        if self.engine is not None:
            self.engine.backward(loss)
            self.engine.step()       # a no-op inside an accumulation window
            stepped = (micro + 1) % self.accum == 0
        else:
            (loss / self.accum).backward()
            stepped = (micro + 1) % self.accum == 0
            if stepped:
                if self.clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        if stepped and self.ema is not None:
            self.ema.update(self.net)
        return stepped


def build_fit(model: torch.nn.Module, cfg: RunConfig, session: Session, steps_per_epoch: int) -> Fit:
    """Move, wrap for DDP or DeepSpeed in the memory format each can hold (layout.py), and
    build the schedule."""
    ds = runnable(cfg, session)
    model = model.to(session.device)
    if cfg.model.channels_last and ds is None:
        model = model.to(memory_format=torch.channels_last)
    optimizer = cfg.optim.build(model.parameters())
    engine = None
    if ds is not None:
        model = engine = deepspeed_engine(model, optimizer, ds, session)
        if cfg.model.channels_last:
            convs_take_channels_last(engine.module)
    elif session.world.world_size > 1:
        ids = [session.device.index] if session.device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    scheduler = cfg.schedule.build(optimizer, steps_per_epoch, cfg.train.epochs)
    ema = build_ema(model, cfg)
    return Fit(model, optimizer, scheduler, cfg.optim.grad_accum, cfg.optim.grad_clip,
               session.bf16, session.device, engine=engine, ema=ema,
               layout=LayoutProbe(unwrap(model)))


def runnable(cfg: RunConfig, session: Session) -> dict | None:
    """The DeepSpeed JSON the engine will hand DeepSpeed (None under DDP), with the run's
    precision in `session.bf16`, after refusing, as one ConfigError, every combination the
    engine cannot run. `lus doctor` calls this too, so it reports what a run would refuse."""
    ds = deepspeed_json(cfg, session) if cfg.dist.backend == "deepspeed" else None
    if ds is not None:
        session.bf16 = bool((ds.get("bf16") or {}).get("enabled", False))
    if cfg.train.ema_decay > 0 and ds is not None and session.bf16:
        raise ConfigError("train.ema_decay with DeepSpeed bf16: the average would be held in "
                          "bf16 and lose its updates; use dist.backend=ddp (bf16 autocast, fp32 "
                          "weights) or fp32 DeepSpeed")
    return ds


def build_ema(model: torch.nn.Module, cfg: RunConfig):
    """The weight average, or None. Not under DeepSpeed bf16 (`runnable` refuses it):
    DeepSpeed holds the module in bf16, and a bf16 average drops updates smaller than its
    8-bit mantissa resolves (a 0.999 average would barely move); DDP with train.bf16 keeps
    fp32 weights and averages them."""
    if cfg.train.ema_decay <= 0:
        return None
    from lus_dist.engine.ema import EMA

    return EMA(unwrap(model), cfg.train.ema_decay)


def deepspeed_json(cfg: RunConfig, session: Session) -> dict:
    """The DeepSpeed JSON with batch, accumulation, clipping and precision from our config;
    a ConfigError naming the file for what the engine cannot train with."""
    path = cfg.dist.deepspeed_json()
    try:
        ds = json.loads(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if "optimizer" in ds or "scheduler" in ds:
        raise ConfigError(f"{path}: remove 'optimizer'/'scheduler': the engine passes its own torch "
                          "optimizer (optim.*) and schedule (schedule.*); a JSON optimizer would "
                          "JIT-compile FusedAdam")
    ds["train_micro_batch_size_per_gpu"] = cfg.data.batch_size
    ds["gradient_accumulation_steps"] = cfg.optim.grad_accum
    ds["train_batch_size"] = cfg.data.batch_size * cfg.optim.grad_accum * session.world.world_size
    ds["gradient_clipping"] = cfg.optim.grad_clip
    if session.plan is not None:
        ds = with_deepspeed_precision(ds, session.plan, source=str(path))
    zero = ds.setdefault("zero_optimization", {})
    zero.setdefault("stage", cfg.dist.zero_stage)
    deepspeed_refusal(ds, cfg, str(path))
    return ds


def deepspeed_refusal(ds: dict, cfg: RunConfig, source: str) -> None:
    """What DeepSpeed or the engine cannot train with, said before start-up (pure)."""
    stage = ds["zero_optimization"]["stage"]
    if stage not in (0, 1, 2):
        raise ConfigError(f"{source}: zero_optimization.stage {stage}: the engine runs ZeRO 0, 1 "
                          "or 2 (ZeRO-3 partitions the weights; evaluation and best.pt need "
                          "them whole)")
    if (ds.get("fp16") or {}).get("enabled") is True:
        raise ConfigError(f"{source}: fp16.enabled: the engine trains in fp32 or bf16 (no loss "
                          "scaling); use bf16.enabled (\"auto\" follows train.bf16)")
    if stage > 0 and cfg.optim.name == "sgd" and not ds.get("zero_allow_untested_optimizer"):
        raise ConfigError(f"{source}: optim.name=sgd under ZeRO-{stage}: DeepSpeed's ZeRO takes "
                          "adam/adamw only (unless the JSON sets zero_allow_untested_optimizer); "
                          "use optim.name=adam|adamw, ZeRO-0 or dist.backend=ddp")


def deepspeed_engine(model, optimizer, ds: dict, session: Session):
    """deepspeed.initialize without the two CPU traps: the shm_comm op JIT build (disabled:
    gloo does the collectives) and FusedAdam (we pass a torch optimizer). DeepSpeed reads
    LOCAL_RANK, which only torchrun sets (srun tasks and a plain process take it from our
    World), and its collectives need a process group even in one process: a one-rank group."""
    import deepspeed
    import deepspeed.ops

    os.environ.setdefault("LOCAL_RANK", str(session.world.local_rank))
    if not is_distributed():
        init_one_rank_group(session.plan.backend if session.plan is not None else "gloo")
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds,
                                           dist_init_required=False)
    if session.bf16:
        cast_buffers(engine.module, torch.bfloat16)
    return engine


def cast_buffers(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """DeepSpeed's bf16 casts the parameters only; BatchNorm's running statistics stay
    float32 and batch_norm then refuses the mix ("expected scalar type BFloat16 but found
    Float"). Floating buffers follow the parameters' dtype."""
    for buf in module.buffers():
        if buf.is_floating_point():
            buf.data = buf.data.to(dtype)


def sync_buffers(fit: Fit) -> None:
    """Make rank 0's buffers (BatchNorm statistics) everyone's before evaluating or saving.

    DDP broadcasts them only at the start of a training forward, so after the last step of
    an epoch each rank holds its own update; DeepSpeed never broadcasts them. Evaluation runs
    the bare module on each rank's block, so without this the ranks would score different
    models and best.pt (rank 0's) would not be the model that was scored.
    """
    if not is_distributed() or dist.get_world_size() == 1:
        return
    for buf in fit.net.buffers():
        dist.broadcast(buf, 0)
    if fit.ema is not None:     # averaged from each rank's own statistics: rank 0's wins too
        for buf in fit.ema.module.buffers():
            dist.broadcast(buf, 0)


def params_digest(model: torch.nn.Module) -> str:
    """SHA-256 over every parameter and buffer: equal digests mean bitwise-equal weights."""
    net = unwrap(model)
    h = hashlib.sha256()
    for name, t in sorted(net.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def all_digests(model: torch.nn.Module) -> list[str]:
    mine = params_digest(model)
    if not is_distributed():
        return [mine]
    out: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(out, mine)
    return [str(d) for d in out]
