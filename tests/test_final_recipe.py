"""The final recipe (nas.quality.distill) and transfer sets (nas.data.transfer): a member ends at its best
validation checkpoint, training paused and resumed equals training straight through, cached teacher
logits equal a fresh teacher pass, and a transfer set never holds a validation or test text."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nas.data.transfer import TransferSettings, augmented, build_transfer_texts, imdb_snippets, normalise
from nas.quality.distill import DistillData, DistillRun, FinalRecipe, cached_teacher_logits, teacher_logits
from nas.quality.finetune import TrainSettings

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["w1 w2 w3", "w4 w5", "w6 w1 w2 w7 w8", "w3", "w2 w2 w9 w1", "w5 w6 w7", "w8 w9", "w1 w1 w1 w4 w4 w2"]


@pytest.fixture
def tiny_task(tiny_env):
    from transformers import AutoModelForSequenceClassification

    from nas.models.loading import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_env["model"]))
    torch.manual_seed(0)
    teacher = AutoModelForSequenceClassification.from_pretrained(str(tiny_env["model"])).eval()
    return tokenizer, teacher


def student_and_data(tiny_task, *, transfer=(), share=0.0):
    import copy

    tokenizer, teacher = tiny_task
    logits = teacher_logits(teacher, TEXTS, tokenizer, max_length=32)
    extra = teacher_logits(teacher, transfer, tokenizer, max_length=32) if transfer else None
    data = DistillData.build(tokenizer, TEXTS, [i % 2 for i in range(len(TEXTS))], context=32, teacher=logits,
                             transfer_texts=transfer, transfer_teacher=extra, transfer_share=share)
    return copy.deepcopy(teacher).train(), data


def val_loader(tiny_task, data):
    tokenizer, _ = tiny_task
    return [data.collate(list(range(len(TEXTS))), tokenizer.pad_token_id)]


@pytest.mark.parametrize("checkpoint, until, kept", [("best", None, 2), ("auto", None, 4), ("last", None, 4),
                                                     ("auto", 3, 2), ("last", 3, 3)])
def test_a_member_ends_with_the_weights_its_checkpoint_setting_keeps(tiny_task, monkeypatch, checkpoint, until, kept):
    """Validation accuracies 0.5, 0.9, 0.6, 0.7 at steps 1..4 of 4 planned: best ends with the step-2 weights; last
    with the weights it stopped at; auto with the last at the planned length (the learning rate at zero there), and
    with the best when it stopped before it (a deadline, patience); patience 0 trains the whole planned length."""
    import nas.quality.distill as distill

    model, data = student_and_data(tiny_task)
    scripted = iter([0.5, 0.9, 0.6, 0.7])
    snapshots = {}

    def fake_accuracy(m, loader):
        step = len(snapshots) + 1
        snapshots[step] = {k: v.detach().clone() for k, v in m.state_dict().items()}
        return next(scripted)

    monkeypatch.setattr(distill, "accuracy", fake_accuracy)
    recipe = FinalRecipe(train=TrainSettings(lr=1e-2, batch_size=4), max_steps=4, eval_every=1, patience=0,
                         checkpoint=checkpoint)
    run = DistillRun(model, data, recipe, val_loader=None, pad_id=0)
    run.advance(until=until)
    stopped = until or 4
    assert (run.step, run.best_step, run.best_accuracy, run.converged) == (stopped, 2, 0.9, stopped == 4)
    run.finish()
    assert run.kept_step == kept and run.summary()["kept_step"] == kept
    state = model.state_dict()
    for k, v in snapshots[kept].items():
        torch.testing.assert_close(state[k], v)
    other = 2 if kept != 2 else stopped
    assert any(not torch.equal(snapshots[other][k], snapshots[kept][k]) for k in state)  # the weights did move
    assert [c["step"] for c in run.curve] == list(range(1, stopped + 1))


def test_an_unknown_checkpoint_choice_is_refused():
    with pytest.raises(ValueError, match="final.checkpoint='mean' is not known; allowed: auto, last, best"):
        FinalRecipe(checkpoint="mean").validate()


def test_patience_stops_a_member_early(tiny_task, monkeypatch):
    import nas.quality.distill as distill

    model, data = student_and_data(tiny_task)
    scripted = iter([0.8, 0.7, 0.7, 0.9])
    monkeypatch.setattr(distill, "accuracy", lambda m, loader: next(scripted))
    run = DistillRun(model, data, FinalRecipe(train=TrainSettings(batch_size=4), max_steps=10, eval_every=1,
                                              patience=2), val_loader=None, pad_id=0)
    run.advance()
    assert (run.step, run.best_step, run.converged, run.summary()["stopped_early"]) == (3, 1, True, True)


def test_extra_validations_of_a_rung_do_not_use_up_patience(tiny_task, monkeypatch):
    """A halving rung validates between the regular points to project a curve: patience counts steps since the
    best point (patience x eval_every), so those extra points cannot stop a member sooner."""
    import nas.quality.distill as distill

    model, data = student_and_data(tiny_task)
    scripted = iter([0.8] + [0.7] * 20)
    monkeypatch.setattr(distill, "accuracy", lambda m, loader: next(scripted))
    run = DistillRun(model, data, FinalRecipe(train=TrainSettings(batch_size=4), max_steps=20, eval_every=4,
                                              patience=2), val_loader=None, pad_id=0)
    for until in (1, 2, 3):  # three validations without improvement, 2 steps after the best
        run.advance(until=until)
    assert (run.best_step, run.converged) == (1, False)
    run.advance()  # regular points at 4, 8: still within 2 x 4 steps of step 1; at 12 patience is spent
    assert (run.step, run.best_step, run.converged) == (12, 1, True)
    assert [p["step"] for p in run.curve] == [1, 2, 3, 4, 8, 12]


def test_timed_steps_are_real_steps_and_a_planned_length_ends_the_schedule(tiny_task, monkeypatch):
    """time_steps trains real steps (the run goes on from them) after one validation at the step it is at; set_total
    plans the run shorter: it stops there with its learning rate decayed to zero, as the recipe's length would."""
    import nas.quality.distill as distill

    monkeypatch.setattr(distill, "accuracy", lambda m, loader: 0.5)
    model, data = student_and_data(tiny_task)
    recipe = FinalRecipe(train=TrainSettings(lr=1e-3, batch_size=4), max_steps=10, eval_every=100, patience=0)
    run = DistillRun(model, data, recipe, val_loader=None, pad_id=0)
    step_s, validation_s = run.time_steps(3)
    assert run.step == 3 and [p["step"] for p in run.curve] == [0] and step_s > 0 and validation_s >= 0
    run.set_total(6)
    run.advance()
    assert (run.step, run.total, run.recipe_steps, run.converged) == (6, 6, 10, True)
    assert run.optimizer.param_groups[0]["lr"] == 0.0  # the schedule ended where the plan did
    assert run.summary()["planned_steps"] == 6 and run.summary()["recipe_steps"] == 10
    with pytest.raises(ValueError, match="total=5 must be an integer >= the 6 steps done"):
        run.set_total(5)
    unplanned = DistillRun(*student_and_data(tiny_task), recipe, val_loader=None, pad_id=0)
    unplanned.advance(until=6)
    assert unplanned.optimizer.param_groups[0]["lr"] > 0.0  # at step 6 of 10 the recipe's schedule is still on


