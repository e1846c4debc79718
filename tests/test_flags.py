"""Tests for flags.py: the command-line helpers several scripts share."""
import pytest

from flags import task_dirs


def test_task_dirs_reads_task_equals_folder_each_task_once():
    assert task_dirs(['sst2=glue/', 'cola=a=b'], '--x') == [('sst2', 'glue/'), ('cola', 'a=b')]
    for bad in (['sst2'], ['=glue/'], ['sst2=']):
        with pytest.raises(ValueError, match=rf"^--x {bad[0]!r}: give TASK=DATA_DIR$"):
            task_dirs(bad, '--x')
    with pytest.raises(ValueError, match=r"^--x 'qnli=d': give TASK=DATA_DIR with TASK one of sst2, cola$"):
        task_dirs(['qnli=d'], '--x', ('sst2', 'cola'))
    with pytest.raises(ValueError, match='^--x sst2 is given twice$'):
        task_dirs(['sst2=a', 'sst2=b'], '--x')
