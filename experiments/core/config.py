"""Typed run configuration: dataclass defaults < TOML file < profile < method < profile's method < CLI.

A TOML file holds the defaults of one experiment::

    epochs = 50                # top level: every profile and method
    [quick]                    # profile tables override the top level
    epochs = 2
    [methods.multirate]        # method tables override the profile
    optimizer = "multirate"
    k = 5
    [quick.methods.multirate]  # a profile's own value for one method (e.g. a tuned step size)
    lr = 0.2

and ``python -m experiments.X --profile quick --method multirate k=3`` overrides on top.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import hashlib
import json
import math
import os
import re
import sys
import tomllib
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from experiments.core.errors import UserError
from multirate import BASES, HyperparameterError, check_hyperparameters

PROFILES = ("quick", "cpu", "paper")  # cpu: the paper's counts on generated data, ~1 h per figure on 2 cores
# Each optimizer's base algorithm (a name in multirate.BASES): "multirate*" trains with the base's
# multirate optimizer, the others with its torch optimizer.
OPTIMIZERS = {"sgd": "sgd", "multirate": "sgd", "adamw": "adamw", "multirate_adamw": "adamw"}
PARTITIONS = ("layerwise", "random_subgroups", "weights_and_biases", "random_split", "batchnorm")
ELEMENTWISE = {"random_subgroups": "random", "random_split": "split"}  # partition -> its groups' rate
SCHEDULES = ("constant", "cosine", "multistep")
WANDB_MODES = ("auto", "offline", "online", "disabled")
# auto: bf16 where the device runs it fast (experiments.core.accel)
AMP_MODES = ("auto", "none", "bf16", "fp16")
MAX_SEED = 2**32 - 1  # seeds (`seed`, `seeds`, `*_seed`) are in [0, MAX_SEED]: what every generator takes

# Fields that do not change what is computed, so they stay out of the run hash:
# moving the results folder, switching W&B on or evaluating in chunks must still find the same run.
NOT_HASHED = ("results_dir", "device", "wandb", "wandb_project", "checkpoint", "rerun", "variant",
              "eval_chunk")
# Fields added after runs were recorded: left out of the hash while at their default, so that
# those runs keep their names (and are not trained again).
HASHED_IF_CHANGED = ("nesterov", "betas", "eps", "threads", "deterministic", "amp", "channels_last",
                     "compile", "cudnn_benchmark", "lr_batch", "zero_slow_every_step", "holdout",
                     "slow_lr_scale")

# Chosen by arguments (--profile/--method), never by a file or an override.
_RESERVED = {"profile": "--profile", "method": "--method"}
_TABLES = (*PROFILES, "methods")
_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


@dataclass
class RunConfig:
    """Fields every experiment shares. Experiments subclass it to add their own."""

    experiment: str = "experiment"
    profile: str = "quick"
    method: str = "train_all"
    optimizer: str = "sgd"
    seed: int = 0
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1  # for multirate: the slow step size h (fast steps use h/k)
    # The batch size `lr` is quoted for (0: batch_size). The optimizer steps with
    # lr * batch_size / lr_batch (`step_lr`, the linear scaling rule), which keeps SGD's noise
    # h / B and its distance per epoch when a profile runs the paper's h at a smaller batch.
    lr_batch: int = 0
    # The fraction of the training set held out for tuning (experiments/protocol.py; 0: none). With
    # holdout > 0 the run trains on the rest and every evaluation reads the held-out part in place of
    # the test set, under the test set's metric names: a tuning run never reads the test data.
    holdout: float = 0.0
    # A diagnostic, not Algorithm 1: the slow layer groups' step size is lr * slow_lr_scale (1: h).
    # slow_lr_scale = k makes a drifting slow part move h per step, k times Algorithm 1's h/k (what
    # the authors' optimizer file does when given one step size for everything).
    slow_lr_scale: float = 1.0
    k: int = 1
    momentum: float = 0.9
    nesterov: bool = False  # SGD bases ("sgd", "multirate")
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW bases
    eps: float = 1e-8  # AdamW bases
    weight_decay: float = 0.0  # coupled L2 for the SGD bases, decoupled for the AdamW bases
    linear_drift: bool = True
    train: list[str] = field(default_factory=lambda: ["all"])  # module-name prefixes
    fast: list[str] = field(default_factory=lambda: ["fc"])  # module-name prefixes
    partition: str = "layerwise"
    slow_fraction: float = 0.5
    # random_subgroups: the slow entries zero on all k steps of their cycle (the paper's "during the
    # k fast steps" read literally), not on the k - 1 fast steps only; see multirate.Multirate
    zero_slow_every_step: bool = False
    schedule: str = "constant"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    eval_every: int = 1  # epochs
    device: str = "auto"
    results_dir: str = "results"
    wandb: str = "auto"
    wandb_project: str = "multirate"
    checkpoint: bool = True
    rerun: bool = False  # train again even if a finished run with this name exists
    variant: str = ""  # label of an ablation or sweep variant (W&B group); not part of the run's identity
    # --- reproducibility: intra-op threads (0: torch's default) and deterministic kernels
    threads: int = 0
    deterministic: bool = False
    # --- GPU speed options (the paper profile on CUDA); each keeps TrainStep's saving
    amp: str = "none"  # "none" | "bf16" | "fp16" | "auto": autocast dtype of the forward pass
    channels_last: bool = False  # CNNs: NHWC memory format
    compile: bool = False  # torch.compile the model
    cudnn_benchmark: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first field whose value is impossible."""
        check_fields(self)  # types, finite numbers, seeds: before any comparison below
        checks = [
            ("profile", self.profile in PROFILES, f"one of {PROFILES}"),
            ("optimizer", self.optimizer in OPTIMIZERS, f"one of {tuple(OPTIMIZERS)}"),
            ("partition", self.partition in PARTITIONS, f"one of {PARTITIONS}"),
            ("schedule", self.schedule in SCHEDULES, f"one of {SCHEDULES}"),
            ("wandb", self.wandb in WANDB_MODES, f"one of {WANDB_MODES}"),
            ("epochs", self.epochs >= 1, ">= 1"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("eval_every", self.eval_every >= 1, ">= 1"),
            ("lr_batch", self.lr_batch >= 0, ">= 0 (0: the lr is for batch_size itself)"),
            ("holdout", 0 <= self.holdout < 1, "in [0, 1) (0: train on the whole training set)"),
            ("slow_lr_scale", self.slow_lr_scale > 0 and (self.slow_lr_scale == 1
                                                          or self.optimizer.startswith("multirate")),
             "> 0, and 1 unless the optimizer is a multirate one"),
            ("zero_slow_every_step", not self.zero_slow_every_step or self.partition == "random_subgroups",
             "false unless partition = 'random_subgroups'"),
            ("gamma", self.gamma > 0, "> 0"),
            ("train", len(self.train) > 0, "a non-empty list"),
            ("threads", self.threads >= 0, ">= 0 (0: torch's default)"),
            ("amp", self.amp in AMP_MODES, f"one of {AMP_MODES}"),
            ("milestones", all(m >= 1 for m in self.milestones), "epochs >= 1"),
            ("device", re.fullmatch(r"auto|[a-z]+(:\d+)?", self.device) is not None,
             "auto, or a torch device such as cpu, cuda or cuda:1"),
        ]
        require(self, checks)
        self.check_hyperparameters()

    def check_hyperparameters(self) -> None:
        """The optimizer's own checks (multirate.check_hyperparameters) on this config's values, with
        the rate of its partition's groups; a refused value raises ValueError naming the field."""
        base = OPTIMIZERS[self.optimizer]
        rate = ELEMENTWISE.get(self.partition, "fast")
        values = {name: getattr(self, name) for name in BASES[base].hyperparameters}
        if "random" in BASES[base].optimizer.rates:  # the options of the elementwise partitions
            values.update(slow_fraction=self.slow_fraction, zero_slow_every_step=self.zero_slow_every_step)
        # A random group takes no drift: partition.random_subgroups sets linear_drift=False for it.
        drift = self.linear_drift and rate != "random"
        try:
            check_hyperparameters(base, rate=rate, lr=self.lr, k=self.k, linear_drift=drift, **values)
        except HyperparameterError as error:
            if error.key == "rate":
                raise ValueError(f"invalid partition={self.partition!r} with optimizer={self.optimizer!r}: "
                                 f"its groups' rate {rate!r} must be {error.requirement}") from None
            require(self, [(error.key, False, error.requirement)])

    @property
    def step_lr(self) -> float:
        """The step size the optimizer is built with: lr, scaled to batch_size when lr_batch is set."""
        return self.lr * self.batch_size / self.lr_batch if self.lr_batch else self.lr

    @property
    def run_name(self) -> str:
        """`{method}-seed{seed}-{hash8}`: a changed hyperparameter gives a new name."""
        defaults = {f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
                    for f in dataclasses.fields(self) if f.name in HASHED_IF_CHANGED}
        identity = {k: v for k, v in asdict(self).items()
                    if k not in NOT_HASHED and not (k in defaults and v == defaults[k])}
        blob = json.dumps(identity, sort_keys=True).encode()
        return f"{self.method}-seed{self.seed}-{hashlib.sha256(blob).hexdigest()[:8]}"

    @property
    def run_dir(self) -> Path:
        """Folder shared by all runs of this experiment and profile."""
        return Path(self.results_dir) / self.profile / self.experiment


def require(config, checks: list[tuple[str, bool, str]]) -> None:
    """Raise ValueError for the first (key, ok, requirement) of `checks` that is not ok, naming the
    key, its value and what it must be."""
    for key, ok, requirement in checks:
        if not ok:
            raise ValueError(f"invalid {key}={getattr(config, key)!r}: must be {requirement}")


def check_fields(config) -> None:
    """Raise ValueError naming the first field of dataclass `config` whose value does not have its
    declared type (an int is a float; a bool is not a number), is a number that is not finite (inf,
    nan: no run can use it), or is a seed (``seed``, ``seeds``, ``*_seed``) outside [0, MAX_SEED]."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value, typ = getattr(config, f.name), hints[f.name]
        if not _has_type(value, typ):
            raise ValueError(f"invalid {f.name}={value!r}: must be {_type_name(typ)}")
        numbers = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
            raise ValueError(f"invalid {f.name}={value!r}: must be a finite number")
        if (f.name in ("seed", "seeds") or f.name.endswith("_seed")) \
                and not all(0 <= v <= MAX_SEED for v in numbers if isinstance(v, int)):
            what = "integers" if isinstance(value, list) else "an integer"
            raise ValueError(f"invalid {f.name}={value!r}: must be {what} in [0, {MAX_SEED}]")


def _has_type(value: Any, typ: Any) -> bool:
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_has_type(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if typ is type(None):
        return value is None
    if typ is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if typ is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if typ in (bool, str, dict):
        return isinstance(value, typ)
    return True  # a type this check does not know: the field's own checks decide


def _type_name(typ: Any) -> str:
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is list:
        return f"a list of {_type_name(args[0])}"
    if origin is dict:
        return "a table"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
             dict: "a table", type(None): "none"}
    return names.get(typ, str(typ))


def parse_seeds(text: str) -> list[int]:
    """Comma-separated seeds (``--seeds 0,1,2``), each an integer in [0, MAX_SEED]; a UserError
    naming the first one that is not."""
    seeds = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        try:
            seed = int(item)
        except ValueError:
            seed = None
        if seed is None or not 0 <= seed <= MAX_SEED:
            raise UserError(f"--seeds {text}: seed {item!r} is not an integer in [0, {MAX_SEED}]")
        seeds.append(seed)
    if not seeds:
        raise UserError(f"--seeds {text!r}: no seed given; e.g. --seeds 0,1,2")
    return seeds


C = TypeVar("C", bound=RunConfig)


def _unknown(key: str, known: typing.Iterable[str], where: str) -> ValueError:
    close = difflib.get_close_matches(key, list(known), n=3)
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
    return ValueError(f"unknown config key {key!r} in {where}{hint}")


def convert(key: str, value: Any, typ: Any) -> Any:
    """Convert a TOML value or a command-line string to the field type `typ`.

    Strings parse as bool (true/false/1/0/yes/no), int, float, or comma-separated
    lists; native TOML values must already have the right type (an int is a valid float).
    """
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return convert(key, value, inner)
    if origin is list:
        if isinstance(value, str):
            value = [item.strip() for item in value.split(",") if item.strip()]
        if isinstance(value, list):
            return [convert(key, item, args[0]) for item in value]
    elif typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOLS:
            return _BOOLS[value.strip().lower()]
    elif typ in (int, float):
        if isinstance(value, str):
            try:
                return typ(value.strip())
            except ValueError:
                pass
        elif isinstance(value, int | float) and not isinstance(value, bool):
            if typ is float or isinstance(value, int):
                return typ(value)
    elif typ is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"config field {key!r} has unsupported type {typ!r}")
    name = getattr(typ, "__name__", str(typ))
    raise ValueError(f"cannot parse {key}={value!r} as {name}")


def read_toml(path: str | Path) -> dict:
    """A TOML file's tables; a malformed file raises ValueError naming it (tomllib's message does not)."""
    with open(path, "rb") as f:
        try:
            return tomllib.load(f)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{path} is not valid TOML: {err}") from None


def load_config(
    cls: type[C], toml_path: str | Path, profile: str, method: str, overrides: list[str] = (),
    layers: list[tuple[str, list[str]]] = (),
) -> C:
    """Build a `cls` from its dataclass defaults, the TOML file, the profile table, the method
    table, the profile's table for the method (``[quick.methods.X]``), named `layers` of
    `key=value` overrides (``(where, overrides)`` pairs, e.g. a sweep file's ``[fixed]`` table)
    and the command line's `overrides`, later ones winning.

    Unknown keys, unparsable values and impossible values raise ValueError naming the key (and the
    layer or file it came from).
    """
    toml_path = Path(toml_path)
    data = read_toml(toml_path)
    fields = {f.name for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)

    for key, value in data.items():
        if isinstance(value, dict) and key not in _TABLES:
            raise _unknown(key, [*fields, *_TABLES], f"{toml_path} (table)")
    if profile not in PROFILES:
        raise ValueError(f"invalid profile={profile!r}: must be one of {PROFILES}")
    methods = data.get("methods", {})
    if methods and method not in methods:
        raise ValueError(f"unknown method {method!r}: {toml_path} defines {sorted(methods)}")

    def parsed(items):
        pairs = {}
        for item in items:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"override {item!r} is not of the form key=value")
            pairs[key.strip()] = value
        return pairs

    # A profile's own settings for a method ([quick.methods.X]: e.g. the step size the comparison
    # protocol chose for that profile) win over the method table.
    profile_methods = data.get(profile, {}).get("methods", {})
    for name in profile_methods:
        if name not in methods:
            raise ValueError(f"[{profile}.methods.{name}] in {toml_path}: no such method; "
                             f"[methods.*] defines {sorted(methods)}")
    tables = [
        (f"{toml_path} (top level)", {k: v for k, v in data.items() if k not in _TABLES}),
        (f"{toml_path} [{profile}]", {k: v for k, v in data.get(profile, {}).items() if k != "methods"}),
        (f"{toml_path} [methods.{method}]", methods.get(method, {})),
        (f"{toml_path} [{profile}.methods.{method}]", profile_methods.get(method, {})),
        *((where, parsed(items)) for where, items in layers),
        ("command line", parsed(overrides)),
    ]
    values: dict[str, Any] = {"experiment": toml_path.stem}
    for where, layer in tables:
        for key, value in layer.items():
            if key in _RESERVED:
                raise ValueError(f"{key!r} in {where}: choose it with {_RESERVED[key]}")
            if key not in fields:
                raise _unknown(key, fields, where)
            values[key] = convert(key, value, hints[key])
    return cls(**values, profile=profile, method=method)


def experiment_config(module) -> tuple[type[RunConfig], Path]:
    """The config class and TOML file of an experiment module: its `TOML` and the RunConfig
    subclass it defines (RunConfig itself if it defines none)."""
    classes = [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, RunConfig)
               and v.__module__ == module.__name__]
    if len(classes) > 1 or not hasattr(module, "TOML"):
        raise ValueError(f"{module.__name__}: an experiment module defines TOML and at most one "
                         f"RunConfig subclass; found {[c.__name__ for c in classes]}")
    return (classes[0] if classes else RunConfig), Path(module.TOML)


def list_methods(toml_path: str | Path) -> list[str]:
    """The method names a TOML file defines under `[methods.*]` (may be empty)."""
    return list(read_toml(toml_path).get("methods", {}))


class CommandLine(NamedTuple):
    """An experiment's command line: methods/seeds are None when not given."""
    profile: str
    methods: list[str] | None
    seeds: list[int] | None
    overrides: list[str]
    skip_running: bool = False


def parse_cli(argv: list[str] | None = None, config_cls: type[RunConfig] | None = None,
              toml_path: str | Path | None = None) -> CommandLine:
    """Parse `[--profile P] [--method a,b] [--seeds 0,1,2] [--skip-running] [key=value ...]`.
    `--help` lists the methods of `toml_path` and every field of `config_cls` with its default
    (`cli_help`); without them, those of the ``__main__`` module when it is an experiment
    (``python -m experiments.X``: it defines TOML).
    """
    if config_cls is None or toml_path is None:
        main = sys.modules.get("__main__")
        with contextlib.suppress(ValueError):  # not an experiment module: the generic help
            config_cls, toml_path = experiment_config(main)
    first = Path(toml_path).read_text().partition("\n")[0] if toml_path is not None else ""
    parser = argparse.ArgumentParser(
        prog=f"python -m {sys.modules['__main__'].__spec__.name}" if _run_as_module() else None,
        description=(first.lstrip("#").strip() + "\n" if first.startswith("#") else "")
        + "Runs the experiment for each method x seed.",
        epilog=(cli_help(config_cls, toml_path) if config_cls is not None and toml_path is not None
                else "key=value overrides any config field, e.g. lr=0.05 train=layer4,fc"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--profile", default="quick", choices=PROFILES)
    parser.add_argument("--method", default=None, help="comma-separated method names (default: all)")
    parser.add_argument("--seeds", default=None,
                        help="comma-separated integer seeds (default: the config's seed)")
    parser.add_argument("--skip-running", action="store_true",
                        help="leave a run that another process is training to it and go on to the next: "
                             "processes given the same runs then share them out (make fig-transfer runs two)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="set a config key (listed below), e.g. lr=0.05 train=layer4,fc")
    args = parser.parse_intermixed_args(argv)
    methods, seeds = run_selection(parser, args)
    return CommandLine(args.profile, methods, seeds, list(args.overrides), args.skip_running)


def _run_as_module() -> bool:
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec is not None and bool(spec.name)


def _cli_value(value: Any) -> str:
    """A value as a `key=value` override writes it: lists comma-joined, booleans lower case."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(map(_cli_value, value)) if value else "(empty)"
    return '""' if value == "" else str(value)


def method_descriptions(toml_path: str | Path) -> dict[str, str]:
    """One line per `[methods.x]` table of a TOML file: the comment lines directly above its header
    (joined), else the comment on the header line, else its settings as key=value."""
    text = Path(toml_path).read_text()
    methods = read_toml(toml_path).get("methods", {})
    comments, above = {}, []
    for line in text.splitlines():
        stripped = line.strip()
        header = re.fullmatch(r"\[methods\.(\"?)([^\]\"]+)\1\]\s*(?:#\s*(.*))?", stripped)
        if header:
            comments[header[2]] = " ".join(above) or (header[3] or "").strip()
        above = [*above, stripped.lstrip("#").strip()] if stripped.startswith("#") else []
    return {name: comments.get(name) or " ".join(f"{k}={_cli_value(v)}" for k, v in table.items())
            or "the experiment's settings, unchanged" for name, table in methods.items()}


def cli_help(config_cls: type[RunConfig], toml_path: str | Path) -> str:
    """The `--help` text after the arguments: the TOML's methods, one line each, and every config
    key with its default: the TOML's top-level value (else the dataclass default), then what each
    profile table sets instead."""
    data = read_toml(toml_path)
    shown_path = os.path.relpath(toml_path) if Path(toml_path).is_absolute() else toml_path
    lines = [f"methods ({shown_path}; --method picks some, default: all):"]
    descriptions = method_descriptions(toml_path)
    width = max(map(len, descriptions), default=0) + 2
    lines += [f"  {name:<{width}}{text}" for name, text in descriptions.items()]
    lines += ["", "config keys (key=value overrides any; default, then the profiles that change it):"]
    values = {"experiment": Path(toml_path).stem, **{k: v for k, v in data.items() if k not in _TABLES}}
    width = max(len(f.name) for f in dataclasses.fields(config_cls)) + 2
    for f in dataclasses.fields(config_cls):
        if f.name in _RESERVED:
            continue
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        shown = _cli_value(values.get(f.name, default))
        per_profile = [f"{p}: {_cli_value(data[p][f.name])}" for p in PROFILES if f.name in data.get(p, {})]
        lines.append(f"  {f.name:<{width}}{shown}" + (f"  ({', '.join(per_profile)})" if per_profile else ""))
    return "\n".join(lines)


def run_selection(parser: argparse.ArgumentParser, args: argparse.Namespace
                  ) -> tuple[list[str] | None, list[int] | None]:
    """`args.method` and `args.seeds` as lists (None when not given), after checking them and
    `args.overrides`; a malformed value is a `parser.error`."""
    methods = [m.strip() for m in args.method.split(",") if m.strip()] if args.method else None
    seeds = None if args.seeds is None else parse_seeds(args.seeds)
    for item in args.overrides:
        if "=" not in item:
            parser.error(f"override {item!r} is not of the form key=value")
    return methods, seeds
