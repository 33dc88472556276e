"""The seed application. `seed_email` runs on the Swift worker; Python only declares it to call `.delay()`."""
from celery import Celery

app = Celery("seed")
app.config_from_object("config")


@app.task(name="seed_email")
def seed_email():
    raise NotImplementedError("seed_email runs on the Swift worker")
