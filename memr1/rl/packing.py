"""Training rows for MEM1 trajectories: exact per-turn rows, exact packed rows, log-probs, advantages.

A MEM1 trajectory is a list of turns. At turn t the model saw a *pruned* context (task prompt, last
internal state, last query, last info) and generated a completion. The context of turn t is not a
prefix of the context of turn t+1, so a trajectory is not one left-to-right sequence. Two exact
ways to score it, both built here from the token ids kept at rollout (nothing is re-tokenised):

``per_turn_rows``
    One row per turn, ``prompt_t + completion_t``, right-padded, a 2-D padding mask and positions
    0..L-1. Exact with any attention kernel (eager, sdpa, flash-attention).
``packed_rows``
    One row per trajectory. The longest token prefix shared by every prompt of the trajectory (the
    chat header and task prompt, in practice) is stored once; then, for each turn, a block holding
    the rest of that turn's prompt and its completion. A token of block t attends to the shared
    prefix and, causally, to its own block, nothing else; positions restart at the prefix length in
    every block, so RoPE sees the positions of the unpacked row. Storing the prefix once is exact
    because, under causal attention, a prefix's hidden states never depend on what follows it.
    The mask is a 4-D *additive float* tensor ``[batch, 1, q, k]`` (0 = attend,
    ``finfo(dtype).min`` = blocked). transformers 5.17 passes any 4-D mask through untouched
    (``masking_utils._preprocess_mask_arguments``) and both its ``eager`` and ``sdpa`` attention
    *add* a float mask to the scores (both tested); flash-attention cannot take an arbitrary 4-D
    mask, so the packed variant needs ``eager`` or ``sdpa``.

``mask_style="bool_as_float"`` reproduces the released MEM1 code's mistake (a boolean mask cast to
0/1 floats, which the attention adds to the scores, so nothing is masked); it exists only as the
negative control of the tests.

Example:
    >>> traj = Trajectory([TrajectoryTurn((5, 6, 7), (8, 9)), TrajectoryTurn((5, 6, 3), (4,))], reward=1.0)
    >>> batch = packed_rows([traj], pad_id=0)
    >>> batch.input_ids.tolist(), batch.position_ids.tolist()
    ([[5, 6, 7, 8, 9, 3, 4]], [[0, 1, 2, 3, 4, 2, 3]])
    >>> int(batch.loss_mask.sum()) == traj.n_generated == 3
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch
from torch.utils.checkpoint import checkpoint as torch_checkpoint

from memr1.errors import ConfigError
from memr1.rl.groups import Scored

MaskStyle = Literal["additive", "bool_as_float"]
PAD_SEGMENT = -1  # segment id of padding in a packed row; 0 is the shared prefix, 1.. the turns


@dataclass(frozen=True)
class TrajectoryTurn:
    """One model call of a trajectory, as token ids: the context it saw and what it generated.

    (Not ``memr1.data.locomo.Turn``, which is one dialogue turn of a LoCoMo conversation.)
    """

    prompt_ids: tuple[int, ...]
    """The pruned context, tokenised exactly as it was fed to the model (chat template included)."""
    completion_ids: tuple[int, ...]
    """Exactly the sampled token ids (an end-of-turn token included when one was sampled)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt_ids", tuple(int(i) for i in self.prompt_ids))
        object.__setattr__(self, "completion_ids", tuple(int(i) for i in self.completion_ids))
        if not self.prompt_ids or not self.completion_ids:
            raise ConfigError(
                f"a TrajectoryTurn needs a non-empty prompt and completion, got "
                f"{len(self.prompt_ids)} prompt and {len(self.completion_ids)} completion ids"
            )


