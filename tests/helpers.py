"""Helpers that several test files share (so that no test file imports another).

- `Blobs` (with its `Net`), `make_cfg`, `MULTIRATE`: the runner's tiny real task, four Gaussian
  clusters in 8-D, trained in a second or so; `write_toml` writes its experiment TOML (methods
  train_all and multirate) for tests that run it through ``runner.main`` in a child process.
- `TRANSFER_TINY`: overrides that make the transfer experiment's quick profile a test-sized run.
- `write_toy_experiment`: a whole experiment module (a two-layer net fitting a smooth function) and
  its TOML, for tests that run a new experiment through the registry or a sweep.
- `register_ablation`: an ablation added to an experiment's registry entry for one test.
- `small_net`, `batches`, `train`, `assert_lockstep`, `quadratic_grads`, `cycle_reference`,
  `heavy_ball`, `algorithm_1`: the optimizer tests' networks, data, loop and references.

Child processes import this module as ``helpers`` (they put ``tests/`` on ``sys.path``).
"""

import copy
import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from experiments.core import registry
from experiments.core.config import RunConfig
from experiments.core.runner import Task


class Net(nn.Module):
    def __init__(self, dim=8, hidden=32, classes=4):
        super().__init__()
        # Dropout draws from the global torch RNG, so resume must restore it.
        self.body = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(0.1),
                                  nn.Linear(hidden, hidden), nn.ReLU())
        self.fc = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.fc(self.body(x))


class Blobs(Task):
    """Four Gaussian clusters in 8-D; 256 training points, 8 minibatches of 32 per epoch."""

    def __init__(self, cfg=None):
        super().__init__(cfg)
        self.loss_calls = 0

    def data(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        centres = 2.0 * torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
        y = torch.arange(n) % 4
        return centres[y] + torch.randn(n, 8, generator=g), y

    def build_model(self):
        model = Net()
        self.initial = copy.deepcopy(model.state_dict())
        return model

    def train_tensors(self, device):
        return tuple(t.to(device) for t in self.data(256, seed=1))

    def batch(self, tensors, generator):
        x, y = tensors  # noise augmentation: exercises the augmentation generator
        return x + 0.1 * torch.randn(x.shape, generator=generator, device=x.device), y

    def loss(self, model, batch):
        self.loss_calls += 1
        x, y = batch
        return F.cross_entropy(model(x), y)

    def evaluate(self, model, device):
        x, y = (t.to(device) for t in self.data(200, seed=2))
        logits = model(x)
        return {"accuracy": (logits.argmax(1) == y).float().mean().item(),
                "test_loss": F.cross_entropy(logits, y).item()}


def make_cfg(tmp_path, **kw):
    base = dict(experiment="blobs", results_dir=str(tmp_path), epochs=4, batch_size=32, lr=0.05,
                momentum=0.9, wandb="disabled", device="cpu")
    return RunConfig(**{**base, **kw})


MULTIRATE = dict(optimizer="multirate", k=3, fast=["fc"])


def write_toml(path):
    path.write_text('experiment = "blobs"\nbatch_size = 32\nlr = 0.05\nwandb = "disabled"\ndevice = "cpu"\n'
                    "[quick]\nepochs = 4\n[methods.train_all]\n"
                    '[methods.multirate]\noptimizer = "multirate"\nk = 3\n')
    return path


# A transfer network and data sets small enough for a test: a few hundred milliseconds per run.
# Regularisation tasks small enough for a test
LM_TINY = ["d_model=8", "n_heads=2", "d_ff=16", "n_layers=1", "seq_len=8", "vocab_size=12", "branching=3",
           "chain_len=40", "train_tokens=400", "valid_tokens=200", "test_tokens=200", "eval_batch_size=4",
           "batch_size=8", "epochs=2", "wandb=disabled", "device=cpu", "checkpoint=false"]
MLP_TINY = ["hidden=16", "image_size=8", "classes=3", "prototypes=2", "n_train=64", "n_test=32",
            "batch_size=16", "epochs=2", "eval_batch_size=10", "wandb=disabled", "device=cpu",
            "checkpoint=false"]
TRANSFER_TINY = ["widths=4,8,8,8", "blocks=1,1,1,1", "target_train=64", "target_test=32", "source_train=64",
                 "source_test=32", "pretrain_epochs=1", "pretrain_batch_size=32", "batch_size=32", "epochs=1",
                 "eval_batch_size=16", "wandb=disabled", "device=cpu"]


# ----------------------------------------------------------------------------- a toy experiment module

TOY_EXPERIMENT = '''
"""A toy experiment: a two-layer net fitting a smooth function; BUILT lists the runs it built."""
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from experiments.core import runner
from experiments.core import registry
from experiments.core.config import RunConfig

TOML = Path(__file__).with_suffix(".toml")
BUILT = []


@dataclass
class ToyConfig(RunConfig):
    n: int = 64


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.fc = nn.Linear(4, 8), nn.Linear(8, 1)

    def forward(self, x):
        return self.fc(torch.tanh(self.body(x)))


class Toy(runner.Task):
    def data(self, n, seed):
        x = torch.randn(n, 4, generator=torch.Generator().manual_seed(seed))
        return x, x.sum(1, keepdim=True).sin()

    def build_model(self):
        BUILT.append(self.cfg.run_name)
        return Net()

    def train_tensors(self, device):
        return self.data(self.cfg.n, 1)

    def loss(self, model, batch):
        x, y = batch
        return F.mse_loss(model(x), y)

    def evaluate(self, model, device):
        x, y = self.data(100, 2)
        return {"test_loss": F.mse_loss(model(x), y).item()}


def main(argv=None):
    return runner.main(argv, ToyConfig, TOML, Toy)


if __name__ == "__main__":
    main()
'''


def write_toy_experiment(folder: Path, module: str, toml: str) -> None:
    """`module`.py (TOY_EXPERIMENT, importable once `folder` is on sys.path) and `module`.toml."""
    (folder / f"{module}.py").write_text(TOY_EXPERIMENT)
    (folder / f"{module}.toml").write_text(toml)


# ----------------------------------------------------------------------------- optimizer tests

def small_net(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))
    return net.to(dtype)