def test_training_paused_and_resumed_equals_training_straight_through(tiny_task):
    """A halving rung pauses a member and resumes it later: the same weights as one uninterrupted run
    (same data order, same schedule)."""
    recipe = FinalRecipe(train=TrainSettings(lr=1e-3, batch_size=3, seed=3), max_steps=6, eval_every=2, patience=0)
    ends = []
    for slices in ([6], [2, 4, 6]):
        model, data = student_and_data(tiny_task, transfer=["w9 w9 w1", "w7 w3"], share=0.34)
        model.config.hidden_dropout_prob = 0.0
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        run = DistillRun(model, data, recipe, val_loader=val_loader(tiny_task, data), pad_id=0)
        for until in slices:
            run.advance(until=until)
        assert run.step == 6
        ends.append({k: v.clone() for k, v in model.state_dict().items()})
    for k in ends[0]:
        torch.testing.assert_close(ends[0][k], ends[1][k])


def test_each_batch_mixes_labelled_rows_and_transfer_rows_by_the_share(tiny_task):
    _, data = student_and_data(tiny_task, transfer=["w9 w9 w1", "w7 w3", "w2"], share=0.25)
    assert data.batches_per_epoch(4) == 3  # 8 labelled rows, 3 per step
    batches = data.batches(4, seed=0)
    epoch = [next(batches) for _ in range(3)]
    labelled = [i for rows in epoch for i in rows if data.labels[i] != -100]
    assert sorted(labelled) == list(range(8))  # one pass over the labelled rows, each once
    for rows in epoch:
        assert [data.labels[i] for i in rows].count(-100) == 1  # one row of each batch from the transfer set
        assert all(i >= 8 for i in rows if data.labels[i] == -100)


