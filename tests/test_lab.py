"""The workbook as a researcher meets it: JupyterLab (started as `make lab` starts it) in Debian's chromium.

Opens 01_data_prep on the smoke preset, runs all cells, checks that the sample figure is shown and no cell
failed, saves, and checks that git sees no change; leaves a screenshot in docs/figures/jupyterlab.png.
Runs under `make test-lab` (MTKD_TEST_LAB=1); .ci/run installs chromium and chromium-driver with apt first.
"""
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from test_clean_notebooks import git, scratch_repo

from mtkd_utils.tools.lab import lab_command

REPO = Path(__file__).resolve().parent.parent
SCREENSHOT = REPO / "docs" / "figures" / "jupyterlab.png"
NOTEBOOK = "notebooks/01_data_prep.ipynb"
HOW = ("the browser test runs under `make test-lab` and needs Debian's chromium and chromium-driver "
       "(`apt-get install chromium chromium-driver`; .ci/run installs them)")

if os.environ.get("MTKD_TEST_LAB") != "1":
    pytest.skip(f"skipped: {HOW}", allow_module_level=True)
if not (shutil.which("chromium") and shutil.which("chromedriver")):
    pytest.skip(f"chromium or chromedriver missing: {HOW}", allow_module_level=True)

from selenium import webdriver  # noqa: E402  (only when the test runs)
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def on_smoke_preset(repo: Path, experiment_dir: Path) -> None:
    """The researcher's edit of 01's parameters cell, committed in the scratch clone (so git's view starts clean)."""
    path = repo / NOTEBOOK
    nb = json.loads(path.read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    cell["source"] = [re.sub(r'^experiment_dir = "[^"]*"', f'experiment_dir = "{experiment_dir}"', line)
                      .replace('preset = "demo"', 'preset = "smoke"') for line in cell["source"]]
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    git(repo, "commit", "-q", "-am", "01 on the smoke preset")
    path.unlink()
    git(repo, "checkout", "--", NOTEBOOK)


def api(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def lab(tmp_path):
    """A scratch clone served by JupyterLab on 127.0.0.1 with a token; the server is always killed."""
    repo = scratch_repo(tmp_path / "clone", also=("outputs/README.md", "docs/ARCHITECTURE.md"))
    on_smoke_preset(repo, tmp_path / "experiment")
    port, token, log = free_port(), secrets.token_hex(16), tmp_path / "jupyterlab.log"
    with open(log, "w") as out:
        server = subprocess.Popen(lab_command(port, token, repo), stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                api(f"{base}/api/status?token={token}")
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    pytest.fail(f"JupyterLab did not start:\n{log.read_text()[-3000:]}")
                time.sleep(1)
        yield dict(repo=repo, base=base, token=token, log=log)
    finally:
        os.killpg(server.pid, signal.SIGTERM)                 # the server and the kernels it started
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1440,1000", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(shutil.which("chromedriver")))
    try:
        yield driver
    finally:
        driver.quit()


def click_menu(driver, menu: str, command: str) -> None:
    wait = WebDriverWait(driver, 60)
    wait.until(lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-itemLabel") if e.text == menu])[0].click()
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f'.lm-Menu-item[data-command="{command}"]')).click()


def prompts(driver) -> list[str]:
    return [e.text.strip() for e in driver.find_elements(By.CSS_SELECTOR, ".jp-CodeCell .jp-InputArea-prompt")]


def test_run_all_and_save_in_jupyterlab(lab, browser):
    root = {item["name"] for item in api(f"{lab['base']}/api/contents?token={lab['token']}")["content"]}
    assert {"notebooks", "outputs", "docs"} <= root, f"JupyterLab opened elsewhere than the repository root: {root}"
    browser.get(f"{lab['base']}/lab/tree/{NOTEBOOK}?token={lab['token']}")
    kernel = WebDriverWait(browser, 180).until(
        lambda d: [e.text for e in d.find_elements(By.CSS_SELECTOR, ".jp-Toolbar-kernelName") if "mtkd" in e.text])
    assert kernel[0] == "mtkd (.venv)", "the notebook should open on the workbook's kernel without asking"
    WebDriverWait(browser, 60).until(lambda d: len(prompts(d)) >= 7)
    click_menu(browser, "Run", "runmenu:run-all")
    try:
        WebDriverWait(browser, 420, poll_frequency=2).until(
            lambda d: all(re.fullmatch(r"\[\d+\]:", p) for p in prompts(d)) or d.find_elements(
                By.CSS_SELECTOR, '[data-mime-type="application/vnd.jupyter.error"]'))
    finally:
        browser.save_screenshot(str(lab["log"].with_suffix(".png")))
    errors = [e.text[:500] for e in browser.find_elements(By.CSS_SELECTOR, '[data-mime-type="application/vnd.jupyter.error"]')]
    assert errors == [], f"a cell failed: {errors}"
    figures = browser.find_elements(By.CSS_SELECTOR, ".jp-RenderedImage img")
    assert figures and browser.execute_script("return arguments[0].naturalWidth", figures[0]) > 100
    assert not browser.find_elements(By.XPATH, "//*[contains(text(), 'Error displaying widget')]")
    for no in browser.find_elements(By.XPATH, "//button[normalize-space()='No']"):   # JupyterLab's news prompt
        no.click()
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", figures[0])
    time.sleep(1)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOT))
    saved_before = (lab["repo"] / NOTEBOOK).stat().st_mtime
    ActionChains(browser).key_down(Keys.CONTROL).send_keys("s").key_up(Keys.CONTROL).perform()
    WebDriverWait(browser, 60).until(lambda d: (lab["repo"] / NOTEBOOK).stat().st_mtime > saved_before
                                     and not d.find_elements(By.CSS_SELECTOR, ".jp-mod-dirty"))
    assert git(lab["repo"], "status", "--porcelain") == "", "saving in the lab changed a committed notebook"
