"""Suite-wide settings: hypothesis profiles chosen from the environment, OpenMP threads that sleep when they wait,
a cache folder of encoded texts for the session, the `cuda` marker, and the damaged-folder fixture."""
import os
import shutil
import tempfile

import pytest
from hypothesis import settings

# CI (any non-empty CI other than 'false'/'0') draws the same examples on every run, so a verdict never
# depends on luck; elsewhere hypothesis explores new examples and remembers failures in .hypothesis/.
settings.register_profile('ci', derandomize=True, database=None, print_blob=True)
settings.register_profile('dev')
settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE')
                      or ('ci' if os.environ.get('CI', '').lower() not in ('', '0', 'false') else 'dev'))


def pytest_configure(config):
    """Make torch's OpenMP threads sleep while they wait, here and in every script the tests start.

    By default they spin: when the suite shares its cores (a torchrun job's workers, a stopped and a running
    train.py, other work on the machine) the spinning threads take the cores from the ones with work, and a tiny run
    takes several times as long. Waiting is all that changes: the number of threads, hence every result, stays.
    libgomp reads the variable once, when torch is first imported, which is after this hook."""
    os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
    # train.py's cache of encoded texts goes to a folder of this session, never the user's ~/.cache
    config.encode_cache_home = os.environ['GPT_PYTORCH_CACHE'] = tempfile.mkdtemp(prefix='gpt-pytorch-cache-')


def pytest_unconfigure(config):
    """Remove the session's cache folder."""
    folder = getattr(config, 'encode_cache_home', None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """Skip the tests marked `cuda` on a machine without a CUDA device, saying why."""
    import torch
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
