"""SFT, the comparator of RL (``algorithm=sft``): it imitates the gold completion, resumes exactly, refuses
what it cannot train, and stage 03 runs it on LoCoMo."""

from __future__ import annotations

import pytest

from memr1.errors import ConfigError
from memr1.rl.engines import train_policy
from memr1.rl.grpo import GRPOSettings
from memr1.stages.train_answer import AnswerTrainConfig, sft_rows
from tests.test_grpo import FAST, SHORT_ROWS, STAGE_FAST

ROWS = sft_rows(SHORT_ROWS)


def settings(**kw) -> GRPOSettings:
    base = {**FAST, "algorithm": "sft", "steps": 8, "learning_rate": 2e-2, "num_generations": 2, "batch_size": 4,
            "questions_per_step": 2, "lora_r": 8}  # fmt: skip
    return GRPOSettings(**{**base, **kw})


def completion_logprob(adapter, rows) -> float:
    """Mean log-probability per token of each row's gold completion after its prompt (the adapter on the tiny model,
    or the tiny model alone when ``adapter`` is None)."""
    import torch

    from memr1.llm.load import load_policy

    policy = load_policy("tiny", "transformers")
    model, tok = policy.model, policy.tokenizer
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    total = 0.0
    for r in rows:
        prompt = tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        c_ids = tok(r["completion"], add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p_ids + c_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
        picked = logp[len(p_ids) - 1 :].gather(-1, ids[0, len(p_ids) :, None])
        total += picked.mean().item()
    return total / len(rows)


def test_sft_raises_the_gold_completion_and_resumes_exactly(tmp_path):
    straight = train_policy(settings(save_every=4), ROWS, [], run_dir=tmp_path / "a", seed=0)
    losses = [e["loss"] for e in straight.step_logs()]
    assert len(losses) == 8 and sum(losses[-2:]) < sum(losses[:2]), losses  # it imitates
    before = completion_logprob(None, ROWS)
    after = completion_logprob(straight.adapter_path, ROWS)
    assert after > before + 0.1, (before, after)  # the gold line became more likely (lr 0: exactly equal)
    train_policy(settings(steps=4, save_every=4), ROWS, [], run_dir=tmp_path / "b", seed=0)
    resumed = train_policy(settings(save_every=4, resume=True), ROWS, [], run_dir=tmp_path / "b", seed=0)
    assert resumed.resumed_from and resumed.steps == 8
    again = [e["loss"] for e in resumed.step_logs()]
    assert again == pytest.approx(losses, rel=1e-5)  # the same batches in the same order, the same updates


def test_sft_at_learning_rate_zero_changes_nothing(tmp_path):
    control = train_policy(settings(steps=2, learning_rate=0.0), ROWS, [], run_dir=tmp_path / "c", seed=0)
    assert completion_logprob(control.adapter_path, ROWS) == pytest.approx(completion_logprob(None, ROWS), abs=1e-6)


def test_sft_refuses_what_it_cannot_train(tmp_path):
    with pytest.raises(ConfigError, match="'completion' string in every row"):
        train_policy(settings(), SHORT_ROWS, [], run_dir=tmp_path / "d", seed=0)
    with pytest.raises(ConfigError, match="answer_style direct"):
        AnswerTrainConfig.from_params({"algorithm": "sft"})  # the distill default has no gold selection list
    from memr1.stages.train_manager import ManagerTrainConfig

    with pytest.raises(ConfigError, match="Memory Manager has none"):
        ManagerTrainConfig.from_params({"algorithm": "sft"})
    with pytest.raises(ConfigError, match="algorithm must be one of"):
        AnswerTrainConfig.from_params({"algorithm": "dpo"})


@pytest.mark.slow
def test_stage_03_trains_sft_on_gold_answer_lines(data_dir, tmp_path):
    from memr1.stages import train_answer

    cfg = AnswerTrainConfig(
        **{**STAGE_FAST, "algorithm": "sft", "answer_style": "direct", "data_dir": str(data_dir),
           "run_dir": str(tmp_path / "sft"), "steps": 2, "eval_every": 2, "eval_limit": 2, "train_limit": 4,
           "k_per_speaker": 5, "max_completion_length": 8, "verify_adapter": True}
    )  # fmt: skip
    result = train_answer.run(cfg)
    assert result.steps == 2 and (result.adapter_path / "adapter_model.safetensors").is_file()
    assert [e["step"] for e in result.eval_history] == [2] and "eval/format" in result.eval_history[0]
    assert all(e["loss"] > 0 for e in result.step_logs())
    answers, delta = train_answer.trained_vs_untrained(cfg, result.adapter)  # what notebook 03 shows
    assert len(answers) == delta.n == 2 and answers["f1_untrained"].between(0, 100).all()
    assert delta.mean == (answers["f1_trained"] - answers["f1_untrained"]).mean()
