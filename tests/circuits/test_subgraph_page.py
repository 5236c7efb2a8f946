"""The graph page as a place to work: pin nodes, group them into supernodes, label them, keep the state in the
browser, download it; and a saved subgraph merged into the graph JSON's ``qParams`` (Neuronpedia's format),
with every bad file refused in one line before anything is written."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from browser_helpers import headless_chrome

from saekit.circuits.attribution import AttributionConfig, attribute
from saekit.circuits.graph import prune
from saekit.circuits.graph_files import graph_json, merge_subgraph, write_graph_files
from saekit.circuits.replacement import ReplacementModel
from saekit.circuits.subgraph import clerp_key, clerp_keys, parse_subgraph, read_subgraph
from saekit.circuits.transcoders import TranscoderSet
from saekit.cli import main
from saekit.dictionaries import DictionaryConfig, build_dictionary
from saekit.errors import SaekitError
from saekit.jobs.circuits import slug_of

PROMPT = "The cat sat on the mat because"
SLUG = slug_of(PROMPT)
MARKUP = "<b>bold</b><img src=x onerror=\"document.title='PWNED'\">&amp;"


@pytest.fixture(scope="module")
def built(tiny_loaded, tmp_path_factory):
    """A real pruned graph of the tiny model over random JumpReLU transcoders, written as `attribute` does."""
    torch.manual_seed(0)
    per_layer = {}
    for layer in (0, 1):
        dictionary = build_dictionary(DictionaryConfig("jumprelu", 32, 64, d_out=32)).eval()
        with torch.no_grad():
            dictionary.log_threshold.fill_(-3.0)
        per_layer[layer] = dictionary.requires_grad_(False)
    ids = tiny_loaded.prompt_ids(PROMPT)
    replacement = ReplacementModel(tiny_loaded, TranscoderSet.per_layer(per_layer), ids)
    graph = attribute(replacement, PROMPT, AttributionConfig(progress=False))
    pruned = prune(graph, 0.8, 0.98)
    out = write_graph_files(graph, pruned, tmp_path_factory.mktemp("graphs") / "graph", SLUG)
    return graph, pruned, out


def _copy(built, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built[2], tmp_path / "graph"))


def _record(out: Path) -> dict:
    return json.loads((out / f"{SLUG}.json").read_text())


def _latents(record: dict) -> list[dict]:
    """Latent nodes whose node id is no node's label key (a label keyed by node id would be caught) and no
    other node's id (an error node's ``0_{layer}_{position}`` can equal a layer-0 latent's id)."""
    keys = set(clerp_keys(record).values())
    ids = Counter(n["node_id"] for n in record["nodes"])
    return [n for n in record["nodes"] if n["feature_type"] == "cross layer transcoder" and n["node_id"] not in keys
            and ids[n["node_id"]] == 1]


def _embedded(page: Path) -> dict:
    block = re.search(r'<script type="application/json" id="subgraph-data">(.*?)</script>', page.read_text(), re.S)
    return json.loads(block[1])


def _write(path: Path, value) -> Path:
    path.write_text(value if isinstance(value, str) else json.dumps(value))
    return path


def test_label_keys_are_neuronpedias_feature_ids(built):
    graph, _, out = built
    record = _record(out)
    n_tokens = len(record["metadata"]["prompt_tokens"])
    latent = _latents(record)[0]
    layer, index, position = (int(v) for v in latent["node_id"].split("_"))
    cantor = (layer + index) * (layer + index + 1) // 2 + index
    assert clerp_key(latent, n_tokens) == f"{layer}_{cantor}_{position}" != latent["node_id"]
    error = next(n for n in record["nodes"] if n["feature_type"] == "mlp reconstruction error")
    assert clerp_key(error, n_tokens) == (f"{error['layer']}_-1_{error['ctx_idx']}_mlp__err_idx_"
                                          f"{n_tokens - error['ctx_idx']}")
    token = next(n for n in record["nodes"] if n["feature_type"] == "embedding" and n["ctx_idx"] == 2)
    assert clerp_key(token, n_tokens) == "E_2_2"
    logit = next(n for n in record["nodes"] if n["feature_type"] == "logit")
    assert clerp_key(logit, n_tokens) == logit["node_id"]  # a logit's feature is its token id
    keys = [clerp_key(n, n_tokens) for n in record["nodes"]]
    assert len(set(keys)) == len(keys)  # one label key per node, even where two nodes share an id


