"""MEM1's PPO (``memr1.rl.mem1_ppo``), its settings and the format-shaped reward, on the tiny random Qwen2.

Each test can fail: GAE is checked against numbers worked out by hand, the ratio and KL claims
against a learning-rate-0 control, the packed layout against per-turn rows at the exactness bar of
the GRPO-style loss (1e-5), training against the same run at learning rate 0, resume with ``==``-
level tolerances.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from memr1.errors import ConfigError
from memr1.rl.mem1_ppo import collect, minibatch_backward, ppo_step, trajectory_advantages
from memr1.rl.mem1_trainer import Mem1TrainSettings, train_mem1
from memr1.rl.packing import Trajectory, TrajectoryTurn, per_turn_rows
from memr1.rl.ppo import ValueHead
from memr1.rl.sampling import encode_messages, sample_batch
from tests.test_mem1_training import EXACT, load, synthetic

PPO = {"model": "tiny", "algorithm": "ppo", "ppo_epochs": 2, "minibatches": 2, "micro_batch": 3}


@pytest.fixture(scope="module")
def tiny_path():
    from memr1.llm.tiny import tiny_model_path

    return tiny_model_path()


def settings(**kw) -> Mem1TrainSettings:
    s = Mem1TrainSettings(**{**PPO, **kw})
    s.validate()
    return s


def groups_of_synthetic() -> list[list[Trajectory]]:
    return [
        [synthetic(40 + i, (5, 3, 4), r) for i, r in enumerate((2.0, 0.0, 1.0))],
        [synthetic(50 + i, (3, 6), r) for i, r in enumerate((0.0, 1.0, 0.0))],
    ]


def optimizer_for(model, head, lr: float, critic_lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        [{"params": list(model.parameters()), "lr": lr}, {"params": list(head.parameters()), "lr": critic_lr}],
        weight_decay=0.0,
    )


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "bad", [{"algorithm": "reinforce"}, {"ppo_epochs": 0}, {"minibatches": 0}, {"gae_gamma": 1.5}, {"vf_coef": -1}]
)
def test_settings_reject_bad_ppo_values(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        Mem1TrainSettings(model="tiny", **bad).validate()


def test_unknown_algorithm_is_a_clear_error_on_the_command_line_config():
    from memr1.stages.mem1 import Mem1Config, Mem1TrainConfig

    with pytest.raises(ConfigError, match=r"algorithm must be one of \('grpo', 'ppo'\), got 'a2c'"):
        Mem1TrainConfig.from_params({"algorithm": "a2c"}).resolved()
    with pytest.raises(ConfigError, match="algorithm"):
        Mem1Config.from_params({"algorithm": "a2c"}).resolved()
    assert Mem1TrainConfig.from_params({"algorithm": "ppo"}).resolved().algorithm == "ppo"


# --------------------------------------------------------------------------- GAE over a trajectory


def test_gae_runs_over_the_generated_tokens_of_all_turns_by_hand():
    """Two turns (2 and 1 generated tokens): the reward on the last token, the KL on every token, and the
    bootstrap from turn 0's last token to turn 1's value crosses the turn boundary."""
    lp, ref = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-1.5, -2.0, -1.0])
    v = torch.tensor([0.5, 0.2, 0.4])
    # token rewards: -0.1 * (lp - ref) + [0, 0, 2] = [-0.05, 0, 1.95]
    adv, ret = trajectory_advantages(2.0, lp, v, ref, beta=0.1, gamma=1.0, lam=1.0)
    assert torch.allclose(ret, torch.tensor([1.9, 1.95, 1.95])) and torch.allclose(adv, torch.tensor([1.4, 1.75, 1.55]))
    # gamma .9, lambda .5: deltas [-0.05 + .9*.2 - .5, .9*.4 - .2, 1.95 - .4] = [-0.37, 0.16, 1.55]
    # A2 = 1.55; A1 = .16 + .45 * 1.55 = .8575; A0 = -.37 + .45 * .8575 = .015875
    adv, ret = trajectory_advantages(2.0, lp, v, ref, beta=0.1, gamma=0.9, lam=0.5)
    assert torch.allclose(adv, torch.tensor([0.015875, 0.8575, 1.55])) and torch.allclose(ret, adv + v)
    adv, _ = trajectory_advantages(2.0, lp, v, None, beta=0.1, gamma=1.0, lam=1.0)  # KL kept out of the reward
    assert torch.allclose(adv, torch.tensor([1.5, 1.8, 1.6]))


def test_buffer_covers_exactly_the_generated_tokens_and_whitens_them(model):
    trajs = [t for g in groups_of_synthetic() for t in g]
    head = ValueHead(model.config.hidden_size)
    buf = collect(model, head, trajs, settings())
    assert [len(a) for a in buf.advantages] == [t.n_generated for t in trajs]  # no prompt or observation token
    assert buf.input_tokens == per_turn_rows(trajs, 0).real_tokens
    flat = torch.cat(buf.advantages)
    assert abs(float(flat.mean())) < 1e-6 and abs(float(flat.std()) - 1) < 1e-4
    # A fresh head predicts 0, so with gamma = lambda = 1 and no KL every token's return is its trajectory's reward.
    for t, r in zip(trajs, buf.returns):
        assert torch.equal(r, torch.full_like(r, t.reward))


# --------------------------------------------------------------------------- exactness


@pytest.fixture(scope="module")
def model(tiny_path):
    return load(tiny_path)


@pytest.mark.parametrize("packed", [False, True])
def test_entropies_and_values_come_from_the_same_forward_on_either_logits_path(model, packed):
    """Chunked output layer (the default) and full logits agree; the entropy is that of softmax(logits / T)."""
    from memr1.rl.packing import packed_rows, token_scores

    trajs = [synthetic(60, (4, 3)), synthetic(61, (5,), task_len=15)]
    batch = packed_rows(trajs, 0) if packed else per_turn_rows(trajs, 0)
    torch.manual_seed(0)
    head = ValueHead(model.config.hidden_size)
    torch.nn.init.normal_(head.linear.weight)
    with torch.no_grad():
        full, chunked = (
            token_scores(model, batch, temperature=0.7, chunk_tokens=n, with_entropy=True, value_head=head)
            for n in (0, 3)
        )
        logits = model(input_ids=batch.input_ids[:1, :-1]).logits[0] if not packed else None
    for a, b in zip(full, chunked):
        assert float((a - b).abs().max()) <= EXACT
    assert bool((chunked.values != 0).any()) and bool((chunked.entropies[batch.loss_mask] > 0).all())
    if logits is not None:  # row 0 is one whole turn: its entropies by the textbook formula
        expected = torch.distributions.Categorical(logits=logits.float() / 0.7).entropy()
        where = batch.loss_mask[0, 1:]
        assert torch.allclose(chunked.entropies[0, 1:][where], expected[where], atol=1e-5)


@pytest.mark.parametrize("loss_type", ["token", "trajectory"])
def test_ppo_loss_on_packed_rows_equals_the_per_turn_loss(tiny_path, loss_type):
    """Every term (clipped surrogate with some ratios clipped, clipped value loss, entropy, k3 KL) and the
    gradient of policy and value head: packed rows against per-turn rows."""
    m = load(tiny_path)
    torch.manual_seed(0)
    head = ValueHead(m.config.hidden_size)
    torch.nn.init.normal_(head.linear.weight, std=0.5)  # non-zero values, so the value terms count
    s = settings(loss_type=loss_type, beta=0.05, kl_in_reward=False, vf_coef=0.5, entropy_coef=0.01)
    trajs = [t for g in groups_of_synthetic() for t in g]
    buf = collect(m, head, trajs, dataclasses.replace(s, beta=0.0))
    g = torch.Generator().manual_seed(1)
    buf.old_logps = [lp + 0.3 * torch.randn(lp.shape, generator=g) for lp in buf.old_logps]  # ratios away from 1
    buf.old_values = [v + 0.3 * torch.randn(v.shape, generator=g) for v in buf.old_values]
    buf.ref_logps = [lp - 0.2 * torch.rand(lp.shape, generator=g) for lp in buf.old_logps]
    results = []
    for packed in (False, True):
        m.zero_grad()
        head.zero_grad()
        out = minibatch_backward(m, head, buf, [4, 0, 2, 5, 1], dataclasses.replace(s, packed=packed))
        grads = torch.cat([p.grad.flatten() for p in [*m.parameters(), *head.parameters()]])
        results.append((out, grads))
    (a, ga), (b, gb) = results
    print(f"PPO loss per-turn {a['loss']:.8f} packed {b['loss']:.8f}; clipfrac {a['clipfrac']:.2f}")
    assert a["clipfrac"] > 0.1  # the clip is active
    for key in ("loss", "pg", "vf", "entropy", "approx_kl"):
        assert abs(a[key] - b[key]) <= EXACT, key
    assert float((ga - gb).abs().max()) <= 1e-4 * float(ga.abs().max())


# --------------------------------------------------------------------------- the update loop


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("lr", [1e-3, 0.0])
def test_ratio_is_one_on_the_first_update_only(tiny_path, packed, lr):
    m = load(tiny_path)
    head = ValueHead(m.config.hidden_size)
    s = settings(packed=packed, learning_rate=lr, critic_learning_rate=lr)
    stats = ppo_step(m, optimizer_for(m, head, lr, lr), head, groups_of_synthetic(), s, seed=3)
    assert stats["ppo/updates"] == 4  # 2 epochs x 2 minibatches
    assert stats["ppo/ratio_dev_first"] < 1e-5  # the sampling policy itself: ratio 1 up to fp32
    if lr:
        assert stats["ppo/ratio_dev_later"] > 1e-3  # the three later updates score a changed policy
    else:
        assert stats["ppo/ratio_dev_later"] < 1e-5  # control: nothing moved, so the ratio stays 1


def test_kl_is_zero_while_the_adapter_is_the_reference(tiny_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    m = get_peft_model(load(tiny_path), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    head = ValueHead(m.config.hidden_size)
    opt = optimizer_for(m, head, 1e-2, 1e-2)
    kls = []
    for kl_in_reward in (True, False):
        s = settings(lora_r=4, beta=0.1, kl_in_reward=kl_in_reward)
        kls.append(ppo_step(m, opt, head, groups_of_synthetic(), s, seed=0)["kl"])
    assert kls[0] == 0.0  # a fresh adapter adds exactly 0: the policy is the reference
    assert abs(kls[1]) > 1e-4  # after the updates of the first step it is not


def test_value_loss_falls_on_a_fixed_buffer(tiny_path):
    """The same trajectories every step, policy frozen (learning rate 0), critic at 1e-2: its loss falls;
    with the critic frozen too (control) it stays where it was."""
    curves = {}
    for critic_lr in (1e-2, 0.0):
        m = load(tiny_path)
        head = ValueHead(m.config.hidden_size)
        s = settings(learning_rate=0.0, critic_learning_rate=critic_lr, ppo_epochs=1, vf_coef=1.0)
        opt = optimizer_for(m, head, 0.0, critic_lr)
        curves[critic_lr] = [
            ppo_step(m, opt, head, groups_of_synthetic(), s, seed=0)["ppo/vf"] for _ in range(12)
        ]  # fmt: skip
    learned, frozen = curves[1e-2], curves[0.0]
    print("value loss, critic lr 1e-2:", [round(x, 3) for x in learned])
    assert learned[-1] < 0.5 * learned[0], learned
    assert frozen[-1] == pytest.approx(frozen[0], rel=1e-6)


# --------------------------------------------------------------------------- training and resume


def two_turn_rollout(tasks, policy, tokenizer, retriever, *, group_size, max_turns, temperature, seed, **kw):
    """A stand-in MEM1 environment: turn 1 sees only the task and turn 0's last words (a pruned context);
    reward = the turns whose first generated token is even (0 to 2)."""
    g = torch.Generator().manual_seed(seed)
    groups = []
    for task in tasks:
        states, turns = [""] * group_size, [[] for _ in range(group_size)]
        for _turn in range(2):
            prompts = [
                encode_messages(tokenizer, [{"role": "user", "content": f"Task {task}. State: {st}"}]) for st in states
            ]
            comps, _ = sample_batch(
                policy, tokenizer, prompts, max_new_tokens=3, temperature=temperature, generator=g
            )  # fmt: skip
            for k, (p, c) in enumerate(zip(prompts, comps)):
                turns[k].append(TrajectoryTurn(p, c))
                states[k] = tokenizer.decode(c, skip_special_tokens=True)[-12:]
        groups.append([Trajectory(ts, float(sum(t.completion_ids[0] % 2 == 0 for t in ts))) for ts in turns])
    return groups


TASKS = ["alpha", "beta", "gamma", "delta"]


def p_even_first_token(model, tokenizer) -> float:
    """Mean over the tasks of P(first token of turn 0 is even): the expected turn-0 reward, exactly."""
    probs = []
    with torch.no_grad():
        for task in TASKS:
            ids = encode_messages(tokenizer, [{"role": "user", "content": f"Task {task}. State: "}])
            p = model(input_ids=torch.tensor([ids])).logits[0, -1].float().softmax(-1)
            probs.append(float(p[0::2].sum()))
    return sum(probs) / len(probs)


def ppo_run(tmp_path, name, steps, *, lr=1e-3, lora_r=0, **kw):
    s = Mem1TrainSettings(
        **{**PPO, "steps": steps, "tasks_per_step": 2, "group_size": 4, "learning_rate": lr,
           "critic_learning_rate": 1e-2, "lora_r": lora_r, "micro_batch": 4, **kw}
    )  # fmt: skip
    return train_mem1(s, run_dir=tmp_path / name, seed=5, tasks=TASKS, retriever=object(), rollout=two_turn_rollout)


@pytest.mark.parametrize("lr", [1e-2, 0.0])
def test_ppo_raises_a_toy_reward_on_the_tiny_model(tmp_path, tiny_path, lr):
    """8 PPO steps on the two-turn toy task raise the exact expected reward of turn 0 (measured 0.499 -> 0.597);
    at learning rate 0 (control) it does not move."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_path)
    before = p_even_first_token(load(tiny_path), tok)
    result = ppo_run(tmp_path, "toy", 8, lr=lr)
    after = p_even_first_token(result.model, tok)
    rewards = [round(e["reward_mean"], 2) for e in result.history]
    print(f"lr={lr}: P(even first token) {before:.4f} -> {after:.4f}; reward per step {rewards}")
    if lr:
        assert after > before + 0.05
    else:
        assert after == pytest.approx(before, abs=1e-7)