@dataclass
class Trajectory:
    """One episode of the agent: its turns, its reward and free-form details for logs."""

    turns: list[TrajectoryTurn]
    """The turns in order; each holds its own pruned context."""
    reward: float = 0.0
    """Number of objectives answered correctly (exact match)."""
    info: dict[str, Any] = field(default_factory=dict)
    """Anything worth logging (texts, the final answer, the seed); never used by the loss."""

    @property
    def n_generated(self) -> int:
        """Generated tokens over all turns: the number of tokens the loss covers."""
        return sum(len(t.completion_ids) for t in self.turns)


@dataclass
class Batch:
    """Padded model inputs for a list of trajectories, either layout.

    A token at position p is scored with the logits at position p - 1 of the same row;
    ``loss_mask[b, p]`` is True exactly where the token at p was generated.
    """

    input_ids: torch.Tensor
    """[rows, S] token ids (pad id after the end of each row)."""
    position_ids: torch.Tensor
    """[rows, S] the positions each token had when it was generated or read."""
    loss_mask: torch.Tensor
    """[rows, S] bool, True on generated tokens."""
    row_trajectory: list[int]
    """Index (into the input list) of the trajectory each row belongs to, rows in turn order."""
    padding_mask: torch.Tensor | None = None
    """[rows, S] 1 on real tokens, 0 on padding (per-turn rows only)."""
    allowed: torch.Tensor | None = None
    """[rows, S, S] bool, True where query q may attend to key k (packed rows only)."""
    real_tokens: int = 0
    """Tokens that are not padding: what the forward pass really has to read."""

    @property
    def packed(self) -> bool:
        return self.allowed is not None


def per_turn_rows(trajectories: Sequence[Trajectory], pad_id: int) -> Batch:
    """One row per turn, ``prompt + completion``, right-padded (exact with any attention kernel)."""
    rows, owners, masks = [], [], []
    for i, traj in enumerate(trajectories):
        for turn in traj.turns:
            rows.append(list(turn.prompt_ids) + list(turn.completion_ids))
            masks.append([False] * len(turn.prompt_ids) + [True] * len(turn.completion_ids))
            owners.append(i)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    loss = torch.zeros((len(rows), width), dtype=torch.bool)
    real = torch.zeros((len(rows), width), dtype=torch.long)
    for b, (row, m) in enumerate(zip(rows, masks)):
        ids[b, : len(row)] = torch.tensor(row)
        loss[b, : len(row)] = torch.tensor(m)
        real[b, : len(row)] = 1
    # Right padding: positions simply count on through the pads, which no real token attends to.
    positions = torch.arange(width).expand(len(rows), width).clone()
    return Batch(ids, positions, loss, owners, padding_mask=real, real_tokens=int(real.sum()))


def shared_prefix_length(trajectory: Trajectory) -> int:
    """Length of the token prefix common to every prompt, leaving each prompt one token of its own.

    Keeping at least one prompt token per block means the first generated token of each turn is
    scored from a position inside its own block.
    """
    prompts = [t.prompt_ids for t in trajectory.turns]
    limit = min(len(p) for p in prompts) - 1
    n = 0
    while n < limit and all(p[n] == prompts[0][n] for p in prompts):
        n += 1
    return n


