import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


#: The fast loop (`bash scripts/test.sh --fast`, under 3 minutes): whole files that run in seconds and together touch
#: every layer (models, data, runtime, train, dense, deploy, inference, search, bench, cli). A test elsewhere joins
#: with `@pytest.mark.fast`. Keep the loop short: add a file here only if it runs in a few seconds.
FAST_FILES = {
    "test_layering.py",
    "test_package_api.py",
    "test_packaging.py",
    "test_models.py",
    "test_checkpoint.py",
    "test_one_reader.py",
    "test_data.py",
    "test_images.py",
    "test_trackers.py",
    "test_bad_input.py",
    "test_cli_errors.py",
    "test_dense_config.py",
    "test_dense_units.py",
    "test_deploy.py",
    "test_inference.py",
    "test_search_greedy.py",
    "test_search_predictor.py",
    "test_search_v1.py",
    "test_bench_timing.py",
    "test_bench_machine.py",
    "test_names.py",
    "test_paths.py",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in FAST_FILES and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.fast)
