"""Patch-augmented data (Li, Wei & Ma 2019), the WideResNet-16 and the patch experiment end to end."""

import math

import pytest
import torch

from experiments.core.config import list_methods, load_config
from experiments.core.runner import run
from experiments.patch import (
    GENERATED_CLASSES,
    TOML,
    PatchConfig,
    PatchTask,
    WideResNet,
    apply_patches,
    assign_patched,
    generated_images,
    make_patches,
)
from figures import patch as patch_figure
from tests.test_data import make_cifar10

TINY = ["widen_factor=1", "gen_train=64", "gen_test=32", "patch_only_test=20", "batch_size=32", "epochs=2",
        "eval_batch_size=16", "wandb=disabled", "device=cpu"]


def patches(seed=0, classes=10, image_size=32):
    return make_patches(classes, image_size, 7, 1.25, 0.1, torch.Generator().manual_seed(seed))


def quick_cfg(tmp_path, method="small_lr", *overrides):
    return load_config(PatchConfig, TOML, "quick", method, [f"results_dir={tmp_path / 'results'}", *TINY,
                                                           *overrides])


# ----------------------------------------------------------------------------- the patch construction

def within(share, p, n):
    """share is p up to four standard errors of a mean of n Bernoulli(p) draws"""
    return abs(share - p) < 4 * math.sqrt(p * (1 - p) / n)


def kinds_of(out, images, p):
    """Per image: clean (patch region untouched), patch-only (zero outside the patch) or patched."""
    top, size = p.top, p.size
    region = (slice(None), slice(None), slice(top, top + size), slice(top, top + size))
    clean = (out[region] == images[region]).flatten(1).all(1)
    outside = out.clone()
    outside[region] = 0
    only = ~clean & (outside == 0).flatten(1).all(1)
    return clean, only, ~clean & ~only


def test_patched_images_are_fixed_once_and_patch_only_is_drawn_on_every_access():
    # Li et al.: FixedAugmentDataset fixes which images are patched (80 %); PatchAugmentFixed draws
    # patch-only (20 % of those) on every access: 20/64/16 per access, and no image is patch-only for good.
    n = 20_000
    patched = assign_patched(n, 0.8, torch.Generator().manual_seed(0))
    assert within(patched.float().mean().item(), 0.8, n)
    assert torch.equal(patched, assign_patched(n, 0.8, torch.Generator().manual_seed(0)))
    p = patches(image_size=16)
    images = torch.rand(n, 3, 16, 16) + 0.5  # never 0, so a zeroed image is patch-only
    labels = torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    accesses = [kinds_of(apply_patches(images, labels, patched, p, 0.2, 1.75, g), images, p)
                for _ in range(4)]
    for clean, only, both in accesses:
        assert torch.equal(clean, ~patched)  # unpatched images stay clean on every access
        for share, target in ((clean, 0.2), (both, 0.64), (only, 0.16)):
            assert within(share.float().mean().item(), target, n)
    only_count = sum(only.int() for _, only, _ in accesses)
    # Redrawn per access: a patched image is patch-only on k of 4 accesses, k ~ Binomial(4, 0.2)
    assert within((only_count[patched] == 4).float().mean().item(), 0.2 ** 4, n)
    assert within((only_count[patched] == 0).float().mean().item(), 0.8 ** 4, n)


def test_evaluation_mixtures_are_li_et_als(tmp_path):
    # "With patch": the test set through the training construction (20/64/16); patch-only: zero images
    # through the same draw (80 % z + s zeta_y, 20 % z + s 1.75 u zeta_y).
    cfg = quick_cfg(tmp_path, "small_lr", "gen_test=4000", "patch_only_test=4000")
    d = PatchTask(cfg).data()
    p = d["patches"]
    clean_images = d["eval"]["clean"][0]
    clean, only, both = kinds_of(d["eval"]["patched"][0], clean_images, p)
    for share, target in ((clean, 0.2), (both, 0.64), (only, 0.16)):
        assert within(share.float().mean().item(), target, 4000)
    images, labels = d["eval"]["patch_only"]
    top, size = p.top, p.size
    delta = (images[:, :, top:top + size, top:top + size] - p.z).flatten(1)
    zeta = p.zeta[labels].flatten(1)
    c = (delta * zeta).sum(1) / (zeta * zeta).sum(1)  # patch = z + c zeta_y
    torch.testing.assert_close(delta, c.unsqueeze(1) * zeta, atol=1e-5, rtol=0)
    unit = (c.abs() - 1).abs() < 1e-4
    assert within(unit.float().mean().item(), 0.8, 4000)  # |c| = 1: not patch-only (1.75 u = 1 has no mass)
    assert c.abs().max() <= 1.75 + 1e-5 and (~unit & (c.abs() > 1.2)).any()
    outside = images.clone()
    outside[:, :, top:top + size, top:top + size] = 0
    assert torch.all(outside == 0)


