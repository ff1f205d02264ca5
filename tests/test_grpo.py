"""memr1.rl.grpo: GRPO with LoRA through TRL on the tiny model, on CPU.

What is checked, and how each check can fail:
- learning: GRPO raises the log-probability of the rewarded answers of real LoCoMo questions; the
  same run with learning rate 0 must not (so a rise cannot come from the measurement itself);
- resume: N steps straight and N/2 + resume give the identical per-step log (exact float equality);
  a negative control shows that without ``EpochSeededSampler`` the curves differ;
- artefacts: PEFT adapter files that ``make_generator(lora_path=...)`` loads with the trained
  weights, TensorBoard event files, ``eval/em`` at every ``eval_every`` step;
- the two stages end to end on the real datasets and rewards (hash embedder, a few steps);
- typed config errors; ``accelerate launch`` with two CPU processes (gloo).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from memr1.errors import ConfigError
from memr1.rl.grpo import GRPOSettings, TrainingError, greedy_completions, resolve_adapter, run_grpo
from memr1.rl.rewards import read_op_log
from memr1.runs import read_result
from memr1.stages import train_answer, train_manager
from memr1.stages.train_answer import AnswerTrainConfig, AnswerTrainResult
from memr1.stages.train_manager import ManagerTrainConfig, ManagerTrainResult

REPO = Path(__file__).resolve().parents[1]
FAST = dict(model="tiny", backend="transformers", verify_adapter=False, eval_every=0, save_every=0)
STAGE_FAST = dict(FAST, embedder="hash")


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def overlap_reward(completions, gold, **kwargs):
    """A reward that depends on the sampled text and the row: share of distinct characters in gold."""
    out = []
    for c, g in zip(completions, gold):
        chars = set(c[0]["content"])
        out.append(len(chars & set(g)) / (1 + len(chars)))
    return out


SHORT_ROWS = [
    {"prompt": chat(q), "gold": a}
    for q, a in [
        ("Where did Caroline move from 4 years ago?", "Sweden"),
        ("How many children does Melanie have?", "3"),
        ("What instrument is Tim learning to play?", "violin"),
        ("Where did Calvin attend a music festival in April 2023?", "Tokyo"),
    ]
]


# ----------------------------------------------------------------------------- learning


# Real LoCoMo questions whose gold answer is one token of the tiny tokenizer: five "two", three
# "beach". The rollouts may only emit the 17 distinct one-token gold answers of LoCoMo (every other
# token is suppressed) and one token each, so a random 100k-parameter model hits the gold with
# probability about 1/17 and GRPO gets a signal. The reward is the plain EM of the Answer-Agent
# parser. What it can learn in 16 steps is mostly the answer prior ("two" and "beach" up).
LEARN_QIDS = (
    "conv-41:q62",
    "conv-42:q52",
    "conv-47:q20",
    "conv-49:q3",
    "conv-49:q6",
    "conv-41:q41",
    "conv-48:q40",
    "conv-49:q65",
)


def one_token(tok, text: str) -> int | None:
    for variant in (" " + text, text):
        ids = tok(variant, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            return ids[0]
    return None


def learning_task(locomo, tok):
    """Rows with the real Answer-Agent prompt (at most 3 evidence memories) and the token to suppress."""
    from memr1.agents.answer import answer_messages

    rows = []
    for qid in LEARN_QIDS:
        conv = locomo.conversation(qid.split(":")[0])
        qa = next(q for q in conv.qa if q.qid == qid)
        memories: dict[str, list[str]] = {sp: [] for sp in conv.speakers}
        for obs in conv.observations:
            if set(obs.evidence) & set(qa.evidence) and sum(map(len, memories.values())) < 3:
                memories[obs.speaker].append(f"{conv.session_time(obs.session)}: {obs.text}")
        token = one_token(tok, qa.answer)
        assert token is not None, f"{qid}: gold {qa.answer!r} is not one token of the tiny tokenizer"
        rows.append(
            {"prompt": answer_messages(qa.question, memories, list(conv.speakers)), "gold": qa.answer, "token": token}
        )
    allowed = {one_token(tok, q.answer) for q in locomo.questions()} - {None}
    assert len(allowed) >= 8
    return rows, [i for i in range(len(tok)) if i not in allowed]


def gold_logps(model, tok, rows) -> list[float]:
    """log p(gold token | prompt) under the full (unconstrained) softmax of ``model``."""
    import torch

    out = []
    with torch.no_grad():
        for row in rows:
            enc = tok.apply_chat_template(
                row["prompt"], tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt"
            )
            logits = model(input_ids=enc["input_ids"]).logits[0, -1].float()
            out.append(torch.log_softmax(logits, -1)[row["token"]].item())
    return out


@pytest.mark.slow
@pytest.mark.parametrize("lr", [3e-2, 0.0])
def test_grpo_raises_logp_of_rewarded_answers_only_when_it_learns(locomo, tmp_path, lr):
    from memr1.llm.backends import make_generator
    from memr1.llm.load import load_policy
    from memr1.llm.tiny import BUILTIN_TEXTS, build_tiny_model
    from memr1.rl.rewards import answer_em_reward

    # A tiny model trained on fixed texts, whatever data this machine has: its tokenizer must keep
    # "two" and "beach" as single tokens (a LoCoMo-trained one splits "two").
    path = str(build_tiny_model(tmp_path / "tiny", BUILTIN_TEXTS))
    base = load_policy(path)
    rows, suppress = learning_task(locomo, base.tokenizer)
    before = gold_logps(base.model, base.tokenizer, rows)
    cfg = GRPOSettings(
        **{
            **FAST,
            "model": path,
            "steps": 16,
            "learning_rate": lr,
            "num_generations": 8,
            "batch_size": 8,
            "max_completion_length": 1,
        }
    )
    result = run_grpo(
        cfg, rows, [answer_em_reward], run_dir=tmp_path / "run", seed=0, generation_kwargs={"suppress_tokens": suppress}
    )
    trained = make_generator(path, "transformers", lora_path=str(result.adapter_path)).model
    after = gold_logps(trained, base.tokenizer, rows)
    rise = sum(after) / len(after) - sum(before) / len(before)
    rewards = [e["reward"] for e in result.step_logs()]
    note = (
        f"lr={lr}: mean log p(gold) {sum(before) / 8:.3f} -> {sum(after) / 8:.3f} (rise {rise:+.3f}); "
        f"mean reward first/last 8 steps {sum(rewards[:8]) / 8:.3f}/{sum(rewards[8:]) / 8:.3f}"
    )
    print(note)
    assert result.steps == 16 and len(rewards) == 16
    if lr > 0:
        assert rise > 0.2, note
    else:
        assert rise <= 1e-6, note


# ----------------------------------------------------------------------------- resume


def resume_logs(tmp_path: Path, name: str):
    """(straight 8 steps, 6 steps then resumed to 8): per-step logs without the wall-clock field."""
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= 6:
                control.should_training_stop = True

    def validator(model, tok):
        texts = greedy_completions(model, tok, [r["prompt"] for r in SHORT_ROWS[:2]], 4)
        return {"eval/em": float(len(texts[0]))}  # any greedy function of the weights will do

    def cfg(**kw):
        # 4 rows, 1 prompt per step: an epoch is 4 steps, so the resume at 6 lands inside epoch 2
        return GRPOSettings(
            **{
                **FAST,
                "steps": 8,
                "save_every": 2,
                "eval_every": 2,
                "learning_rate": 1e-2,
                "max_completion_length": 8,
                **kw,
            }
        )

    def at(run):
        return dict(run_dir=tmp_path / name / run, seed=0)

    def clean(result):
        return [{k: v for k, v in e.items() if k != "step_time"} for e in result.step_logs()]

    straight = run_grpo(cfg(), SHORT_ROWS, [overlap_reward], validator=validator, **at("straight"))
    stopped = run_grpo(cfg(), SHORT_ROWS, [overlap_reward], validator=validator, callbacks=[StopAt()], **at("split"))
    assert stopped.steps == 6
    with pytest.raises(TrainingError, match="resume=True"):  # never mixes two runs silently
        run_grpo(cfg(), SHORT_ROWS, [overlap_reward], **at("split"))
    resumed = run_grpo(cfg(resume=True), SHORT_ROWS, [overlap_reward], validator=validator, **at("split"))
    assert resumed.resumed_from and resumed.resumed_from.endswith("checkpoint-6") and resumed.steps == 8
    return clean(straight), clean(resumed), resumed


def test_resume_gives_the_identical_curve(tmp_path):
    straight, resumed, result = resume_logs(tmp_path, "fixed")
    assert [e["step"] for e in straight] == list(range(1, 9))
    assert len({round(e["grad_norm"], 6) for e in straight}) > 4  # a real curve, not a constant
    for a, b in zip(straight, resumed, strict=True):
        assert a == b, f"step {a['step']}: " + str({k: (a[k], b.get(k)) for k in a if a[k] != b.get(k)})
    assert [e["step"] for e in result.eval_history] == [2, 4, 6, 8]


@pytest.mark.slow
def test_resume_without_the_epoch_seeded_sampler_diverges(tmp_path, monkeypatch):
    """Negative control: TRL's sampler alone gives the resumed epoch another prompt order."""
    from memr1.rl import callbacks

    monkeypatch.setattr(callbacks.EpochSeededSampler, "set_epoch", lambda self, epoch: None)
    straight, resumed, _ = resume_logs(tmp_path, "plain")
    assert straight[:6] == resumed[:6]
    assert straight[6:] != resumed[6:]


