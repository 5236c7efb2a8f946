"""Explanation search: embedding cosine with all-MiniLM-L6-v2 through the API, and the plain text fallback."""

from __future__ import annotations

from saekit.serve.search import ExplanationIndex

ENTRIES = [("a", 1, "digits and numbers in dates and prices"), ("a", 2, "Python function definitions"),
           ("b", 4, "python snakes in the jungle"), ("b", 9, "the word the")]


def test_embedding_search_ranks_by_meaning(client):
    body = client.post("/v1/explanation/search", json={"query": "counting numerals", "numResults": 3}).json()
    assert body["method"] == "embedding"
    assert [r["index"] for r in body["results"]][0] == 3
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 3
    only = client.post("/v1/explanation/search", json={"query": "code", "selectedSources": ["tiny"],
                                                       "numResults": 1}).json()["results"]
    assert [r["index"] for r in only] == [5]


def test_text_fallback_scores_word_overlap_and_phrases():
    index = ExplanationIndex(ENTRIES, use_embeddings=False)
    assert index.method == "text"
    hits = index.search("Python function", {"a", "b"}, 10)
    assert [(h.source, h.index, h.score) for h in hits] == [("a", 2, 1.0), ("b", 4, 0.5)]
    assert [h.index for h in index.search("python", {"b"}, 10)] == [4]
    assert index.search("zebra", {"a", "b"}, 10) == []