def test_patterns_are_determined_by_the_seed():
    a, b, c = patches(0), patches(0), patches(1)
    assert torch.equal(a.z, b.z) and torch.equal(a.zeta, b.zeta)
    assert not torch.equal(a.z, c.z) and not torch.equal(a.zeta, c.zeta)
    assert a.z.shape == (3, 7, 7) and a.zeta.shape == (10, 3, 7, 7)
    assert a.zeta.abs().max() <= 0.1 and a.zeta.abs().max() > 0.09  # U[-0.1, 0.1]
    assert a.z.std().item() == pytest.approx(1.25, rel=0.25)  # 147 draws of 1.25 N(0, 1)
    # Every class has its own pattern.
    flat = a.zeta.flatten(1)
    assert torch.cdist(flat, flat).add(torch.eye(10)).min() > 0.1


def test_patch_location_and_size():
    p = patches()
    assert p.top == 12 and p.size == 7  # rows and columns 12-18 of 32
    images = torch.randn(8, 3, 32, 32)
    labels = torch.arange(8)
    out = apply_patches(images, labels, torch.ones(8, dtype=torch.bool), p, 0.0, 1.75,
                        torch.Generator().manual_seed(0))
    changed = (out != images).any(dim=(0, 1))
    rows, cols = changed.nonzero().unbind(1)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (12, 18, 12, 18)
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[12:19, 12:19] = True
    assert torch.equal(out[:, :, ~inside], images[:, :, ~inside])  # the rest is the image
    assert not torch.equal(images, out) and images.data_ptr() != out.data_ptr()


def test_patched_images_carry_z_plus_or_minus_their_class_pattern():
    p = patches()
    n = 400
    labels = torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(1))
    out = apply_patches(torch.zeros(n, 3, 32, 32), labels, torch.ones(n, dtype=torch.bool), p, 0.0, 1.75,
                        torch.Generator().manual_seed(2))
    delta = out[:, :, 12:19, 12:19] - p.z
    plus = (delta - p.zeta[labels]).abs().amax(dim=(1, 2, 3)) < 1e-6
    minus = (delta + p.zeta[labels]).abs().amax(dim=(1, 2, 3)) < 1e-6
    assert torch.all(plus ^ minus)
    assert 0.4 < plus.float().mean() < 0.6


def test_sign_is_redrawn_on_every_access():
    p = patches()
    image, label, kind = torch.zeros(1, 3, 32, 32), torch.tensor([3]), torch.tensor([True])
    g = torch.Generator().manual_seed(0)
    signs = []
    for _ in range(64):
        delta = apply_patches(image, label, kind, p, 0.0, 1.75, g)[0, :, 12:19, 12:19] - p.z
        signs.append(round((delta * p.zeta[3]).sum().sign().item()))
    assert set(signs) == {-1, 1}
    assert 16 < signs.count(1) < 48


def test_patch_only_images_are_zero_outside_the_patch():
    p = patches()
    n = 300
    labels = torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(1))
    images = torch.randn(n, 3, 32, 32)
    out = apply_patches(images, labels, torch.ones(n, dtype=torch.bool), p, 1.0, 1.75,
                        torch.Generator().manual_seed(2))
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[12:19, 12:19] = False
    assert torch.all(out[:, :, outside] == 0)
    # patch = z + s * 1.75 * u * zeta_y: a multiple c of zeta_y with |c| <= 1.75, spread over the range.
    delta = (out[:, :, 12:19, 12:19] - p.z).flatten(1)
    zeta = p.zeta[labels].flatten(1)
    c = (delta * zeta).sum(1) / (zeta * zeta).sum(1)
    torch.testing.assert_close(delta, c.unsqueeze(1) * zeta, atol=1e-6, rtol=0)
    assert c.abs().max() <= 1.75 + 1e-6 and c.min() < -1.2 and c.max() > 1.2


def test_clean_images_are_untouched_and_draws_do_not_depend_on_which_are_patched():
    p = patches()
    images = torch.randn(6, 3, 32, 32)
    labels = torch.arange(6)
    patched = torch.tensor([False, True, True, False, True, True])
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    out = apply_patches(images, labels, patched, p, 0.5, 1.75, g1)
    assert torch.equal(out[~patched], images[~patched])
    apply_patches(images, labels, torch.zeros(6, dtype=torch.bool), p, 0.5, 1.75, g2)
    assert torch.equal(g1.get_state(), g2.get_state())


def test_patch_is_centred_on_other_image_sizes():
    assert patches(image_size=16).top == 4  # rows 4-10 of 16


# ----------------------------------------------------------------------------- data, model

def test_generated_images_are_deterministic_and_use_every_class():
    x, y = generated_images(200, 3, 16)
    x2, y2 = generated_images(200, 3, 16)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert x.dtype == torch.uint8 and x.shape == (200, 3, 16, 16)
    assert set(y.tolist()) == set(range(GENERATED_CLASSES))
    assert not torch.equal(generated_images(200, 4, 16)[0], x)