def packed_rows(trajectories: Sequence[Trajectory], pad_id: int, *, share_prefix: bool = True) -> Batch:
    """One row per trajectory: shared prefix once, then one block per turn (see the module doc).

    Args:
        trajectories: the trajectories to pack, one row each.
        pad_id: id written on padding (never attended to, never scored).
        share_prefix: store the common prompt prefix once; False repeats every prompt in full
            (the layout ``[prompt_1, completion_1, prompt_2, completion_2, ...]``).
    """
    rows: list[tuple[list[int], list[int], list[int], list[bool]]] = []
    for traj in trajectories:
        n_shared = shared_prefix_length(traj) if share_prefix else 0
        first = traj.turns[0].prompt_ids
        ids, pos, seg, loss = list(first[:n_shared]), list(range(n_shared)), [0] * n_shared, [False] * n_shared
        for t, turn in enumerate(traj.turns, start=1):
            block = list(turn.prompt_ids[n_shared:]) + list(turn.completion_ids)
            ids += block
            pos += range(n_shared, n_shared + len(block))
            seg += [t] * len(block)
            loss += [False] * (len(turn.prompt_ids) - n_shared) + [True] * len(turn.completion_ids)
        rows.append((ids, pos, seg, loss))
    width = max(len(r[0]) for r in rows)
    n = len(rows)
    ids_t = torch.full((n, width), pad_id, dtype=torch.long)
    pos_t = torch.zeros((n, width), dtype=torch.long)
    seg_t = torch.full((n, width), PAD_SEGMENT, dtype=torch.long)
    loss_t = torch.zeros((n, width), dtype=torch.bool)
    for b, (ids, pos, seg, loss) in enumerate(rows):
        k = len(ids)
        ids_t[b, :k], pos_t[b, :k] = torch.tensor(ids), torch.tensor(pos)
        seg_t[b, :k], loss_t[b, :k] = torch.tensor(seg), torch.tensor(loss)
    return Batch(
        ids_t,
        pos_t,
        loss_t,
        list(range(n)),
        allowed=allowed_from_segments(seg_t),
        real_tokens=sum(len(r[0]) for r in rows),
    )


