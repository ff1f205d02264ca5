"""Bank timeline: scrub through a conversation's committed turns and watch each speaker's bank change.

Live (Jupyter): a play button and slider over committed turns, a speaker toggle, the dialogue turn,
a diff panel (added, old → new text for updates, struck-through deletes) and the bank after that turn,
rows coloured by the operation that last touched them. Under papermill the same view is one
self-contained HTML block: the entry versions travel as JSON and a few lines of inline JavaScript
draw the selected turn (no network, no kernel).

The store is read once: one checkout per committed turn gives every entry version with the turn it
appeared and the turn it was replaced or deleted.

    tl = BankTimeline(conv, banks)        # banks opened from a LanceDB store, one per speaker
    show(tl)                              # widgets.display.show: live or static
"""

from __future__ import annotations

import html
import json
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from memr1.data.locomo import Conversation
from memr1.memory.bank import MemoryBank
from memr1.memory.entry import MemoryEntry
from memr1.memory.store import id_number

OP_COLOURS = {"ADD": "#e3f4e6", "UPDATE": "#fff1d6", "DELETE": "#fde2e1"}
_CSS = """<style>
.m1-tl{font-family:system-ui,sans-serif;font-size:13px}.m1-tl table{border-collapse:collapse;width:100%;font-size:inherit}
.m1-tl td,.m1-tl th{border-bottom:1px solid #ddd;padding:3px 6px;text-align:left!important;vertical-align:top}
.m1-tl .now{box-shadow:inset 4px 0 0 #333}.m1-tl .del{text-decoration:line-through;color:#a33}
.m1-tl .old{text-decoration:line-through;color:#888}.m1-tl .turn{background:#f4f4f8;padding:6px;margin:6px 0}
.m1-tl .legend span{padding:1px 6px;margin-right:6px}.m1-tl ul{padding-left:0;list-style:none}
.m1-tl .bankbox{max-height:420px;overflow-y:auto;border:1px solid #eee}
</style>"""


def _e(text: object) -> str:
    return html.escape(str(text))


@dataclass(frozen=True)
class EntryVersion:
    """One version of one entry: alive from ``start`` until ``end`` (exclusive; None = still alive)."""

    speaker: str
    id: str
    text: str
    session_time: str
    sources: str
    last_op: str
    start: int
    end: int | None
    end_kind: str | None
    """"UPDATE" or "DELETE" when the version ended, else None."""
    prev_text: str | None
    """Text of the version this one replaced (UPDATE), else None."""


def entry_versions(speaker: str, bank: MemoryBank) -> list[EntryVersion]:
    """Every version of every entry of a persistent bank, from one checkout per committed turn."""
    out: list[EntryVersion] = []
    alive: dict[str, tuple[MemoryEntry, int, str | None]] = {}  # id -> (entry, start, prev_text)

    def close(eid: str, turn: int, kind: str) -> None:
        e, start, prev = alive.pop(eid)
        out.append(
            EntryVersion(
                speaker, e.id, e.text, e.session_time, ", ".join(e.sources), e.last_op.value, start, turn, kind, prev
            )
        )

    for turn in bank.committed_turns():
        now = {e.id: e for e in bank.checkout(turn).entries()}
        for eid in [i for i in alive if i not in now]:
            close(eid, turn, "DELETE")
        for eid, e in now.items():
            if eid not in alive:
                alive[eid] = (e, turn, None)
            elif alive[eid][0] != e:
                old = alive[eid][0]
                close(eid, turn, "UPDATE")
                alive[eid] = (e, turn, old.text)
    for eid in list(alive):
        e, start, prev = alive.pop(eid)
        out.append(
            EntryVersion(
                speaker, e.id, e.text, e.session_time, ", ".join(e.sources), e.last_op.value, start, None, None, prev
            )
        )
    return sorted(out, key=lambda v: (id_number(v.id), v.id, v.start))  # creation order, as the bank


