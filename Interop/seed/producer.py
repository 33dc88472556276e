"""The seed producer: five `.delay()` calls, five results read back with `AsyncResult.get()`."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tasks import seed_email  # noqa: E402


def main(count: int = 5, timeout: float = 30.0) -> int:
    started = time.monotonic()
    results = [seed_email.delay() for _ in range(count)]
    for index, result in enumerate(results, 1):
        value = result.get(timeout=timeout)
        print(f"result {index}: {value} (task {result.id}, {result.state})")
    elapsed = time.monotonic() - started
    print(f"{count} results in {elapsed:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5))
