"""A Python Celery client whose task stubs match the Swift worker's demo tasks."""
from celery import Celery


def make_app(broker, backend, task_serializer="json", result_serializer="json", protocol=2, **conf):
    app = Celery("interop", broker=broker, backend=backend, set_as_current=False)
    app.conf.update(task_serializer=task_serializer, result_serializer=result_serializer,
                    accept_content=["json", "msgpack"], task_protocol=protocol, **conf)
    for name in ["seed_email", "tasks.add", "tasks.echo", "tasks.fail", "tasks.sleep", "tasks.noop",
                 "tasks.flaky", "tasks.progress", "tasks.spin", "tasks.whoami", "tasks.crash", "tasks.print", "tasks.record_error",
                 "tasks.mul", "tasks.tsum", "tasks.delegate", "tasks.grow", "tasks.replace_with"]:
        def stub(*args, **kwargs):
            raise NotImplementedError("runs on the Swift worker")
        app.task(name=name, bind=False)(stub)
    return app
