"""Config loading: precedence, parsing, validation, run names, CLI."""

import re
from dataclasses import dataclass, field, replace

import pytest

from experiments.core.config import MAX_SEED, RunConfig, list_methods, load_config, parse_cli
from experiments.core.errors import UserError

TOML = """
lr = 0.2
epochs = 20
momentum = 0.5

[quick]
epochs = 3
batch_size = 16

[paper]
epochs = 50

[methods.train_all]

[methods.multirate]
optimizer = "multirate"
k = 5
batch_size = 8
"""


@dataclass
class SubConfig(RunConfig):
    image_size: int = 32
    layers: list[int] = field(default_factory=lambda: [1, 2])
    note: str | None = None


@pytest.fixture
def toml(tmp_path):
    path = tmp_path / "blobs.toml"
    path.write_text(TOML)
    return path


def write(tmp_path, text, name="exp.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_precedence(toml):
    cfg = load_config(RunConfig, toml, "quick", "multirate", ["k=7"])
    assert cfg.momentum == 0.5  # top level over dataclass default 0.9
    assert cfg.lr == 0.2
    assert cfg.epochs == 3  # profile over top level
    assert cfg.batch_size == 8  # method over profile
    assert cfg.optimizer == "multirate"
    assert cfg.k == 7  # command line over method
    assert cfg.weight_decay == RunConfig.weight_decay  # untouched default
    assert (cfg.profile, cfg.method, cfg.experiment) == ("quick", "multirate", "blobs")

    paper = load_config(RunConfig, toml, "paper", "train_all", [])
    assert (paper.epochs, paper.batch_size, paper.k, paper.optimizer) == (50, 128, 1, "sgd")


def test_experiment_name_from_file_unless_set(tmp_path):
    assert load_config(RunConfig, write(tmp_path, ""), "quick", "m").experiment == "exp"
    path = write(tmp_path, 'experiment = "transfer"')
    assert load_config(RunConfig, path, "quick", "m").experiment == "transfer"


@pytest.mark.parametrize("override, key, expected", [
    ("linear_drift=false", "linear_drift", False),
    ("linear_drift=TRUE", "linear_drift", True),
    ("linear_drift=0", "linear_drift", False),
    ("linear_drift=1", "linear_drift", True),
    ("k=4", "k", 4),
    ("lr=1e-3", "lr", 1e-3),
    ("lr=2", "lr", 2.0),
    ("wandb_project=my-proj", "wandb_project", "my-proj"),
    ("train=layer4, fc", "train", ["layer4", "fc"]),
    ("fast=fc", "fast", ["fc"]),
    ("milestones=30,40", "milestones", [30, 40]),
    ("milestones=", "milestones", []),
    ("image_size=64", "image_size", 64),
    ("layers=3", "layers", [3]),
    ("note=hello=world", "note", "hello=world"),
    ("note=none", "note", None),
])
def test_cli_override_types(tmp_path, override, key, expected):
    cfg = load_config(SubConfig, write(tmp_path, ""), "quick", "m", [override])
    value = getattr(cfg, key)
    assert value == expected and type(value) is type(expected)


def test_toml_values_typed(tmp_path):
    text = "lr = 1\nmilestones = [3, 4]\ntrain = ['fc']\nlinear_drift = false\nimage_size = 8"
    path = write(tmp_path, text)
    cfg = load_config(SubConfig, path, "quick", "m")
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert (cfg.milestones, cfg.train, cfg.linear_drift, cfg.image_size) == ([3, 4], ["fc"], False, 8)


@pytest.mark.parametrize("text, overrides, where", [
    ("epoch = 3", [], "top level"),
    ("[quick]\nbatchsize = 3", [], "[quick]"),
    ("[methods.m]\nepoch = 3", [], "[methods.m]"),
    ("", ["epoch=3"], "command line"),
])
def test_unknown_key_names_it_and_suggests(tmp_path, text, overrides, where):
    with pytest.raises(ValueError) as err:
        load_config(RunConfig, write(tmp_path, text), "quick", "m", overrides)
    message = str(err.value)
    assert "unknown config key" in message and where in message
    assert "epochs" in message or "batch_size" in message  # the suggestion


def test_unknown_table_and_method(tmp_path, toml):
    with pytest.raises(ValueError, match="quik"):
        load_config(RunConfig, write(tmp_path, "[quik]\nepochs = 1"), "quick", "m")
    with pytest.raises(ValueError, match="multirat'.*multirate"):
        load_config(RunConfig, toml, "quick", "multirat")


@pytest.mark.parametrize("text, overrides, key", [
    ("", ["k=abc"], "k"),
    ("", ["k=2.5"], "k"),
    ("", ["lr=fast"], "lr"),
    ("", ["linear_drift=maybe"], "linear_drift"),
    ("", ["milestones=1,x"], "milestones"),
    ('k = "five"', [], "k"),
    ("k = 2.5", [], "k"),
    ("epochs = true", [], "epochs"),
    ('train = "fc"\nseed = [1]', [], "seed"),
    ("", ["noequals"], "noequals"),
])
def test_bad_value_names_key(tmp_path, text, overrides, key):
    with pytest.raises(ValueError, match=re.escape(key)):
        load_config(RunConfig, write(tmp_path, text), "quick", "m", overrides)


@pytest.mark.parametrize("override, key", [
    ("k=0", "k"), ("lr=-0.1", "lr"), ("lr=nan", "lr"), ("epochs=0", "epochs"),
    ("batch_size=0", "batch_size"), ("optimizer=adam", "optimizer"), ("schedule=linear", "schedule"),
    ("wandb=maybe", "wandb"), ("eval_every=0", "eval_every"), ("slow_fraction=1.5", "slow_fraction"),
    ("train=", "train"), ("momentum=1.5", "momentum"), ("momentum=1", "momentum"),
    ("lr_batch=-1", "lr_batch"),
])
def test_impossible_values(tmp_path, override, key):
    with pytest.raises(ValueError, match=f"invalid {key}="):
        load_config(RunConfig, write(tmp_path, ""), "quick", "m", [override])


def test_profile_and_method_are_arguments(tmp_path):
    with pytest.raises(ValueError, match="profile"):
        load_config(RunConfig, write(tmp_path, ""), "medium", "m")
    with pytest.raises(ValueError, match="--profile"):
        load_config(RunConfig, write(tmp_path, 'profile = "paper"'), "quick", "m")
    with pytest.raises(ValueError, match="--method"):
        load_config(RunConfig, write(tmp_path, ""), "quick", "m", ["method=x"])
    with pytest.raises(ValueError, match="profile"):
        RunConfig(profile="full")


def test_run_name(toml):
    a = load_config(RunConfig, toml, "quick", "multirate", ["seed=3"])
    assert a.run_name == load_config(RunConfig, toml, "quick", "multirate", ["seed=3"]).run_name
    assert re.fullmatch(r"multirate-seed3-[0-9a-f]{8}", a.run_name)
    for changed in ["lr=0.3", "k=2", "train=fc", "seed=4", "momentum=0.6"]:
        other = load_config(RunConfig, toml, "quick", "multirate", ["seed=3", changed])
        assert other.run_name != a.run_name, changed
    for same in ["results_dir=elsewhere", "device=cuda", "wandb=disabled"]:
        other = load_config(RunConfig, toml, "quick", "multirate", ["seed=3", same])
        assert other.run_name == a.run_name, same
    assert replace(a, lr=a.lr).run_name == a.run_name


def test_lr_batch_scales_the_step_size_by_the_linear_rule(toml):
    from collections import OrderedDict

    from torch import nn

    from experiments.core.optimizers import build_optimizer

    plain = load_config(RunConfig, toml, "quick", "train_all", ["lr=0.1", "batch_size=8"])
    assert plain.step_lr == 0.1  # lr_batch = 0: the lr is batch_size's own, unchanged to the bit
    scaled = replace(plain, lr_batch=128)
    assert scaled.step_lr == 0.1 * 8 / 128 and scaled.run_name != plain.run_name
    for optimizer in ("sgd", "multirate", "adamw", "multirate_adamw"):
        cfg = replace(scaled, optimizer=optimizer, k=5)
        model = nn.Sequential(OrderedDict(body=nn.Linear(2, 2), fc=nn.Linear(2, 2)))
        assert {g["lr"] for g in build_optimizer(cfg, model).param_groups} == {0.1 * 8 / 128}, optimizer


def test_run_dir(toml):
    cfg = load_config(RunConfig, toml, "paper", "train_all", ["results_dir=out"])
    assert str(cfg.run_dir) == "out/paper/blobs"


def test_list_methods(toml, tmp_path):
    assert list_methods(toml) == ["train_all", "multirate"]
    assert list_methods(write(tmp_path, "")) == []


def test_parse_cli():
    assert parse_cli([]) == ("quick", None, None, [], False)
    assert parse_cli(["--profile", "paper", "--method", "a,b", "--seeds", "0,1,2", "lr=0.1", "k=3"]) == (
        "paper", ["a", "b"], [0, 1, 2], ["lr=0.1", "k=3"], False)
    assert parse_cli(["lr=0.1", "--seeds", "5", "--skip-running", "k=3"]) == (
        "quick", None, [5], ["lr=0.1", "k=3"], True)


@pytest.mark.parametrize("argv", [["--profile", "full"], ["lr"]])
def test_parse_cli_errors(argv, capsys):
    with pytest.raises(SystemExit):
        parse_cli(argv)


@pytest.mark.parametrize("seeds, bad", [("a", "'a'"), ("0,-1", "'-1'"), ("0,1.5", "'1.5'"),
                                        ("7,99999999999999999999999", "'99999999999999999999999'"),
                                        (",", "no seed")])
def test_seeds_are_checked_when_parsed_naming_the_seed(seeds, bad):
    """--seeds 0,-1 fails before seed 0 trains, naming -1; a seed too large for the generators is
    refused in one line, not an overflow in the middle of a run."""
    with pytest.raises(UserError, match=re.escape(bad)) as err:
        parse_cli(["--seeds", seeds])
    assert "\n" not in str(err.value) and "--seeds" in str(err.value)


def test_a_named_layer_is_named_in_errors(tmp_path):
    """A sweep's [fixed] table passes its overrides as a named layer, so a typo there is reported as
    that table, not as the command line."""
    path = write(tmp_path, "")
    fixed = ("sweeps/lr.toml [fixed]", ["epochs=2", "lr=0.3"])
    cfg = load_config(RunConfig, path, "quick", "m", ["lr=0.4"], layers=[fixed])
    assert (cfg.epochs, cfg.lr) == (2, 0.4)  # the command line still wins
    where = "'epoch' in sweeps/lr.toml [fixed]; did you mean 'epochs'"
    with pytest.raises(ValueError, match=re.escape(where)):
        load_config(RunConfig, path, "quick", "m", [], layers=[("sweeps/lr.toml [fixed]", ["epoch=2"])])


def test_a_malformed_toml_names_the_file(tmp_path):
    path = write(tmp_path, "lr = 0.1\n[quick\n")
    with pytest.raises(ValueError, match=re.escape(f"{path} is not valid TOML")):
        load_config(RunConfig, path, "quick", "m")


@pytest.mark.parametrize("override, key", [
    ("lr=inf", "lr"), ("weight_decay=inf", "weight_decay"), ("weight_decay=nan", "weight_decay"),
    ("momentum=nan", "momentum"), ("gamma=inf", "gamma"), ("betas=0.9,nan", "betas"), ("eps=inf", "eps"),
    ("slow_fraction=-inf", "slow_fraction"),
])
def test_numbers_that_are_not_finite_are_refused(tmp_path, override, key):
    """inf passes a `>= 0` check but no run can use it: it trained, diverged and was recorded."""
    with pytest.raises(ValueError, match=f"invalid {key}=.*must be a finite number"):
        load_config(RunConfig, write(tmp_path, ""), "quick", "m", [override])


@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1, 2**64])
def test_seeds_out_of_range_are_refused_naming_the_range(tmp_path, seed):
    message = f"invalid seed={seed}: must be an integer in [0, {MAX_SEED}]"
    with pytest.raises(ValueError, match=re.escape(message)):
        load_config(RunConfig, write(tmp_path, ""), "quick", "m", [f"seed={seed}"])
    assert load_config(RunConfig, write(tmp_path, ""), "quick", "m", [f"seed={MAX_SEED}"]).seed == MAX_SEED