def test_wrn_16_10_has_the_standard_size_and_names():
    model = WideResNet(10, 16, 10)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(17.1e6, rel=0.01)
    assert [name for name, _ in model.named_children()] == ["conv1", "block1", "block2", "block3", "bn", "fc"]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="6n"):
        WideResNet(10, 15, 1)


def test_evaluation_sets_are_fixed_by_the_patch_seed(tmp_path):
    cfg = quick_cfg(tmp_path)
    a, b = PatchTask(cfg).data(), PatchTask(cfg).data()
    for name in ("clean", "patched", "patch_only"):
        assert torch.equal(a["eval"][name][0], b["eval"][name][0])
    only, labels = a["eval"]["patch_only"]
    assert only.shape == (20, 3, 16, 16) and labels.shape == (20,)
    other = PatchTask(quick_cfg(tmp_path, "small_lr", "patch_seed=1")).data()
    assert not torch.equal(a["eval"]["patched"][0], other["eval"]["patched"][0])
    assert not torch.equal(a["patched"], other["patched"])


def test_config_rejects_impossible_values(tmp_path):
    with pytest.raises(ValueError, match="patch_size"):
        quick_cfg(tmp_path, "small_lr", "patch_size=17")
    with pytest.raises(ValueError, match="patch_prob"):
        quick_cfg(tmp_path, "small_lr", "patch_prob=1.5")
    with pytest.raises(ValueError, match="dataset"):
        quick_cfg(tmp_path, "small_lr", "dataset=mnist")
    with pytest.raises(ValueError, match="construction"):
        quick_cfg(tmp_path, "small_lr", "construction=fixed")


# ----------------------------------------------------------------------------- end to end

def test_every_method_runs_and_logs_the_three_accuracies(tmp_path):
    methods = list_methods(TOML)
    assert {"small_lr", "large_lr", "multirate"} <= set(methods)
    for method in methods:
        cfg = quick_cfg(tmp_path, method)
        result = run(cfg, PatchTask(cfg))
        assert result["status"] == "complete"
        metrics = {r["metric"] for r in result["rows"] if r["epoch"] == 2}
        assert {"train_loss", "clean_accuracy", "patched_accuracy", "patch_only_accuracy"} <= metrics
    patch_figure.main(["--results-dir", str(tmp_path / "results")])
    out = tmp_path / "results" / "quick" / "figures"
    assert (out / "patch.png").stat().st_size > 10_000 and (out / "patch.pdf").exists()


def test_multirate_uses_the_configured_step_sizes(tmp_path):
    cfg = quick_cfg(tmp_path, "multirate")
    assert (cfg.optimizer, cfg.lr, cfg.k) == ("multirate", 0.1, 25)
    assert cfg.lr / cfg.k == pytest.approx(load_config(PatchConfig, TOML, "quick", "small_lr").lr)
    assert load_config(PatchConfig, TOML, "quick", "large_lr").lr == 0.1


@pytest.mark.parametrize("profile", ["quick", "cpu", "paper"])
def test_every_method_uses_nesterov_momentum_as_li_et_al(profile):
    for method in list_methods(TOML):
        cfg = load_config(PatchConfig, TOML, profile, method)
        assert (cfg.nesterov, cfg.momentum) == (True, 0.9), method


def test_paper_profile_reads_cifar10(tmp_path, monkeypatch):
    monkeypatch.setenv("MULTIRATE_DATA", str(tmp_path / "data"))
    make_cifar10(tmp_path / "data", n=8)
    cfg = load_config(PatchConfig, TOML, "paper", "multirate",
                      [f"results_dir={tmp_path / 'results'}", "widen_factor=1", "batch_size=8", "epochs=1",
                       "patch_only_test=10", "eval_batch_size=8", "wandb=disabled", "device=cpu"])
    assert (cfg.dataset, cfg.epochs, cfg.batch_size) == ("cifar10", 1, 8)
    task = PatchTask(cfg)
    data = task.data()
    assert data["x"].shape == (40, 3, 32, 32) and data["patches"].top == 12
    result = run(cfg, task)
    assert result["status"] == "complete"


def test_the_slow_drift_diagnostic_moves_the_slow_part_k_times_as_far(tmp_path):
    # slow_lr_scale = k: the slow groups step with h * k, so their drift is h per step (not h/k)
    from experiments.core.optimizers import build_optimizer

    cfg = quick_cfg(tmp_path, "multirate_slow_drift_h")
    groups = build_optimizer(cfg, WideResNet(GENERATED_CLASSES, 16, 1)).param_groups
    lrs = {g["rate"]: g["lr"] for g in groups}
    assert lrs == {"slow": pytest.approx(0.1 * 25), "fast": pytest.approx(0.1)}
    plain = {g["rate"]: g["lr"] for g in build_optimizer(quick_cfg(tmp_path, "multirate"),
                                                          WideResNet(GENERATED_CLASSES, 16, 1)).param_groups}
    assert plain == {"slow": pytest.approx(0.1), "fast": pytest.approx(0.1)}
    with pytest.raises(ValueError, match="slow_lr_scale"):
        quick_cfg(tmp_path, "small_lr", "slow_lr_scale=2")
