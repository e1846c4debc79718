"""Suite-wide settings: hypothesis profiles chosen from the environment, and the `cuda` marker."""
import os

import pytest
import torch
from hypothesis import settings

# CI (any non-empty CI other than 'false'/'0') draws the same examples on every run, so a verdict never
# depends on luck; elsewhere hypothesis explores new examples and remembers failures in .hypothesis/.
settings.register_profile('ci', derandomize=True, database=None, print_blob=True)
settings.register_profile('dev')
settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE')
                      or ('ci' if os.environ.get('CI', '').lower() not in ('', '0', 'false') else 'dev'))


def pytest_collection_modifyitems(config, items):
    """Skip the tests marked `cuda` on a machine without a CUDA device, saying why."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='needs a CUDA device (run `python -m pytest -m cuda` on a GPU machine)')
    for item in items:
        if 'cuda' in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def shard_dir(tmp_path):
    """A released folder written from the fixture's arrays, to damage in a test."""
    from tests.helpers import fixture_arrays
    from weights import write_released_shards
    d = tmp_path / 'model'
    write_released_shards(d, fixture_arrays())
    return d
