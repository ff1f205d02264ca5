"""Bank building on SmolLM2-135M (CPU): LoCoMo test conversations one at a time vs in lockstep.

Stage 05's LLM-bank agents, with the settings of ``experiments/locomo_table.py`` (``lines`` prompts,
at most 64 extractor and 160 manager tokens, greedy, minilm embedder), build in memory the banks of the
first ``--turns`` turns (12 by default: about 20 minutes with ``--batch-sizes 16`` and both attentions) of
LoCoMo's test conversations:

* alone: the first ``--alone`` test conversations, each with ``build_banks`` (stage 05 before lockstep);
* lockstep: all 8 test conversations with ``build_many``, once per generator batch size in ``--batch-sizes``
  (``TransformersGenerator.batch_size``: prompts per ``model.generate`` call; stage 05 uses 8);
* each of these again with the shared-prefix cache (``--prefix-cache`` tokens, stage 05's ``prefix_cache``;
  ``memr1.llm.prefix_cache``): the instructions and examples every prompt opens with are encoded once;
* all of these once per attention in ``--attentions``: transformers' ``sdpa``, which copies a padded batch's
  key/value heads before attending, and ``memr1_sdpa`` (``memr1.llm.attention``), which does not and which
  memr1 loads CPU models with. The first row (alone, ``sdpa``, no cache) is stage 05 before every lever.

It prints, per run, turns per second by wall time and by this process's CPU time (the machine is
shared, so wall times carry other processes' load; CPU seconds of one thread are the work done), the
ratio to the first row, the hours one system's banks would take over the split's 5,094 turns at that
rate, the seconds per turn spent inside the extractor's and the manager's ``generate`` calls, and how
far the builds agree: the share of turns whose applied operations (kind, old and new text; or the
rejection) are identical. Batching changes fp32 rounding, so greedy outputs may differ at near-ties.
Last, where a prompt's cost goes: CPU seconds of whole calls against calls that only read the prompt
(one new token), and how many leading tokens the prompts share (system text and worked examples).
All runs share one process and one loaded model and run one after the other; pin it to one core:

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python bench/bench_lockstep.py --out docs/results/bench_lockstep.md
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

SPLIT_TURNS = 5094
"""Turns of the 8 LoCoMo test conversations: what one system's banks cost to build in full."""

ATTENTIONS = ("sdpa", "memr1_sdpa")
"""Transformers' attention, which copies a padded batch's key/value heads, and memr1's, which does not."""


def test_conversations():
    from memr1.data.locomo import load_locomo
    from memr1.data.splits import split_questions

    data = load_locomo(os.environ.get("MEMR1_DATA_DIR") or None)
    ids = dict.fromkeys(q.sample_id for q in split_questions(data, "test"))
    return [data.conversation(i) for i in ids]


def build(gen, embedder, convs, turns: int, lockstep: bool) -> dict:
    """One timed build (in memory); its results, wall seconds and seconds inside generate per role."""
    from memr1.agents import FactExtractor, MemoryManager, build_banks, build_many
    from memr1.llm.generate import Sampling

    extractor = FactExtractor(gen, Sampling(max_new_tokens=64), batch_size=16 * len(convs), style="lines")
    manager = MemoryManager(gen, Sampling(max_new_tokens=160), style="lines")
    start, cpu = time.perf_counter(), time.process_time()
    if lockstep:
        results = build_many(convs, extractor, manager, embedder, until_turn=turns - 1, progress=False)
    else:
        results = [build_banks(c, extractor, manager, embedder, until_turn=turns - 1, progress=False) for c in convs]
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    gens = {
        "extract": [x.generation for r in results for x in r.extractions],
        "manager": [s.generation for r in results for s in r.steps],
    }
    return {
        "results": results,
        "wall": wall,
        "cpu": cpu,
        "turns": sum(len(r.steps) for r in results),
        "in_generate": {role: sum(g.latency_s for g in gs if g) for role, gs in gens.items()},
        "cut": {role: sum(g.finish_reason == "length" for g in gs if g) for role, gs in gens.items()},
        "calls": {role: sum(g is not None for g in gs) for role, gs in gens.items()},
    }


def signature(step) -> tuple:
    """What a manager step did to its bank, ids aside: the applied ops, or its rejections."""
    if step.applied is None:
        return ("rejected", tuple(sorted(map(str, step.result.rejections))))
    return tuple((op.kind.value, op.old_text, op.new_text) for op in step.applied.ops)


