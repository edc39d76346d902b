"""The integration callbacks on real trainers, CPU only: a PyTorch Lightning `Trainer.fit` and a Hugging Face `Trainer.train`.

Each logs to TensorBoard through the trainer's own machinery (Lightning's `TensorBoardLogger`, the HF Trainer's
`report_to=['tensorboard']`); the event files are read back and compared with the callback's history. Each run is repeated
without the callback: the weights must be bit-identical (the models have Dropout, so a measurement that drew from the global
random generator would change them).
"""
import glob, warnings

import pytest, torch, torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate

from lossviz.demo import SmallCNN, digits
from lossviz.monitor import Calibration, GradNorm, Monitor, Sharpness


def scalars(logdir) -> dict:
    "`{tag: [(step, value), ...]}` of every scalar in the TensorBoard event files under `logdir`"
    ea_mod = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    out = {}
    for f in sorted(glob.glob(f"{logdir}/**/events.out.tfevents.*", recursive=True)):
        ea = ea_mod.EventAccumulator(f)
        ea.Reload()
        for tag in ea.Tags()["scalars"]: out.setdefault(tag, []).extend((e.step, e.value) for e in ea.Scalars(tag))
    return out


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def assert_logged(logged, history, quantity, tag, steps):
    "`tag` was logged at `steps` with the history's values of `quantity` (TensorBoard stores float32)"
    assert [s for s, _ in logged[tag]] == steps, (tag, logged[tag])
    hs, hv = history.series(quantity)
    assert hs == steps
    assert [v for _, v in logged[tag]] == pytest.approx(hv, rel=1e-6, abs=1e-7)


# ---------------------------------------------------------------- PyTorch Lightning

@pytest.fixture
def lightning(monkeypatch):
    "The `lightning` package; the global state `deterministic=True` and `seed_everything` set is put back afterwards"
    L = pytest.importorskip("lightning")
    for var in ("CUBLAS_WORKSPACE_CONFIG", "PL_GLOBAL_SEED", "PL_SEED_WORKERS"): monkeypatch.delenv(var, raising=False)
    det, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    yield L
    torch.use_deterministic_algorithms(det, warn_only=warn_only)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


def digits_module(L, lr=0.05):
    class DigitsModule(L.LightningModule):
        "SmallCNN with Dropout; `forward` returns logits, so the callback needs a `loss_fn`"
        def __init__(self): super().__init__(); self.net = SmallCNN(width=8, hidden=32, dropout=0.2)
        def forward(self, x): return self.net(x)
        def training_step(self, batch, batch_idx):
            loss = F.cross_entropy(self(batch[0]), batch[1])
            self.log("train_loss", loss)
            return loss
        def configure_optimizers(self): return torch.optim.SGD(self.parameters(), lr=lr, momentum=0.9)
    return DigitsModule()


