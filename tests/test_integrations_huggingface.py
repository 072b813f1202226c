"""MultirateTrainer: the Hugging Face Trainer with Multirate gives TrainStep's iterates and saving."""

import copy
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
os.environ["HF_HUB_OFFLINE"] = "1"

from transformers import (  # noqa: E402
    DistilBertConfig,
    DistilBertForSequenceClassification,
    TrainerCallback,
    TrainingArguments,
    get_scheduler,
)

from multirate import TrainStep  # noqa: E402
from multirate.integrations.huggingface import (  # noqa: E402
    MultirateTrainer,
    head_names,
    multirate_optimizer,
    unwrap_optimizer,
)

K, BATCH, SEQ = 3, 4, 8


def tiny_distilbert(dropout=0.0):
    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=50, dim=16, n_layers=2, n_heads=2, hidden_dim=32,
                              max_position_embeddings=SEQ, dropout=dropout, attention_dropout=dropout,
                              seq_classif_dropout=dropout, num_labels=2)
    return DistilBertForSequenceClassification(config)


def examples(n=24):
    g = torch.Generator().manual_seed(1)
    return [dict(input_ids=torch.randint(0, 50, (SEQ,), generator=g),
                 attention_mask=torch.ones(SEQ, dtype=torch.long),
                 labels=torch.randint(0, 2, (), generator=g)) for _ in range(n)]


def arguments(out, **overrides):
    settings = dict(per_device_train_batch_size=BATCH, learning_rate=0.1, weight_decay=1e-3,
                    max_grad_norm=0.0, num_train_epochs=1, lr_scheduler_type="linear", warmup_steps=1,
                    train_sampling_strategy="sequential", save_strategy="no", logging_strategy="no",
                    report_to="none", use_cpu=True, disable_tqdm=True, seed=0)
    return TrainingArguments(str(out), **{**settings, **overrides})


def trainer(model, args, base="sgd", callbacks=None):
    t = MultirateTrainer(model, args, train_dataset=examples(), k=K, base=base, momentum=0.9,
                         callbacks=callbacks)
    # DistilBERT's loss is a micro-batch mean although its forward takes loss kwargs: let the
    # Trainer divide by the accumulation steps (its default would sum the micro-batch means).
    t.loss_is_scaled_for_ga = False
    return t


def stack(batch):
    return {key: torch.stack([ex[key] for ex in batch]) for key in batch[0]}