def test_merge_writes_qparams_the_subgraph_file_and_the_page(built, tmp_path):
    graph, pruned, _ = built
    out = _copy(built, tmp_path)
    before = _record(out)
    first, second, third = (n["node_id"] for n in _latents(before)[:3])
    key = clerp_keys(before)[second]
    saved = _write(tmp_path / "mine.subgraph.json", {
        "slug": SLUG, "pinnedIds": f"{first},{second},{third},{first}", "clickedId": second,
        "supernodes": [[f"group {MARKUP}", first, second]], "clerps": [[key, MARKUP]], "linkType": "input",
        "pruningThreshold": 0.8, "displayName": "ignored: Neuronpedia's own"})
    merged = merge_subgraph(out, saved)  # the directory: it holds one graph
    after = _record(out)
    assert after["qParams"] == {"pinnedIds": [first, second, third], "supernodes": [[f"group {MARKUP}", first, second]],
                                "clerps": [[key, MARKUP]], "clickedId": second, "linkType": "input", "sg_pos": ""}
    assert {k: v for k, v in after.items() if k != "qParams"} == {k: v for k, v in before.items() if k != "qParams"}
    assert after == {**graph_json(graph, pruned, SLUG), "qParams": after["qParams"]}
    assert json.loads((out / f"{SLUG}.subgraph.json").read_text()) == merged.file_json() == {
        "slug": SLUG, **{k: after["qParams"][k] for k in ("pinnedIds", "supernodes", "clerps", "clickedId",
                                                          "linkType")}}
    embedded = _embedded(out / f"{SLUG}.html")
    assert embedded["state"]["pinnedIds"] == [first, second, third] and embedded["source"] == f"{SLUG}.subgraph.json"
    assert "<b>" not in (out / f"{SLUG}.html").read_text().split('id="subgraph-data">')[1].split("</script>")[0]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in built[2].iterdir()) + [
        f"{SLUG}.subgraph.json"]  # atomic writes leave no temporaries
    # No labels: no clerps key, which circuit-tracer's own viewer would try to JSON.parse.
    merge_subgraph(out / f"{SLUG}.json", _write(tmp_path / "bare.json", {"pinnedIds": [first]}))
    assert _record(out)["qParams"] == {"pinnedIds": [first], "supernodes": [], "clickedId": "", "linkType": "both",
                                       "sg_pos": ""}
    # A graph JSON is read for its qParams (other viewer state in them ignored): Neuronpedia's export merges back.
    assert read_subgraph(out / f"{SLUG}.json").pinned == (first,)
    exported = {"metadata": {"slug": SLUG}, "nodes": [], "qParams": {"pinnedIds": f"{first},{second}",
                                                                      "isShowAllLinks": "1"}}
    assert parse_subgraph(exported, "export").file_json()["pinnedIds"] == [first, second]


def _bad_files(record: dict) -> list[tuple[object, str]]:
    a, b = (n["node_id"] for n in _latents(record)[:2])
    return [("{not json", "is not JSON"),
            ([a, b], "is not a subgraph"),
            ({"pinnedID": [a]}, "unknown key 'pinnedID'"),
            ({"pinnedIds": [1, 2]}, "pinnedIds must be a list of strings"),
            ({"supernodes": [["name only"]]}, "is not [name, node id, ...]"),
            ({"supernodes": [a, b]}, "is not [name, node id, ...]"),
            ({"supernodes": [["x", a], ["y", a]]}, f"node {a} is in the supernodes 'x' and 'y'"),
            ({"clerps": [[a]]}, "clerps must be a list of [feature id, label] pairs"),
            ({"clerps": {a: "label"}}, "clerps must be a list of [feature id, label] pairs"),
            ({"clerps": [[clerp_keys(record)[a], "x"], [clerp_keys(record)[a], "y"]]}, "more than one label"),
            ({"linkType": "sideways"}, "linkType \"sideways\" is not one of"),
            ({"clickedId": 3}, "clickedId must be a node id string"),
            ({"slug": "another-graph", "pinnedIds": [a]}, "is the subgraph of graph 'another-graph'"),
            ({"pinnedIds": [a, "9_9999_9"]}, "names node 9_9999_9 that graph"),
            ({"supernodes": [["g", a, "E_1_99"]]}, "names node E_1_99 that graph"),
            ({"clickedId": "9_9999_9"}, "names node 9_9999_9"),
            ({"clerps": [[a, "label keyed by node id"]]}, "Neuronpedia's featureId")]


