"""Validate `memr1 export-verl` output with verl itself, on CPU: everything short of a training run.

Run it with verl's environment (``make verl-env``), never memr1's: verl 0.9.1 pins transformers < 5.11.

    .venv-verl/bin/python experiments/validate_verl.py runs/verl runs/verl-manager runs/verl-mem1 \
        --tokenizer ~/.cache/memr1/models/smollm2-135m-instruct --json runs/verl-validation.json

For every export folder given, and every ``<task>_<algorithm>.yaml`` in it:

1. **Config.** Hydra composes the file the way ``python -m verl.trainer.main_ppo --config-path=<folder>
   --config-name=<name>`` does (the file extends verl's ``ppo_trainer``). Every key the file sets must
   already exist in verl's own ``ppo_trainer``, except ``reward_kwargs`` (Hydra would add a misspelt
   key silently), and every verl key named in `memr1.rl.verl_configs.MEMR1_TO_VERL` must exist. Then
   the checks ``main_ppo`` runs before it starts Ray: ``verl.utils.config.validate_config`` (which
   builds the actor and critic dataclasses), plus the dataclasses of the algorithm (``AlgoConfig``),
   the rollout and, when its path is a local folder, the model (``HFModelConfig``, which also gives the
   tokenizer, as verl's trainer takes it). The reward section is checked by loading it (3.): verl
   0.9.1's ``RewardManagerConfig`` cannot be instantiated (its ``__post_init__`` calls a parent method
   that does not exist), and verl never builds it either. ``--cli`` also runs verl's real entry point
   with ``--cfg job`` (compose and print, no training).
2. **Datasets.** Both parquet files through verl's own factory (``create_rl_dataset``, the
   ``RLHFDataset`` with the config's ``filter_overlong_prompts`` and ``max_prompt_length``): every row
   must survive the length filter; one training batch goes through verl's ``collate_fn``.
3. **Rewards.** verl loads the reward file (``load_reward_manager``: ``custom_reward_function`` with
   its ``reward_kwargs``) and its naive reward manager scores hand-written responses for a few
   validation rows, tokenized and decoded as in a rollout: the gold answer must score 1 per objective
   and a wrong one 0 (answer, mem1); for the manager an invalid output must score 0 and an ADD of the
   turn's facts must be valid, its score being whatever the frozen Answer Agent earns.

Prints one line per check and exits 1 if any failed; ``--json`` writes the results.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import yaml
from hydra import compose, initialize_config_dir, initialize_config_module
from omegaconf import OmegaConf

FREE_KEYS = ("reward.custom_reward_function.reward_kwargs",)
"""Keys whose children verl does not define (the reward function's own keywords)."""
NON_TENSORS = ("data_source", "reward_model", "extra_info")
"""The row fields verl's reward manager reads."""


def leaves(tree, prefix=""):
    """Dotted key → value for every leaf of a nested mapping."""
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            yield from leaves(value, key + ".")
        else:
            yield key, value


def has_key(cfg, key: str) -> bool:
    """Whether ``cfg`` defines ``key`` (a mandatory ``???`` value counts as defined)."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return OmegaConf.is_dict(node) and leaf in node.keys()


def verl_defaults():
    """verl's own ``ppo_trainer`` config, composed with no overrides."""
    with initialize_config_module("verl.trainer.config", version_base=None):
        return compose("ppo_trainer")


def check_config(path: Path, defaults, tokenizer_dir: str) -> tuple[object, object, dict]:
    """Compose one exported config and run verl's checks on it; returns (config, tokenizer, facts)."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    from memr1.rl.verl_configs import MEMR1_TO_VERL

    with initialize_config_dir(str(path.parent.resolve()), version_base=None):
        cfg = compose(path.stem)
    written = {k: v for k, v in yaml.safe_load(path.read_text()).items() if k not in ("hydra", "defaults")}
    unknown = [k for k, _ in leaves(written) if not k.startswith(FREE_KEYS) and not has_key(defaults, k)]
    assert not unknown, f"keys verl's ppo_trainer does not define: {unknown}"
    differ = [k for k, v in leaves(written) if OmegaConf.select(cfg, k) != v]
    assert not differ, f"composed values differ from the file: {differ}"
    missing = [k for k in MEMR1_TO_VERL.values() if not has_key(cfg, k)]
    assert not missing, f"MEMR1_TO_VERL names keys verl does not have: {missing}"
    use_critic, use_ref = need_critic(cfg), need_reference_policy(cfg)
    validate_config(cfg, use_reference_policy=use_ref, use_critic=use_critic)
    algo = omega_conf_to_dataclass(cfg.algorithm)
    omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)
    model_path = Path(str(cfg.actor_rollout_ref.model.path)).expanduser()
    if model_path.is_dir():  # verl's trainer takes its tokenizer from the model config
        tokenizer = omega_conf_to_dataclass(cfg.actor_rollout_ref.model).tokenizer
    else:
        from verl.utils import hf_tokenizer

        tokenizer = hf_tokenizer(tokenizer_dir)
    facts = {
        "keys_set": len(list(leaves(written))),
        "adv_estimator": algo.adv_estimator,
        "critic": use_critic,
        "reference": use_ref,
        "model_config": "HFModelConfig built" if model_path.is_dir() else "hub id: not downloaded",
    }
    return cfg, tokenizer, facts


def check_cli(path: Path) -> float:
    """verl's real entry point composes the file (``--cfg job`` prints the config and stops)."""
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "verl.trainer.main_ppo", f"--config-path={path.parent.resolve()}"]
    out = subprocess.run([*cmd, f"--config-name={path.stem}", "--cfg", "job"], capture_output=True, text=True)
    assert out.returncode == 0 and "train_files" in out.stdout, out.stderr[-2000:]
    return time.perf_counter() - t0


