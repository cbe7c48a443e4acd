"""Training precision (nas.quality.autocast): bf16 only where the machine has it natively, refused in one line when
forced without it; the LM training loop runs its forward in it and keeps evaluation in fp32."""

from __future__ import annotations

import pytest
import torch

from nas.quality.autocast import resolve_precision, training_autocast
from nas.quality.finetune import TrainSettings
from nas.util import native_bf16


def test_auto_takes_bf16_only_where_detected():
    assert resolve_precision("auto", native=True) == "bf16"
    assert resolve_precision("auto", native=False) == "fp32"
    assert resolve_precision("fp32", native=True) == "fp32"
    assert resolve_precision("auto") == ("bf16" if native_bf16() else "fp32")  # this machine, detected


def test_forced_bf16_without_native_support_is_refused_in_one_line():
    with pytest.raises(ValueError, match="train.precision=bf16: this CPU has no native bf16") as e:
        resolve_precision("bf16", native=False)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="train.precision='fp8' is not known; allowed: auto, fp32, bf16"):
        TrainSettings(precision="fp8").validate()


def test_autocast_runs_matmuls_in_bf16_and_leaves_fp32_alone():
    x, w = torch.randn(4, 8), torch.randn(8, 3)
    with training_autocast("bf16"):
        assert (x @ w).dtype == torch.bfloat16
    with training_autocast("fp32"):
        assert (x @ w).dtype == torch.float32


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_classifier_training_forwards_run_in_the_resolved_precision(tiny_env, monkeypatch, precision):
    """The base fine-tune and trials (Lightning's ClassifierModule) and the final members (DistillRun) run their
    training forwards under bf16 autocast when the precision resolves to bf16, and in plain fp32 otherwise;
    validation is fp32 in both."""
    import nas.quality.autocast as autocast
    from nas.data.tasks import load_task, make_loader, tokenize
    from nas.models.loading import load_base_model, load_tokenizer
    from nas.quality.distill import DistillData, DistillRun, FinalRecipe
    from nas.quality.finetune import Monitor, finetune

    monkeypatch.setattr(autocast, "native_bf16", lambda: True)  # bf16 allowed here whatever this CPU has
    task = load_task({"kind": "file", "path": str(tiny_env["csv"])})
    tok = load_tokenizer(str(tiny_env["model"]))
    model = load_base_model(str(tiny_env["model"]), num_labels=2)
    seen: list[tuple[bool, bool]] = []  # (training, autocast on) at each forward
    model.register_forward_hook(lambda m, a, o: seen.append((m.training, torch.is_autocast_enabled("cpu"))))
    train = make_loader(tokenize(task.train, tok, max_length=32), tok, batch_size=8, shuffle=True)
    val = make_loader(tokenize(task.validation, tok, max_length=32), tok, batch_size=64, shuffle=False)
    settings = TrainSettings(max_steps=2, batch_size=8, distill_weight=0.0, precision=precision)
    finetune(model, train, settings, monitor=Monitor(val, every=1, patience=0))
    data = DistillData.build(tok, task.train["text"], task.train["label"], context=32, teacher=None)
    run = DistillRun(model, data, FinalRecipe(train=settings, max_steps=2, eval_every=1), val_loader=val,
                     pad_id=tok.pad_token_id)
    run.advance()
    training = {on for is_training, on in seen if is_training}
    evaluating = {on for is_training, on in seen if not is_training}
    assert training == {precision == "bf16"} and evaluating == {False}
    assert sum(t for t, _ in seen) == 4  # two steps of each loop
