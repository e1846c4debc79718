"""The shape of the project: the import graph of its modules, read from their source, has no circle, and no module
imports a script; importing a module does no work."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# analysis.py is the original's module of that name (the original train.py imports it) with a command line added:
# a module that also runs as a command, not a script
NOT_SCRIPTS = {'analysis'}


def project_modules():
    """Return {module name: path} of the Python files at the repository root."""
    return {p.stem: p for p in sorted(ROOT.glob('*.py'))}


def imported_names(path, modules):
    """Return the project modules a file imports anywhere in it (at the top or inside a function)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split('.')[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split('.')[0])
    return names & set(modules)


def is_script(path):
    """Return whether a file runs as a command: it has an `if __name__ == '__main__':` block."""
    for node in ast.parse(path.read_text(encoding='utf-8')).body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and \
                isinstance(node.test.left, ast.Name) and node.test.left.id == '__name__':
            return True
    return False


def import_graph():
    """Return {module: set of project modules it imports}."""
    modules = project_modules()
    return {name: imported_names(path, modules) - {name} for name, path in modules.items()}


def find_circle(graph):
    """Return one circle of imports as a list of modules [a, b, ..., a], or None."""
    state = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_the_import_graph_has_no_circle():
    graph = import_graph()
    assert {'weights', 'model_pytorch', 'models', 'trainer', 'train'} <= set(graph)
    assert find_circle(graph) is None, ' -> '.join(find_circle(graph))


def test_the_circle_finder_finds_a_circle():
    assert find_circle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': set()}) == ['a', 'b', 'c', 'a']
    assert find_circle({'a': {'b'}, 'b': set()}) is None


def test_no_module_imports_a_script():
    modules = project_modules()
    scripts = {name for name, path in modules.items() if is_script(path)} - NOT_SCRIPTS
    assert {'train', 'pretrain', 'convert', 'generate', 'extract_features', 'prepare_corpus',
            'download_model'} <= scripts
    offenders = {name: sorted(imports & scripts) for name, imports in import_graph().items() if imports & scripts}
    assert not offenders, f'modules importing scripts: {offenders}'


def test_weights_imports_no_model_code():
    """The formats module is the bottom of the model stack: the models read through it, it builds none."""
    assert not import_graph()['weights'] & {'model_pytorch', 'models', 'trainer'}


LIBRARY_MODULES = sorted(n for n, p in project_modules().items() if not is_script(p))
# imports each module named on the command line in turn, in an empty working folder, and writes to the JSON file
# given first what each import printed (through sys.stdout/sys.stderr) and the files it made there (a module that
# another imported first is blamed on that one)
IMPORT_EACH = """
import contextlib, io, json, os, sys
report = {}
for name in sys.argv[2:]:
    out, err, before = io.StringIO(), io.StringIO(), set(os.listdir('.'))
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        __import__(name)
    report[name] = dict(printed=out.getvalue() + err.getvalue(), files=sorted(set(os.listdir('.')) - before))
with open(sys.argv[1], 'w') as f:
    json.dump(report, f)
"""


@pytest.fixture(scope='module')
def imports(tmp_path_factory):
    """Return (each library module's report, the stdout and stderr of the one process that imported them all)."""
    workdir, report = tmp_path_factory.mktemp('empty'), tmp_path_factory.mktemp('report') / 'imports.json'
    proc = subprocess.run([sys.executable, '-c', IMPORT_EACH, str(report), *LIBRARY_MODULES], cwd=workdir,
                          capture_output=True, text=True, timeout=300,
                          env={'PYTHONPATH': str(ROOT), 'PATH': '/usr/bin:/bin'})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(report.read_text()), proc.stdout + proc.stderr


def test_importing_the_library_modules_writes_nothing_to_the_terminal(imports):
    assert imports[1] == ''  # nothing printed below Python's sys.stdout (a module's C code, a subprocess)


@pytest.mark.parametrize('name', LIBRARY_MODULES)
def test_importing_a_library_module_prints_and_writes_nothing(name, imports):
    assert imports[0][name] == dict(printed='', files=[])


TORCH_FREE = ('analysis', 'corpus', 'datasets', 'encoder_gpt2', 'integrity', 'runlock', 'task_datasets', 'tasks',
              'text_utils', 'tf_bundle', 'untrusted', 'utils')


def test_the_data_text_and_analysis_modules_import_without_torch():
    """They are imported by tools that never touch a model (analysis.py, the text benchmark): torch costs a second."""
    code = ('import sys\nfor name in sys.argv[1:]:\n    __import__(name)\n'
            '    assert "torch" not in sys.modules, f"importing {name} loads torch"')
    proc = subprocess.run([sys.executable, '-c', code, *TORCH_FREE], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