def check_datasets(cfg, tokenizer) -> dict:
    """Both splits through verl's dataset factory; nothing may be filtered out; one collated batch."""
    import pandas as pd
    from verl.trainer.ppo.utils import create_rl_dataset
    from verl.utils.dataset.rl_dataset import collate_fn

    facts, datasets = {}, {}
    for split, files in (("train", cfg.data.train_files), ("validation", cfg.data.val_files)):
        datasets[split] = create_rl_dataset(files, cfg.data, tokenizer, None, is_train=split == "train")
        rows = len(pd.read_parquet(str(files)))
        kept = len(datasets[split])
        assert kept == rows, f"{split}: {rows - kept} of {rows} prompts exceed max_prompt_length"
        facts[split] = rows
    train = datasets["train"]
    batch = collate_fn([train[i] for i in range(int(cfg.data.train_batch_size))])
    facts["collated_train_batch"] = len(batch["data_source"])
    facts["longest_prompt_tokens"] = max(
        len(prompt_ids(tokenizer, d[i])) for d in datasets.values() for i in range(len(d))
    )
    return facts


def prompt_ids(tokenizer, row: dict) -> list[int]:
    """The token ids of a dataset row's prompt under the chat template, as a rollout starts from."""
    text = tokenizer.apply_chat_template(list(row["raw_prompt"]), add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def responses_for(row: dict) -> list[tuple[str, str, float | None]]:
    """(name, response, expected score or None) to score for one dataset row."""
    source, truth = row["data_source"], row["reward_model"]["ground_truth"]
    if source.endswith("locomo-answer"):
        return [("gold", f"**Answer:** {truth}", 1.0), ("wrong", "**Answer:** zebra crossing 1899", 0.0)]
    if source.endswith("locomo-manager"):
        facts = list(row["extra_info"]["facts"])
        add = {"memory": [{"id": "new", "text": f, "event": "ADD"} for f in facts]}
        return [("add facts", json.dumps(add), None), ("not json", "I would add something.", 0.0)]
    targets = [list(t) for t in truth["target"]]
    gold = "<IS>all found</IS>\n<answer>" + " ; ".join(t[0] for t in targets) + "</answer>"
    return [("gold", gold, float(len(targets))), ("query only", "<IS>x</IS>\n<query>who</query>", 0.0)]


def check_rewards(cfg, tokenizer, rows: int, overrides: dict) -> list[dict]:
    """Score responses through verl's reward loading and its naive reward manager.

    ``overrides`` replace ``reward_kwargs`` for this check only (e.g. a shorter frozen-agent answer).
    """
    from verl import DataProto
    from verl.trainer.ppo.reward import load_reward_manager
    from verl.trainer.ppo.utils import create_rl_dataset

    cfg = copy.deepcopy(cfg)  # the overrides stay in this check
    for key, value in overrides.items():
        OmegaConf.update(cfg, f"{FREE_KEYS[0]}.{key}", value, force_add=True)
    manager = load_reward_manager(cfg, tokenizer)
    dataset = create_rl_dataset(cfg.data.val_files, cfg.data, tokenizer, None, is_train=False)
    results = []
    for i in range(min(rows, len(dataset))):
        row = dataset[i]
        prompt = prompt_ids(tokenizer, row)
        for name, text, expected in responses_for(row):
            response = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            ids = torch.tensor([prompt + response])
            data = DataProto.from_dict(
                tensors={
                    "prompts": ids[:, : len(prompt)],
                    "responses": ids[:, len(prompt) :],
                    "attention_mask": torch.ones_like(ids),
                },
                non_tensors={k: np.array([row[k]], dtype=object) for k in NON_TENSORS},
            )
            t0 = time.perf_counter()
            out = manager.loop.run_until_complete(manager.run_single(data))
            score = float(out["reward_score"])
            ok = expected is None or score == expected
            if "valid" in out["reward_extra_info"] and name == "add facts":
                ok = ok and out["reward_extra_info"]["valid"] == 1.0
            results.append(
                {"row": i, "response": name, "score": score, "expected": expected, "ok": ok,
                 "extra": {k: v for k, v in out["reward_extra_info"].items() if k != "score"},
                 "seconds": round(time.perf_counter() - t0, 2)}
            )  # fmt: skip
            assert ok, f"row {i} {name}: score {score}, expected {expected} ({out['reward_extra_info']})"
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("exports", nargs="+", type=Path, help="folders written by memr1 export-verl")
    ap.add_argument("--tokenizer", default=str(Path("~/.cache/memr1/models/smollm2-135m-instruct").expanduser()))
    ap.add_argument("--reward-rows", type=int, default=2, help="validation rows whose responses are scored")
    ap.add_argument("--cli", action="store_true", help="also run verl's main_ppo entry point with --cfg job")
    ap.add_argument(
        "--reward-kwarg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a reward_kwargs value for the reward check only (e.g. answer_tokens=8 on a CPU)",
    )
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()

    import verl

    started = time.perf_counter()
    report = {
        "verl": verl.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {platform.system()}",
        "date": time.strftime("%Y-%m-%d"),
        "seeds": "none: every check is deterministic (datasets read in file order, one batch of their first rows, "
        "rewards on the first rows); the exported MEM1 tasks carry the export's own seed",
        "checks": [],
    }
    overrides = {k: yaml.safe_load(v) for k, _, v in (kv.partition("=") for kv in args.reward_kwarg)}
    report["reward_kwarg_overrides"] = overrides
    defaults = verl_defaults()
    for folder in args.exports:
        for path in sorted(folder.glob("*_*.yaml")):
            entry = {"config": str(path), "ok": False}
            t0 = time.perf_counter()
            try:
                cfg, tokenizer, entry["config_facts"] = check_config(path, defaults, args.tokenizer)
                entry["datasets"] = check_datasets(cfg, tokenizer)
                entry["rewards"] = check_rewards(cfg, tokenizer, args.reward_rows, overrides)
                if args.cli:
                    entry["cli_seconds"] = round(check_cli(path), 1)
                entry["ok"] = True
            except Exception as exc:  # every failure is reported, the other configs still run
                entry["error"] = f"{type(exc).__name__}: {exc}"
                entry["traceback"] = traceback.format_exc(limit=6)
            entry["seconds"] = round(time.perf_counter() - t0, 1)
            report["checks"].append(entry)
            print(f"[validate_verl] {'ok  ' if entry['ok'] else 'FAIL'} {path} ({entry['seconds']} s)", flush=True)
            if not entry["ok"]:
                print(entry["traceback"], file=sys.stderr)
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["ok"] = bool(report["checks"]) and all(c["ok"] for c in report["checks"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1, default=str))
    print(f"[validate_verl] {len(report['checks'])} configs, all ok: {report['ok']} ({report['seconds']} s)")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