class BankTimeline:
    """Timeline over the committed turns of a conversation's per-speaker banks.

    Args:
        conv: the conversation the banks were built from (for the dialogue text of each turn).
        banks: speaker → persistent MemoryBank (opened from a store, with committed turns).
        focus_turn: turn the views open at (the last committed turn at or before it; None = last).
    """

    def __init__(self, conv: Conversation, banks: Mapping[str, MemoryBank], focus_turn: int | None = None):
        self.conv, self.speakers, self.focus_turn = conv, list(banks), focus_turn
        self.versions = [v for sp, b in banks.items() for v in entry_versions(sp, b)]
        self.turns = sorted({v.start for v in self.versions} | {v.end for v in self.versions if v.end is not None})
        self._turn = {t.position: t for t in conv.turns()}

    def _start_index(self, turn: int | None) -> int:
        """Index of the last committed turn at or before ``turn`` (None or out of range: the last)."""
        at = [i for i, t in enumerate(self.turns) if turn is not None and 0 <= turn and t <= turn]
        return at[-1] if at else len(self.turns) - 1

    # ---- one turn, in Python (live view and tests) --------------------------------------------

    def bank_at(self, speaker: str, turn: int) -> list[EntryVersion]:
        return [
            v for v in self.versions if v.speaker == speaker and v.start <= turn and (v.end is None or v.end > turn)
        ]

    def changes_at(self, speaker: str, turn: int) -> list[tuple[str, EntryVersion]]:
        """("ADD" | "UPDATE" | "DELETE", version) for what happened to ``speaker``'s bank at ``turn``."""
        mine = [v for v in self.versions if v.speaker == speaker]
        return [("UPDATE" if v.prev_text is not None else "ADD", v) for v in mine if v.start == turn] + [
            ("DELETE", v) for v in mine if v.end == turn and v.end_kind == "DELETE"
        ]

    def diff_html(self, speaker: str, turn: int) -> str:
        items = []
        for kind, v in self.changes_at(speaker, turn):
            body = (
                f"<span class='old'>{_e(v.prev_text)}</span> → {_e(v.text)}"
                if kind == "UPDATE"
                else f"<span class='del'>{_e(v.text)}</span>"
                if kind == "DELETE"
                else _e(v.text)
            )
            items.append(f"<li style='background:{OP_COLOURS[kind]}'>{kind} <b>{_e(v.id)}</b>: {body}</li>")
        return f"<ul>{''.join(items)}</ul>" if items else "<p><i>no change at this turn</i></p>"

    def table_html(self, speaker: str, turn: int) -> str:
        rows = "".join(
            f"<tr class='{'now' if v.start == turn else ''}' style='background:{OP_COLOURS[v.last_op]}'>"
            f"<td>{_e(v.id)}</td><td>{_e(v.text)}</td><td>{_e(v.session_time)}</td>"
            f"<td>{_e(v.sources)}</td></tr>"
            for v in self.bank_at(speaker, turn)
        )
        return (
            # a bank of 100+ entries scrolls inside its box, so the slider above stays in view
            f"<div class='bankbox'><table><tr><th>id</th><th>text</th><th>session time</th><th>sources</th></tr>"
            f"{rows}</table></div>"
            if rows
            else "<p><i>empty bank</i></p>"
        )

    def turn_header(self, turn: int) -> str:
        t = self._turn.get(turn)
        if t is None:
            return f"<div class='turn'><b>turn {turn}</b></div>"
        return (
            f"<div class='turn'><b>turn {turn}</b> · {_e(t.dia_id)} · {_e(self.conv.session_time(t.session))}"
            f"<br><b>{_e(t.speaker)}</b>: {_e(t.text)}</div>"
        )

    def frame_html(self, speaker: str, turn: int) -> str:
        return (
            f"{self.turn_header(turn)}<h4>{_e(speaker)}: change at this turn</h4>{self.diff_html(speaker, turn)}"
            f"<h4>{_e(speaker)}'s bank after this turn ({len(self.bank_at(speaker, turn))} entries)</h4>"
            f"{self.table_html(speaker, turn)}"
        )

    def _legend(self) -> str:
        return (
            "<div class='legend'>"
            + "".join(f"<span style='background:{c}'>{k}</span>" for k, c in OP_COLOURS.items())
            + "</div>"
        )

    # ---- views --------------------------------------------------------------------------------

    def widget(self):
        """Live ipywidgets view: play button and slider over committed turns, speaker toggle."""
        import ipywidgets as w

        if not self.turns:
            return w.HTML("<i>no committed turns</i>")
        last, start = len(self.turns) - 1, self._start_index(self.focus_turn)
        play = w.Play(min=0, max=last, value=start, interval=700)
        slider = w.IntSlider(min=0, max=last, value=start, readout=False, layout=w.Layout(width="60%"))
        w.jslink((play, "value"), (slider, "value"))
        speaker = w.ToggleButtons(options=self.speakers)
        label, body = w.Label(), w.HTML()

        def render(*_):
            turn = self.turns[slider.value]
            label.value = f"turn {turn} ({slider.value + 1}/{len(self.turns)})"
            body.value = f"{_CSS}<div class='m1-tl'>{self._legend()}{self.frame_html(speaker.value, turn)}</div>"

        slider.observe(render, "value")
        speaker.observe(render, "value")
        render()
        return w.VBox([w.HBox([play, slider, label]), speaker, body])

    def static_html(self, turn: int | None = None) -> str:
        """Self-contained HTML with an inline-JS slider; opens at ``turn`` (default: ``focus_turn``)."""
        if not self.turns:
            return f"{_CSS}<div class='m1-tl'><p><i>no committed turns</i></p></div>"
        uid = uuid.uuid4().hex[:8]
        start = self._start_index(self.focus_turn if turn is None else turn)
        heads = {t: self.turn_header(t) for t in self.turns}
        data = json.dumps(
            {"turns": self.turns, "heads": heads, "colours": OP_COLOURS, "versions": [asdict(v) for v in self.versions]}
        ).replace("</", "<\\/")
        first = self.speakers[0]
        options = "".join(f"<option>{_e(sp)}</option>" for sp in self.speakers)
        return (
            f"{_CSS}<div class='m1-tl' id='tl{uid}'><b>{_e(self.conv.sample_id)}</b> memory banks · "
            f"{len(self.turns)} committed turns <select>{options}</select> <button>▶</button> "
            f"<input type='range' min='0' max='{len(self.turns) - 1}' value='{start}' style='width:45%'> "
            f"<span class='lbl'></span>{self._legend()}<div class='frame'>{self.frame_html(first, self.turns[start])}"
            f"</div></div><script type='application/json' id='d{uid}'>{data}</script>"
            f"<script>{_JS.replace('UID', uid)}</script>"
        )


