"""The training loop's extensions (attnbook.train): the Noam schedule, checkpoints,
mixed precision and the progress bar. The basic loop is tested in test_multihead.py."""
import io

import pytest
import torch

from attnbook.models.gpt import GPT, GPTConfig
from attnbook.train import (
    TrainConfig, load_checkpoint, lr_multiplier, noam, save_checkpoint, show_progress, train,
)

VOCAB = 7


def _model(seed=0, dropout=0.1):
    torch.manual_seed(seed)
    return GPT(GPTConfig(VOCAB, max_len=8, d_model=16, num_heads=2, num_layers=1, dropout=dropout))


def _batch(generator):
    """Predict the token one position back: a learnable task drawn from ``generator``."""
    x = torch.randint(0, VOCAB, (4, 8), generator=generator)
    return x, torch.roll(x, 1, dims=1)


# --- Noam schedule --------------------------------------------------------------------

@pytest.mark.parametrize("d_model, warmup", [(512, 4000), (16, 10), (64, 1)])
def test_noam_is_the_formula_of_section_5_3(d_model, warmup):
    for step in [1, 2, warmup // 2 + 1, warmup, warmup + 1, 3 * warmup, 10_000]:
        expected = d_model ** -0.5 * min(step ** -0.5, step * warmup ** -1.5)
        assert noam(step, d_model=d_model, warmup_steps=warmup) == pytest.approx(expected, rel=1e-15)


def test_noam_peaks_at_the_end_of_warmup():
    d_model, warmup = 512, 4000
    rates = [noam(s, d_model=d_model, warmup_steps=warmup) for s in range(1, 4 * warmup + 1)]
    rate = lambda step: rates[step - 1]  # noqa: E731  (steps are 1-based)
    assert max(range(1, 4 * warmup + 1), key=rate) == warmup
    assert rate(warmup) == pytest.approx((d_model * warmup) ** -0.5, rel=1e-12)  # ≈ 7.0e-4
    assert rate(100) / rate(50) == pytest.approx(2.0, rel=1e-12)           # linear before the peak
    assert rate(4 * warmup) / rate(warmup) == pytest.approx(0.5, rel=1e-12)  # 1/sqrt(step) after it


def test_train_follows_the_noam_schedule():
    config = TrainConfig(steps=6, lr=2.0, schedule="noam", d_model=16, warmup_steps=3)
    history = train(_model(), _batch, config, device="cpu")
    expected = [2.0 * noam(s, d_model=16, warmup_steps=3) for s in range(1, 7)]
    assert history.lr == pytest.approx(expected, rel=1e-12)
    assert [lr_multiplier(s, config) for s in range(6)] == pytest.approx([e / 2 for e in expected])


def test_bad_schedules_raise_named_errors():
    with pytest.raises(ValueError, match="schedule must be one of"):
        TrainConfig(steps=1, schedule="linear")
    with pytest.raises(ValueError, match="schedule='noam' needs d_model"):
        TrainConfig(steps=1, schedule="noam", warmup_steps=4)
    with pytest.raises(ValueError, match="warmup_steps must be a positive integer"):
        TrainConfig(steps=1, schedule="noam", d_model=8)
    with pytest.raises(ValueError, match="step must be a positive integer"):
        noam(0, d_model=8, warmup_steps=4)
    with pytest.raises(ValueError, match="resume=True needs the checkpoint"):
        train(_model(), _batch, TrainConfig(steps=1), device="cpu", resume=True)


# --- checkpoints ------------------------------------------------------------------------

def _step(model, optimizer, batch):
    inputs, targets = batch
    loss = torch.nn.functional.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def test_a_loaded_checkpoint_gives_the_same_next_loss(tmp_path):
    batches = [_batch(torch.Generator().manual_seed(i)) for i in range(4)]
    model = _model(dropout=0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for batch in batches[:3]:
        _step(model, optimizer, batch)
    save_checkpoint(tmp_path / "ckpt.pt", model, optimizer, step=3)
    expected = _step(model, optimizer, batches[3])

    fresh = _model(seed=1, dropout=0.0)  # different weights until the checkpoint is loaded
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    state = load_checkpoint(tmp_path / "ckpt.pt", fresh, fresh_optimizer)
    assert state["step"] == 3
    assert _step(fresh, fresh_optimizer, batches[3]) == expected  # bit-identical


def test_resumed_training_continues_exactly(tmp_path):
    config = TrainConfig(steps=8, lr=3e-3, warmup_steps=3, seed=5)
    straight = _model()
    history = train(straight, _batch, config, device="cpu")

    path = tmp_path / "run.pt"  # a job that stopped after 3 of the 8 steps
    interrupted = _model()
    train(interrupted, _batch, TrainConfig(**{**config.__dict__, "steps": 3}), device="cpu",
          checkpoint=path)
    resumed = _model(seed=9)  # weights, optimizer, schedule, data and dropout come from the file
    rest = train(resumed, _batch, config, device="cpu", checkpoint=path, resume=True)
    assert rest.loss == history.loss[3:]   # dropout is on: the random states were restored too
    assert rest.lr == history.lr[3:]
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    assert load_checkpoint(path, _model())["step"] == 8


def test_checkpoint_every_saves_during_training(tmp_path):
    path = tmp_path / "run.pt"
    train(_model(), _batch, TrainConfig(steps=5, checkpoint_every=2), device="cpu", checkpoint=path)
    assert load_checkpoint(path, _model())["step"] == 5
    state = torch.load(path, weights_only=True)
    assert set(state) >= {"model", "optimizer", "step", "scheduler", "data_rng", "torch_rng"}


# --- mixed precision ----------------------------------------------------------------------

def test_mixed_precision_is_a_no_op_on_the_cpu():
    config = TrainConfig(steps=4, lr=3e-3)
    plain = train(_model(), _batch, config, device="cpu")
    mixed = train(_model(), _batch, TrainConfig(steps=4, lr=3e-3, amp=True), device="cpu")
    assert mixed.loss == plain.loss and mixed.grad_norm == plain.grad_norm


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mixed_precision_trains_on_cuda(tmp_path):
    config = TrainConfig(steps=30, lr=3e-3, amp=True)
    model = _model()
    history = train(model, _batch, config, device="cuda", checkpoint=tmp_path / "amp.pt")
    assert all(torch.isfinite(torch.tensor(history.loss)))
    assert history.loss[-1] < history.loss[0]
    assert next(model.parameters()).dtype == torch.float32  # weights stay float32
    assert torch.load(tmp_path / "amp.pt", weights_only=True)["scaler"]["scale"] > 0


# --- progress bar -------------------------------------------------------------------------

class _Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_progress_bar_only_on_a_terminal_unless_asked():
    assert show_progress(None, _Stream(tty=True))
    assert not show_progress(None, _Stream(tty=False))
    assert not show_progress(False, _Stream(tty=True))
    assert show_progress(True, _Stream(tty=False))


def test_train_draws_the_bar_when_asked_and_is_silent_otherwise(capsys):
    train(_model(), _batch, TrainConfig(steps=3), device="cpu")  # pytest's stderr is no TTY
    assert capsys.readouterr().err == ""
    train(_model(), _batch, TrainConfig(steps=3, progress=True), device="cpu")
    assert "3/3" in capsys.readouterr().err