def agreement(a: list, b: list) -> tuple[int, int]:
    """Turns of the conversations in both ``a`` and ``b`` whose steps did the same, and how many turns."""
    by_id = {r.conversation.sample_id: r for r in b}
    pairs = [
        (s, t)
        for r in a
        if r.conversation.sample_id in by_id
        for s, t in zip(r.steps, by_id[r.conversation.sample_id].steps)
    ]
    return sum(signature(s) == signature(t) for s, t in pairs), len(pairs)


def command_line(script: str) -> str:
    """The command that ran this bench, as a reader would retype it (threads and the pinned core included)."""
    cores = sorted(os.sched_getaffinity(0))
    pin = f"taskset -c {cores[0]} " if len(cores) == 1 else ""
    threads = os.environ.get("OMP_NUM_THREADS")
    env = f"OMP_NUM_THREADS={threads} " if threads else ""
    return f"{env}{pin}.venv/bin/python bench/{script} " + " ".join(sys.argv[1:])


def emit(lines: list[str], out: str | None) -> None:
    """Print the report and, with ``out``, write it there too (atomically)."""
    from memr1.files import write_text_atomic

    report = "\n".join(lines) + "\n"
    print(report)
    if out:
        write_text_atomic(out, report)


def prompt_costs(gen, convs, results, n: int = 16) -> list[dict]:
    """Per role, on ``n`` of its real prompts (generator batch 8): CPU seconds per prompt of the full call
    and of the prompt alone (one new token), the mean prompt length and the tokens all ``n`` share."""
    from memr1.agents import FactExtractor
    from memr1.llm.generate import Sampling

    extract = FactExtractor(gen, style="lines").messages(convs[0], list(convs[0].turns())[:n])
    manage = [s.messages for r in results for s in r.steps if s.facts][:n]
    gen.batch_size, out = 8, []
    for role, prompts, cap in (("extract", extract, 64), ("manager", manage, 160)):
        cpu = {}
        for label, tokens in (("full", cap), ("prompt", 1)):
            start = time.process_time()
            gen.generate(prompts, Sampling(max_new_tokens=tokens))
            cpu[label] = (time.process_time() - start) / len(prompts)
        ids = [gen.tokenizer(gen.tokenizer.apply_chat_template(m, tokenize=False)).input_ids for m in prompts]
        shared = next((i for i, col in enumerate(zip(*ids)) if len(set(col)) > 1), min(map(len, ids)))
        out.append({"role": role, "n": len(prompts), "tokens": sum(map(len, ids)) / len(ids), "shared": shared} | cpu)
    return out