def test_bad_subgraph_files_are_refused_in_one_line_and_change_nothing(built, tmp_path):
    out = _copy(built, tmp_path)
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    for i, (content, message) in enumerate(_bad_files(_record(out))):
        path = _write(tmp_path / f"bad{i}.json", content)
        with pytest.raises(SaekitError) as caught:
            merge_subgraph(out / f"{SLUG}.json", path)
        text = str(caught.value)
        assert message in text and str(path) in text and "\n" not in text, (content, text)
    with pytest.raises(SaekitError, match="subgraph file not found"):
        merge_subgraph(out, tmp_path / "missing.json")
    with pytest.raises(SaekitError, match="is not a graph JSON"):
        merge_subgraph(_write(tmp_path / "other.json", {"metadata": {}}), _write(tmp_path / "ok.json", {}))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files


def test_a_subgraph_file_beside_the_graph_is_embedded_at_build_leniently(built, tmp_path):
    graph, pruned, _ = built
    out = _copy(built, tmp_path)
    a, b = (n["node_id"] for n in _latents(_record(out))[:2])
    _write(out / f"{SLUG}.subgraph.json", {"pinnedIds": [a, b, "9_9999_9"], "supernodes": [["g", a, b]]})
    write_graph_files(graph, pruned, out, SLUG)  # a rebuild: the graph is written whatever the file holds
    embedded = _embedded(out / f"{SLUG}.html")
    assert embedded["state"]["pinnedIds"] == [a, b] and embedded["dropped"] == ["9_9999_9"]
    assert embedded["state"]["supernodes"] == [["g", a, b]] and _record(out)["qParams"]["pinnedIds"] == []
    _write(out / f"{SLUG}.subgraph.json", "{oops")
    write_graph_files(graph, pruned, out, SLUG)
    embedded = _embedded(out / f"{SLUG}.html")
    assert embedded["state"] is None and "is not JSON" in embedded["problem"]


def test_attribute_subgraph_flag_merges_after_the_graph_and_checks_the_file_first(built, tmp_path, monkeypatch,
                                                                                  capsys):
    import saekit.jobs.circuits as jobs

    calls = []

    def fake_attribute(transcoders, prompt, out, job, **options):  # the graph above, as attribute writes it
        calls.append(prompt)
        return Path(shutil.copytree(built[2], out, dirs_exist_ok=True))

    monkeypatch.setattr(jobs, "attribute_prompt", fake_attribute)
    a, b = (n["node_id"] for n in _latents(_record(built[2]))[:2])
    argv = ["attribute", str(tmp_path), "--prompt", PROMPT, "--out", str(tmp_path / "out"), "--subgraph"]
    good = _write(tmp_path / "good.json", {"slug": SLUG, "pinnedIds": [a, b], "supernodes": [["pair", a, b]]})
    assert main([*argv, str(good)]) == 0
    assert "subgraph: 2 pinned, 1 supernodes and 0 labels merged" in capsys.readouterr().out
    assert _record(tmp_path / "out")["qParams"]["supernodes"] == [["pair", a, b]]
    for content, message in (({"pinnedIds": "x", "clerps": 5}, "clerps must be a list"),
                             ({"slug": "the-dog", "pinnedIds": [a]}, "is the subgraph of graph 'the-dog'")):
        before = len(calls)
        assert main([*argv, str(_write(tmp_path / "bad.json", content))]) == 1
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1 and len(calls) == before  # refused before the work
    assert main([*argv, str(_write(tmp_path / "gone.json", {"pinnedIds": ["9_9999_9"]}))]) == 1
    err = capsys.readouterr().err.strip()
    assert "the graph is written" in err and "9_9999_9" in err and len(err.splitlines()) == 1


def _wait_for(path: Path, timeout: float = 10.0) -> Path:
    deadline = time.monotonic() + timeout
    while not (path.is_file() and path.stat().st_size > 0):
        assert time.monotonic() < deadline, f"{path} was not downloaded"
        time.sleep(0.1)
    return path


