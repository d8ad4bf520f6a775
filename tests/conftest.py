import os

from hypothesis import HealthCheck, settings

# Deterministic in CI (same cases every run); explore freely elsewhere with GRAPHC_HYPOTHESIS=dev.
settings.register_profile(
    "ci", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("GRAPHC_HYPOTHESIS", "ci"))

import sys  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))  # tests/cases.py: strategies shared by several test modules

# The IR verifier runs after every graph stage of every compilation in the tests (graphc.codegen.stages).
os.environ.setdefault("GRAPHC_VERIFY", "1")