def allowed_from_segments(segments: torch.Tensor) -> torch.Tensor:
    """Boolean [rows, S, S] attention pattern of packed rows from per-token segment ids.

    Query q may see key k iff k <= q, k is not padding, and k is in the shared prefix (segment 0)
    or in q's own segment. Padding queries see only themselves, so no softmax row is empty.
    """
    width = segments.shape[1]
    q_seg, k_seg = segments[:, :, None], segments[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    allowed = causal & (k_seg != PAD_SEGMENT) & ((k_seg == q_seg) | (k_seg == 0))
    return allowed | torch.eye(width, dtype=torch.bool)


def attention_bias(allowed: torch.Tensor, dtype: torch.dtype, style: MaskStyle = "additive") -> torch.Tensor:
    """The [rows, 1, S, S] float mask handed to the model.

    ``additive``: 0 where attention is allowed, ``finfo(dtype).min`` where it is not (correct).
    ``bool_as_float``: the boolean pattern cast to 0/1, the released MEM1 code's bug: attention
    adds it to the scores, which only nudges allowed keys by +1 and masks nothing.
    """
    if style == "additive":
        zero = torch.zeros((), dtype=dtype)
        return torch.where(allowed, zero, torch.finfo(dtype).min)[:, None]
    if style == "bool_as_float":
        return allowed.to(dtype)[:, None]
    raise ConfigError(f"mask style must be additive or bool_as_float, got {style!r}")


LOGPROB_CHUNK = 1024
"""Scored tokens per chunk of the output layer: a [chunk, vocabulary] logits tensor at a time."""


def token_logprobs(
    model: Any,
    batch: Batch,
    *,
    mask_style: MaskStyle = "additive",
    temperature: float = 1.0,
    chunk_tokens: int = LOGPROB_CHUNK,
) -> torch.Tensor:
    """Log-probability of every generated token given what precedes it in its row, as [rows, S] fp32.

    Entry p holds log p(input_ids[p] | context) read at position p - 1 (column 0 is 0). Only
    entries under ``batch.loss_mask`` are computed (the rest are 0). Gradients flow when enabled.

    Memory: the decoder runs once over the rows; the output layer then runs only on the hidden
    states that predict a generated token, ``chunk_tokens`` at a time, each chunk under activation
    checkpointing, so at most one [chunk, vocabulary] logits tensor lives at once, in the forward
    and in the backward pass (at Qwen's 151,936-id vocabulary a whole batch's logits take
    gigabytes: ``bench/bench_mem1_logprob_memory.py``). ``chunk_tokens`` 0, or a model whose
    logits are not the plain output layer of the last hidden state (soft-capped or scaled logits),
    takes the full-logits path: every position's logits at once.
    """
    return token_scores(model, batch, mask_style=mask_style, temperature=temperature, chunk_tokens=chunk_tokens).logps


class TokenScores(NamedTuple):
    """``token_scores``' output: [rows, S] fp32 tensors, entry p about the token at p (0 off the loss mask)."""

    logps: torch.Tensor
    entropies: torch.Tensor | None
    """Entropy of ``softmax(logits / temperature)`` at the position that predicts the token."""
    values: torch.Tensor | None
    """``value_head`` on the last hidden state that predicts the token (the state before it)."""


def token_scores(
    model: Any,
    batch: Batch,
    *,
    mask_style: MaskStyle = "additive",
    temperature: float = 1.0,
    chunk_tokens: int = LOGPROB_CHUNK,
    with_entropy: bool = False,
    value_head: Any = None,
) -> TokenScores:
    """``token_logprobs``, plus per-token entropies and values (PPO) from the same decoder pass when asked."""
    device = next(model.parameters()).device
    if batch.allowed is not None:  # packed rows
        mask = attention_bias(batch.allowed.to(device), model.dtype, mask_style)
    else:
        assert batch.padding_mask is not None, "per-turn rows always carry a padding mask"
        mask = batch.padding_mask.to(device)
    inputs = {
        "input_ids": batch.input_ids.to(device),
        "attention_mask": mask,
        "position_ids": batch.position_ids.to(device),
        "use_cache": False,
    }
    scored = batch.loss_mask[:, 1:].to(device)  # position p - 1 predicts a generated token at p
    targets = batch.input_ids[:, 1:].to(device)
    parts = _decoder_and_head(model) if chunk_tokens > 0 else None

    def placed(flat: torch.Tensor) -> torch.Tensor:  # [n scored] -> [rows, S], 0 elsewhere
        out = torch.zeros(scored.shape, dtype=torch.float32, device=device).masked_scatter(scored, flat.float())
        return torch.nn.functional.pad(out, (1, 0))

    hidden: Any  # the states that predict the scored tokens (what the value head reads)
    if parts is None:
        out = model(**inputs, output_hidden_states=value_head is not None)
        per_token = _chunk_scores(None, out.logits[:, :-1][scored], targets[scored], temperature, with_entropy)
        hidden = out.hidden_states[-1][:, :-1][scored] if value_head is not None else None
    else:
        decoder, head = parts
        hidden = decoder(**inputs).last_hidden_state[:, :-1][scored]  # [n scored, hidden]
        wanted, n = targets[scored], chunk_tokens
        chunks = [
            _recomputed(_chunk_scores, head, hidden[i : i + n], wanted[i : i + n], temperature, with_entropy)
            for i in range(0, hidden.shape[0], n)
        ]
        per_token = torch.cat(chunks) if chunks else hidden.new_zeros(0, 2, dtype=torch.float32)
    return TokenScores(
        placed(per_token[:, 0]),
        placed(per_token[:, 1]) if with_entropy else None,
        placed(value_head(hidden.float()).squeeze(-1)) if value_head is not None else None,
    )


def _chunk_scores(
    head: Any, hidden: torch.Tensor, targets: torch.Tensor, temperature: float, with_entropy: bool
) -> torch.Tensor:
    """[n, 2]: log p of each target and the entropy of its distribution (0 unless asked); ``head`` None: ``hidden``
    already holds the logits."""
    logits = (hidden if head is None else head(hidden)).float() / temperature
    norm = logits.logsumexp(-1)
    logp = logits.gather(-1, targets[:, None]).squeeze(-1) - norm
    ent = norm - (logits.softmax(-1) * logits).sum(-1) if with_entropy else torch.zeros_like(logp)
    return torch.stack([logp, ent], dim=-1)


def _recomputed(fn: Any, *args: Any) -> torch.Tensor:
    """``fn(*args)``, its intermediates recomputed in the backward pass instead of kept."""
    if not torch.is_grad_enabled():
        return fn(*args)
    return torch_checkpoint(fn, *args, use_reentrant=False)


def _decoder_and_head(model: Any) -> tuple[Any, Any] | None:
    """The decoder and output layer of a causal LM (through a PEFT wrapper), or None when its logits
    are more than ``head(last hidden state)``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if getattr(config, "final_logit_softcapping", None) or getattr(base, "logit_scale", None) is not None:
        return None
    get_decoder, get_head = getattr(base, "get_decoder", None), getattr(base, "get_output_embeddings", None)
    if get_decoder is None or get_head is None:
        return None
    decoder, head = get_decoder(), get_head()
    return (decoder, head) if decoder is not None and head is not None else None


def split_by_trajectory(batch: Batch, values: torch.Tensor, n_trajectories: int) -> list[torch.Tensor]:
    """Per trajectory, the values at its generated tokens, in turn order (a flat 1-D tensor each)."""
    parts: list[list[torch.Tensor]] = [[] for _ in range(n_trajectories)]
    mask = batch.loss_mask.to(values.device)
    for row, owner in enumerate(batch.row_trajectory):
        parts[owner].append(values[row][mask[row]])
    return [torch.cat(p) if p else values.new_zeros(0) for p in parts]


def trajectory_logprobs(
    model: Any,
    trajectories: Sequence[Trajectory],
    *,
    packed: bool,
    temperature: float = 1.0,
    pad_id: int = 0,
    chunk_tokens: int = LOGPROB_CHUNK,
) -> tuple[list[torch.Tensor], int]:
    """Log-probs of every generated token, one flat tensor per trajectory (turn order).

    Returns:
        The tensors and the number of real (non-pad) tokens the forward pass read.
    """
    scores, read = trajectory_scores(
        model, trajectories, packed=packed, temperature=temperature, pad_id=pad_id, chunk_tokens=chunk_tokens
    )
    return scores.logps, read


def trajectory_scores(
    model: Any,
    trajectories: Sequence[Trajectory],
    *,
    packed: bool,
    temperature: float = 1.0,
    pad_id: int = 0,
    chunk_tokens: int = LOGPROB_CHUNK,
    with_entropy: bool = False,
    value_head: Any = None,
) -> tuple[Scored, int]:
    """``trajectory_logprobs`` with, when asked, the entropies and values of the same forward pass: one flat tensor
    per trajectory in each field of the ``Scored``, over its generated tokens in turn order (no observation token)."""
    batch = packed_rows(trajectories, pad_id) if packed else per_turn_rows(trajectories, pad_id)
    out = token_scores(
        model, batch, temperature=temperature, chunk_tokens=chunk_tokens, with_entropy=with_entropy,
        value_head=value_head,
    )  # fmt: skip

    def split(values: torch.Tensor | None) -> list[torch.Tensor] | None:
        return None if values is None else split_by_trajectory(batch, values, len(trajectories))

    return Scored(split(out.logps), split(out.entropies), split(out.values)), batch.real_tokens  # type: ignore[arg-type]


def group_advantages(rewards: Sequence[float], eps: float = 1e-4) -> list[float]:
    """GRPO advantage of each member of one group: (reward - mean) / (std + eps).

    ``std`` is the unbiased sample standard deviation, as TRL's GRPOTrainer computes it; a group of
    one, or a group whose rewards are all equal, gets advantage 0 everywhere.

    >>> [round(a, 3) for a in group_advantages([2.0, 0.0])]
    [0.707, -0.707]
    >>> group_advantages([1.0, 1.0, 1.0])
    [0.0, 0.0, 0.0]
    """
    r = torch.tensor([float(x) for x in rewards], dtype=torch.float64)
    if r.numel() < 2:
        return [0.0] * r.numel()
    adv = (r - r.mean()) / (r.std() + eps)
    return [float(a) for a in adv]