def lightning_fit(L, logdir, callback, max_steps=20, **trainer_kwargs):
    "A seeded fit of the digits CNN; returns the module and the trainer"
    from lightning.pytorch.loggers import TensorBoardLogger
    data = digits()
    L.seed_everything(0, verbose=False)
    module = digits_module(L)
    loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    logger = TensorBoardLogger(str(logdir), name="", version="") if logdir is not None else False
    trainer = L.Trainer(max_steps=max_steps, logger=logger, callbacks=[callback] if callback else [], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", deterministic=True,
                        log_every_n_steps=5, **trainer_kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # Lightning's notes about dataloader workers and deprecated pytree helpers
        trainer.fit(module, loader)
    return module, trainer


def test_lightning_logs_to_tensorboard_and_leaves_training_alone(lightning, tmp_path):
    from lossviz.integrations.lightning import LossvizCallback
    data = digits()
    train_batches = [(data.x_train[i:i + 128], data.y_train[i:i + 128]) for i in (0, 128)]
    cb = LossvizCallback([Sharpness(train_batches, k=1), Calibration((data.x_test, data.y_test)), GradNorm(train_batches)],
                         every=5, budget=None, loss_fn=F.cross_entropy)
    monitored, trainer = lightning_fit(lightning, tmp_path / "with", cb)
    plain, _ = lightning_fit(lightning, tmp_path / "without", None)
    assert same_weights(monitored, plain)

    steps = [5, 10, 15, 20]
    assert sorted({r["step"] for r in cb.history.records}) == steps and cb.history.skipped == []
    assert cb.monitor.model is monitored and cb.monitor.optimizer is trainer.optimizers[0] and cb.monitor.lr == 0.05
    logged = scalars(tmp_path / "with")
    for q in ("sharpness", "ece", "ece_low", "ece_high", "brier", "nll", "grad_norm"):
        assert_logged(logged, cb.history, q, f"lossviz/{q}", steps)
    assert "train_loss" in logged   # the module's own logs are still there
    assert not any(t.startswith("lossviz/") for t in scalars(tmp_path / "without"))


def test_lightning_gradient_accumulation_measures_once_per_optimizer_step(lightning):
    from lossviz.integrations.lightning import LossvizCallback
    calls = []
    def probe(ctx):
        calls.append(ctx.step)
        return {"calls": float(len(calls))}
    cb = LossvizCallback([probe], every=2, budget=None, loss_fn=F.cross_entropy)
    lightning_fit(lightning, None, cb, max_steps=6, accumulate_grad_batches=3)   # 18 batches, 6 optimizer steps, no logger
    assert calls == [2, 4, 6]


def test_lightning_ready_monitor_gets_the_optimizer(lightning):
    from lossviz.integrations.lightning import LossvizCallback
    L = lightning
    data = digits()
    L.seed_everything(0, verbose=False)
    module = digits_module(L)
    monitor = Monitor(module, [GradNorm((data.x_test, data.y_test))], every=3, budget=None, loss_fn=F.cross_entropy)
    cb = LossvizCallback(monitor=monitor)
    trainer = L.Trainer(max_steps=6, logger=False, callbacks=[cb], enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=64))
    assert cb.monitor is monitor and monitor.optimizer is trainer.optimizers[0]
    assert monitor.history.series("grad_norm")[0] == [3, 6]


# ---------------------------------------------------------------- Hugging Face Trainer

V, T = 64, 12


class Tokens(Dataset):
    "Random token sequences as a tokenised dataset yields them: dicts with the labels of a causal LM"
    def __init__(self, n=48, seed=0): self.ids = torch.randint(0, V, (n, T), generator=torch.Generator().manual_seed(seed))
    def __len__(self): return len(self.ids)
    def __getitem__(self, i): return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.ids[i]}


@pytest.fixture
def hf():
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    pytest.importorskip("tensorboard")
    transformers.logging.set_verbosity_error()
    return transformers


def hf_train(transformers, output_dir, callback, max_steps=12):
    "A seeded Trainer run of a two-layer GPT-2 (Dropout 0.1, the config's default); returns the model and the trainer"
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=V, n_positions=32)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    args = transformers.TrainingArguments(output_dir=str(output_dir), max_steps=max_steps, per_device_train_batch_size=4,
                                          learning_rate=1e-3, logging_steps=5, report_to=["tensorboard"], save_strategy="no",
                                          use_cpu=True, seed=0, dataloader_num_workers=0, disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=[callback] if callback else None)
    trainer.train()
    return model, trainer