# ----------------------------------------------------------------------------- artefacts


def test_adapter_tensorboard_and_validation_em(tmp_path):
    import torch
    from safetensors.torch import load_file
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from memr1.llm.backends import make_generator
    from memr1.rl.rewards import answer_em_reward

    def validator(model, tok):
        texts = greedy_completions(model, tok, [r["prompt"] for r in SHORT_ROWS], 8)
        scores = answer_em_reward(
            [[{"role": "assistant", "content": t}] for t in texts], gold=[r["gold"] for r in SHORT_ROWS]
        )
        return {"eval/em": sum(scores) / len(scores)}

    run = tmp_path / "run"
    cfg = GRPOSettings(
        **{
            **FAST,
            "steps": 4,
            "eval_every": 2,
            "save_every": 2,
            "learning_rate": 5e-2,
            "max_completion_length": 8,
            "verify_adapter": True,
        }
    )
    result = run_grpo(cfg, SHORT_ROWS, [overlap_reward], run_dir=run, seed=0, validator=validator)

    adapter = result.adapter_path
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in adapter.iterdir()}
    saved = load_file(adapter / "adapter_model.safetensors")
    lora_b = {k: v for k, v in saved.items() if "lora_B" in k}
    assert lora_b and any(v.abs().max() > 0 for v in lora_b.values())  # trained (B starts at zero)
    loaded = make_generator("tiny", "transformers", lora_path=str(adapter)).model
    params = dict(loaded.named_parameters())
    for key, value in lora_b.items():
        match = [p for n, p in params.items() if n.replace(".default", "").endswith(key.split("base_model.")[-1])]
        assert len(match) == 1 and torch.equal(match[0].detach(), value), key
    assert resolve_adapter(str(run), "other") == ("tiny", str(adapter))  # run dir → its adapter

    assert [e["step"] for e in result.eval_history] == [2, 4]
    with_em = [e["step"] for e in result.log_history if "eval/em" in e]
    assert with_em == [2, 4] and all(0 <= e["eval/em"] <= 1 for e in result.eval_history)

    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train/loss", "train/reward", "train/eval/em"} <= set(tags)
    assert [s.step for s in acc.Scalars("train/eval/em")] == [2, 4]
    saved = json.loads((run / "train_config.json").read_text())
    assert (saved["steps"], saved["base_model"]) == (4, "tiny")
    assert saved["sequence_cap"]["longest_prompt"] > 0

    # the manager's frozen agent: the trained PEFT model with its adapter off is the plain base model
    from memr1.llm.generate import Sampling
    from memr1.rl.frozen import FrozenBase

    trained = make_generator("tiny", "transformers", lora_path=str(adapter))
    plain = make_generator("tiny", "transformers")
    frozen = FrozenBase("tiny")
    prompts, greedy = [r["prompt"] for r in SHORT_ROWS], Sampling(max_new_tokens=6)
    with pytest.raises(ConfigError, match="before bind"):
        frozen.generate(prompts, greedy)
    with pytest.raises(ConfigError, match="needs a PEFT model"):
        frozen.bind(plain.model, plain.tokenizer)
    frozen.bind(trained.model, trained.tokenizer)
    ids = trained.tokenizer(["Caroline went"], return_tensors="pt")
    with torch.no_grad():
        on = trained.model(**ids).logits
        with trained.model.disable_adapter():
            off = trained.model(**ids).logits
        base = plain.model(**ids).logits
    assert not torch.allclose(on, base) and torch.allclose(off, base, atol=1e-5)  # the adapter matters; off is base
    assert [g.text for g in frozen.generate(prompts, greedy)] == [g.text for g in plain.generate(prompts, greedy)]