def measure(gen, embedder, convs, args) -> list[tuple[str, int, dict]]:
    """The builds of one attention: alone and lockstep per batch size, then the same with the prefix cache."""
    from memr1.llm.prefix_cache import PrefixCache

    runs, cached = [], []
    for cache in (0, args.prefix_cache):
        gen.prefix_cache = PrefixCache(cache) if cache else None
        into, suffix = (cached, " + prefix cache") if cache else (runs, "")
        gen.batch_size = args.batch_sizes[0]
        into.append(("alone" + suffix, gen.batch_size, build(gen, embedder, convs[: args.alone], args.turns, False)))
        for bs in args.batch_sizes:
            gen.batch_size = bs
            into.append(("lockstep" + suffix, bs, build(gen, embedder, convs, args.turns, lockstep=True)))
        for kind, bs, r in into[-1 - len(args.batch_sizes) :]:
            print(f"  {kind}, batch {bs}: {r['wall']:.0f} s wall", file=sys.stderr, flush=True)
    gen.prefix_cache = None
    return runs + cached


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, default=12, help="first turns of each conversation")
    ap.add_argument("--alone", type=int, default=2, help="conversations built one at a time")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16], help="generator batch sizes (lockstep)")
    ap.add_argument("--prefix-cache", type=int, default=64, help="PrefixCache min_tokens of the cached builds")
    ap.add_argument(
        "--attentions", nargs="+", default=list(ATTENTIONS), choices=ATTENTIONS, help="every build once per attention"
    )
    ap.add_argument("--out", help="also write the report to this markdown file")
    args = ap.parse_args()

    import torch

    from memr1.llm.attention import register
    from memr1.llm.backends import make_generator
    from memr1.memory.embed import make_embedder

    convs = test_conversations()
    gen = make_generator("smollm2-135m", "transformers")
    embedder = make_embedder("minilm")
    gen.generate([[{"role": "user", "content": "Hello"}]])  # warm-up: first-call allocations
    load = [os.getloadavg()[0]]
    began = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    runs = []  # (attention, kind, generator batch, build)
    register()  # memr1_sdpa, known to transformers
    for attention in args.attentions:
        gen.model.set_attn_implementation(attention)
        print(f"attention {attention}:", file=sys.stderr, flush=True)
        runs += [(attention, kind, bs, r) for kind, bs, r in measure(gen, embedder, convs, args)]
    costs = prompt_costs(gen, convs, runs[1][3]["results"])
    load.append(os.getloadavg()[0])

    alone = runs[0][3]
    rate = {k: alone["turns"] / alone[k] for k in ("wall", "cpu")}
    command = command_line("bench_lockstep.py")
    lines = [
        f"# Lockstep bank building on SmolLM2-135M · {began} · {platform.machine()} · {os.cpu_count()} cores · "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)",
        "",
        f"Command: `{command}`",
        "",
        f"First {args.turns} turns of LoCoMo test conversations; `lines` prompts, extractor ≤ 64 and manager ≤ 160 "
        "tokens, greedy, fp32, minilm embedder, banks in memory. Alone: "
        f"{', '.join(c.sample_id for c in convs[: args.alone])}, one after the other; lockstep: all {len(convs)} "
        f"test conversations together; '+ prefix cache': the same with shared prompt prefixes of at least "
        f"{args.prefix_cache} tokens encoded once; attention: transformers' `sdpa` (which copies the key/value heads "
        "of a padded batch) or memr1's `memr1_sdpa` (which does not; `memr1.llm.attention`). Ratios are against the "
        f"first row ({runs[0][1]}, {runs[0][0]}). Seeds: none; decoding is greedy and nothing is drawn at random, "
        "so a rerun "
        f"gives the same outputs (one run per build). Load average (1 min) before / after: {load[0]:.1f} / "
        f"{load[1]:.1f}"
        + (": other processes shared the machine, so wall times are inflated; " if max(load) > 1.5 else "; ")
        + "CPU seconds (this process's, one thread) are what the work cost, and the ratios are given for both.",
        "",
        "| attention | build | conversations | generator batch | turns | wall s | turns / s (wall) | vs first (wall) "
        "| CPU s | turns / CPU s | vs first (CPU) | hours for 5,094 turns (CPU) | extract s / turn "
        "| manager s / turn | extract / manager calls | outputs cut (extract / manager) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for attention, kind, bs, r in runs:
        wall_rate, cpu_rate = r["turns"] / r["wall"], r["turns"] / r["cpu"]
        lines.append(
            f"| {attention} | {kind} | {len(r['results'])} | {bs} | {r['turns']} | {r['wall']:.0f} | "
            f"{wall_rate:.3f} | {wall_rate / rate['wall']:.2f}× | {r['cpu']:.0f} | {cpu_rate:.3f} | "
            f"{cpu_rate / rate['cpu']:.2f}× | {SPLIT_TURNS / cpu_rate / 3600:.1f} | "
            f"{r['in_generate']['extract'] / r['turns']:.2f} | {r['in_generate']['manager'] / r['turns']:.2f} | "
            f"{r['calls']['extract']} / {r['calls']['manager']} | {r['cut']['extract']} / {r['cut']['manager']} |"
        )
    lines += [
        "",
        "(extract / manager s per turn: wall seconds inside the role's `generate` calls, per turn built.)",
        "",
        "Agreement (turns whose applied operations are identical, on the conversations both built): the first "
        "lockstep build against the first row, every other build against the first of its kind (alone or lockstep):",
        "",
    ]
    for run in runs[1:]:
        ref = runs[1] if run[1].startswith("lockstep") and run is not runs[1] else runs[0]
        same, n = agreement(ref[3]["results"], run[3]["results"])
        lines.append(
            f"- {run[1]}, batch {run[2]}, {run[0]} against {ref[1]}, batch {ref[2]}, {ref[0]}: "
            f"{same} / {n} = {same / max(1, n):.1%}"
        )
    lines += [
        "",
        f"Where a prompt's cost goes (generator batch 8, {args.attentions[-1]}, CPU seconds per prompt): the whole "
        "call against the prompt alone (one new token), and how many of the prompt's tokens all the prompts share:",
        "",
        "| role | prompts | mean prompt tokens | shared leading tokens | CPU s / prompt, full | CPU s / prompt, "
        "prompt only | prompt share |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in costs:
        lines.append(
            f"| {c['role']} | {c['n']} | {c['tokens']:.0f} | {c['shared']} | {c['full']:.2f} | {c['prompt']:.2f} | "
            f"{c['prompt'] / c['full']:.0%} |"
        )
    emit(lines, args.out)


if __name__ == "__main__":
    main()
