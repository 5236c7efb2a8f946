"""The real uvicorn server on loopback: threads hammering it with mixed requests (each answer checked against
saekit's offline value), and the page driven in headless Chromium with Selenium.

Set ``SAEKIT_SERVE_SCREENSHOTS=DIR`` to save the page's views as ``DIR/serve-*.png`` (docs/figures holds them).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from browser_helpers import headless_chrome
from serve.helpers import EVIL, offline_latents

from saekit.evaluation.generation import side_by_side

PROMPTS = ["The cat sat on the mat.", "1, 2, 3, 4 and then 5", "def add(a, b): return a + b", "Hello <b>world</b>"]


def test_concurrent_clients_each_get_their_own_answer(live_url, runs):
    run = runs["tiny"]
    expected = {prompt: offline_latents(run, prompt) for prompt in PROMPTS}
    clean = {seed: side_by_side(run.loaded, [], [PROMPTS[0]], 4, 0.8, seed)[0].clean for seed in range(3)}

    def activation(i: int) -> None:
        prompt = PROMPTS[i % len(PROMPTS)]
        body = httpx.post(f"{live_url}/v1/activation/all", timeout=60, json={
            "prompt": prompt, "selectedSources": ["tiny"], "ignoreBos": False, "numResults": 4}).json()
        for feature in body["activations"]:
            got = torch.tensor(feature["values"])
            assert torch.allclose(got, expected[prompt][:, feature["index"]], atol=1e-5), prompt

    def steer(i: int) -> None:
        seed = i % 3
        body = httpx.post(f"{live_url}/v1/steer/completion", timeout=60, json={
            "prompt": PROMPTS[0], "types": ["DEFAULT", "STEERED"], "nCompletionTokens": 4, "temperature": 0.8,
            "seed": seed, "features": [{"source": "tiny", "index": 3, "strength": 30.0}]}).json()
        assert body["outputs"][0] == {"type": "DEFAULT", "output": clean[seed]}

    work = [activation if i % 3 else steer for i in range(24)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda pair: pair[1](pair[0]), enumerate(work)))


@pytest.fixture(scope="module")
def browser():
    with headless_chrome("--window-size=1200,1000") as driver:
        yield driver


def _shot(driver, name: str) -> None:
    folder = os.environ.get("SAEKIT_SERVE_SCREENSHOTS")
    if folder:
        driver.save_screenshot(str(Path(folder) / f"serve-{name}.png"))


def test_page_highlights_tokens_searches_and_steers(live_url, runs, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 30)
    browser.get(live_url + "/")
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    prompt = "In the beginning <script>document.title='PWNED'</script> 1, 2, 3"
    browser.find_element(By.ID, "prompt").send_keys(prompt)
    browser.find_element(By.ID, "show").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#tokens .token"))
    tokens = browser.find_elements(By.CSS_SELECTOR, "#tokens .token")
    loaded = runs["tiny"].loaded
    ids = loaded.prompt_ids(prompt).tolist()[1:]
    assert "".join(t.get_attribute("textContent") for t in tokens) == "".join(loaded.tokenizer.batch_decode(
        [[i] for i in ids]))
    active = browser.find_elements(By.CSS_SELECTOR, "#tokens .token.active")
    assert active and "rgba(255, 140, 0" in active[0].get_attribute("style")
    ActionChains(browser).move_to_element(active[0]).perform()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#hover li .latent"),
               message=browser.find_element(By.ID, "hover").get_attribute("outerHTML"))
    _shot(browser, "activations")
    link = browser.find_element(By.CSS_SELECTOR, "#latents li a.latent")
    assert link.get_attribute("href").startswith(live_url + "/runs/tiny/dashboard/features/")
    browser.find_element(By.ID, "query").send_keys("the start of a sentence")
    browser.find_element(By.ID, "search").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results li .explanation"))
    first = browser.find_element(By.CSS_SELECTOR, "#results li")
    assert EVIL in first.text  # the explanation's markup is shown as text, never parsed
    assert not browser.find_elements(By.CSS_SELECTOR, "#results img, #results b, #tokens script")
    _shot(browser, "search")
    browser.find_element(By.ID, "steer-prompt").send_keys("The cat sat on the")
    browser.find_element(By.ID, "steer-index").clear()
    browser.find_element(By.ID, "steer-index").send_keys("3")
    browser.find_element(By.ID, "steer-strength").clear()
    browser.find_element(By.ID, "steer-strength").send_keys("40")
    browser.find_element(By.ID, "steer-tokens").clear()
    browser.find_element(By.ID, "steer-tokens").send_keys("8")
    browser.find_element(By.ID, "steer").click()
    wait.until(lambda d: d.find_element(By.ID, "steered").get_attribute("textContent")
               or d.find_element(By.ID, "steer-error").text)
    assert browser.find_element(By.ID, "steer-error").text == ""
    expected = side_by_side(loaded, [], ["The cat sat on the"], 8, 0.7, 0)[0].clean
    assert browser.find_element(By.ID, "clean").get_attribute("textContent") == expected
    _shot(browser, "steer")
    assert browser.title == "saekit explorer"
    link.click()  # the latent's dashboard page, served from the run
    browser.switch_to.window(browser.window_handles[-1])
    wait.until(lambda d: d.title.startswith("latent "))
