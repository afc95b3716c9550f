"""A dead-letter queue for Celery that inferwatch's DLQ console and API serve.

Celery's Redis broker has no failed state: a task that fails for good is
gone from Redis. This module gives a Celery app the seed's DLQ convention
(docs/dlq-console.md), so that every DLQ feature of inferwatch works for it:
the console, listing and filters, safe requeue, undo, alerts.

1. ``DlqTask``, a task base class whose ``on_failure`` appends the seed's
   ``JobFailure`` entry to ``dlq:<name>`` (RPUSH: failure order):
   ``original_job`` is ``{id, task, args, kwargs, queue}``, with ``error``,
   ``attempt_count`` (retries + 1), ``first_failed_at``/``last_failed_at``
   (the failure's time) and ``queue_name``. ``on_failure`` runs once a task
   has failed for good (not on a retry).

       app = Celery(...)
       dlq = CeleryDlq(app, name="celery_failed")

       @app.task(base=dlq.Task)
       def render(frame): ...

   and in inferwatch's config: ``queues: {names: [celery_failed]}``.

2. ``replay``: inferwatch's requeue puts ``original_job`` on the list
   ``<name>`` (``queues.push_side``, left by default); the replay loop takes
   each from the consumer's end into ``<name>:replaying`` (``LMOVE``, so a
   crash loses nothing), publishes it again through ``app.send_task`` to
   its queue, and only then removes it. A crash between the publish and the
   removal publishes that one job again when the loop restarts (at least
   once, as Celery's own ``acks_late``).

       python celery_dlq.py replay --app mymodule:app --name celery_failed [--once]

Needs ``celery`` and ``redis`` (``pip install 'celery[redis]'``).
"""

import argparse
import importlib
import json
import time

import redis
from celery import Task


class CeleryDlq:
    """The DLQ ``dlq:<name>`` of a Celery app, on the app's Redis broker (or
    ``redis_url``)."""

    def __init__(self, app, name="celery_failed", redis_url=None, prefix="dlq:"):
        self.app = app
        self.name = name
        self.key = prefix + name
        self.redis = redis.Redis.from_url(redis_url or app.conf.broker_url)
        dlq = self

        class DlqTask(Task):
            """A task whose final failure is written to the DLQ."""

            abstract = True

            def on_failure(self, exc, task_id, args, kwargs, einfo):
                dlq.record(self, exc, task_id, args, kwargs)
                super().on_failure(exc, task_id, args, kwargs, einfo)

        self.Task = DlqTask

    def record(self, task, exc, task_id, args, kwargs):
        """Appends the seed's ``JobFailure`` entry for a failed task."""
        request = task.request
        info = request.delivery_info or {}
        now = time.time()
        entry = {
            "original_job": {
                "id": task_id,
                "task": task.name,
                "args": list(args or []),
                "kwargs": dict(kwargs or {}),
                "queue": info.get("routing_key") or task.queue or self.app.conf.task_default_queue,
            },
            "error": f"{type(exc).__name__}: {exc}",
            "attempt_count": (request.retries or 0) + 1,
            "first_failed_at": now,
            "last_failed_at": now,
            "queue_name": self.name,
        }
        self.redis.rpush(self.key, json.dumps(entry))

    def replay(self, pop="RIGHT", once=False, block=1.0):
        """Publishes each requeued job again through ``send_task``; returns
        how many. ``pop`` is the consumer's end (RIGHT when inferwatch
        pushes left, its default). With ``once``, stops when the list is
        empty."""
        replaying = self.name + ":replaying"
        sent = 0
        # What a crash left half-done is published first.
        while (raw := self.redis.lindex(replaying, 0)) is not None:
            self._send(raw)
            self.redis.lpop(replaying)
            sent += 1
        while True:
            raw = self.redis.lmove(self.name, replaying, pop, "LEFT")
            if raw is None:
                if once:
                    return sent
                time.sleep(block)
                continue
            self._send(raw)
            self.redis.lrem(replaying, 1, raw)
            sent += 1

    def _send(self, raw):
        job = json.loads(raw)
        self.app.send_task(job["task"], args=job.get("args", []), kwargs=job.get("kwargs", {}), queue=job.get("queue"))


def main():
    p = argparse.ArgumentParser(description="Replay jobs inferwatch requeued from a Celery DLQ.")
    p.add_argument("command", choices=["replay"])
    p.add_argument("--app", required=True, help="module:attribute of the Celery app")
    p.add_argument("--name", default="celery_failed", help="the DLQ's queue name (queues.names)")
    p.add_argument("--redis", default=None, help="Redis URL (default: the app's broker)")
    p.add_argument("--pop", default="RIGHT", choices=["LEFT", "RIGHT"], help="the consumer's end")
    p.add_argument("--once", action="store_true", help="stop when the list is empty")
    a = p.parse_args()
    module, attr = a.app.split(":")
    app = getattr(importlib.import_module(module), attr)
    n = CeleryDlq(app, a.name, a.redis).replay(pop=a.pop, once=a.once)
    print(f"replayed {n}")


if __name__ == "__main__":
    main()
