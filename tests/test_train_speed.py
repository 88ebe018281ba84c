"""Training speed and memory options: selective checkpointing, compiled layers, no fp32 copies of frozen weights."""

from __future__ import annotations

import itertools

import pytest
import torch

from tuner.config import ConfigError, load_config
from tuner.head import collate, unwrap_backbone, yes_no_logits
from tuner.losses import listwise_loss
from tuner.modeling import compile_layers, evenly_spaced, set_checkpoint_ratio

YES, NO, PAD = 9693, 2152, 151643


def _batch(n: int = 8, seed: int = 3) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(10, 60, (n,), generator=gen).tolist()
    return collate([torch.randint(1000, 150000, (k,), generator=gen).tolist() for k in lengths], PAD)


def _lora(model_dir, **load_kwargs):
    from train_helpers import random_lora

    return random_lora(model_dir, **load_kwargs)


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    logits = yes_no_logits(model, **batch, yes_id=YES, no_id=NO)
    loss = listwise_loss(logits.view(2, -1))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _assert_same(a, b, atol=1e-5):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    assert abs(float(loss_a) - float(loss_b)) < atol
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name, g in grads_a.items():
        assert float(g.abs().max()) > 0, name
        torch.testing.assert_close(grads_b[name], g, atol=atol, rtol=0, msg=name)


def test_evenly_spaced_layers():
    assert evenly_spaced(36, 1.0) == list(range(36))
    half = evenly_spaced(36, 0.5)
    assert len(half) == 18 and all(b - a == 2 for a, b in itertools.pairwise(half))
    quarter = evenly_spaced(36, 0.25)
    assert len(quarter) == 9 and all(b - a == 4 for a, b in itertools.pairwise(quarter))
    assert evenly_spaced(4, 0.1) == [3]  # a ratio above 0 keeps at least one layer
    with pytest.raises(ValueError):
        evenly_spaced(4, 0.0)


def test_selective_checkpointing_recomputes_only_the_chosen_layers(tiny_model_dir):
    """checkpoint_ratio=0.5 on 2 layers: one layer runs twice (forward + recompute), the other once; same grads."""
    batch = _batch()
    plain = _loss_and_grads(_lora(tiny_model_dir), batch)
    model = _lora(tiny_model_dir, gradient_checkpointing=True, checkpoint_ratio=0.5)
    layers = unwrap_backbone(model).layers
    assert [bool(layer.gradient_checkpointing) for layer in layers] == [False, True]
    calls = [0] * len(layers)
    for i, layer in enumerate(layers):
        # the MLP runs inside the checkpointed forward, so recomputes count too (a pre-hook: the recompute stops
        # early, inside the MLP, once every saved tensor is back)
        layer.mlp.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    selective = _loss_and_grads(model, batch)
    assert calls == [1, 2]
    _assert_same(plain, selective)
    assert set_checkpoint_ratio(model, 1.0) == [0, 1]


def test_compiled_layers_give_the_same_loss_and_gradients(tiny_model_dir):
    """`train.compile`: torch.compile of every decoder layer (with LoRA and checkpointing inside) changes nothing."""
    batch, other = _batch(), _batch(6, seed=4)  # two shapes: the dynamic graph serves both
    ref = _lora(tiny_model_dir, gradient_checkpointing=True)
    model = _lora(tiny_model_dir, gradient_checkpointing=True)
    names = [n for n, _ in model.named_parameters()]
    assert compile_layers(model) == 2
    assert [n for n, _ in model.named_parameters()] == names  # in place: adapter checkpoints keep their keys
    for b in (batch, other):
        _assert_same(_loss_and_grads(ref, b), _loss_and_grads(model, b))


def test_train_compile_runs_compiled_layers_with_the_same_losses(tiny_model_dir, tmp_path):
    """`tuner train` with `train.compile=true`: the layers it trains are compiled and log the plain run's losses."""
    from train_helpers import tiny_config, write_beir
    from transformers import TrainerCallback

    from tuner.train import train

    class Logs(TrainerCallback):
        def __init__(self):
            self.rows = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.rows.append((logs["loss"], logs["grad_norm"]))

    beir = write_beir(tmp_path / "beir")
    runs = {}
    for compiled in ("false", "true"):
        logs = Logs()
        overrides = ["train.max_steps=3", f"train.compile={compiled}", "model.gradient_checkpointing=true"]
        result = train(tiny_config(tiny_model_dir, beir, tmp_path / compiled, *overrides), callbacks=[logs])
        layers = unwrap_backbone(result["model"]).layers
        runs[compiled] = (logs.rows, [layer._compiled_call_impl is not None for layer in layers])
    assert runs["true"][1] == [True, True] and runs["false"][1] == [False, False]
    assert len(runs["true"][0]) == 3
    for (loss, norm), (ref_loss, ref_norm) in zip(runs["true"][0], runs["false"][0], strict=True):
        assert abs(loss - ref_loss) < 1e-5 and abs(norm - ref_norm) < 1e-4 * ref_norm


