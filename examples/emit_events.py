#!/usr/bin/env python3
"""How a pipeline worker reports stage timings and job results to inferwatch.

Two ways, pick one:
  * HTTP: POST a JSON array (at most 10,000 events, 1 MiB) to
    /api/pipeline/events. Batch events and send them every second or so.
  * Redis stream: XADD pipeline:events * event '<one event as JSON>'.
    inferwatch reads it with a consumer group, so events written while the
    daemon is down are counted when it comes back.

Standard library only for HTTP; the stream part needs `pip install redis`.

  python3 examples/emit_events.py --url http://localhost:8790
  python3 examples/emit_events.py --redis redis://localhost:6379/0
"""
import argparse
import json
import time
import urllib.request


def stage_event(stage, seconds, error_type=None, items=1, job_id=None):
    """One stage of one job: detection, analysis, shape, texture, export..."""
    event = {
        "kind": "stage",
        "stage": stage,
        "duration_seconds": round(seconds, 6),
        "status": "error" if error_type else "ok",
        "items": items,  # frames/images this stage processed (feeds inference_fps)
    }
    if error_type:
        event["error_type"] = error_type  # a short, fixed vocabulary: timeout, oom, ...
        event["items"] = 0
    if job_id:
        event["job_id"] = job_id
    return event


def job_event(status, seconds, job_id=None):
    """A whole job finished: status is completed or failed."""
    event = {"kind": "job", "status": status, "duration_seconds": round(seconds, 3)}
    if job_id:
        event["job_id"] = job_id
    return event


class Timer:
    """with Timer() as t: ...; t.seconds"""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        return False


def send_http(base_url, events):
    req = urllib.request.Request(
        base_url.rstrip("/") + "/api/pipeline/events",
        data=json.dumps(events).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        report = json.load(resp)
    if report["rejected"]:
        print("rejected:", report["errors"])
    return report


def send_stream(redis_url, events, key="pipeline:events"):
    import redis  # pip install redis

    r = redis.Redis.from_url(redis_url)
    pipe = r.pipeline(transaction=False)
    for e in events:
        # One field, "event", holding one event's JSON. Cap the stream so it
        # cannot grow without bound (inferwatch acknowledges, never deletes).
        pipe.xadd(key, {"event": json.dumps(e)}, maxlen=1_000_000, approximate=True)
    pipe.execute()


def process_one_job(job_id):
    """A stand-in for real work: detection then analysis."""
    events = []
    with Timer() as whole:
        with Timer() as t:
            time.sleep(0.02)  # run the detector here
        events.append(stage_event("detection", t.seconds, job_id=job_id))
        with Timer() as t:
            time.sleep(0.05)  # run the LLM here
        events.append(stage_event("analysis", t.seconds, job_id=job_id))
    events.append(job_event("completed", whole.seconds, job_id=job_id))
    return events


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="inferwatch base URL, e.g. http://localhost:8790")
    ap.add_argument("--redis", help="Redis URL for the pipeline:events stream")
    ap.add_argument("--jobs", type=int, default=5)
    args = ap.parse_args()
    if not args.url and not args.redis:
        ap.error("give --url (HTTP) or --redis (stream)")

    batch = []
    for i in range(args.jobs):
        batch.extend(process_one_job(f"job-{i}"))
    batch.append(stage_event("analysis", 30.0, error_type="timeout", job_id="job-x"))
    batch.append(job_event("failed", 31.2, job_id="job-x"))

    if args.url:
        print(send_http(args.url, batch))
    if args.redis:
        send_stream(args.redis, batch)
        print(f"added {len(batch)} events to the stream")


if __name__ == "__main__":
    main()
