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


# --- --config ------------------------------------------------------------------------------------------------

def config_parser():
    """A parser with a flag of every kind --config fills: required, typed, choices, a switch, a list, an optional value."""
    import argparse

    from flags import add_config_arg
    p = argparse.ArgumentParser(prog='x.py')
    add_config_arg(p)
    p.add_argument('--corpus', required=True)
    p.add_argument('--n_batch', type=int, default=64)
    p.add_argument('--lr', type=float, default=2.5e-4)
    p.add_argument('--arch', choices=['gpt1', 'gpt2'], default=None)
    p.add_argument('--quiet', action='store_true')
    p.add_argument('--zero_shot', action='append', default=[])
    p.add_argument('--resume', nargs='?', const=True, default=False)
    return p


def parse(tmp_path, text, *argv):
    from flags import parse_with_config
    path = tmp_path / 'run.toml'
    path.write_text(text)
    return parse_with_config(config_parser(), ['--config', str(path), *argv])


def test_a_config_file_sets_flags_and_the_command_line_overrides_it(tmp_path):
    text = ('# a comment\ncorpus = "c/"\nn_batch = 8\nlr = 3e-3\narch = "gpt2"\nquiet = true\n'
            'zero_shot = ["sst2=glue/", "cola=glue/"]\nresume = "auto"\n')
    args = parse(tmp_path, text)
    assert vars(args) == dict(corpus='c/', n_batch=8, lr=3e-3, arch='gpt2', quiet=True,
                              zero_shot=['sst2=glue/', 'cola=glue/'], resume='auto')  # no config attribute
    args = parse(tmp_path, text, '--n_batch', '2', '--zero_shot=rte=g/', '--corpus', 'd/')
    assert (args.n_batch, args.zero_shot, args.corpus, args.lr) == (2, ['rte=g/'], 'd/', 3e-3)  # a list is replaced
    assert parse(tmp_path, 'corpus = "c/"\nresume = true\nquiet = false\n').resume is True
    assert parse(tmp_path, 'corpus = "c/"\nresume = false\n').resume is False  # a value equal to the default
    assert parse(tmp_path, text, '--zero', 'rte=g/').zero_shot == ['rte=g/']  # an abbreviation overrides too
    assert parse(tmp_path, 'corpus = "--quiet"\n').corpus == '--quiet'  # a value that starts with '-' stays one
    args = parse(tmp_path, text, '--no_quiet')  # a switch the file turns on, turned off
    assert args.quiet is False and args.n_batch == 8
    from flags import parse_with_config
    assert vars(parse_with_config(config_parser(), ['--corpus', 'c/'])) == dict(  # no --config: the defaults
        corpus='c/', n_batch=64, lr=2.5e-4, arch=None, quiet=False, zero_shot=[], resume=False)


@pytest.mark.parametrize('text, message', [
    ('corpus = "c/"\nn_btch = 8\n', "unknown key 'n_btch' (the nearest flag is --n_batch)"),
    ('corpus = "c/"\nwhatever = 1\n', "unknown key 'whatever' (see --help for the flags)"),
    ('corpus = "c/"\nquiet = "yes"\n', 'quiet is a switch, give true or false'),
    ('corpus = "c/"\nn_batch = true\n', '--n_batch takes a value, not true or false'),
    ('corpus = "c/"\nn_batch = [1, 2]\n', '--n_batch takes one value'),
    ('corpus = "c/"\n[train]\nn_batch = 8\n', '[train] is a table; give every key at the top level'),
    ('corpus = "c/\n', 'not a TOML file'),
    ('corpus = "c/"\n' + '#' * (1 << 20), 'more than a config holds'),
    ('corpus = "c/"\nhelp = true\n', "'help' is not a key a config holds"),
    ('corpus = "c/"\nconfig = "other.toml"\n', "'config' is not a key a config holds"),
])
def test_a_bad_config_is_one_error_naming_the_file_and_the_key(tmp_path, capsys, text, message):
    with pytest.raises(SystemExit) as stop:
        parse(tmp_path, text)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f'x.py: error: --config {tmp_path / "run.toml"}') and message in err


def test_a_config_value_is_checked_as_the_flag_is(tmp_path, capsys):
    for text, message in (('n_batch = 2.5', "n_batch = 2.5: not a value --n_batch takes (invalid literal for int()"),
                          ('arch = "gpt3"', "arch = 'gpt3': give one of gpt1, gpt2")):
        with pytest.raises(SystemExit):
            parse(tmp_path, f'corpus = "c/"\n{text}\n')
        assert f'--config {tmp_path / "run.toml"}: {message}' in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a required flag may come from the file, but must come from somewhere
        parse(tmp_path, 'n_batch = 8\n')
    assert 'the following arguments are required: --corpus' in capsys.readouterr().err
    from flags import parse_with_config
    with pytest.raises(SystemExit):
        parse_with_config(config_parser(), ['--config', str(tmp_path / 'missing.toml'), '--corpus', 'c/'])
    assert f'--config {tmp_path / "missing.toml"}: no such file' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_with_config(config_parser(), ['--config', str(tmp_path), '--corpus', 'c/'])
    assert f'--config {tmp_path}: not a regular file' in capsys.readouterr().err
    (tmp_path / 'a.toml').write_text('n_batch = 2\n')
    with pytest.raises(SystemExit):
        parse_with_config(config_parser(), ['--config', str(tmp_path / 'a.toml'), '--config=x.toml', '--corpus', 'c'])
    assert '--config is given 2 times: give one file' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_with_config(config_parser(), ['--corpus', 'c/', '--no_quiet'])
    assert '--no_quiet turns off a switch a --config file turns on: give --config' in capsys.readouterr().err