def test_cached_teacher_logits_equal_a_fresh_teacher_pass(tiny_task, tmp_path):
    tokenizer, teacher = tiny_task
    texts = TEXTS + ["w1 " * 40]  # one longer than max_length: truncated the same way
    first = cached_teacher_logits(teacher, texts, tokenizer, max_length=16, cache_dir=tmp_path, base_key="b1",
                                  name="training")
    files = list((tmp_path / "teacher").glob("*.pt"))
    assert len(files) == 1
    again = cached_teacher_logits(teacher, texts, tokenizer, max_length=16, cache_dir=tmp_path, base_key="b1",
                                  name="training")
    with torch.no_grad():  # one text at a time: no padding at all
        fresh = torch.cat([teacher(**tokenizer(t, truncation=True, max_length=16, return_tensors="pt")).logits
                           for t in texts])
    torch.testing.assert_close(first, fresh, atol=1e-5, rtol=1e-5)
    assert torch.equal(first, again)
    other = cached_teacher_logits(teacher, texts[:3], tokenizer, max_length=16, cache_dir=tmp_path, base_key="b1",
                                  name="training")
    assert other.shape[0] == 3 and len(list((tmp_path / "teacher").glob("*.pt"))) == 2  # another text set, another entry


# ---- transfer sets ---------------------------------------------------------------------------------


class Task:
    def __init__(self, train, validation, test):
        self.train = {"text": train, "label": [0] * len(train)}
        self.validation = {"text": validation, "label": [0] * len(validation)}
        self.test = {"text": test, "label": [0] * len(test)}


def held_out_keys(task):
    return {normalise(t) for t in task.validation["text"] + task.test["text"]}


def test_normalise_ignores_case_whitespace_and_punctuation_spacing():
    assert normalise("A  great , film !") == normalise("a great,\tfilm!") == "a great,film!"
    assert normalise("a great film") != normalise("a grate film")


def test_a_users_transfer_file_loses_every_validation_and_test_text(tmp_path):
    import pandas as pd

    task = Task(["kept one", "kept two"], ["A fine , fine film .", "dull"], ["Too long by half"])
    rows = ["a fine, fine film.", "DULL", "  too long  by half ", "something new", "something new", "", "another"]
    path = tmp_path / "unlabelled.csv"
    pd.DataFrame({"review": rows}).to_csv(path, index=False)
    texts = build_transfer_texts(TransferSettings(source="file", path=str(path), column="review"), task)
    assert texts == ["something new", "another"]
    assert not {normalise(t) for t in texts} & held_out_keys(task)


def test_augmented_training_texts_never_equal_a_held_out_text():
    train = [f"w{i} w{i + 1} w{i + 2} w{i + 3}" for i in range(50)]
    task = Task(train, train[:10], train[10:20])  # the task repeats texts across splits: still excluded
    texts = build_transfer_texts(TransferSettings(source="augment", size=400), task)
    assert texts and not {normalise(t) for t in texts} & held_out_keys(task)
    rng = np.random.default_rng(0)
    assert augmented(["one two three four five six"], rng, drop=0.0, swap=0.0) == ["one two three four five six"]


def test_imdb_snippets_follow_the_task_lengths_and_skip_held_out_texts():
    rng = np.random.default_rng(0)
    counts = [5, 10, 20]
    snippets = imdb_snippets(word_counts=counts, rng=rng, limit=300)
    assert len(snippets) == 300
    lengths = [len(s.split()) for s in snippets]
    assert min(lengths) >= 1 and max(lengths) <= 20 + 10  # at most the longest target plus 10 words
    assert np.median(lengths) < 60
    # the same draw with some of its snippets as the task's validation and test texts: they are gone
    settings = TransferSettings(source="imdb", size=200, seed=0)
    first = build_transfer_texts(settings, Task(["x " * 10, "y " * 20], ["unrelated"], ["also unrelated"]))
    task = Task(["x " * 10, "y " * 20], [first[0].upper(), first[5]], ["  " + first[9] + " "])
    texts = build_transfer_texts(settings, task)
    assert len(texts) == 200 and not {normalise(t) for t in texts} & held_out_keys(task)


