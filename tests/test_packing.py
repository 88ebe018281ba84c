"""The fast training paths (packed rows, length-sorted chunks) give the simple padded path's loss and gradients."""

from __future__ import annotations

import pytest
import torch

from tuner.head import collate, yes_no_logits
from tuner.losses import listwise_loss
from tuner.modeling import load_base
from tuner.packing import chunked_yes_no_logits, pack_rows, packed_yes_no_logits, sorted_chunks

YES, NO, PAD = 9693, 2152, 151643


def test_pack_rows_layout():
    ids = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10]]
    out = pack_rows(ids, pad_id=0, row_tokens=5)
    # longest first, first fit: row 0 = [6 7 8 9] + [10]; row 1 = [1 2 3] + [4 5]
    assert out["input_ids"].tolist() == [[6, 7, 8, 9, 10], [1, 2, 3, 4, 5]]
    assert out["position_ids"].tolist() == [[0, 1, 2, 3, 0], [0, 1, 2, 0, 1]]
    assert out["row_index"].tolist() == [1, 1, 0, 0]
    assert out["last_index"].tolist() == [2, 4, 3, 4]
    for i, seq in enumerate(ids):  # the last token of each prompt is where the indices point
        assert out["input_ids"][out["row_index"][i], out["last_index"][i]] == seq[-1]


def test_pack_rows_pads_tail_as_its_own_segment_and_keeps_long_prompts_whole():
    out = pack_rows([[1] * 6, [2, 2]], pad_id=0, row_tokens=4)
    assert out["input_ids"].tolist() == [[1] * 6, [2, 2, 0, 0, 0, 0]]
    assert out["position_ids"][1].tolist() == [0, 1, 0, 1, 2, 3]
    one = pack_rows([[1, 2], [3]], pad_id=0)
    assert one["input_ids"].tolist() == [[1, 2, 3]] and one["position_ids"].tolist() == [[0, 1, 0]]
    with pytest.raises(ValueError):
        pack_rows([], pad_id=0)


def test_a_later_row_fuller_than_the_first_sets_the_width():
    """First fit, longest first, can fill a later row more than the first: 6 alone (5 does not fit beside it), then
    5 + 5. Rows are as wide as the fullest one."""
    out = pack_rows([[1] * 6, [2] * 5, [3] * 5], pad_id=0, row_tokens=10)
    assert out["input_ids"].tolist() == [[1] * 6 + [0] * 4, [2] * 5 + [3] * 5]
    assert out["last_index"].tolist() == [5, 4, 9] and out["row_index"].tolist() == [0, 1, 1]


def test_sorted_chunks_respect_budget_and_cover_all():
    ids = [[1] * n for n in (5, 2, 9, 3, 7, 4)]
    chunks = sorted_chunks(ids, pad_id=0, batch_tokens=12)
    seen = sorted(i for idx, _ in chunks for i in idx.tolist())
    assert seen == list(range(len(ids)))
    for idx, batch in chunks:
        assert batch["input_ids"].numel() <= 12 or len(idx) == 1
        assert batch["last_index"].tolist() == [len(ids[i]) - 1 for i in idx.tolist()]


def test_a_chunk_that_fills_the_budget_exactly_stays_one_chunk():
    chunks = sorted_chunks([[1] * 4, [2] * 3, [3] * 4], pad_id=0, batch_tokens=12)
    assert [idx.tolist() for idx, _ in chunks] == [[1, 0, 2]]  # 3 rows x 4 tokens = 12, at the budget
    assert [idx.tolist() for idx, _ in sorted_chunks([[1] * 4, [2] * 3, [3] * 4], 0, 11)] == [[1, 0], [2]]


@pytest.fixture(scope="module")
def lora_model(tiny_model_dir):
    from train_helpers import random_lora

    return random_lora(tiny_model_dir, attn_implementation="sdpa")


def _loss_and_grads(model, logits_fn):
    model.zero_grad(set_to_none=True)
    logits = logits_fn()
    loss = listwise_loss(logits.view(3, 4))
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return logits.detach(), loss.detach(), grads


