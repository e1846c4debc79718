"""Every script's --help tells: each flag has a help text, says its default (or is required) and lists its choices;
the descriptions name both families (GPT-1 and GPT-2) where the script takes both."""
import argparse
import importlib
from unittest import mock

import pytest

# the scripts at the root and in benchmarks/ (pytest.ini puts benchmarks/ on the path) that have a command line
SCRIPTS = ['train', 'pretrain', 'prepare_corpus', 'generate', 'extract_features', 'zero_shot', 'convert', 'ablations',
           'analysis', 'download_model', 'bench', 'bench_e2e', 'bench_gpt2', 'bench_opt', 'bench_pretrain',
           'bench_text', 'bench_inference', 'evaluate']
# the scripts that take both families' weights or corpora, whose description must say so (train.py fine-tunes GPT-2
# weights too, under GPT-1's recipe)
BOTH_FAMILIES = ['train', 'pretrain', 'generate', 'extract_features', 'zero_shot', 'convert', 'prepare_corpus',
                 'evaluate']
# actions that take no value: a flag's presence is all it says
NO_VALUE = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction,
            argparse._AppendConstAction, argparse._CountAction, argparse._HelpAction, argparse._VersionAction)


class _Parsed(Exception):
    """Raised instead of parsing, carrying the parser a script built."""

    def __init__(self, parser):
        super().__init__()
        self.parser = parser


def parser_of(name):
    """Return the argparse parser of script name: its command_line(), or the one its parse_args builds (caught at
    its parse_args call, before any parsing)."""
    module = importlib.import_module(name)
    if hasattr(module, 'command_line'):
        return module.command_line()

    def caught(self, args=None, namespace=None):
        raise _Parsed(self)

    with mock.patch.object(argparse.ArgumentParser, 'parse_args', caught):
        with pytest.raises(_Parsed) as parsed:
            module.parse_args([])
    return parsed.value.parser


def parsers_of(name):
    """Return [(label, parser)]: the script's parser and, for subcommands (convert.py), each subcommand's."""
    parser = parser_of(name)
    found = [(f'{name}.py', parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found += [(f'{name}.py {command}', sub) for command, sub in action.choices.items()]
    return found


def problems(parser):
    """Return what breaks the convention in parser, one line per flag."""
    found = []
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue  # a hidden internal flag; the subcommands are checked one by one
        flag = '/'.join(action.option_strings) or action.dest
        if not (action.help or '').strip():
            found.append(f'{flag}: no help text')
            continue
        text = formatter._expand_help(action)
        takes_value = not isinstance(action, NO_VALUE) and action.nargs != 0
        if takes_value and not action.required and 'default' not in text.lower():
            found.append(f'{flag}: neither required nor says its default: {text!r}')
        if action.choices is not None and action.metavar is not None:
            missing = [str(c) for c in action.choices if str(c) not in text]
            if missing:
                found.append(f'{flag}: metavar {action.metavar!r} hides the choices {missing} and the help omits them')
    return found


@pytest.mark.parametrize('name', SCRIPTS)
def test_every_flag_has_help_default_and_choices(name):
    """Every action has a help text; every flag that takes a value is required or says its default; choices that a
    metavar hides are listed in the help. A failure lists every such flag of the script (and its subcommands)."""
    found = [f'{label} {line}' for label, parser in parsers_of(name) for line in problems(parser)]
    assert not found, '\n  ' + '\n  '.join(found)


@pytest.mark.parametrize('name', SCRIPTS)
def test_help_formats_with_a_description(name):
    """--help formats (the %-formatting of every help text works) and the script says what it does in whole
    sentences; each subcommand says what it does."""
    for label, parser in parsers_of(name):
        assert parser.format_help().startswith('usage:'), label
        assert (parser.description or '').strip(), f'{label}: no description'
        if ' ' not in label:  # a script's own description is a sentence (a subcommand's is an 'A -> B' line)
            assert parser.description.strip().endswith(('.', ')')), \
                f'{label}: description cut mid-sentence: {parser.description!r}'


@pytest.mark.parametrize('name', SCRIPTS)
def test_help_exits_zero(name, capsys):
    """`script.py --help` (through its own parse_args) prints the usage and exits 0."""
    module = importlib.import_module(name)
    with pytest.raises(SystemExit) as stop:
        module.parse_args(['--help'])
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith('usage:')


@pytest.mark.parametrize('name', BOTH_FAMILIES)
def test_description_names_both_families(name):
    description = parser_of(name).description
    assert 'GPT-1' in description and 'GPT-2' in description, f'{name}.py: {description!r}'


def test_convention_catches_a_flag_without_default():
    """The check itself: a valued flag without a default in its help, a flag without help, hidden choices."""
    p = argparse.ArgumentParser(description='x.')
    p.add_argument('--a', type=int, default=3, help='something')
    p.add_argument('--b', action='store_true')
    p.add_argument('--c', choices=['x', 'y'], metavar='C', help='(default: x)')
    p.add_argument('--d', required=True, help='needed')
    p.add_argument('--e', type=int, default=3, help='fine (default: %(default)s)')
    found = problems(p)
    assert [line.split(':')[0] for line in found] == ['--a', '--b', '--c']


def test_an_empty_pretrain_log_is_refused_naming_pretrain_py_s_log(capsys):
    """analysis.py --pretrain_log '' names the log pretrain.py writes, never train.py's."""
    import analysis
    with pytest.raises(SystemExit) as stop:
        analysis.main(['--pretrain_log', ''])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and 'the log.jsonl that pretrain.py writes' in err and 'that train.py' not in err