def reference(model, args, base, accumulation, autocast=False, max_grad_norm=0.0):
    """The project's own loop: TrainStep on the Trainer's batches, the scheduler stepped per step."""
    # The optimizer MultirateTrainer builds (fast = the head, the Trainer's weight-decay split).
    opt = MultirateTrainer(model, args, k=K, base=base, momentum=0.9).create_optimizer()
    data = examples()
    steps = len(data) // (BATCH * accumulation)
    sched = get_scheduler("linear", opt, num_warmup_steps=1, num_training_steps=steps)
    def clip(computed):  # the Trainer clips model.parameters() that have a gradient, in model order
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], max_grad_norm)

    step = TrainStep(model, opt, reduce_grads=clip if max_grad_norm > 0 else None)
    model.train()
    for s in range(steps):
        micro = [stack(data[(s * accumulation + i) * BATCH:(s * accumulation + i + 1) * BATCH])
                 for i in range(accumulation)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            # Summing in one graph adds the two micro-batches' gradients once, as the Trainer's
            # second backward adds into .grad: a + b == b + a, so this is bit-equal for 2.
            step(lambda: sum(model(**mb).loss / accumulation for mb in micro))
        sched.step()
    return model


def assert_equal_models(a, b):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_import_multirate_needs_torch_only():
    frameworks = {"transformers", "accelerate", "lightning", "pytorch_lightning"}
    code = f"import sys, multirate, multirate.integrations; print(sorted({frameworks!r} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_default_fast_part_is_the_head():
    model = tiny_distilbert()
    assert head_names(model) == ["pre_classifier", "classifier"]
    opt = multirate_optimizer(model, arguments("/nonexistent"), k=K, fast=None, base="sgd", momentum=0.9,
                              linear_drift=True)
    head = {id(p) for name in ("pre_classifier", "classifier") for p in getattr(model, name).parameters()}
    assert {id(p) for g in opt.param_groups if g["rate"] == "fast" for p in g["params"]} == head


@pytest.mark.parametrize("base", ["sgd", "adamw"])
@pytest.mark.parametrize("accumulation", [1, 2])
def test_iterates_equal_train_step_loop(tmp_path, base, accumulation):
    model = tiny_distilbert()
    expected = reference(copy.deepcopy(model), arguments(tmp_path), base, accumulation)
    t = trainer(model, arguments(tmp_path, gradient_accumulation_steps=accumulation), base=base)
    t.train()
    assert unwrap_optimizer(t.optimizer).param_groups[0]["step"] == len(examples()) // (BATCH * accumulation)
    assert_equal_models(t.model, expected)


def test_clipping_clips_the_gradients_the_step_consumes(tmp_path):
    model = tiny_distilbert()
    expected = reference(copy.deepcopy(model), arguments(tmp_path), "sgd", 1, max_grad_norm=0.05)
    t = trainer(model, arguments(tmp_path, max_grad_norm=0.05))
    t.train()
    assert_equal_models(t.model, expected)


def test_bf16_autocast_equals_train_step_under_autocast(tmp_path):
    model = tiny_distilbert()
    expected = reference(copy.deepcopy(model), arguments(tmp_path), "sgd", 1, autocast=True)
    t = trainer(model, arguments(tmp_path, bf16=True))
    t.train()
    assert_equal_models(t.model, expected)


class RecordGradients(TrainerCallback):
    """Before every optimizer step: (slow step?, slow grads present, fast grads present)."""

    def __init__(self):
        self.trainer, self.seen = None, []

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        opt = unwrap_optimizer(self.trainer.optimizer)
        present = {rate: [p.grad is not None for g in opt.param_groups if g["rate"] == rate
                          for p in g["params"]] for rate in ("slow", "fast")}
        self.seen.append((opt.is_slow_step, all(present["slow"]), any(present["slow"]),
                          all(present["fast"])))


def test_fast_steps_compute_no_slow_gradient_and_no_backbone_graph(tmp_path):
    model = tiny_distilbert()
    record = RecordGradients()
    t = trainer(model, arguments(tmp_path, gradient_accumulation_steps=2), callbacks=[record])
    record.trainer = t
    graph = []
    model.distilbert.register_forward_hook(lambda m, args, out: graph.append(out[0].requires_grad))
    t.train()
    slow_steps = [s % K == 0 for s in range(len(examples()) // (2 * BATCH))]
    assert [seen[0] for seen in record.seen] == slow_steps
    for slow, all_slow, any_slow, all_fast in record.seen:
        assert all_fast and (all_slow if slow else not any_slow)
    # Two micro-batches per step. The first micro-batch of each kind runs unpruned (the check);
    # after it no fast micro-batch records a graph through the transformer.
    kinds = [slow for slow in slow_steps for _ in range(2)]
    assert graph == [slow or i == 2 for i, slow in enumerate(kinds)]


def test_resume_mid_cycle_equals_uninterrupted_run(tmp_path):
    def run(out, **kwargs):
        args = arguments(out, gradient_accumulation_steps=2, train_sampling_strategy="random",
                         num_train_epochs=2, save_strategy="steps", save_steps=4)
        t = trainer(tiny_distilbert(dropout=0.1), args)
        t.train(**kwargs)
        return t

    full = run(tmp_path / "full")
    checkpoint = tmp_path / "full" / "checkpoint-4"  # 4 steps: one step into the second cycle
    saved = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    assert saved["param_groups"][0]["step"] == 4 and 4 % K != 0
    resumed = run(tmp_path / "resumed", resume_from_checkpoint=str(checkpoint))
    assert unwrap_optimizer(resumed.optimizer).param_groups[0]["step"] == 6
    assert_equal_models(resumed.model, full.model)