@pytest.mark.parametrize("row_tokens", [None, 160])
def test_packed_and_chunked_match_padded_path(lora_model, row_tokens):
    gen = torch.Generator().manual_seed(1)
    lengths = torch.randint(12, 70, (12,), generator=gen).tolist()
    ids = [torch.randint(1000, 150000, (n,), generator=gen).tolist() for n in lengths]

    ref_logits, ref_loss, ref_grads = _loss_and_grads(
        lora_model, lambda: yes_no_logits(lora_model, **collate(ids, PAD), yes_id=YES, no_id=NO)
    )
    packed = pack_rows(ids, PAD, row_tokens=row_tokens)
    if row_tokens is not None:
        assert packed["input_ids"].shape[0] > 1 and packed["input_ids"].shape[1] <= 160
    else:
        assert packed["input_ids"].shape[0] == 1  # several prompts share the row: cross-talk would show up
    chunks = sorted_chunks(ids, PAD, batch_tokens=200)
    assert len(chunks) > 1
    for fn in (
        lambda: packed_yes_no_logits(lora_model, **packed, yes_id=YES, no_id=NO),
        lambda: chunked_yes_no_logits(lora_model, chunks, YES, NO),
    ):
        logits, loss, grads = _loss_and_grads(lora_model, fn)
        torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0)
        assert abs(float(loss) - float(ref_loss)) < 1e-5
        assert grads.keys() == ref_grads.keys() and len(grads) > 0
        for name, g in grads.items():
            assert float(ref_grads[name].abs().max()) > 0, name  # every LoRA tensor gets a real gradient
            torch.testing.assert_close(g, ref_grads[name], atol=1e-5, rtol=0, msg=name)


def test_packing_without_restarting_positions_would_differ(lora_model):
    """Guards the test above: the same row read as one long sequence gives other scores."""
    ids = [[5000 + i for i in range(30)], [9000 + i for i in range(25)]]
    packed = pack_rows(ids, PAD)
    with torch.no_grad():
        good = packed_yes_no_logits(lora_model, **packed, yes_id=YES, no_id=NO)
        flat = dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1])[None])
        bad = packed_yes_no_logits(lora_model, **flat, yes_id=YES, no_id=NO)
    assert abs(float(good[1] - bad[1])) > 1e-4


@pytest.mark.parametrize("batching", ["packed", "sorted"])
def test_collator_batching_through_the_training_forward(lora_model, tokenizer, batching):
    """`train.batching`: GroupCollator + the Trainer's score forward give the padded batch's logits."""
    from tuner.contract import PromptEncoder
    from tuner.score_forward import install_score_forward, remove_score_forward
    from tuner.train_data import GroupCollator

    enc = PromptEncoder(tokenizer, max_length=96)
    samples = [
        {
            "query": "what heals wounds",
            "instruction": None,
            "docs": ["honey on burns", "tax law", "moon rocks"],
            "teacher": None,
        },
        {
            "query": "cause of scurvy",
            "instruction": "Find evidence",
            "docs": ["vitamin C lack " * 9, "a", "b c"],
            "teacher": None,
        },
    ]
    padded = GroupCollator(enc, tokenizer.pad_token_id)(samples)
    fast = GroupCollator(enc, tokenizer.pad_token_id, batching=batching, batch_tokens=160)(samples)
    assert "attention_mask" not in fast
    if batching == "packed":
        keys = ("input_ids", "position_ids", "row_index", "last_index")
        assert fast["input_ids"].shape[1] <= 160 and fast["input_ids"].shape[0] > 1
    else:
        keys = ("chunks",)
        assert len(fast["chunks"]) > 1 and all(b["input_ids"].numel() <= 160 for _, b in fast["chunks"])
    assert torch.equal(fast["group_labels"], padded["group_labels"])
    assert int(fast["num_tokens"]) == int(padded["attention_mask"].sum())
    install_score_forward(lora_model, enc.yes_id, enc.no_id)
    try:
        with torch.no_grad():
            a = lora_model(**{k: padded[k] for k in ("input_ids", "attention_mask", "last_index")})
            b = lora_model(**{k: fast[k] for k in keys})
            va = lora_model(**{k: padded[k] for k in ("input_ids", "attention_mask", "last_index")}, vocab=True)
            vb = lora_model(**{k: fast[k] for k in keys}, vocab=True)
            # bf16 training runs this forward under autocast, which computes a matmul in bf16 whatever its
            # inputs' dtypes: the head's projection must stay fp32 there (the served score is fp32)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                auto = [lora_model(**{k: fast[k] for k in keys}), lora_model(**{k: fast[k] for k in keys}, vocab=True)]
    finally:
        remove_score_forward(lora_model)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
    torch.testing.assert_close(vb, va, atol=1e-4, rtol=1e-5)
    assert [t.dtype for t in auto] == [torch.float32, torch.float32]
    torch.testing.assert_close(auto[0], b, atol=0.1, rtol=0.05)  # the bf16 decoder's rounding, nothing more