@pytest.mark.parametrize("four_bit", [False, True])
def test_no_fp32_copies_of_frozen_weights(tiny_model_dir, tmp_path, four_bit):
    """bf16 LoRA and QLoRA through `tuner train`: every frozen weight stays bf16 (or 4-bit); only adapters are fp32."""
    from train_helpers import tiny_config, write_beir

    from tuner.train import train

    overrides = ["model.dtype=bfloat16", "train.precision=bf16", "train.max_steps=1"]
    overrides.append("model.gradient_checkpointing=true")
    if four_bit:
        overrides += ["model.load_in_4bit=true", "model.bnb_4bit_compute_dtype=bfloat16"]
    config = tiny_config(tiny_model_dir, write_beir(tmp_path / "beir"), tmp_path / "run", *overrides)
    model = train(config)["model"]
    frozen = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    wide = [n for n, p in frozen.items() if p.dtype == torch.float32]
    assert not wide, f"frozen fp32 weights: {wide[:5]}"
    embed = unwrap_backbone(model).embed_tokens.weight
    assert embed.dtype == torch.bfloat16
    if four_bit:
        assert any(type(p).__name__ == "Params4bit" for p in frozen.values())


def test_liger_kernel_needs_cuda_and_says_so(tiny_model_dir, tmp_path):
    from train_helpers import tiny_config, write_beir

    from tuner.train import train

    if torch.cuda.is_available():
        pytest.skip("this checks the error on a machine without CUDA")
    config = tiny_config(tiny_model_dir, write_beir(tmp_path / "beir"), tmp_path / "run", "model.liger_kernel=true")
    with pytest.raises(ValueError, match=r"model\.liger_kernel"):
        train(config)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_speed_options_are_validated_and_old_packing_key_still_reads():
    assert load_config(None, ["train.packing=true"]).train.batching == "packed"
    assert load_config(None, ["train.packing=false"]).train.batching == "sorted"
    with pytest.raises(ConfigError, match="checkpoint_ratio"):
        load_config(None, ["model.checkpoint_ratio=0"])
    with pytest.raises(ConfigError, match="batch_tokens"):
        load_config(None, ["train.batch_tokens=0"])
    with pytest.raises(ConfigError, match="batching"):
        load_config(None, ["train.batching=ragged"])


def _bench_train():
    """scripts/bench_train.py as a module (its numerics check is what the GPU run reports)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "bench_train.py"
    spec = importlib.util.spec_from_file_location("bench_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_numerics_compare_loss_and_lora_gradients_with_the_naive_path(tiny_model_dir):
    """The benchmark's numerics step: the fast paths' loss and LoRA gradients match naive's; a broken path's do not."""
    from types import SimpleNamespace

    from tuner.contract import PromptEncoder, load_tokenizer
    from tuner.packing import pack_rows

    bench = _bench_train()
    enc = PromptEncoder(load_tokenizer(), max_length=8192)
    prompts = bench.synthetic_prompts(enc, groups=2, group_size=3, doc_max=60, seed=0)
    args = SimpleNamespace(batch_tokens=400, row_tokens=300)

    def numerics(path, fn=None):
        model, _, _ = bench.build(path, tiny_model_dir, False, "float32", seed=0)
        logits_fn = bench.make_step(path, model, prompts, args, PAD, enc.yes_id, enc.no_id, "cpu")
        before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        out = bench.lora_numerics(model, fn(model) if fn else logits_fn, 2, 3, cuda=False, seed=0)
        # the step leaves the model as it found it: same weights (lora_B back to 0), dropout on, no gradients
        for n, p in model.named_parameters():
            if p.requires_grad:
                assert torch.equal(p, before[n]) and p.grad is None, n
        assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {0.05}
        with torch.no_grad():  # the usual init (lora_B = 0): the numerics step's adapter changed the loss
            assert abs(float(listwise_loss(logits_fn().view(2, 3))) - out["loss"]) > 1e-4
        return out

    ref = numerics("naive")
    assert len(ref["grads"]) == ref["trainable"] > 0
    assert all(float(g.abs().max()) > 0 for g in ref["grads"].values())  # lora_A too: lora_B is not 0 here
    for path in ("tuner", "packed", "half-ckpt"):
        diff = bench.compare_numerics(numerics(path), ref)
        assert diff["loss_abs_diff_vs_naive"] < 1e-5 and diff["logits_max_abs_diff_vs_naive"] < 1e-5, path
        assert diff["grad_rel_err_vs_naive"] < 1e-5 and diff["grad_max_abs_diff_vs_naive"] < 1e-5, path

    def flat_positions(model):  # packed rows read as one long sequence each: other scores, other gradients
        def fn():
            rows = pack_rows(prompts, PAD, row_tokens=300)
            rows["position_ids"] = torch.arange(rows["input_ids"].shape[1]).expand_as(rows["input_ids"])
            return model(**rows)

        return fn

    broken = bench.compare_numerics(numerics("packed", flat_positions), ref)
    assert broken["grad_rel_err_vs_naive"] > 1e-2 and broken["logits_max_abs_diff_vs_naive"] > 1e-3
