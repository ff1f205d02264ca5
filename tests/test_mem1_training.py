"""MEM1 training maths: exact per-turn rows vs packed rows, masks, advantages, learning, resume.

Everything runs on the tiny random Qwen2 in fp32 on CPU. The reference for every log-prob is the
per-turn row: the pruned context the model saw, then what it generated, positions 0..L-1.
"""

from __future__ import annotations

import json
import statistics

import pytest
import torch

from memr1.errors import ConfigError
from memr1.rl.mem1_loss import loss_weights, policy_loss, train_step
from memr1.rl.mem1_rollout import TokenSampler, rollout_groups
from memr1.rl.mem1_trainer import Mem1TrainSettings, train_mem1
from memr1.rl.packing import (
    Trajectory,
    TrajectoryTurn,
    group_advantages,
    packed_rows,
    per_turn_rows,
    split_by_trajectory,
    token_logprobs,
    trajectory_logprobs,
)
from memr1.rl.sampling import encode_messages, sample_batch

EXACT = 1e-5  # fp32 tolerance for "the same log-prob"


@pytest.fixture(scope="module")
def tiny_path():
    from memr1.llm.tiny import tiny_model_path

    return tiny_model_path()


def load(path, impl: str = "sdpa"):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, attn_implementation=impl, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def model(tiny_path):
    return load(tiny_path)


def synthetic(seed: int, completions: tuple[int, ...], reward: float = 0.0, task_len: int = 12) -> Trajectory:
    """A trajectory whose turn t sees: task prompt + a window (last state, query, info) of its own.

    Windows and completions have unequal lengths; the first turn has no window at all.
    """
    g = torch.Generator().manual_seed(seed)

    def ids(n: int) -> tuple[int, ...]:
        return tuple(torch.randint(3, 900, (n,), generator=g).tolist())

    task = (1,) + ids(task_len)  # a chat header token, then the task prompt
    turns = [TrajectoryTurn(task + ids(2 + 3 * t) + (1,), ids(n)) for t, n in enumerate(completions)]
    return Trajectory(turns, reward)


