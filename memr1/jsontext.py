"""Find JSON values inside model output: code fences, prose around the object, trailing text.

Every parser of model output (Memory-Manager operations, extracted facts, judge verdicts) reads it
through ``json_values``, so they agree on what counts as "the JSON in that reply".

>>> list(json_values('Sure:\\n```json\\n{"a": 1}\\n``` and [2]', openers="{["))
[{'a': 1}, {'a': 1}, [2]]
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from itertools import islice

_FENCE = re.compile(r"```[A-Za-z]*[ \t]*\n?(.*?)```", re.DOTALL)
MAX_STARTS = 256
"""Fenced blocks and opening-bracket positions tried, so pathological outputs stay cheap."""


def json_values(text: str, *, openers: str = "{", limit: int = MAX_STARTS) -> Iterator[object]:
    """Decoded JSON values, in this order: the whole text, each fenced block, then from each opener.

    Text after a decoded value is ignored; undecodable candidates (and absurdly deep nesting) are
    skipped, so this never raises on a string.
    """
    fenced = islice(_FENCE.finditer(text), limit)
    starts = [(text.strip(), 0)] + [(m.group(1).strip(), 0) for m in fenced]
    positions = (m.start() for m in re.finditer("[" + re.escape(openers) + "]", text))
    starts += [(text, pos) for pos in islice(positions, limit)]
    decoder = json.JSONDecoder()
    for source, start in starts:
        try:
            yield decoder.raw_decode(source, start)[0]
        except (ValueError, RecursionError):  # JSONDecodeError is a ValueError; deep nesting recurses
            pass