@pytest.mark.parametrize("lora_r", [0, 4])
def test_ppo_resumes_exactly(tmp_path, lora_r):
    straight = ppo_run(tmp_path, "straight", 2, lora_r=lora_r)
    first = ppo_run(tmp_path, "resumed", 1, lora_r=lora_r)
    assert (first.run_dir / "checkpoint" / "extra.pt").is_file()  # the value head and its moments
    second = ppo_run(tmp_path, "resumed", 2, lora_r=lora_r)
    assert (first.resumed_from, second.resumed_from) == (0, 1)
    a, b = straight.history[-1], second.history[0]
    assert a["ppo/vf"] != straight.history[0]["ppo/vf"]  # step 1 saw a trained critic
    for key, value in a.items():
        if isinstance(value, float):
            assert abs(value - b[key]) <= 1e-6, key
        else:
            assert value == b[key], key
    for x, y in ((straight.model, second.model), (straight.value_head, second.value_head)):
        wx, wy = dict(x.named_parameters()), dict(y.named_parameters())
        assert max(float((wx[n] - wy[n]).detach().abs().max()) for n in wx) <= 1e-6


def test_a_checkpoint_from_before_the_ppo_settings_still_resumes(tmp_path):
    """A GRPO checkpoint whose saved settings lack every field added since resumes when those fields are
    at their defaults, and refuses when one is not."""
    grpo = {"algorithm": "grpo", "ppo_epochs": 1, "critic_learning_rate": 1e-4}  # the PPO fields at their defaults
    ppo_run(tmp_path, "old", 1, **grpo)
    state_file = tmp_path / "old" / "checkpoint" / "state.json"
    state = json.loads(state_file.read_text())
    new_fields = ("algorithm", "critic_learning_rate", "ppo_epochs", "minibatches", "gae_gamma", "gae_lambda",
                  "vf_coef", "entropy_coef", "kl_in_reward")  # fmt: skip
    state["config"] = {k: v for k, v in state["config"].items() if k not in new_fields}
    state_file.write_text(json.dumps(state))
    assert ppo_run(tmp_path, "old", 2, **grpo).resumed_from == 1
    with pytest.raises(ConfigError, match="minibatches"):
        ppo_run(tmp_path, "old", 3, **{**grpo, "minibatches": 3})