def max_gap(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert [x.shape for x in a] == [y.shape for y in b]
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def logprobs(model, trajs, *, packed: bool, mask_style: str = "additive", share_prefix: bool = True, chunk=1024):
    batch = packed_rows(trajs, 0, share_prefix=share_prefix) if packed else per_turn_rows(trajs, 0)
    with torch.no_grad():
        values = token_logprobs(model, batch, mask_style=mask_style, chunk_tokens=chunk)
    return split_by_trajectory(batch, values, len(trajs)), batch, values


TRAJS = [synthetic(1, (5, 9, 3)), synthetic(2, (7, 2, 6, 4))]


# --------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("share_prefix", [True, False])
def test_packed_row_reproduces_per_turn_logprobs(tiny_path, impl, share_prefix):
    m = load(tiny_path, impl)
    reference = logprobs(m, TRAJS, packed=False)[0]
    packed = logprobs(m, TRAJS, packed=True, share_prefix=share_prefix)[0]
    gap = max_gap(reference, packed)
    print(f"max |d log p| per-turn vs packed ({impl}, share_prefix={share_prefix}): {gap:.2e}")
    assert gap <= EXACT


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_negative_control_bool_mask_cast_to_float_fails(tiny_path, impl):
    """The released MEM1 code's mask: boolean cast to 0/1 and added to the scores: masks nothing."""
    m = load(tiny_path, impl)
    reference = logprobs(m, TRAJS, packed=False)[0]
    broken = logprobs(m, TRAJS, packed=True, mask_style="bool_as_float")[0]
    gap = max_gap(reference, broken)
    print(f"negative control max |d log p| ({impl}): {gap:.3f}")
    assert gap > 1e-3


def test_packed_and_per_turn_rows_give_the_same_gradient(model):
    groups = [[synthetic(3, (4, 6), 1.0), synthetic(4, (5, 3, 2), 0.0)]]
    trajs = groups[0]
    adv, w = group_advantages([1.0, 0.0]), loss_weights(trajs, "token")
    grads = []
    for packed in (False, True):
        model.zero_grad()
        lps, _ = trajectory_logprobs(model, trajs, packed=packed)
        policy_loss(lps, adv, w).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    model.zero_grad()
    scale = float(grads[0].abs().max())
    assert scale > 0
    assert float((grads[0] - grads[1]).abs().max()) <= 1e-4 * scale


# --------------------------------------------------------------------------- causality


@pytest.mark.parametrize("mask_style, leaks", [("additive", False), ("bool_as_float", True)])
@pytest.mark.parametrize("where", ["later_turn", "later_in_turn"])
def test_a_later_token_changes_no_earlier_logprob(model, mask_style, leaks, where):
    traj = TRAJS[1]
    _, batch, before = logprobs(model, [traj], packed=True, mask_style=mask_style)
    scored = batch.loss_mask[0].nonzero().flatten().tolist()
    # later_turn: the second token of the last completion; later_in_turn: the middle of the first one.
    first_len = len(traj.turns[0].completion_ids)
    k = scored[-len(traj.turns[-1].completion_ids) + 1] if where == "later_turn" else scored[first_len // 2]
    ids = batch.input_ids.clone()
    ids[0, k] = (ids[0, k] + 17) % 900 + 3
    batch.input_ids = ids
    with torch.no_grad():
        after = token_logprobs(model, batch, mask_style=mask_style)
    earlier = [p for p in scored if p < k]
    change = float((after[0, earlier] - before[0, earlier]).abs().max())
    assert float((after[0, k] - before[0, k]).abs()) > 0  # the perturbation itself is seen
    assert (change > 1e-4) if leaks else (change <= 1e-6), change


# --------------------------------------------------------------------------- batching, loss tokens


@pytest.mark.parametrize("packed", [False, True])
def test_padded_batch_equals_batch_of_one(model, packed):
    trajs = [synthetic(5, (3,)), synthetic(6, (8, 2, 5, 1), task_len=20), synthetic(7, (2, 9))]
    together = logprobs(model, trajs, packed=packed)[0]
    alone = [logprobs(model, [t], packed=packed)[0][0] for t in trajs]
    assert all(torch.isfinite(x).all() for x in together)
    assert max_gap(together, alone) <= EXACT


@pytest.mark.parametrize("packed", [False, True])
def test_chunked_logprobs_equal_full_logits_in_value_and_gradient(model, packed):
    trajs = [synthetic(8, (6, 3, 5)), synthetic(9, (4, 7), task_len=20)]
    batch = packed_rows(trajs, 0) if packed else per_turn_rows(trajs, 0)
    grads, values = [], []
    for chunk in (0, 4):  # 0: every position's logits at once; 4: four scored tokens at a time
        model.zero_grad()
        v = token_logprobs(model, batch, chunk_tokens=chunk)
        (v * batch.loss_mask).sum().backward()
        values.append(v.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    model.zero_grad()
    assert float((values[0] - values[1]).abs().max()) <= EXACT
    assert float((grads[0] - grads[1]).abs().max()) <= 1e-5 * float(grads[0].abs().max())


def test_chunked_logprobs_run_the_output_layer_on_scored_tokens_only(model):
    batch = per_turn_rows(TRAJS, 0)
    rows = []
    handle = model.lm_head.register_forward_hook(lambda module, inputs, out: rows.append(out.shape[0]))
    try:
        with torch.no_grad():
            token_logprobs(model, batch, chunk_tokens=5)
    finally:
        handle.remove()
    n = sum(t.n_generated for t in TRAJS)
    assert sum(rows) == n and max(rows) <= 5 and len(rows) == -(-n // 5)


@pytest.mark.parametrize("packed", [False, True])
def test_loss_covers_exactly_the_generated_tokens(model, packed):
    trajs = TRAJS
    batch = packed_rows(trajs, 0) if packed else per_turn_rows(trajs, 0)
    n_generated = sum(t.n_generated for t in trajs)
    assert int(batch.loss_mask.sum()) == n_generated
    flat = [t for traj in trajs for turn in traj.turns for t in turn.completion_ids]
    assert batch.input_ids[batch.loss_mask].tolist() == flat  # ids kept, in turn order
    # Gradient reaches the logits only at positions that predict a generated token.
    kept = {}

    def keep_logits(module, inputs, out):  # returns None: the output is left as it is
        out.retain_grad()
        kept["out"] = out

    handle = model.lm_head.register_forward_hook(keep_logits)
    try:
        values = token_logprobs(model, batch, chunk_tokens=0)  # the full-logits path: one [rows, S, V] output
        lps = split_by_trajectory(batch, values, len(trajs))
        policy_loss(lps, [1.0, -1.0], loss_weights(trajs, "token")).backward()
    finally:
        handle.remove()
        model.zero_grad()
    touched = kept["out"].grad.abs().sum(-1) > 0
    predicts_generated = torch.nn.functional.pad(batch.loss_mask[:, 1:], (0, 1))
    assert torch.equal(touched, predicts_generated)


# --------------------------------------------------------------------------- advantages


def test_every_token_of_a_trajectory_gets_its_group_advantage():
    rewards = [2.0, 0.0, 1.0, 1.0]
    mean, std = statistics.mean(rewards), statistics.stdev(rewards)  # sample std, as TRL
    expected = [(r - mean) / (std + 1e-4) for r in rewards]
    assert group_advantages(rewards) == pytest.approx(expected, abs=1e-9)
    trajs = [synthetic(10 + i, (3, 2 + i), r) for i, r in enumerate(rewards)]
    batch = per_turn_rows(trajs, 0)
    assert batch.row_trajectory == [0, 0, 1, 1, 2, 2, 3, 3]
    lps = [torch.zeros(t.n_generated, requires_grad=True) for t in trajs]
    policy_loss(lps, group_advantages(rewards), [1.0] * 4).backward()
    for lp, a in zip(lps, expected):  # d loss / d log p = -A on every token, whichever turn
        assert torch.allclose(lp.grad, torch.full_like(lp.grad, -a), atol=1e-6)


def test_a_group_with_equal_rewards_has_zero_advantage():
    assert group_advantages([1.0, 1.0, 1.0, 1.0]) == [0.0] * 4
    assert group_advantages([0.0]) == [0.0]


# --------------------------------------------------------------------------- learning


def mean_logp(model, trajs, packed):
    with torch.no_grad():
        lps, _ = trajectory_logprobs(model, trajs, packed=packed)
    return float(torch.cat(lps).mean())


@pytest.mark.parametrize("lr, packed, should_learn", [(1e-3, False, True), (1e-3, True, True), (0.0, False, False)])
def test_training_raises_the_logprob_of_rewarded_trajectories(tiny_path, lr, packed, should_learn):
    model = load(tiny_path)
    groups = [
        [synthetic(20 + i, (6, 4, 5), r) for i, r in enumerate((2.0, 0.0, 1.0, 0.0))],
        [synthetic(30 + i, (3, 7), r) for i, r in enumerate((0.0, 0.0, 1.0, 0.0))],
    ]
    rewarded = [t for g in groups for t, a in zip(g, group_advantages([t.reward for t in g])) if a > 0]
    before = mean_logp(model, rewarded, packed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for _ in range(4):
        stats = train_step(model, optimizer, groups, packed=packed, micro_batch=3)
        assert stats["loss_tokens"] == sum(t.n_generated for g in groups for t in g)
    after = mean_logp(model, rewarded, packed)
    print(f"lr={lr} packed={packed}: mean log p of rewarded completions {before:.4f} -> {after:.4f}")
    assert (after > before + 0.05) == should_learn


# --------------------------------------------------------------------------- rollouts and resume


def toy_task():
    from memr1.data.corpus import Corpus, Passage
    from memr1.data.tasks import Objective, Task

    corpus = Corpus(
        "toy",
        (
            Passage("p1", "France", "Paris is the capital of France."),
            Passage("p2", "Apollo 11", "Apollo 11 landed on the Moon in 1969."),
        ),
    )
    objectives = (
        Objective("q1", "What is the capital of France?", ("Paris",), ("p1",)),
        Objective("q2", "When did Apollo 11 land?", ("1969", "July 1969"), ("p2",)),
    )
    return Task("toy-0", "hotpotqa", objectives, corpus)


class OneDocRetriever:
    name = "fixed"

    def search(self, query, k=3):
        return [toy_task().corpus.passages[1 if "apollo" in query.lower() else 0]]


def test_rollout_groups_keep_ids_prune_the_context_and_score_by_em(tiny_path, model, monkeypatch):
    from transformers import AutoTokenizer

    from memr1.agents.mem1 import build_context, format_docs
    from memr1.rl import mem1_rollout

    tok = AutoTokenizer.from_pretrained(tiny_path)
    final = ["Paris ; 1969", "Paris ; 1970"]  # member 0 gets both objectives, member 1 one
    script = [
        "<IS>need both</IS><query>capital France</query>",
        "<IS>Q1 Paris</IS><query>Apollo landing</query>",
        "<IS>done</IS><answer>{}</answer>",
    ]
    calls, produced = [], []

    def scripted(model, tokenizer, prompts, **kwargs):
        turn = len(calls)
        calls.append([list(p) for p in prompts])
        ids = [tokenizer(script[turn].format(final[m]), add_special_tokens=False)["input_ids"] for m in range(2)]
        produced.append([x + [tokenizer.eos_token_id] for x in ids])
        return produced[-1], [[-0.5] * len(x) for x in produced[-1]]

    monkeypatch.setattr(mem1_rollout, "sample_batch", scripted)
    task = toy_task()
    (trajs,) = rollout_groups([task], model, tok, OneDocRetriever(), group_size=2, max_turns=4, temperature=1.0, seed=0)
    assert [len(c) for c in calls] == [2, 2, 2]  # one batched call per turn for both members
    assert [t.reward for t in trajs] == [2.0, 1.0]
    assert [len(t.turns) for t in trajs] == [3, 3]
    for m, traj in enumerate(trajs):
        assert [list(t.completion_ids) for t in traj.turns] == [turn[m] for turn in produced]  # the sampled ids
        assert [list(t.prompt_ids) for t in traj.turns] == [c[m] for c in calls]  # the context fed in
        assert traj.info["logprobs"][0] == (-0.5,) * len(produced[0][m])
    info = format_docs([task.corpus.passages[1]])
    expected = build_context(task, 2, "Q1 Paris", "Apollo landing", info, 2, "mem1")
    assert list(trajs[0].turns[2].prompt_ids) == encode_messages(tok, expected)
    last_context = tok.decode(trajs[0].turns[2].prompt_ids)
    assert "Q1 Paris" in last_context and "need both" not in last_context  # older turns pruned
    final[:] = ["Paris France ; 1969", "Paris ; 1970"]  # member 0 half right on Q1: EM 0, F1 2/3
    rewards = {}
    for reward in ("em", "f1"):
        calls.clear()
        (trajs,) = rollout_groups(
            [task], model, tok, OneDocRetriever(), group_size=2, max_turns=4, temperature=1.0, seed=0, reward=reward
        )
        rewards[reward] = [round(t.reward, 3) for t in trajs]
    assert rewards == {"em": [1.0, 1.0], "f1": [1.667, 1.0]}
    with pytest.raises(ConfigError, match="reward"):
        rollout_groups([task], model, tok, group_size=2, max_turns=4, temperature=1.0, seed=0, reward="bleu")


def test_sampler_logprobs_are_the_logprobs_the_loss_scores(tiny_path, model):
    """Behaviour log-probs (batched, left-padded, KV cache) = per-turn rows scored by the loss."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_path)

    def rollout():
        return rollout_groups(
            [toy_task()],
            model,
            tok,
            OneDocRetriever(),
            group_size=3,
            max_turns=2,
            temperature=1.0,
            seed=1,
            max_new_tokens=12,
        )[0]

    trajs = rollout()
    with torch.no_grad():
        scored, _ = trajectory_logprobs(model, trajs, packed=False)
    kept = [torch.tensor([x for turn in t.info["logprobs"] for x in turn]) for t in trajs]
    gap = max_gap(scored, kept)
    print(f"max |d log p| sampler vs loss rows: {gap:.2e}")
    assert gap <= 1e-4
    again = rollout()
    assert [t.turns for t in again] == [t.turns for t in trajs]  # the seed fixes the samples
    sampler = TokenSampler(model, tok, max_new_tokens=4, temperature=1.0, seed=0)
    assert all(
        len(o.completion_ids) == len(o.logprobs) <= 4 for o in sampler.step([[{"role": "user", "content": "hi"}]] * 2)
    )


def test_train_mem1_runs_on_hotpotqa_tasks_with_the_real_agent(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("MEMR1_DATA_DIR", str(data_dir))
    settings = Mem1TrainSettings(model="tiny", steps=1, tasks_per_step=1, group_size=2, max_turns=2, max_new_tokens=8)
    result = train_mem1(settings, run_dir=tmp_path / "run", seed=0)
    (entry,) = result.history
    assert entry["trajectories"] == 2 and 2 <= entry["turns"] <= 4
    assert 2 <= entry["loss_tokens"] <= 2 * 2 * 8
    assert entry["groups_flat"] == 1  # the random model scores 0 in every rollout: no gradient signal
    assert (result.run_dir / "checkpoint" / "model" / "config.json").is_file()


@pytest.mark.parametrize("bad", [{"reward": "bleu"}, {"prompt_style": "fewshot"}, {"temperature": 0}])
def test_training_settings_reject_unknown_values(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        Mem1TrainSettings(model="tiny", **bad).validate()


def toy_rollout(tasks, policy, tokenizer, retriever, *, group_size, max_turns, temperature, seed, max_new_tokens, **kw):
    """A stand-in environment: a pruned two-message context per turn; reward = even first tokens."""
    generator = torch.Generator().manual_seed(seed)
    groups = []
    for task in tasks:
        states, turns = [""] * group_size, [[] for _ in range(group_size)]
        for _turn in range(max_turns):
            prompts = [
                encode_messages(
                    tokenizer,
                    [
                        {"role": "user", "content": f"Task {task}: answer two questions."},
                        {"role": "assistant", "content": f"<IS>{state}</IS>"},
                    ],
                )
                for state in states
            ]
            comps, _ = sample_batch(
                policy, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature, generator=generator
            )
            for m, (p, c) in enumerate(zip(prompts, comps)):
                turns[m].append(TrajectoryTurn(p, c))
                states[m] = tokenizer.decode(c, skip_special_tokens=True)[-20:]
        groups.append([Trajectory(ts, float(sum(t.completion_ids[0] % 2 == 0 for t in ts))) for ts in turns])
    return groups


def run(tmp_path, name, steps, lora_r):
    settings = Mem1TrainSettings(
        model="tiny",
        steps=steps,
        tasks_per_step=1,
        group_size=3,
        learning_rate=1e-3,
        max_turns=2,
        max_new_tokens=4,
        lora_r=lora_r,
        packed=True,
    )
    return train_mem1(
        settings,
        run_dir=tmp_path / name,
        seed=4,
        tasks=["alpha", "beta", "gamma"],
        retriever=object(),
        rollout=toy_rollout,
    )


@pytest.mark.parametrize("lora_r", [0, 4])
def test_resumed_run_continues_exactly(tmp_path, lora_r):
    straight = run(tmp_path, "straight", 2, lora_r)
    first = run(tmp_path, "resumed", 1, lora_r)
    assert (first.run_dir / "checkpoint" / "optimizer.pt").is_file()
    second = run(tmp_path, "resumed", 2, lora_r)
    assert (first.resumed_from, second.resumed_from, len(second.history)) == (0, 1, 1)
    a, b = straight.history[-1], second.history[0]
    assert straight.history[0]["logp_mean"] != a["logp_mean"]  # step 1 saw a trained model
    print(
        f"lora_r={lora_r} step 1: loss {a['loss']:.3g} vs {b['loss']:.3g}, "
        f"logp {a['logp_mean']:.7f} vs {b['logp_mean']:.7f}, grad norm {a['grad_norm']:.7f} vs {b['grad_norm']:.7f}"
    )
    assert a["reward_mean"] == b["reward_mean"] and a["loss_tokens"] == b["loss_tokens"]
    for key in ("loss", "logp_mean", "grad_norm"):
        assert abs(a[key] - b[key]) <= 1e-6, key
    # The weights after the resumed step: they depend on the restored optimizer moments too.
    weights = [{n: p.detach() for n, p in r.model.named_parameters()} for r in (straight, second)]
    assert max(float((weights[0][n] - weights[1][n]).abs().max()) for n in weights[0]) <= 1e-6
    lines = [json.loads(x) for x in (second.run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [0, 1]