# ----------------------------------------------------------------------------- stages


@pytest.fixture(scope="module")
def teacher_store(tmp_path_factory):
    """One teacher store for both stage tests (replaying conv-26 and conv-30 is most of their time)."""
    return str(tmp_path_factory.mktemp("teacher"))


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["trl", "memr1"])
def test_train_answer_agent_on_conv26_validates_on_conv30(data_dir, tmp_path, teacher_store, engine):
    cfg = AnswerTrainConfig(
        **{
            **STAGE_FAST,
            "engine": engine,
            "data_dir": str(data_dir),
            "run_dir": str(tmp_path / "aa"),
            "steps": 2,
            "store_dir": teacher_store,
            "eval_every": 2,
            "eval_limit": 3,
            "train_limit": 4,
            "k_per_speaker": 5,
            "max_completion_length": 8,
            "verify_adapter": True,
        }
    )
    result = train_answer.run(cfg)
    assert result.steps == 2 and (result.adapter_path / "adapter_model.safetensors").is_file()
    probe = result.eval_history
    assert [e["step"] for e in probe] == [2] and probe[0]["eval/n"] == 3.0  # the probe, every eval_every steps
    assert set(probe[0]) >= {"eval/em", "eval/f1", "eval/format", "eval/length"}
    assert 0 <= probe[0]["eval/f1"] <= 1 and 0 <= probe[0]["eval/format"] <= 1 and probe[0]["eval/length"] <= 8
    assert all("rewards/answer_em_reward/mean" in e for e in result.step_logs())
    saved = read_result(tmp_path / "aa", AnswerTrainResult)  # run wrote metrics.json
    assert (saved.result.steps, saved.result.eval_history, saved.config["steps"]) == (2, result.eval_history, 2)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["trl", "memr1"])