def test_the_training_forward_scores_yes_minus_no_as_the_reranker_does(lora_model, tokenizer):
    """The training forward's score is l_yes − l_no at the last real token (the contract's, and what `Reranker`
    serves through `tuner.head.yes_no_logits`): the batching tests compare that forward with itself, so yes and no
    swapped in it passed them all, while training would learn the inverse ranking."""
    from tuner.contract import PromptEncoder
    from tuner.head import collate, yes_no_logits
    from tuner.score_forward import install_score_forward, remove_score_forward

    enc = PromptEncoder(tokenizer, max_length=96)
    rows = [enc.encode("what heals wounds", doc, None) for doc in ("honey on burns", "tax law and more tax law")]
    batch = collate(rows, tokenizer.pad_token_id)
    with torch.no_grad():
        served = yes_no_logits(lora_model, **batch, yes_id=enc.yes_id, no_id=enc.no_id)
        install_score_forward(lora_model, enc.yes_id, enc.no_id)
        try:
            score, vocab = lora_model(**batch), lora_model(**batch, vocab=True)
        finally:
            remove_score_forward(lora_model)
    torch.testing.assert_close(score, served, atol=1e-5, rtol=0)
    torch.testing.assert_close(score, vocab[:, enc.yes_id] - vocab[:, enc.no_id], atol=1e-4, rtol=0)
    assert float((score - served).abs().max()) < 1e-5 < float(score.abs().min())  # not a zero score either


def test_sft_vocabulary_logits_of_a_bf16_base_are_fp32_without_autocast(tiny_model_dir, tokenizer):
    """train.precision=fp32 on a bf16 base (no autocast): the vocabulary logits are an fp32 product, not a bf16
    one cast up (which rounds them to bf16's 8 bits)."""
    from transformers import AutoModelForCausalLM

    from tuner.contract import PromptEncoder
    from tuner.head import last_hidden
    from tuner.score_forward import install_score_forward
    from tuner.train_data import GroupCollator

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval()
    enc = PromptEncoder(tokenizer, max_length=96)
    sample = {"query": "what heals wounds", "instruction": None, "docs": ["honey on burns", "tax law"], "teacher": None}
    batch = GroupCollator(enc, tokenizer.pad_token_id)([sample])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "last_index")}
    with torch.no_grad():
        h = last_hidden(model, **inputs)
        weight = model.get_output_embeddings().weight
        install_score_forward(model, enc.yes_id, enc.no_id)
        got = model(**inputs, vocab=True)
    assert got.dtype == torch.float32 and torch.equal(got, h.float() @ weight.float().T)
    assert not torch.equal(got, (h @ weight.T).float())  # what a bf16 product would give