def test_every_seed_field_is_checked():
    @dataclass
    class WithSeeds(RunConfig):
        data_seed: int = 0

    with pytest.raises(ValueError, match="invalid data_seed=-3"):
        WithSeeds(data_seed=-3)


@pytest.mark.parametrize("kwargs, message", [
    ({"lr": "0.1"}, "invalid lr='0.1': must be a number"),
    ({"epochs": 2.0}, "invalid epochs=2.0: must be an integer"),
    ({"epochs": True}, "invalid epochs=True: must be an integer"),
    ({"rerun": 1}, "invalid rerun=1: must be true or false"),
    ({"train": "all"}, "invalid train='all': must be a list of a string"),
    ({"milestones": [3, 0]}, "invalid milestones=[3, 0]: must be epochs >= 1"),
    ({"device": "cuda one"}, "invalid device='cuda one'"),
])
def test_a_config_built_in_code_has_its_types_checked(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        RunConfig(**kwargs)


def test_amp_auto_is_allowed_and_keeps_the_default_out_of_run_names():
    """amp = "auto" is resolved by the device when the run starts (experiments.core.accel); the default
    ("none") stays out of the hash, so the quick and cpu profiles' runs keep their names."""
    assert RunConfig(amp="auto").amp == "auto"
    assert RunConfig(amp="auto").run_name != RunConfig().run_name
    assert RunConfig(amp="none").run_name == RunConfig().run_name