def test_train_memory_manager_runs_with_the_frozen_answer_agent(data_dir, tmp_path, teacher_store, engine):
    cfg = ManagerTrainConfig(
        **{
            **STAGE_FAST,
            "engine": engine,
            "data_dir": str(data_dir),
            "run_dir": str(tmp_path / "mm"),
            "steps": 2,
            "store_dir": teacher_store,
            "eval_every": 2,
            "eval_limit": 2,
            "train_limit": 4,
            "k_per_speaker": 5,
            "max_completion_length": 8,
        }
    )
    result = train_manager.run(cfg)
    assert result.steps == 2 and result.eval_history[0]["eval/n"] == 2.0
    assert all("rewards/manager_em/mean" in e for e in result.step_logs())
    log = read_op_log(tmp_path / "mm" / "reward_log")  # the reward's op log: training rows numbered by step
    assert sorted(log[log["from_trainer"]]["step"].unique()) == [1, 2] and len(result.op_mix) == 2
    if engine == "memr1":  # what notebook 04 shows after training
        turns, delta = train_manager.trained_vs_untrained(cfg, result.adapter)
        assert len(turns) == delta.n == 2 and turns["score_untrained"].between(0, 100).all()
        assert delta.mean == pytest.approx((turns["score_trained"] - turns["score_untrained"]).mean())
        assert turns["valid_trained"].dtype == bool and turns["ops_untrained"].map(bool).all()


