"""The seed application's Celery settings (a Python team's existing config.py)."""
import os

_redis = os.environ.get("SEED_REDIS", "redis://127.0.0.1:6379")

broker_url = os.environ.get("CELERY_BROKER_URL", f"{_redis}/1")
result_backend = os.environ.get("CELERY_RESULT_BACKEND", f"{_redis}/0")
task_serializer = "msgpack"
result_serializer = "json"
accept_content = ["json", "msgpack"]
timezone = "UTC"
enable_utc = True