@pytest.fixture
def browser(tmp_path):
    downloads = tmp_path / "downloads"
    with headless_chrome("--window-size=1400,1000", f"--user-data-dir={tmp_path / 'profile'}", prefs={
            "download.default_directory": str(downloads), "download.prompt_for_download": False}) as driver:
        driver.downloads = downloads
        yield driver


def test_page_pins_groups_labels_survives_a_reload_and_downloads_the_subgraph(built, tmp_path, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    out = _copy(built, tmp_path)
    record = _record(out)
    first, second = (n["node_id"] for n in _latents(record)[:2])
    wait = WebDriverWait(browser, 10)

    def open_page() -> None:
        browser.get((out / f"{SLUG}.html").as_uri())
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")

    def node(node_id: str):
        return browser.find_element(By.CSS_SELECTOR, f'#graph [data-node="{node_id}"]')

    open_page()
    assert browser.execute_script("return window.saekitSubgraph().pinnedIds") == []
    # Pin one node by shift-click, the other with its details' pin button.
    ActionChains(browser).key_down(Keys.SHIFT).click(node(first)).key_up(Keys.SHIFT).perform()
    node(second).click()
    wait.until(lambda d: second.split("_")[1] in d.find_element(By.CSS_SELECTOR, ".selected-node").text)
    browser.find_element(By.ID, "pin-toggle").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#pins input[data-pin]")) == 2)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#subgraph [data-sg-node]")) == 2
    # Tick both, group them under a name with markup, label the selected node.
    for node_id in (first, second):
        browser.find_element(By.CSS_SELECTOR, f'#pins input[data-pin="{node_id}"]').click()
    browser.find_element(By.ID, "group-name").send_keys(f"pair {MARKUP}")
    browser.find_element(By.ID, "group").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#pins .supernode"))
    browser.find_element(By.ID, "annotation").send_keys(MARKUP)
    browser.find_element(By.ID, "annotate").click()
    expected = {"slug": SLUG, "pinnedIds": [first, second], "supernodes": [[f"pair {MARKUP}", first, second]],
                "clerps": [[clerp_keys(record)[second], MARKUP]], "clickedId": second, "linkType": "both"}
    assert browser.execute_script("return window.saekitSubgraph()") == expected
    # Reload: the state comes back from localStorage, shown as text (no markup parsed, nothing run).
    browser.refresh()
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    assert browser.execute_script("return window.saekitSubgraph()") == expected
    assert browser.find_element(By.CSS_SELECTOR, "#pins .supernode-name").text == f"pair {MARKUP}"
    assert MARKUP in browser.find_element(By.ID, "pins").text
    assert browser.find_element(By.ID, "annotation").get_attribute("value") == MARKUP
    boxes = browser.find_elements(By.CSS_SELECTOR, "#subgraph [data-sg-node]")
    assert [b.get_attribute("data-sg-node") for b in boxes] == ["supernode-0"]  # the pair drawn as one box
    assert not browser.find_elements(By.CSS_SELECTOR, "#side b, #side img, #subgraph b, #subgraph img")
    assert "PWNED" not in browser.title
    # Download: the file is the serialised state, and it merges into the graph JSON's qParams.
    browser.find_element(By.ID, "download").click()
    downloaded = _wait_for(browser.downloads / f"{SLUG}.subgraph.json")
    assert json.loads(downloaded.read_text()) == expected
    merge_subgraph(out / f"{SLUG}.json", downloaded)
    q_params = _record(out)["qParams"]
    assert q_params["pinnedIds"] == [first, second] and q_params["supernodes"] == expected["supernodes"]
    assert q_params["clerps"] == expected["clerps"]
    # Ungroup and unpin, then load the downloaded file back.
    browser.find_element(By.CSS_SELECTOR, "#pins .ungroup").click()
    browser.find_element(By.CSS_SELECTOR, "#pins .unpin").click()
    assert browser.execute_script("return window.saekitSubgraph()")["pinnedIds"] == [second]
    browser.find_element(By.ID, "load").send_keys(str(downloaded))
    wait.until(lambda d: d.execute_script("return window.saekitSubgraph().pinnedIds.length") == 2)
    assert browser.execute_script("return window.saekitSubgraph()") == expected
    # With nothing in this browser, the page opens the subgraph embedded by the merge.
    browser.execute_script("localStorage.clear()")
    open_page()
    assert browser.execute_script("return window.saekitSubgraph()") == expected