def test_hf_trainer_reports_to_tensorboard_and_leaves_training_alone(hf, tmp_path):
    from lossviz.integrations.transformers import LossvizCallback
    tokens = Tokens()
    batches = [default_collate([tokens[i] for i in range(a, a + 4)]) for a in (0, 4)]
    cb = LossvizCallback([Sharpness(batches, k=1)], every=4, budget=None, loss_fn=None)
    monitored, trainer = hf_train(hf, tmp_path / "with", cb)
    plain, _ = hf_train(hf, tmp_path / "without", None)
    assert same_weights(monitored, plain)

    assert trainer.callback_handler.callbacks[0] is cb   # moved before TensorBoardCallback in on_train_begin
    assert cb.monitor.model is monitored and cb.monitor.optimizer is trainer.optimizer
    logged = scalars(tmp_path / "with")
    assert_logged(logged, cb.history, "sharpness", "train/lossviz/sharpness", [4, 8, 12])
    assert [s for s, _ in logged["train/loss"]] == [4, 5, 8, 10, 12]   # the Trainer also logs at the measured steps
    without = scalars(tmp_path / "without")
    assert [s for s, _ in without["train/loss"]] == [5, 10] and not any("lossviz" in t for t in without)


def test_hf_attach_and_a_callback_called_from_elsewhere(hf, tmp_path):
    from lossviz.integrations.transformers import LossvizCallback
    from transformers import TrainerControl, TrainerState
    cb = LossvizCallback([lambda ctx: {"one": 1.0}], every=1, budget=None)
    trainer = hf.Trainer(model=torch.nn.Linear(2, 2), args=hf.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=["tensorboard"]))
    assert cb.attach(trainer) is cb and trainer.callback_handler.callbacks[0] is cb
    names = [type(c).__name__ for c in trainer.callback_handler.callbacks]
    assert names.count("LossvizCallback") == 1 and "TensorBoardCallback" in names

    lone = LossvizCallback([lambda ctx: {"one": 1.0}], every=1, budget=None)   # hooks called by hand: no handler to be found
    state, control = TrainerState(), TrainerControl()
    with pytest.warns(UserWarning, match="callback.attach"):
        lone.on_train_begin(None, state, control, model=torch.nn.Linear(2, 2), optimizer=None)
    state.global_step = 1
    logs = {"loss": 1.0}
    assert lone.on_step_end(None, state, control).should_log
    lone.on_log(None, state, control, logs=logs)
    assert logs == {"loss": 1.0, "lossviz/one": 1.0}
    lone.on_log(None, state, control, logs=(again := {}))
    assert again == {}   # added once
    state.is_world_process_zero = False   # another rank: measures and asks to log, adds nothing
    state.global_step, logs = 2, {}
    assert lone.on_step_end(None, state, control).should_log
    lone.on_log(None, state, control, logs=logs)
    assert logs == {} and lone.history.series("one")[0] == [1, 2]


# ---------------------------------------------------------------- bad input, both callbacks

def callback_class(framework):
    if framework == "lightning":
        pytest.importorskip("lightning")
        from lossviz.integrations.lightning import LossvizCallback
    else:
        pytest.importorskip("transformers")
        from lossviz.integrations.transformers import LossvizCallback
    return LossvizCallback


@pytest.mark.parametrize("framework", ["lightning", "transformers"])
def test_bad_input_is_named(framework):
    LossvizCallback = callback_class(framework)
    probe = lambda ctx: {"one": 1.0}
    ready = Monitor(torch.nn.Linear(2, 2), [probe], every=2)
    with pytest.raises(ValueError, match=r"either `monitor`.*or `probes`.*not both"): LossvizCallback([probe], monitor=ready)
    with pytest.raises(ValueError, match=r"pass `probes`.*or a ready `monitor`"): LossvizCallback()
    with pytest.raises(ValueError, match=r"`every`, `loss_fn`: with a ready `monitor`"): LossvizCallback(monitor=ready, every=3, loss_fn=F.mse_loss)
    with pytest.raises(TypeError, match=r"`monitor` must be a lossviz.monitor.Monitor"): LossvizCallback(monitor="sharpness")
    with pytest.raises(ValueError, match=r"`every` must be at least 1"): LossvizCallback([probe], every=0)
    with pytest.raises(TypeError, match=r"`loss_fn` must be callable"): LossvizCallback([probe], loss_fn="cross_entropy")
    assert LossvizCallback(monitor=ready).history is ready.history and LossvizCallback([probe]).monitor is None
