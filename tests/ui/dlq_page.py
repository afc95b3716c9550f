"""The DLQ monitor page in headless Chromium (Debian's chromium and
chromium-driver, driven by python3-selenium), against the real daemon and
a real redis-server that tests/it/ui.rs started. Every action is done by
clicking, and every result is checked in Redis.

Environment: BASE (the daemon's URL), REDIS_PORT, TOKEN (the daemon's
api.token), SHOTS (the folder for screenshots). Exits non-zero on the
first failed check, saying which.
"""

import json
import os
import sys
import time
import urllib.request

import redis
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By

BASE = os.environ["BASE"]
TOKEN = os.environ["TOKEN"]
SHOTS = os.environ["SHOTS"]
R = redis.Redis(host="127.0.0.1", port=int(os.environ["REDIS_PORT"]))
DET, ANA = "dlq:detection_queue", "dlq:analysis_queue"
LIMIT = 60.0


def step(msg):
    print(f"ui: {msg}", flush=True)


def wait(what, check, limit=LIMIT):
    """Polls `check` until it returns a truthy value (bounded)."""
    end = time.monotonic() + limit
    last = None
    while time.monotonic() < end:
        try:
            last = check()
            if last:
                return last
        except Exception as e:  # an element not there yet
            last = e
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def lrange(key):
    return R.lrange(key, 0, -1)


def failure(i, error, attempts, age):
    now = time.time()
    return json.dumps({
        "original_job": {"id": f"job-{i}", "image": f"frames/{i}.jpg"},
        "error": error, "attempt_count": attempts,
        "first_failed_at": now - age - 60, "last_failed_at": now - age,
        "queue_name": "detection_queue" if i < 100 else "analysis_queue",
    })


def seed():
    R.flushdb()
    det = [failure(i, "CUDA out of memory" if i % 3 == 0 else "timeout after 30s", 3, i * 600) for i in range(30)]
    det.append("not json {")
    R.rpush(DET, *det)
    R.rpush(ANA, *[failure(100 + i, "model load failed", 5, 7200) for i in range(4)])
    return det


def browser():
    o = webdriver.ChromeOptions()
    for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", "--window-size=1280,800"]:
        o.add_argument(a)
    o.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=o)


def css(d, sel, root=None):
    return (root or d).find_element(By.CSS_SELECTOR, sel)


def click(find):
    """Clicks what `find` returns, finding it again when a re-render
    replaced it first (a stale element was never clicked, so this cannot
    act twice)."""
    for _ in range(50):
        try:
            find().click()
            return
        except StaleElementReferenceException:
            time.sleep(0.1)
    raise AssertionError("the element kept being replaced")


def panel(d, queue):
    return css(d, f'details.queue[data-queue="{queue}"]')


def dialog_open(d, id_):
    return d.execute_script(f"return document.getElementById('{id_}').open")


def confirm(d, accept):
    wait("the confirmation dialog", lambda: dialog_open(d, "confirm"))
    text = css(d, "#confirm-text").text
    css(d, "#confirm-ok" if accept else "#confirm-cancel").click()
    wait("the dialog to close", lambda: not dialog_open(d, "confirm"))
    return text


def main():
    det = seed()
    # The headers of the page and its parts.
    for path in ["/ui/dlq", "/ui/dlq.js", "/ui/dlq.css"]:
        with urllib.request.urlopen(BASE + path) as resp:
            csp = resp.headers.get("Content-Security-Policy", "")
            assert "default-src 'none'" in csp and "script-src 'self'" in csp, f"{path}: CSP {csp!r}"
            assert resp.headers.get("X-Content-Type-Options") == "nosniff", path

    d = browser()
    try:
        run(d, det)
    except Exception:
        d.save_screenshot(os.path.join(SHOTS, "dlq-failure.png"))
        raise
    finally:
        d.quit()


