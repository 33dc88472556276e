"""Metrics: the Swift worker's Prometheus endpoint (`--metrics-port`) counts what Python's clients see."""
import re
import socket
import urllib.request

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(port: int) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for line in text.splitlines():
        match = re.fullmatch(r"([a-z_]+)(\{[^}]*\})? (\S+)", line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            samples[(match.group(1), tuple(sorted(labels.items())))] = float(match.group(3))
    return samples


def test_prometheus_endpoint_counts_tasks_and_times_them(start_worker, make_app):
    port = free_port()
    worker = start_worker("-n", "metrics@%h", "--metrics-port", str(port))
    worker.wait_for_log(f"Serving metrics on http://127.0.0.1:{port}/metrics")
    app = make_app()
    assert [app.tasks["tasks.add"].delay(i, 1).get(timeout=10) for i in range(3)] == [1, 2, 3]
    with pytest.raises(ValueError):
        app.tasks["tasks.fail"].delay("boom").get(timeout=10)
    app.tasks["tasks.sleep"].delay(0.3).get(timeout=10)

    samples = scrape(port)

    def total(task, state):
        return samples[("celery_tasks_total", (("state", state), ("task", task)))]

    assert total("tasks.add", "received") == 3 and total("tasks.add", "started") == 3
    assert total("tasks.add", "succeeded") == 3 and total("tasks.add", "failed") == 0
    assert total("tasks.fail", "failed") == 1 and total("tasks.fail", "succeeded") == 0
    assert samples[("celery_task_runtime_seconds_count", (("task", "tasks.add"),))] == 3
    assert samples[("celery_task_runtime_seconds_sum", (("task", "tasks.sleep"),))] >= 0.3
    assert samples[("celery_task_wait_seconds_count", (("task", "tasks.add"),))] == 3
    assert samples[("celery_worker_active_tasks", ())] == 0
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=5)
    assert missing.value.code == 404


def test_bad_metrics_port_is_a_clear_error(start_worker):
    worker = start_worker("--metrics-port", "70000", ready=False)
    assert worker.proc.wait(15) != 0
    assert "--metrics-port must be a TCP port" in worker.stdout


def test_a_metrics_port_in_use_stops_the_worker_before_it_takes_work(start_worker):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        worker = start_worker("--metrics-port", str(taken.getsockname()[1]), ready=False)
        assert worker.proc.wait(15) != 0
    # The system's reason alone, not NIO's description of the failed call.
    assert "cannot listen on 127.0.0.1: Address already in use (errno 98)." in worker.stdout, worker.stdout
    assert " ready." not in worker.log