# --------------------------------------------------------------------------- the shaped reward


def test_format_shaping_rewards_well_formed_episodes():
    from memr1.agents.mem1 import run_episode
    from memr1.eval.mem1_metrics import score_answer
    from memr1.llm.generate import ScriptedGenerator
    from memr1.rl.mem1_rollout import FORMAT_BONUS, REWARDS, episode_reward, format_score
    from tests.test_mem1_training import OneDocRetriever, toy_task

    def episode(*script: str):
        turns = iter(script)
        gen = ScriptedGenerator(lambda messages: next(turns))
        return run_episode(toy_task(), gen, OneDocRetriever(), max_turns=len(script), score=score_answer)

    good = episode("<IS>find both</IS><query>capital France</query>", "<IS>Paris</IS><answer>Paris ; 1970</answer>")
    stateless = episode("<answer>Paris</answer>")  # answers, but writes no state and one answer for two questions
    half = episode("<IS>a</IS><query>Apollo</query>", "no tags at all")  # one valid turn, then an invalid one
    assert [format_score(e) for e in (good, stateless, half)] == [1.0, 0.0, 0.25]
    assert [episode_reward(good, r) for r in REWARDS] == pytest.approx([1.0, 1.0, 1.0 + FORMAT_BONUS, 1 + FORMAT_BONUS])
    assert episode_reward(half, "f1_format") == pytest.approx(0.25 * FORMAT_BONUS)
    assert episode_reward(stateless, "em_format") == episode_reward(stateless, "em") == 1.0
    with pytest.raises(ConfigError, match="reward"):
        episode_reward(good, "bleu_format")


@pytest.mark.parametrize(
    "config, steps, shown",
    [({"algorithm": "ppo"}, 3, "(3 steps, PPO)"), ({}, 3, "(3 steps, GRPO)"), ({"algorithm": "ppo"}, 0, "(0 steps)")],
)
def test_the_report_says_which_algorithm_trained_the_policy(config, steps, shown):
    from memr1.stages.mem1 import Mem1Result
    from widgets.report import SECTIONS

    row = {"policy": "p", "mode": "mem1", "n_objectives": 2, "peak_tokens": 100.0, "tokenizer": "words"}
    result = Mem1Result("hotpotqa", 2, [2], 1, "tiny", steps, "words", {"2": 6}, [row], None)
    assert shown in SECTIONS[Mem1Result][1](result, config)
