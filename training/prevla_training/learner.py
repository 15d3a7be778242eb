"""The optimiser side every prevla training job shares (RLlib's learner split).

A job owns its model, its batches and its loss; a :class:`Learner` owns what turns a loss into
an update and what makes a run resumable:

* AdamW over :func:`param_groups` (weights decayed; biases, norms, embeddings, positional
  tables and learned queries not: decaying them pulls them towards zero for no regularising
  gain), with the job's extra groups (e.g. the verifier's threshold and its own lr);
* the warm-up + cosine schedule of ``TrainLoopConfig.lr_factor``, a pure function of the step,
  so resuming needs no scheduler state;
* gradient clipping (``grad_clip``; the norm is returned for logging either way);
* mixed precision on CUDA only (bf16 where supported, else fp16 with a gradient scaler); the
  CPU path runs in fp32 exactly as before;
* the train state of a checkpoint: step, optimiser, scaler and every random stream the run
  draws from (torch, numpy, python ``random``, CUDA, and the job's own named generators, e.g.
  a batch sampler), so N steps == N/2 + resume + N/2 bit for bit.

:meth:`Learner.step` is usable on its own (an RL learner brings its own batches and loop);
``prevla_training.loop.fit`` is the supervised loop built on it.
"""
from __future__ import annotations

import contextlib
import random
from typing import TYPE_CHECKING, Callable, Iterator, Union

import numpy as np
import torch

if TYPE_CHECKING:  # loop.py builds its fit() on the Learner
    from prevla_training.loop import TrainLoopConfig

#: Name fragments of parameters that are never weight-decayed (besides every 0-/1-D tensor).
NO_DECAY_NAMES = ("emb", "pos", "query")

Generator = Union[torch.Generator, np.random.Generator]


def default_no_decay(name: str, p: torch.nn.Parameter) -> bool:
    """Biases, norm gains and scalars (< 2-D), embeddings, positional tables, learned queries."""
    return p.dim() < 2 or any(k in name for k in NO_DECAY_NAMES)


def param_groups(model: torch.nn.Module, weight_decay: float,
                 no_decay: Callable[[str, torch.nn.Parameter], bool] = default_no_decay,
                 own: dict[str, dict] | None = None) -> list[dict]:
    """AdamW groups: decayed parameters, then exempt ones (``no_decay``), then one group per
    name in ``own`` with its options (e.g. ``{"threshold_logit": {"lr": 0.02, "weight_decay": 0}}``).

    Empty groups are dropped, so a model whose every parameter decays keeps one group (and the
    optimiser state layout of its older checkpoints).
    """
    own = own or {}
    named = [(n, p) for n, p in model.named_parameters() if n not in own]
    groups = [{"params": [p for n, p in named if not no_decay(n, p)], "weight_decay": weight_decay},
              {"params": [p for n, p in named if no_decay(n, p)], "weight_decay": 0.0}]
    params = dict(model.named_parameters())
    for name, options in own.items():
        if name not in params:
            raise ValueError(f"param_groups: own group {name!r} is not a parameter of {type(model).__name__}")
        groups.append({"params": [params[name]], **options})
    return [g for g in groups if g["params"]]


def global_rng_state() -> dict:
    """torch (CPU and CUDA), numpy and python ``random`` global states, in a form that loads
    with ``torch.load(weights_only=True)`` (tensors and plain Python values only)."""
    _, key, pos, has_gauss, cached = np.random.get_state()
    state = {"torch_rng": torch.get_rng_state(), "python_rng": random.getstate(),
             "numpy_rng": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                           "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: dict) -> None:
    """Restore what :func:`global_rng_state` saved; streams missing from ``state`` (older
    checkpoints) are left as they are."""
    if "torch_rng" in state:
        torch.set_rng_state(state["torch_rng"].cpu())
    if "python_rng" in state:
        version, internal, gauss = state["python_rng"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy_rng" in state:
        s = state["numpy_rng"]
        np.random.set_state(("MT19937", s["key"].numpy().astype(np.uint32), s["pos"], s["has_gauss"],
                             s["cached_gaussian"]))
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])


@contextlib.contextmanager
def rng_preserved() -> Iterator[None]:
    """Run the block without moving the global random streams (evaluations inside a training
    run must not shift the draws of the steps after them, or a resumed run would differ)."""
    state = global_rng_state()
    try:
        yield
    finally:
        set_global_rng_state(state)


def _generator_state(g: Generator):
    return g.get_state() if isinstance(g, torch.Generator) else g.bit_generator.state


def _set_generator_state(g: Generator, state) -> None:
    if isinstance(g, torch.Generator):
        g.set_state(state.cpu())
    else:
        g.bit_generator.state = state


class Learner:
    """Optimiser, schedule, clipping, AMP and train state of one model.

    Args:
        cfg: the optimisation fields (lr, weight_decay, warm-up/cosine, grad_clip).
        model: already on its device; AMP is used iff that device is CUDA.
        groups: AdamW param groups (default :func:`param_groups` with ``cfg.weight_decay``);
            a group's ``lr`` is its peak lr (default ``cfg.lr``), scaled by the schedule.
        betas: AdamW betas.
        generators: the job's own random streams saved with the train state, by name
            (a torch or numpy generator, e.g. the batch sampler's).
    """

    def __init__(self, cfg: "TrainLoopConfig", model: torch.nn.Module, groups: list[dict] | None = None,
                 betas: tuple[float, float] = (0.9, 0.95), generators: dict[str, Generator] | None = None) -> None:
        self.cfg, self.model = cfg, model
        self.generators = dict(generators or {})
        self.opt = torch.optim.AdamW(groups if groups is not None else param_groups(model, cfg.weight_decay),
                                     lr=cfg.lr, betas=betas)
        # Peak lr per group, kept here: optimizer.load_state_dict replaces the groups' dicts.
        self.peak_lrs = [g["lr"] for g in self.opt.param_groups]
        self.device = next(model.parameters()).device
        self.amp_dtype = None
        if self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.step_count = 0
        #: False keeps the gradient buffers between steps (zeroed in place): a static pool.
        self.grads_to_none = True
        self._set_lr()

    @property
    def lr(self) -> float:
        """Current lr of the first group (the one logged)."""
        return self.opt.param_groups[0]["lr"]

    def _set_lr(self) -> None:
        factor = self.cfg.lr_factor(self.step_count)
        for group, peak in zip(self.opt.param_groups, self.peak_lrs):
            group["lr"] = peak * factor

    def autocast(self):
        """Context for the forward pass: bf16/fp16 autocast on CUDA, a no-op on CPU."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def step(self, loss: torch.Tensor) -> float:
        """One update from ``loss``: backward (scaled under fp16), clip, optimiser step, next lr.
        Returns the gradient norm before clipping."""
        self.opt.zero_grad(set_to_none=self.grads_to_none)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip or float("inf"))
        self.scaler.step(self.opt)
        self.scaler.update()
        self.step_count += 1
        self._set_lr()
        return float(norm)

    def state_dict(self) -> dict:
        """The train state stored in a checkpoint's ``extra["train_state"]`` (it holds the live
        optimiser tensors: serialise it at once)."""
        return {"step": self.step_count, "optimizer": self.opt.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
                **global_rng_state(), **{name: _generator_state(g) for name, g in self.generators.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a train state (also the older ones without RNG or scaler entries). The
        optimiser adopts ``state``'s tensors, so pass a freshly loaded one, never one reused."""
        self.opt.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        for name, g in self.generators.items():
            if name in state:
                _set_generator_state(g, state[name])
        set_global_rng_state(state)
        self.step_count = int(state["step"])
        self._set_lr()
