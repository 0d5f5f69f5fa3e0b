"""The benchmarks run against the service tests' tiny artifacts."""

from tests.service.conftest import artifacts, lstm_dir

__all__ = ["artifacts", "lstm_dir"]
