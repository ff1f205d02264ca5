"""Two retrievers over a passage corpus (BM25, dense) behind one small protocol.

``BM25Retriever`` uses the ``bm25s`` package (Lucene BM25, English stop words, no stemming);
``DenseRetriever`` ranks by the cosine of ``memr1.memory.embed`` vectors ("minilm", the default, is
all-MiniLM-L6-v2, offline; "hash" needs no model and only suits tests). Both index ``title + text``
and break score ties by corpus order.

>>> corpus = Corpus("toy", (Passage("a", "Paris", "Capital of France."), Passage("b", "Oslo", "Capital of Norway.")))
>>> [p.id for p in make_retriever(corpus, "bm25").search("Norway capital", k=1)]
['b']
"""

from __future__ import annotations

import functools
from typing import Protocol, runtime_checkable

import numpy as np

from memr1.data.corpus import Corpus, Passage
from memr1.errors import ConfigError
from memr1.memory.embed import make_embedder

RETRIEVERS = ("bm25", "dense")


@runtime_checkable
class Retriever(Protocol):
    """Anything that returns the best ``k`` passages of its corpus for a query, best first."""

    name: str

    def search(self, query: str, k: int = 3) -> list[Passage]: ...


class BM25Retriever:
    """BM25 (``bm25s``, Lucene variant, k1 = 1.5, b = 0.75) over ``title + text`` of every passage."""

    def __init__(self, corpus: Corpus):
        import bm25s

        if not len(corpus):
            raise ConfigError(f"corpus {corpus.id!r} is empty; nothing to index")
        self.corpus, self.name, self._bm25s = corpus, "bm25", bm25s
        self._index = bm25s.BM25()
        self._index.index(self._tokens([p.indexed_text() for p in corpus.passages]), show_progress=False)

    def _tokens(self, texts: list[str]) -> list[list[str]]:
        return self._bm25s.tokenize(texts, return_ids=False, show_progress=False)

    def search(self, query: str, k: int = 3) -> list[Passage]:
        k = min(k, len(self.corpus))
        if k < 1:
            return []
        docs, scores = self._index.retrieve(self._tokens([str(query)]), k=len(self.corpus), show_progress=False)
        order = np.lexsort((docs[0], -scores[0]))[:k]  # score desc, then corpus order: deterministic ties
        return [self.corpus.passages[int(docs[0][i])] for i in order]


class DenseRetriever:
    """Cosine similarity of embeddings (``make_embedder(embedder)``); the corpus is embedded once."""

    def __init__(self, corpus: Corpus, embedder: str = "minilm"):
        if not len(corpus):
            raise ConfigError(f"corpus {corpus.id!r} is empty; nothing to index")
        self.corpus, self._embedder = corpus, make_embedder(embedder)
        self.name = f"dense-{self._embedder.name}"
        self._matrix = self._embedder.embed([p.indexed_text() for p in corpus.passages])

    def search(self, query: str, k: int = 3) -> list[Passage]:
        k = min(k, len(self.corpus))
        if k < 1:
            return []
        sims = self._matrix @ self._embedder.embed([str(query)])[0]
        order = np.lexsort((np.arange(len(sims)), -sims))[:k]
        return [self.corpus.passages[int(i)] for i in order]


def make_retriever(corpus: Corpus, kind: str = "bm25", *, embedder: str = "minilm") -> Retriever:
    """A new retriever over ``corpus``: ``kind`` "bm25" or "dense" (with ``embedder`` "minilm" or "hash")."""
    if kind == "bm25":
        return BM25Retriever(corpus)
    if kind == "dense":
        return DenseRetriever(corpus, embedder)
    raise ConfigError(f"unknown retriever {kind!r}; choose one of {RETRIEVERS}")


@functools.lru_cache(maxsize=16)
def retriever_for(corpus: Corpus, kind: str = "bm25", embedder: str = "minilm") -> Retriever:
    """Like ``make_retriever`` but built once per (corpus object, kind, embedder) and reused."""
    return make_retriever(corpus, kind, embedder=embedder)
