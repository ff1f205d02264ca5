"""``memr1`` command line: run the notebook pipeline, list a notebook's parameters, check the data.

memr1 run --profile smoke --name demo -p data.conversation=conv-30 -p evaluate.limit=10
memr1 run --profile cpu --dry-run -p seed=1        # validate every stage's parameters, run nothing
memr1 params notebooks/01_locomo_data.ipynb
memr1 data
memr1 export-verl --out runs/verl --task answer
memr1 export-verl --out runs/verl-mem1 --task mem1 --limit 512
memr1 train answer -p steps=2 -p run_dir=runs/train-answer
memr1 train mem1 -p steps=2 -p run_dir=runs/train-mem1
accelerate launch --multi_gpu --num_processes 2 -m memr1.cli train answer -p run_dir=runs/ddp
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from memr1.config import PROFILES
from memr1.errors import ConfigError, Memr1Error


def parse_assignment(text: str) -> tuple[str, Any]:
    """``key=value``, the value kept as written: the config parses it by the field's type (``"2e-5"``
    becomes a float for a float field and stays text for a text field).

    >>> parse_assignment("limit=3"), parse_assignment("evaluate.system=no")
    (('limit', '3'), ('evaluate.system', 'no'))
    """
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key.strip(), value


def _cmd_run(args: argparse.Namespace) -> int:
    import logging

    from memr1.pipeline import run_pipeline

    # papermill relays each stage's own output (its progress bars: turns built, questions answered, GRPO
    # steps, with rate and ETA) through its logger; show it on the terminal.
    relay = logging.getLogger("papermill")
    if not relay.handlers:
        relay.addHandler(logging.StreamHandler(sys.stderr))
        relay.setLevel(logging.INFO)

    run_dir = run_pipeline(
        args.profile,
        name=args.name,
        overrides=_params(args.param),
        force=args.force,
        stages=args.stages.split(",") if args.stages else None,
        runs_root=args.runs_root,
        dry_run=args.dry_run,
    )
    print(f"[memr1] {'plan checked' if args.dry_run else 'run finished'}: {run_dir}")
    return 0


def _params(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``-p`` pairs as a dict; a key given twice is an error rather than a silent last-wins."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ConfigError(f"parameter {key!r} given twice ({out[key]!r} and {value!r})")
        out[key] = value
    return out


def _cmd_params(args: argparse.Namespace) -> int:
    from memr1.pipeline import notebook_params, sync_parameters_cells

    if args.sync:
        print(f"[memr1] parameters cells rewritten: {sync_parameters_cells() or 'none (all in step)'}")
        return 0
    if args.notebook is None:
        raise ConfigError("give a notebook path, or --sync")

    for name, p in notebook_params(args.notebook).items():
        print(f"{name:<16} {p['type']:<8} default {p['default']:<28} {p['help']}")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from memr1.data.fetch import sha256_of
    from memr1.data.locomo import LOCOMO, load_locomo

    data = load_locomo(args.path or None, allow_download=not args.offline)
    digest = sha256_of(data.path)
    print(f"LoCoMo: {data.path}")
    print(f"  sha256 {digest} ({'matches the pinned checksum' if digest == LOCOMO.sha256 else 'DIFFERS from the pin'})")
    print(
        f"  {len(data.conversations)} conversations, {len(data.questions())} questions without category 5, "
        f"{len(data.questions(include_adversarial=True))} in all"
    )
    print(f"  evidence ids needing attention: {data.evidence_report() or 'none'}")
    return 0


def _cmd_export_verl(args: argparse.Namespace) -> int:
    from memr1.data.locomo import load_locomo
    from memr1.memory.embed import make_embedder
    from memr1.rl.export_verl import export_mem1, export_verl

    if args.task == "mem1":
        n = args.limit or 512
        paths = export_mem1(
            args.out,
            source=args.source,
            data_dir=args.data or None,
            n_train=n,
            n_validation=max(4, n // 4),
            model=args.model,
        )
    else:
        data = load_locomo(args.data or None, allow_download=not args.offline)
        store = Path(args.store) if args.store else Path(args.out) / "teacher_store"
        paths = export_verl(
            data,
            args.out,
            make_embedder(args.embedder),
            store_dir=store,
            task=args.task,
            limit=args.limit,
            progress=True,
            model=args.model,
            answer_model=args.answer_model,
            answer_adapter=args.answer_adapter,
        )
    for name, path in paths.items():
        print(f"[memr1] {name}: {path}")
    return 0


def _cmd_tables(args: argparse.Namespace) -> int:
    from memr1.stages.tables import TablesConfig, build, judge_missing, run_missing

    cfg = TablesConfig(runs=args.runs, mem1_results=args.mem1_results, judge_check=args.judge_check, out=args.out,
                       seeds=args.seeds,
                       judge_serve=args.judge_serve, judge_base_url=args.judge_url, judge_model=args.judge_model,
                       systems=args.systems or TablesConfig().systems)  # fmt: skip
    if args.run_missing:
        run_missing(cfg)
    if cfg.judge_serve or cfg.judge_model:
        judge_missing(cfg)
    out = build(cfg)
    print("\n".join(out["summary"]))
    print(f"[memr1] tables: {cfg.out}.md and {cfg.out}.json")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from memr1.stages import TRAINERS

    config, train = TRAINERS[args.agent]
    cfg = config.from_params(_params(args.param))
    if args.dry_run:
        print(f"[memr1] train {args.agent}: {cfg}")
        return 0
    train(cfg)
    print(f"[memr1] train {args.agent} finished: {cfg.run_dir}/metrics.json")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memr1", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute the notebook pipeline headless into runs/<name>/")
    run.add_argument(
        "--profile",
        default="auto",
        choices=["auto", *sorted(PROFILES)],
        help="auto: paper on a CUDA GPU, else cpu (SmolLM2-135M, offline); smoke: the tiny test model",
    )
    run.add_argument("--name", default="", help="run folder name (default: the profile)")
    run.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        type=parse_assignment,
        metavar="KEY=VALUE",
        help="stage.field=value for one stage (evaluate.limit=10), or one of "
        "profile, seed, model, embedder, data_dir for every stage (repeatable)",
    )
    run.add_argument("--stages", default="", help="comma-separated stage names to run (default: all)")
    run.add_argument("--force", action="store_true", help="re-run stages that already finished")
    run.add_argument("--runs-root", default="runs", help="parent folder of run folders")
    run.add_argument("--dry-run", action="store_true", help="validate every stage's parameters; run nothing")
    run.set_defaults(func=_cmd_run)
    params = sub.add_parser("params", help="list a notebook's parameters with types and help")
    params.add_argument("notebook", type=Path, nargs="?")
    params.add_argument(
        "--sync",
        action="store_true",
        help="rewrite every notebook's parameters cell from its stage config (after editing a config)",
    )
    params.set_defaults(func=_cmd_params)
    data = sub.add_parser("data", help="find (or download) LoCoMo and print its checksum and counts")
    data.add_argument("--path", default="", help="explicit file or folder")
    data.add_argument("--offline", action="store_true", help="never download")
    data.set_defaults(func=_cmd_data)
    verl = sub.add_parser("export-verl", help="write verl datasets, reward files and PPO / GRPO trainer configs")
    verl.add_argument("--out", required=True, help="output folder")
    verl.add_argument("--task", default="answer", choices=["answer", "manager", "mem1"])
    verl.add_argument("--model", default="", help="policy and critic model of the configs (default: the paper's)")
    verl.add_argument("--answer-model", default="", help="manager: frozen Answer Agent model (default: --model)")
    verl.add_argument("--answer-adapter", default="", help="manager: its LoRA adapter or answer run folder")
    verl.add_argument("--source", default="hotpotqa", choices=["hotpotqa", "locomo"], help="mem1: task source")
    verl.add_argument("--store", default="", help="teacher store folder (default: <out>/teacher_store)")
    verl.add_argument("--embedder", default="minilm", choices=["minilm", "hash"])
    verl.add_argument("--data", default="", help="LoCoMo file or folder")
    verl.add_argument("--offline", action="store_true", help="never download")
    verl.add_argument("--limit", type=int, default=0, help="answer: first N questions per split; mem1: N train tasks")
    verl.set_defaults(func=_cmd_export_verl)
    tables = sub.add_parser("tables", help="rebuild the papers' LoCoMo and MEM1 tables from stored runs")
    tables.add_argument("--runs", default="runs/tables", help="folder of the LoCoMo runs (locomo/<system>/seed<k>)")
    tables.add_argument("--mem1-results", default="docs/results/mem1_horizon.json", help="mem1_horizon.py JSON")
    tables.add_argument("--judge-check", default="docs/results/judge_check.json", help="judge_check.py JSON")
    tables.add_argument("--out", default="docs/results/tables", help="writes <out>.md and <out>.json")
    tables.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the trained systems")
    tables.add_argument("--systems", nargs="+", default=[], help="LoCoMo systems (default: all)")
    tables.add_argument("--judge-serve", default="", help="judge stored runs without J with this model")
    tables.add_argument("--judge-url", default="", help="or judge them through this OpenAI-compatible endpoint")
    tables.add_argument("--judge-model", default="", help="the judge model's name on --judge-url")
    tables.add_argument("--run-missing", action="store_true", help="run the missing LoCoMo systems first")
    tables.set_defaults(func=_cmd_tables)
    train = sub.add_parser(
        "train", help="train one agent without a notebook (GRPO for answer/manager works under accelerate launch)"
    )
    train.add_argument("agent", choices=["answer", "manager", "mem1"])
    train.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        type=parse_assignment,
        metavar="KEY=VALUE",
        help="a field of AnswerTrainConfig / ManagerTrainConfig / Mem1TrainConfig (repeatable)",
    )
    train.add_argument("--dry-run", action="store_true", help="validate the parameters; train nothing")
    train.set_defaults(func=_cmd_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Memr1Error as exc:
        print(f"memr1: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