def run(d, det):
    d.get(BASE + "/ui/dlq?refresh=1")
    step("the badge and panel counts match Redis")
    wait("the badge", lambda: css(d, "#total").text == str(R.llen(DET) + R.llen(ANA)))
    for queue, key in [("detection_queue", DET), ("analysis_queue", ANA)]:
        want = str(R.llen(key))
        wait(f"{queue}'s count", lambda: css(panel(d, queue), ".q-count").text.split()[0] == want)

    step("expanding a job shows its fields; a malformed entry is marked")
    p = panel(d, "detection_queue")
    css(p, "summary").click()
    wait("25 job rows", lambda: len(p.find_elements(By.CSS_SELECTOR, "tr.job")) == 25)
    row = css(p, 'tr.job[data-index="1"]')
    stored = json.loads(R.lindex(DET, 1))
    assert stored["error"] in row.text and str(stored["attempt_count"]) in row.text, row.text
    click(lambda: css(p, 'tr.job[data-index="1"] button.expand'))
    shown = wait("the job's detail", lambda: p.find_elements(By.CSS_SELECTOR, "tr.detail pre.original")[1].text)
    assert json.loads(shown) == stored["original_job"], shown
    d.execute_script("arguments[0].value = '50'; arguments[0].dispatchEvent(new Event('change'))", css(p, ".page-size"))
    wait("31 job rows", lambda: len(p.find_elements(By.CSS_SELECTOR, "tr.job")) == 31)
    bad = css(p, 'tr.job[data-index="30"]')
    assert "malformed" in bad.get_attribute("class") and "MALFORMED" in bad.text, bad.text
    assert not css(bad, ".job-requeue").is_enabled(), "a malformed entry cannot be requeued"
    d.save_screenshot(os.path.join(SHOTS, "dlq-1280x800.png"))

    step("Requeue All: cancelling the dialog changes nothing")
    a = panel(d, "analysis_queue")
    css(a, "summary").click()
    before = lrange(ANA)
    css(a, ".requeue-all").click()
    text = confirm(d, accept=False)
    assert "dlq:analysis_queue" in text and "4 jobs" in text, text
    assert lrange(ANA) == before and R.llen("analysis_queue") == 0

    step("without the token the mutation shows the 401 and changes nothing")
    css(a, ".requeue-all").click()
    confirm(d, accept=True)
    wait("the token dialog", lambda: dialog_open(d, "token-dialog"))
    css(d, "#token-cancel").click()
    err = wait("the error", lambda: css(d, "#error").is_displayed() and css(d, "#error").text)
    assert "401" in err, err
    assert lrange(ANA) == before and R.llen("analysis_queue") == 0

    step("with the token, Requeue All moves the jobs")
    css(a, ".requeue-all").click()
    confirm(d, accept=True)
    wait("the token dialog", lambda: dialog_open(d, "token-dialog"))
    css(d, "#token-input").send_keys(TOKEN)
    css(d, "#token-ok").click()
    wait("the queue to hold the 4 jobs", lambda: R.llen("analysis_queue") == 4)
    assert R.llen(ANA) == 0
    moved = sorted(json.loads(j)["id"] for j in lrange("analysis_queue"))
    assert moved == sorted(json.loads(j)["original_job"]["id"] for j in before), moved
    wait("the badge to follow", lambda: css(d, "#total").text == "31")
    assert not css(d, "#error").is_displayed()

    step("auto-refresh pauses while a dialog is open")
    css(p, ".requeue-all").click()
    wait("the confirmation dialog", lambda: dialog_open(d, "confirm"))
    count = d.execute_script("return document.body.dataset.refreshes")
    R.rpush(ANA, failure(200, "late failure", 1, 0))
    time.sleep(3.5)  # three refresh periods, which must all be skipped
    assert d.execute_script("return document.body.dataset.refreshes") == count
    assert css(d, "#total").text == "31"
    css(d, "#confirm-cancel").click()
    wait("the refresh after the dialog", lambda: css(d, "#total").text == "32")
    assert R.llen(DET) == 31, "the cancelled Requeue All moved nothing"
    R.delete(ANA)

    step("Clear All, then Undo restores the same bytes in the same order")
    before = lrange(DET)
    assert [b.decode() for b in before] == det
    css(p, ".clear-all").click()
    assert "31 jobs" in confirm(d, accept=True)
    wait("the DLQ to be empty", lambda: R.llen(DET) == 0)
    undo = wait("the Undo button", lambda: css(p, ".undo").is_displayed() and css(p, ".undo"))
    undo.click()
    wait("the restore", lambda: R.llen(DET) == 31)
    assert lrange(DET) == before, "Undo restores the same bytes in the same order"

    step("filter + Requeue matching moves only the matching jobs")
    css(p, ".filter-error").send_keys("cuda")
    css(p, ".requeue-matching").click()
    text = confirm(d, accept=True)
    assert "10 jobs" in text and "error=cuda" in text, text
    wait("the task to finish", lambda: "done" in css(p, ".task-text").text)
    queued = [json.loads(j)["id"] for j in lrange("detection_queue")]
    assert sorted(queued) == sorted(f"job-{i}" for i in range(0, 30, 3)), queued
    left = [b.decode() for b in lrange(DET)]
    assert len(left) == 21 and not any("CUDA" in e for e in left), left
    assert sorted(left) == sorted(e for e in det if "CUDA" not in e)

    step("per-job Delete moves one job to an archive")
    css(p, ".filter-error").clear()
    css(p, ".search").click()
    wait("the unfiltered page", lambda: len(p.find_elements(By.CSS_SELECTOR, "tr.job")) == 21)
    gone = R.lindex(DET, 0)
    click(lambda: css(p, 'tr.job[data-index="0"] .job-delete'))
    wait("the delete", lambda: R.llen(DET) == 20)
    archives = R.keys("dlq:detection_queue:deleted:*")
    assert len(archives) == 1 and lrange(archives[0]) == [gone], archives

    step("the audit panel lists every action")
    css(d, "#audit summary").click()
    wait("the audit rows", lambda: {"requeue_all", "clear", "restore", "requeue_filtered", "delete_job"}
         <= {r.find_elements(By.TAG_NAME, "td")[2].text for r in d.find_elements(By.CSS_SELECTOR, "#audit-rows tr")})
    d.execute_script("document.getElementById('audit').scrollIntoView()")
    d.save_screenshot(os.path.join(SHOTS, "dlq-after-actions.png"))

    step("the page loaded nothing from elsewhere and broke no CSP rule")
    names = d.execute_script("return performance.getEntriesByType('resource').map(e => e.name)"
                             ".concat(performance.getEntriesByType('navigation').map(e => e.name))")
    assert names and all(n.startswith(BASE + "/") for n in names), names
    logs = d.get_log("browser")
    assert not [l for l in logs if "Content Security Policy" in l["message"]], logs
    assert not [l for l in logs if l["level"] == "SEVERE" and "status of 401" not in l["message"]], logs

    step("readable at 390x844 and keyboard-usable")
    d.set_window_size(390, 844)
    wait("the narrow layout", lambda: d.execute_script("return window.innerWidth") <= 400)
    assert d.execute_script("return document.documentElement.scrollWidth <= window.innerWidth"), "no sideways scroll"
    d.save_screenshot(os.path.join(SHOTS, "dlq-390x844.png"))
    # Every control is a native button, select, input or summary (reachable by Tab).
    odd = d.execute_script(
        "return [...document.querySelectorAll('[onclick], div[tabindex], span[tabindex]')].length")
    assert odd == 0
    css(p, "summary").send_keys("\n")  # Enter on a focused summary closes the panel
    wait("the panel to close by keyboard", lambda: not p.get_attribute("open"))
    step("all checks passed")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"ui: FAILED: {e}", flush=True)
        sys.exit(1)