@pytest.mark.slow
def test_memr1_train_manager_writes_the_op_mix_to_metrics_json(data_dir, tmp_path, teacher_store):
    """``memr1 train manager`` runs stage 04: metrics.json holds its typed result, op mix included."""
    from memr1.cli import main
    from memr1.rl.rewards import OP_KINDS

    run_dir = tmp_path / "cli"
    params = {
        **STAGE_FAST,
        "data_dir": data_dir,
        "run_dir": run_dir,
        "store_dir": teacher_store,
        "steps": 1,
        "train_limit": 1,
        "eval_limit": 1,
        "k_per_speaker": 5,
        "max_completion_length": 8,
    }
    assert main(["train", "manager", *[a for k, v in params.items() for a in ("-p", f"{k}={v}")]]) == 0
    saved = read_result(run_dir, ManagerTrainResult)
    mix = saved.result.op_mix
    assert len(mix) == 2 and all(m["completions"] == 4 for m in mix)  # one prompt, its group of 4
    for m in mix:
        shares = sum(m[k] for k in OP_KINDS)
        assert (shares == 0 or math.isclose(shares, 1.0)) and 0 <= m["rejected"] <= 1, m
    assert saved.result.completions_logged == 4 and saved.config["steps"] == 1


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "params, message",
    [
        ({"batch_size": 6, "num_generations": 4}, "multiple of num_generations"),
        ({"num_generations": 1, "batch_size": 1}, "num_generations must be >= 2"),
        ({"backend": "jax"}, "backend must be one of"),
        ({"embedder": "bert"}, "embedder must be one of"),
        ({"steps": 0}, "steps must be >= 1"),
        ({"learning_rate": -1e-5}, "learning_rate must be >= 0"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"train_limit": -2}, "train_limit must be >= -1"),
        ({"steps": "four"}, "steps must be int"),  # "4" is parsed as 4 (memr1.config.parse_value)
        ({"resume": 1}, "resume must be bool"),
        ({"profile": "huge"}, "unknown profile"),
        ({"lr": 1e-5}, "no field"),
        ({"questions_per_step": 3, "num_generations": 4, "batch_size": 8}, "12 completions must be a multiple"),
        ({"warmup_steps": -1}, "warmup_steps must be >= 0"),
        ({"max_seq_length": -1}, "max_seq_length must be >= 0"),
    ],
)
def test_config_errors(params, message):
    with pytest.raises(ConfigError, match=message):
        AnswerTrainConfig.from_params(params)


def test_config_docs_are_papermill_safe_and_errors_are_typed(tmp_path):
    import dataclasses

    for cls in (AnswerTrainConfig, ManagerTrainConfig):
        docs = cls.field_docs()
        assert list(docs) == [f.name for f in dataclasses.fields(cls)]
        assert all(len(d) > 10 and "=" not in d and "'" not in d for d in docs.values()), docs
    with pytest.raises(ConfigError, match="k_similar must be >= 1"):
        ManagerTrainConfig.from_params({"k_similar": 0})
    with pytest.raises(ConfigError, match="expected an instance of AnswerTrainConfig"):
        train_answer.run(ManagerTrainConfig())
    with pytest.raises(TrainingError, match="no training rows"):
        run_grpo(GRPOSettings(**FAST), [], [overlap_reward], run_dir=tmp_path / "r", seed=0)
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):  # refused before any model is loaded
        run_grpo(
            GRPOSettings(**{**FAST, "backend": "unsloth"}), SHORT_ROWS, [overlap_reward], run_dir=tmp_path / "u", seed=0
        )
    with pytest.raises(ConfigError, match="neither a training run dir"):
        resolve_adapter(str(tmp_path), "tiny")
    assert resolve_adapter("", "tiny") == ("tiny", "")


def test_questions_per_step_accumulates_gradients_and_warmup_sets_the_schedule(tmp_path):
    from memr1.rl.grpo import grpo_args

    one = GRPOSettings(**{**FAST, "num_generations": 4, "batch_size": 4})
    many = GRPOSettings(**{**FAST, "num_generations": 4, "batch_size": 8, "questions_per_step": 6, "warmup_steps": 3})
    assert (one.accumulation_steps, many.accumulation_steps) == (1, 3)
    args = grpo_args(many, run_dir=tmp_path, seed=0)
    # TRL: one generation batch per optimizer step = per-device batch x accumulation = questions x group
    assert (args.gradient_accumulation_steps, args.generation_batch_size) == (3, 24)
    assert args.generation_batch_size // args.num_generations == 6
    assert (args.warmup_steps, str(args.lr_scheduler_type)) == (3, "SchedulerType.CONSTANT_WITH_WARMUP")
    assert str(grpo_args(one, run_dir=tmp_path, seed=0).lr_scheduler_type) == "SchedulerType.CONSTANT"


