"""Settings: config-dataclass fields that carry their own help, composed into sections.

Every component has one config dataclass (LeRobot's style). Its fields are *settings*
(:func:`setting`: a default, a help text and whether it may change while running) or
*sections* (:func:`section`: another component's config composed whole, e.g. the verifier
node's decision settings are a :class:`~prevla_ros.runtime.scheduler_config.SchedulerConfig`).
A setting is declared once, in the config of the component that uses it; whoever exposes a
config — ROS parameters, ``prevla eval`` flags, the generated parameter docs — sees it
*flattened*: one name per setting, a section's settings at the top level under their own
names (so ROS parameter names do not change when a config is composed).
"""
from __future__ import annotations

import functools
import typing
from dataclasses import MISSING, Field, dataclass, field, fields, replace

T = typing.TypeVar("T")


def setting(help: str, default, *, runtime: bool = False) -> Field:
    """A scalar setting. ``runtime``: may change while the component runs (a ROS parameter
    that is not read-only); every other setting is read at startup only."""
    return field(default=default, metadata={"help": help, "runtime": runtime})


def section(cls: type, help: str, fixed: dict[str, object] | None = None,
            hidden: tuple[str, ...] = (), **defaults) -> Field:
    """A composed config: ``cls`` with its own settings, ``defaults`` overriding some of its
    defaults for this owner (e.g. the verifier node defaults to the learned verifier).
    ``fixed`` settings take the value given and ``hidden`` ones keep their default; neither is
    a setting of the owner (the evaluation's verifier arm *is* the learned verifier in execute
    mode, and has no use for the imagine-mode settings)."""
    fixed = dict(fixed or {})
    return field(default_factory=functools.partial(cls, **defaults, **fixed),
                 metadata={"help": help, "section": True, "fixed": (*fixed, *hidden)})


def check(ok: bool, owner: str, name: str, message: str) -> None:
    """Raise ``ValueError("Owner.name: message")`` unless ``ok``: a bad value names its field."""
    if not ok:
        raise ValueError(f"{owner}.{name}: {message}")


@dataclass(frozen=True)
class Setting:
    """One flattened setting of a config: what a ROS parameter or a CLI flag is made from."""

    name: str
    default: object
    help: str
    type: type
    runtime: bool
    section: str  # the section's field name, "" for the config's own settings


def _is_section(f: Field) -> bool:
    return bool(f.metadata.get("section"))


def _default(f: Field):
    return f.default_factory() if f.default is MISSING else f.default


def settings(cls: type) -> dict[str, Setting]:
    """Every setting of ``cls``, sections flattened, in declaration order. Two settings of one
    name (the owner's and a section's) are a bug: a setting must exist once."""
    out: dict[str, Setting] = {}
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if _is_section(f):
            inner = _default(f)
            items = [(s.name, Setting(s.name, getattr(inner, s.name), s.help, s.type, s.runtime,
                                      f.name)) for s in settings(type(inner)).values()
                     if s.name not in f.metadata["fixed"]]
        else:
            items = [(f.name, Setting(f.name, _default(f), f.metadata.get("help", ""),
                                      hints[f.name], bool(f.metadata.get("runtime")), ""))]
        for name, s in items:
            if name in out:
                raise TypeError(f"{cls.__name__}: setting {name!r} is declared twice")
            out[name] = s
    return out


def flatten(config) -> dict[str, object]:
    """``name -> value`` of every setting of ``config`` (sections flattened)."""
    out: dict[str, object] = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if _is_section(f):
            out.update({k: v for k, v in flatten(value).items() if k not in f.metadata["fixed"]})
        else:
            out[f.name] = value
    return out


def build(cls: type[T], values: dict[str, object] | None = None) -> T:
    """``cls`` from flat ``values`` (missing ones keep their defaults). An unknown name or a bad
    value raises ``ValueError`` naming ``cls`` and the setting (a section's error is re-worded
    under its owner, so ``VerifierNodeConfig.threshold: ...`` whatever section declares it)."""
    values = dict(values or {})
    known = settings(cls)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown setting(s) {', '.join(unknown)}")
    kwargs = {}
    for f in fields(cls):
        if not _is_section(f):
            if f.name in values:
                kwargs[f.name] = values[f.name]
            continue
        inner = _default(f)
        mine = {n: values[n] for n in settings(type(inner))
                if n in values and n not in f.metadata["fixed"]}
        try:
            kwargs[f.name] = replace(inner, **mine) if mine else inner
        except ValueError as exc:
            text = str(exc)
            raise ValueError(text.replace(f"{type(inner).__name__}.", f"{cls.__name__}.", 1)) \
                from None
    return cls(**kwargs)


def update(config: T, changes: dict[str, object]) -> T:
    """A copy of ``config`` with flat ``changes`` applied and validated (see :func:`build`)."""
    return build(type(config), {**flatten(config), **changes})