def batches(n=12, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 6, generator=g, dtype=dtype), torch.randint(0, 3, (8,), generator=g))
            for _ in range(n)]


def train(model, opt, data, closure_per_step=None):
    for x, y in data:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if closure_per_step:
            closure_per_step()


def assert_lockstep(make_optimizer, steps_before_save, dtype=torch.float32):
    """Train, save, load into a fresh copy, then step both and compare at every step."""
    data = batches(n=20, dtype=dtype)
    net = small_net(dtype=dtype)
    opt = make_optimizer(net)
    train(net, opt, data[:steps_before_save])

    net2 = small_net(seed=1, dtype=dtype)
    net2.load_state_dict(copy.deepcopy(net.state_dict()))
    opt2 = make_optimizer(net2)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert opt2.is_slow_step == opt.is_slow_step
    for batch in data[steps_before_save:]:
        train(net, opt, [batch])
        train(net2, opt2, [batch])
        for a, b in zip(net.parameters(), net2.parameters()):
            assert torch.equal(a, b)


def quadratic_grads(seed, n=5):
    """Minibatch losses 0.5 * |A_t [s; f] - b_t|^2 with a fresh A_t, b_t per step t."""
    g = torch.Generator().manual_seed(seed)
    mats = [(torch.randn(2 * n, 2 * n, generator=g, dtype=torch.float64) / n,
             torch.randn(2 * n, generator=g, dtype=torch.float64)) for _ in range(100)]

    def grad_fn(t, s, f):
        a, b = mats[t]
        grad = a.T @ (a @ torch.cat([s, f]) - b)
        return grad[:n], grad[n:]
    return grad_fn


def cycle_reference(theta_s, theta_f, grad_fn, h, k, cycles, drift, base):
    """The multirate cycle written out, as a reference (grad_fn(t, s, f) -> g_s, g_f).

    ``base()`` makes the direction of one parameter, ``direction(g, theta) -> d``, holding that
    parameter's state (momentum, moments): the slow part's is taken once per cycle, on the
    cycle's first gradient, and frozen; the fast part's on every step. Without drift the slow jump
    comes after the cycle's first gradient evaluation, so that one backward pass on the cycle's
    first minibatch serves both parts (the optimizer's contract).
    """
    slow_direction, fast_direction, t = base(), base(), 0
    for _ in range(cycles):
        g_s, _ = grad_fn(t, theta_s, theta_f)
        d_s = slow_direction(g_s, theta_s)
        for i in range(k):
            _, g_f = grad_fn(t, theta_s, theta_f)
            theta_f = theta_f - h / k * fast_direction(g_f, theta_f)
            if drift:
                theta_s = theta_s - h / k * d_s
            elif i == 0:
                theta_s = theta_s - h * d_s
            t += 1
    return theta_s, theta_f


def heavy_ball(mu, wd):
    """``base`` of `cycle_reference` for the SGD base: p <- mu p + g + wd theta, direction p."""
    def base():
        p = 0.0

        def direction(g, theta):
            nonlocal p
            p = mu * p + g + wd * theta
            return p
        return direction
    return base


def algorithm_1(theta_s, theta_f, grad_fn, h, k, mu, wd, cycles, drift):
    """Algorithm 1 of the paper in cycle form: `cycle_reference` with heavy-ball momentum."""
    return cycle_reference(theta_s, theta_f, grad_fn, h, k, cycles, drift, heavy_ball(mu, wd))


def register_ablation(monkeypatch, name: str, variants: list, experiment: str = "transfer") -> None:
    """Add ablation `name` (its `variants`) to `experiment`'s registry entry, for one test."""
    entry = registry.EXPERIMENTS[experiment]
    monkeypatch.setitem(registry.EXPERIMENTS, experiment,
                        dataclasses.replace(entry, ablations={**entry.ablations, name: variants}))
