"""The job frameworks' failed sets in the DLQ console, in headless Chromium
(as tests/ui/dlq_page.py), against the real daemon and a real redis-server
holding jobs that RQ's, BullMQ's and Dramatiq's own workers failed
(tests/it/ui.rs made them). Each panel is checked against Redis, its jobs'
errors are read off the page, and Requeue All is clicked: each failed set
empties into its queue, every id once.

Environment: BASE, REDIS_PORT, TOKEN, SHOTS, N (jobs a framework).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from dlq_page import R, SHOTS, TOKEN, browser, confirm, css, dialog_open, panel, step, wait  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

N = int(os.environ["N"])
# label, framework, its failed set (a sorted set), the list requeued jobs go to
QUEUES = [
    ("rq:default", "rq", "rq:failed:default", "rq:queue:default"),
    ("bullmq:render", "bullmq", "bull:render:failed", "bull:render:wait"),
    ("dramatiq:default", "dramatiq", "dramatiq:default.XQ", "dramatiq:default"),
]


def authorize(d, done):
    """Gives the token when the page asks for it, then waits for `done`."""
    wait("the token dialog or the move", lambda: dialog_open(d, "token-dialog") or done())
    if dialog_open(d, "token-dialog"):
        css(d, "#token-input").send_keys(TOKEN)
        css(d, "#token-ok").click()
    wait("the move", done)


def run(d):
    d.get(os.environ["BASE"] + "/ui/dlq?refresh=1")
    step("each framework's failed set has its panel, counted as Redis counts it")
    wait("the badge", lambda: css(d, "#total").text == str(3 * N))
    for label, framework, failed, _ in QUEUES:
        p = wait(f"{label}'s panel", lambda: panel(d, label))
        assert p.get_attribute("data-framework") == framework, p.get_attribute("outerHTML")[:300]
        wait(f"{label}'s count", lambda: css(p, ".q-count").text.split()[0] == str(R.zcard(failed)))
        assert framework in css(p, ".q-name").text
        # Only what is served for a framework queue is offered.
        assert css(p, ".clear-all").is_displayed() and not css(p, ".undo").is_displayed()

    step("each panel lists the failed jobs with the framework's own error")
    for label, _, _, _ in QUEUES:
        p = panel(d, label)
        css(p, "summary").click()
        wait(f"{N} rows of {label}", lambda: len(p.find_elements(By.CSS_SELECTOR, "tr.job")) == N)
        for row in p.find_elements(By.CSS_SELECTOR, "tr.job"):
            assert "the flag is up" in row.text, f"{label}: {row.text}"
            assert not row.find_elements(By.CSS_SELECTOR, ".job-delete"), "no delete for a framework job"
    d.save_screenshot(os.path.join(SHOTS, "dlq-frameworks.png"))

    step("one RQ job's Requeue moves that job only")
    p = panel(d, "rq:default")
    row = css(p, 'tr.job[data-index="0"]')
    one = row.get_attribute("data-id")
    css(row, ".job-requeue").click()
    authorize(d, lambda: R.zcard("rq:failed:default") == N - 1)
    assert [x.decode() for x in R.lrange("rq:queue:default", 0, -1)] == [one]
    assert R.zscore("rq:failed:default", one) is None

    step("BullMQ: filtering by error and Requeue matching moves the matches only")
    p = panel(d, "bullmq:render")
    css(p, ".filter-error").send_keys("job 1")
    css(p, ".search").click()
    want = sorted(j for j in (x.decode() for x in R.zrange("bull:render:failed", 0, -1))
                  if R.hget(f"bull:render:{j}", "failedReason").decode().startswith("job 1"))
    assert len(want) == 3, want  # jobs 1, 10, 11
    wait("the 3 matching rows", lambda: len(p.find_elements(By.CSS_SELECTOR, "tr.job")) == 3)
    css(p, ".requeue-matching").click()
    text = confirm(d, accept=True)
    assert "Requeue 3 jobs matching error=job 1" in text, text
    authorize(d, lambda: R.zcard("bull:render:failed") == N - 3)
    assert sorted(x.decode() for x in R.lrange("bull:render:wait", 0, -1)) == want
    css(p, ".filter-error").clear()
    css(p, ".search").click()

    step("Dramatiq: Clear All archives the dead letters, Undo brings each back with its message")
    p = panel(d, "dramatiq:default")
    before = {x.decode(): s for x, s in R.zrange("dramatiq:default.XQ", 0, -1, withscores=True)}
    bodies = {k.decode(): v for k, v in R.hgetall("dramatiq:default.XQ.msgs").items()}
    css(p, ".clear-all").click()
    confirm(d, accept=True)
    authorize(d, lambda: R.zcard("dramatiq:default.XQ") == 0)
    assert R.hlen("dramatiq:default.XQ.msgs") == 0
    undo = wait("the Undo button", lambda: css(p, ".undo").is_displayed() and css(p, ".undo"))
    undo.click()
    wait("the dead letters back", lambda: R.zcard("dramatiq:default.XQ") == N)
    after = {x.decode(): s for x, s in R.zrange("dramatiq:default.XQ", 0, -1, withscores=True)}
    assert after == before, "the same ids with the same scores"
    assert {k.decode(): v for k, v in R.hgetall("dramatiq:default.XQ.msgs").items()} == bodies
    wait("Undo to go", lambda: not css(p, ".undo").is_displayed())

    step("Requeue All moves each failed set onto its queue, each id once")
    for label, _, failed, queue in QUEUES:
        p = panel(d, label)
        ids = sorted(x.decode() for x in R.zrange(failed, 0, -1))
        before = [x.decode() for x in R.lrange(queue, 0, -1)]
        css(p, ".requeue-all").click()
        text = confirm(d, accept=True)
        assert f"dlq:{label}" in text, text
        authorize(d, lambda: R.zcard(failed) == 0)
        moved = sorted(x.decode() for x in R.lrange(queue, 0, -1))
        assert moved == sorted(ids + before), f"{queue}: {len(moved)} ids, want {len(ids)} + {len(before)}"
        wait(f"{label}'s panel to follow", lambda: css(p, ".q-count").text.split()[0] == "0")
    wait("the badge to follow", lambda: css(d, "#total").text == "0")
    assert not css(d, "#error").is_displayed(), css(d, "#error").text


def main():
    d = browser()
    try:
        run(d)
    except Exception:
        d.save_screenshot(os.path.join(SHOTS, "dlq-frameworks-failure.png"))
        raise
    finally:
        d.quit()
    step("all framework checks passed")


if __name__ == "__main__":
    main()
