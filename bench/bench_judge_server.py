"""Benchmark: a local model as the LLM judge, served by ``transformers serve`` against the same model in process.

Items with a known answer, from LoCoMo's validation questions: each question's own gold answer as the
prediction (a sound judge says CORRECT) and the gold answer of the next question (a sound judge says
WRONG). Both paths get the judge's own prompt (``JUDGE_PROMPT``), greedy decoding and the same reply cap:
  served      ``serve_model`` + ``LLMJudge`` over HTTP, as stage 05 runs with ``judge_serve``
  in-process  the same prompt through ``TransformersGenerator`` (no server), to show what HTTP costs

Prints server start, stop, seconds per verdict, the share of replies holding a label, accuracy on the
labelled ones and agreement with F1 >= 0.5. Run it pinned to one core to measure one core:

    OMP_NUM_THREADS=1 taskset -c 1 python bench/bench_judge_server.py [--model smollm2-135m] [--n 4]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

from memr1.data.locomo import load_locomo
from memr1.data.splits import split_questions
from memr1.eval.judge import JUDGE_PROMPT, JudgeParseError, LLMJudge, agreement_with_f1, parse_verdict
from memr1.eval.judge_server import model_folder, serve_model
from memr1.eval.metrics import f1_mem0
from memr1.llm.generate import Sampling


def known_items(n: int) -> list[tuple[str, str, str, bool]]:
    """(question, gold, prediction, truly correct): n right answers, then n wrong ones."""
    qs = [q for q in split_questions(load_locomo(), "validation") if str(q.answer).strip()][: n + 1]
    right = [(q.question, str(q.answer), str(q.answer), True) for q in qs[:n]]
    wrong = [(q.question, str(q.answer), str(nxt.answer), False) for q, nxt in zip(qs, qs[1:])]
    return right + wrong


def summary(path: str, labels: list[str | None], seconds: list[float], items: list) -> str:
    """One markdown row: timing, labelled share, accuracy on labelled replies, agreement with F1 >= 0.5."""
    labelled = [(lab, truth) for lab, (*_, truth) in zip(labels, items) if lab]
    acc = f"{sum((lab == 'CORRECT') == t for lab, t in labelled) / len(labelled):.0%}" if labelled else "-"
    correct = [None if lab is None else lab == "CORRECT" for lab in labels]
    agree = agreement_with_f1(correct, [f1_mem0(p, g) for _, g, p, _ in items])["agreement"]
    return (
        f"| {path} | {len(items)} | {statistics.median(seconds):.1f} | {max(seconds):.1f} | "
        f"{len(labelled)}/{len(items)} | {acc} | {'-' if agree is None else f'{agree:.0%}'} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="local model name or folder")
    ap.add_argument("--n", type=int, default=4, help="right and wrong items each")
    ap.add_argument("--max-tokens", type=int, default=128, help="reply cap (served judge's default)")
    args = ap.parse_args()
    items = known_items(args.n)
    folder = model_folder(args.model)
    print(
        f"# judge server benchmark · {time.strftime('%Y-%m-%d')} · {platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} core(s) allowed, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')} "
        f"· judge {args.model} · reply cap {args.max_tokens} tokens\n"
    )
    rows, served_labels = [], []
    with serve_model(args.model) as served:
        start_s = served.start_s
        with LLMJudge(served.judge_config(max_tokens=args.max_tokens)) as judge:
            seconds = []
            for question, gold, pred, _ in items:
                t = time.perf_counter()
                (v,) = judge.judge_many([(question, gold, pred)], progress=False, keep_unparsed=True)
                seconds.append(time.perf_counter() - t)
                served_labels.append(None if isinstance(v, JudgeParseError) else v.label)
        rows.append(summary(f"served ({served.server})", served_labels, seconds, items))
        stop_start = time.perf_counter()
    stop_s = time.perf_counter() - stop_start

    from memr1.llm.backends import TransformersGenerator
    from memr1.llm.load import load_policy

    gen = TransformersGenerator(load_policy(str(folder), backend="transformers"))
    labels, seconds = [], []
    for question, gold, pred, _ in items:
        prompt = JUDGE_PROMPT.format(question=question, gold=gold, prediction=pred)
        t = time.perf_counter()
        reply = gen.generate([[{"role": "user", "content": prompt}]], Sampling(max_new_tokens=args.max_tokens))[0]
        seconds.append(time.perf_counter() - t)
        try:
            labels.append(parse_verdict(reply.text)[0])
        except JudgeParseError:
            labels.append(None)
    rows.append(summary("in-process (transformers generate)", labels, seconds, items))

    print(f"server start (launch to /health, model loaded): {start_s:.1f} s; stop: {stop_s:.1f} s\n")
    print("| path | items | median s/verdict | max s | with a label | accuracy (labelled) | agrees w/ F1>=0.5 |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    same = sum(a == b for a, b in zip(served_labels, labels))
    print(f"\nsame label (or none) on both paths: {same}/{len(items)}")


if __name__ == "__main__":
    main()