# Mirrors BankTimeline.frame_html; the first frame is pre-rendered so the view is complete without JS.
_JS = """(function(){var r=document.getElementById('tlUID'),D=JSON.parse(document.getElementById('dUID').textContent),
s=r.querySelector('input'),p=r.querySelector('select'),b=r.querySelector('button'),f=r.querySelector('.frame'),
l=r.querySelector('.lbl'),timer=null;function e(x){var d=document.createElement('div');d.textContent=x==null?'':x;return d.innerHTML;}
function draw(){var t=D.turns[+s.value],sp=p.value,ch=[],rows=[];l.textContent='turn '+t+' ('+(+s.value+1)+'/'+D.turns.length+')';
D.versions.forEach(function(v){if(v.speaker!==sp)return;
if(v.start===t)ch.push('<li style="background:'+D.colours[v.prev_text===null?'ADD':'UPDATE']+'">'+(v.prev_text===null?'ADD <b>'+e(v.id)+'</b>: '+e(v.text):'UPDATE <b>'+e(v.id)+'</b>: <span class="old">'+e(v.prev_text)+'</span> → '+e(v.text))+'</li>');
if(v.end===t&&v.end_kind==='DELETE')ch.push('<li style="background:'+D.colours.DELETE+'">DELETE <b>'+e(v.id)+'</b>: <span class="del">'+e(v.text)+'</span></li>');
if(v.start<=t&&(v.end===null||v.end>t))rows.push('<tr class="'+(v.start===t?'now':'')+'" style="background:'+D.colours[v.last_op]+'"><td>'+e(v.id)+'</td><td>'+e(v.text)+'</td><td>'+e(v.session_time)+'</td><td>'+e(v.sources)+'</td></tr>');});
f.innerHTML=D.heads[t]+'<h4>'+e(sp)+': change at this turn</h4>'+(ch.length?'<ul>'+ch.join('')+'</ul>':'<p><i>no change at this turn</i></p>')+
'<h4>'+e(sp)+"'s bank after this turn ("+rows.length+' entries)</h4>'+(rows.length?'<div class="bankbox"><table><tr><th>id</th><th>text</th><th>session time</th><th>sources</th></tr>'+rows.join('')+'</table></div>':'<p><i>empty bank</i></p>');}
s.oninput=draw;p.onchange=draw;b.onclick=function(){if(timer){clearInterval(timer);timer=null;b.textContent='▶';return;}
b.textContent='❚❚';if(+s.value>=D.turns.length-1)s.value=0;timer=setInterval(function(){if(+s.value>=D.turns.length-1){clearInterval(timer);timer=null;b.textContent='▶';return;}s.value=+s.value+1;draw();},600);};draw();})();"""


def evaluated_banks(result: Any, data_dir: str | None = None) -> BankTimeline | None:
    """The timeline of the first conversation's banks that an evaluation built (stage 05), or None.

    ``result`` is an ``EvalResult``; systems without banks (full-context, rag) and runs whose store
    is gone give None.
    """
    from pathlib import Path

    from memr1.data.locomo import load_locomo
    from memr1.memory.embed import make_embedder

    store = Path(result.store) if result.store else None
    convs = sorted(p for p in store.iterdir() if p.is_dir()) if store is not None and store.is_dir() else []
    if not convs:
        return None
    conv = load_locomo(data_dir or None).conversation(convs[0].name)
    embedder = make_embedder(result.embedder)
    return BankTimeline(conv, {sp: MemoryBank.open(convs[0], sp, embedder) for sp in conv.speakers})