def test_sequence_cap_is_derived_from_the_prompts_and_refuses_a_prompt_that_does_not_fit():
    from memr1.llm.load import load_policy
    from memr1.rl.grpo import sequence_cap

    policy = load_policy("tiny", "transformers")
    rows = [{"prompt": chat("short")}, {"prompt": chat("a much longer prompt " * 20)}]
    got = sequence_cap(GRPOSettings(**{**FAST, "max_completion_length": 8}), rows, policy)
    assert got["longest_prompt"] > 40 and got["max_seq_length"] == got["longest_prompt"] + 8
    with pytest.raises(ConfigError, match="longest training prompt has .* over the cap of 30"):
        sequence_cap(GRPOSettings(**{**FAST, "max_seq_length": 30}), rows, policy)
    window = policy.model.config.max_position_embeddings
    with pytest.raises(ConfigError, match=f"over the cap of {window}"):
        sequence_cap(GRPOSettings(**FAST), [{"prompt": chat("word " * (window + 10))}], policy)


def test_defaults_resolve_to_a_smoke_run():
    cfg = AnswerTrainConfig().resolved()
    assert (cfg.model, cfg.backend, cfg.train_limit, cfg.temperature, cfg.beta) == (
        "tiny",
        "transformers",
        20,
        1.0,
        0.0,
    )
    assert cfg.batch_size % cfg.num_generations == 0 and cfg.steps <= 8
    assert ManagerTrainConfig().run_dir != AnswerTrainConfig().run_dir


# ----------------------------------------------------------------------------- accelerate


ACCELERATE_SCRIPT = """
import json, os, sys
import torch.distributed as dist
from memr1.rl.grpo import GRPOSettings, run_grpo
from tests.test_grpo import SHORT_ROWS, overlap_reward

out = sys.argv[1]
cfg = GRPOSettings(model="tiny", backend="transformers", steps=2, save_every=0, eval_every=1,
                   max_completion_length=8)
result = run_grpo(cfg, SHORT_ROWS, [overlap_reward], run_dir=out, seed=0,
                  validator=lambda model, tok: {"eval/em": 0.5})
rank = int(os.environ["RANK"])
backend = dist.get_backend() if dist.is_initialized() else "none"
with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
    json.dump({"rank": rank, "world": int(os.environ["WORLD_SIZE"]), "backend": backend,
               "steps": result.steps, "logs": result.step_logs()}, fh)
"""


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes(tmp_path):
    """Two ranks on CPU over gloo. ``accelerate launch --cpu --num_processes 2`` starts ONE process
    in accelerate 1.15 (``--cpu`` picks the simple launcher; several CPU processes need mpirun and
    ``--mpirun_hostfile``), so the torchrun launcher is asked for with ``--multi_gpu``; without CUDA,
    accelerate then runs MULTI_CPU with the gloo backend."""
    from memr1.llm.tiny import tiny_model_path

    tiny_model_path()  # build once before two ranks ask for it
    script = tmp_path / "launch_grpo.py"
    script.write_text(textwrap.dedent(ACCELERATE_SCRIPT))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "29571",
        str(script),
        str(tmp_path / "run"),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / "run" / f"rank{r}.json").read_text()) for r in (0, 1)]
    got = [(r["rank"], r["world"], r["backend"], r["steps"]) for r in ranks]
    assert got == [(0, 2, "gloo", 2), (1, 2, "gloo", 2)]
    for r in ranks:
        assert [e["step"] for e in r["logs"]] == [1, 2] and all(math.isfinite(e["loss"]) for e in r["logs"])
    assert [e.get("eval/em") for e in ranks[0]["logs"]] == [0.5, 0.5]  # validation runs on rank 0 only
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