@pytest.mark.parametrize("kwargs, expected", [
    ({"source": "web"}, "final.transfer='web' is not known; allowed: auto, none, augment, imdb, file, hf"),
    ({"source": "file"}, "final.transfer=file needs final.transfer_path (a table file)"),
    ({"source": "imdb", "size": 0}, "final.transfer_size=0 must be an integer >= 1 (texts)"),
    ({"source": "imdb", "share": 1.0}, "final.transfer_share=1.0 must be between 0 and 1 (exclusive): the share of "
                                        "each batch's rows taken from the transfer set"),
])
def test_bad_transfer_settings_are_refused_in_one_line(kwargs, expected):
    with pytest.raises(ValueError) as info:
        TransferSettings(**kwargs).validate()
    assert str(info.value) == expected


def test_auto_transfer_is_augmented_texts_only_for_a_task_with_few_labels():
    from nas.data.transfer import AUTO_BELOW

    auto = TransferSettings()
    assert auto.source == "auto" and not auto.active
    assert auto.for_task(AUTO_BELOW).source == "augment" and auto.for_task(AUTO_BELOW + 1).source == "none"
    assert TransferSettings(source="imdb").for_task(10).source == "imdb"  # an explicit choice stays
    few = Task([f"w{i} w{i + 1} w{i + 2}" for i in range(30)], ["w0 w1 w2"], ["w5 w6 w7"])
    texts = build_transfer_texts(TransferSettings(size=50), few)
    assert 0 < len(texts) <= 50 and not {normalise(t) for t in texts} & held_out_keys(few)
    many = Task([f"w{i}" for i in range(AUTO_BELOW + 1)], ["x"], ["y"])
    assert build_transfer_texts(TransferSettings(), many) == []


def test_final_members_keep_the_bottom_layers_where_final_layers_says_so():
    """final.layers: bottom keeps layers 0..n-1 whatever the trial's block influence chose; trial keeps
    the trial's; auto is bottom for an encoder and the trial's for a decoder; start=trial always keeps
    the trial's (its weights belong to them); only depth changes; an unknown rule is refused."""
    from nas.spec import SubnetSpec

    spec = SubnetSpec.uniform(layers=(3, 4, 5), heads=8, ffn=640, hidden=320, context=64)

    def kept(layers, *, encoder=True, start="base"):
        return FinalRecipe(layers=layers, start=start).member_spec(spec, encoder=encoder)

    assert kept("bottom").layers == (0, 1, 2) and kept("bottom", encoder=False).layers == (0, 1, 2)
    assert kept("auto").layers == (0, 1, 2)
    assert kept("auto", encoder=False) is spec and kept("trial") is spec
    assert kept("bottom", start="trial") is spec
    moved = kept("bottom")
    assert (moved.heads, moved.ffn, moved.hidden, moved.context) == (spec.heads, spec.ffn, spec.hidden, spec.context)
    with pytest.raises(ValueError, match=r"^final.layers='top' is not known; allowed: auto, bottom, trial$"):
        FinalRecipe(layers="top").validate()


def test_freeze_embeddings_keeps_the_table_as_cut_and_trains_the_rest(tiny_task):
    """train.freeze_embeddings: the token table of a member is exactly what it came with after training, the rest
    moved; without it the table trains too."""
    for freeze in (True, False):
        model, data = student_and_data(tiny_task)
        table = model.get_input_embeddings().weight.detach().clone()
        layer = next(p for n, p in model.named_parameters() if "encoder" in n and p.ndim == 2).detach().clone()
        recipe = FinalRecipe(train=TrainSettings(lr=1e-2, batch_size=4, freeze_embeddings=freeze), max_steps=3,
                             eval_every=3, patience=0)
        DistillRun(model, data, recipe, val_loader=val_loader(tiny_task, data), pad_id=0).advance()
        moved = next(p for n, p in model.named_parameters() if "encoder" in n and p.ndim == 2)
        assert torch.equal(model.get_input_embeddings().weight, table) is freeze
        assert not torch.equal(moved, layer)