def test_the_head_projects_in_fp32_under_autocast():
    from tuner.head import project

    h, w = torch.randn(4, 64), torch.randn(64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.matmul(h, w).dtype == torch.bfloat16  # what autocast does to a plain matmul
        got = project(h, w)
    assert got.dtype == torch.float32 and torch.equal(got, h @ w)


@pytest.mark.parametrize("batching", ["padded", "sorted", "packed"])
@pytest.mark.parametrize("kind", ["listwise", "sft"])
def test_placeholder_slots_are_not_encoded_and_the_loss_and_gradients_stay(lora_model, tokenizer, batching, kind):
    """Short groups' placeholder slots cost no forward pass: the collator encodes the real documents only, and
    the trainer scatters their scores back into the slots; loss and LoRA gradients equal those of encoding the
    placeholders too (what the masked loss saw before), in every batching mode."""
    from tuner.contract import PromptEncoder
    from tuner.data.schema import Group
    from tuner.score_forward import install_score_forward, remove_score_forward
    from tuner.train_data import GroupCollator, sample_group
    from tuner.trainer import RerankTrainer

    enc = PromptEncoder(tokenizer, max_length=96)
    groups = [
        Group(query="what heals wounds", pos=["honey on burns"], neg=["tax law", "moon rocks", "tides", "ink"]),
        Group(query="cause of scurvy", pos=["vitamin C lack " * 5], neg=["a sailor's diet"], instruction="Find"),
        Group(query="why is the sky blue", pos=["Rayleigh scattering"], neg=["green grass", "red apples"]),
    ]
    samples = [sample_group(g, 4, 0, 0, i) for i, g in enumerate(groups)]
    assert [s["mask"] for s in samples] == [None, [True, True, False, False], [True, True, True, False]]
    collator = GroupCollator(enc, tokenizer.pad_token_id, batching=batching, batch_tokens=160)
    batch = collator(samples)
    assert batch["slot_index"].tolist() == [0, 1, 2, 3, 4, 5, 8, 9, 10]  # slots 6, 7 and 11 are placeholders
    every = collator([dict(s, mask=None) for s in samples])  # the placeholders encoded too ...
    every["group_mask"] = batch["group_mask"]  # ... and their slots masked, as before
    assert batch["num_tokens"] < every["num_tokens"]  # throughput counts real documents only

    trainer = object.__new__(RerankTrainer)  # compute_loss reads only these
    trainer.loss_kind, trainer.yes_id, trainer.no_id = kind, enc.yes_id, enc.no_id
    trainer.loss_kwargs = {"temperature": 1.0}
    lora_model.eval()  # (no dropout; the throughput window is for training steps)
    install_score_forward(lora_model, enc.yes_id, enc.no_id)
    try:
        out = {}
        for name, inputs in (("skipped", batch), ("encoded", every)):
            lora_model.zero_grad(set_to_none=True)
            loss, extra = trainer.compute_loss(lora_model, inputs, return_outputs=True)
            loss.backward()
            grads = {n: p.grad.clone() for n, p in lora_model.named_parameters() if p.requires_grad}
            out[name] = loss.detach(), extra["logits"].detach(), grads
    finally:
        remove_score_forward(lora_model)
    (loss_a, logits_a, grads_a), (loss_b, logits_b, grads_b) = out["skipped"], out["encoded"]
    real = batch["group_mask"]
    torch.testing.assert_close(loss_a, loss_b, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits_a[real], logits_b[real], atol=1e-5, rtol=0)
    assert torch.all(logits_a[~real] == 0) and torch.any(logits_b[~real] != 0)
    for n in grads_b:
        torch.testing.assert_close(grads_a[n], grads_b[n], atol=1e-5, rtol=1e-4)


def test_train_batching_modes_follow_the_padded_run(tiny_model_dir, tmp_path):
    """End to end through the Trainer: `train.batching` sorted and packed log the padded run's losses and norms.

    (Adapter weights are not compared: Adam turns float noise in near-zero gradients into lr-sized steps.)
    """
    from train_helpers import tiny_config, write_beir
    from transformers import TrainerCallback

    from tuner.train import train

    class Logs(TrainerCallback):
        def __init__(self):
            self.rows, self.flos = [], None

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.rows.append((logs["loss"], logs["grad_norm"]))
                assert logs["real_tokens_per_s"] > 0  # the throughput users compare settings by
            self.flos = state.total_flos

    beir = write_beir(tmp_path / "beir")
    logs = {}
    for batching in ("padded", "sorted", "packed"):
        config = tiny_config(
            tiny_model_dir,
            beir,
            tmp_path / f"run-{batching}",
            "train.max_steps=3",
            f"train.batching={batching}",
            "train.batch_tokens=400",  # several chunks / rows per micro-batch
        )
        logs[batching] = Logs()
        train(config, callbacks=[logs[batching]])
    for batching in ("sorted", "packed"):
        assert len(logs[batching].rows) == 3
        for (loss, norm), (ref_loss, ref_norm) in zip(logs[batching].rows, logs["padded"].rows, strict=True):
            assert abs(loss - ref_loss) < 1e-5 and abs(norm - ref_norm) < 1e-4 * ref_norm
        # FLOPs count real tokens only, so they do not depend on the batching
        assert logs[batching].flos == logs["padded"].flos > 0


def test_packed_rows_under_flex_attention_match_padded_sdpa(tiny_model_dir):
    """The GPU recipe's pairing (packed rows + flex_attention, which skips the blocks between prompts) scores like
    the padded sdpa path. Forward only: flex_attention runs on CPU (compiled) but has no CPU backward; the
    gradients of packed rows are checked under sdpa above, and on a GPU by scripts/bench_train.py."""
    gen = torch.Generator().manual_seed(2)
    ids = [torch.randint(1000, 150000, (n,), generator=gen).tolist() for n in (40, 17, 63, 25, 52, 33, 12, 58)]
    scores = {}
    for attn in ("sdpa", "flex_attention"):
        model = load_base(tiny_model_dir, dtype="float32", attn_implementation=attn, device="cpu")
        with torch.no_grad():
            if attn == "sdpa":
                scores[attn] = yes_no_logits(model, **collate(ids, PAD), yes_id=YES, no_id=NO)
            else:
                scores[attn] = packed_yes_no_logits(model, **pack_rows(ids, PAD), yes_id=YES, no_id=NO)
    assert float(scores["sdpa"].std()) > 1e-3  # distinct scores: cross-talk between prompts would show
    torch.testing.assert_close(scores["flex_attention"], scores["sdpa"], atol=1e-5, rtol=0)
