"""Hostile training states and weight files (issue 26): a state is checked whole before anything is restored.

One valid training state of a tiny model and OpenAIAdam after two steps (two ranks, a train.py-like progress) is
mutated every way a damaged or crafted file could be: each key of the metadata deleted at every level, each value
replaced by values of other types, each tensor dropped, reshaped, retyped or renamed, random generator states that
have the right form but not valid content, the file's bytes truncated and its header size forged. Each mutation must
either be refused with one BadFile line naming the file, leaving the model, the optimizer and every random generator
(python, numpy's global, torch) exactly as they were, or (the few harmless ones, listed by may_load) load.
"""
import copy
import json
import math
import os
import random
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import checkpoint
import untrusted
from model_pytorch import DoubleHeadModel
from opt import OpenAIAdam
from tests.helpers import assert_refused, small_cfg

IDENTITY = {'--dataset': 'rocstories', 'model': 'GPTConfig(n_embd=8)'}
# train.py's fresh progress (new_progress) and its per-rank counters
TEMPLATE = dict(epoch=0, n_updates=0, batch=0, order=None, best=0.0, seen=0, train_time=0.0, log=[])
RANK_KEYS = ('train_time',)
LOAD = dict(identity=IDENTITY, rank=0, world_size=2, template=TEMPLATE, rank_keys=RANK_KEYS)
DELETE = object()  # a mutation that deletes the key or element


def tiny_run(seed):
    torch.manual_seed(seed)
    model = DoubleHeadModel(small_cfg(pdrop=0.1, n_embd=8, n_head=2, n_layer=1), clf_token=19,
                            task_head_type='multiple_choice', vocab=24, n_ctx=4).train()
    opt = OpenAIAdam(model.parameters(), lr=1e-3, schedule='warmup_linear', warmup=0.1, t_total=10, l2=0.01,
                     max_grad_norm=1)
    return model, opt


def train_steps(model, opt, n):
    for _ in range(n):
        x = torch.stack([torch.randint(0, 18, (2, 2, 4)), torch.arange(20, 24).expand(2, 2, 4)], -1)
        x[..., -1, 0] = 19
        lm_logits, clf_logits = model(x)
        loss = torch.nn.functional.cross_entropy(clf_logits, torch.randint(0, 2, (2,))) + lm_logits.square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()


def rank_records():
    records = []
    for r in range(2):
        random.seed(10 + r)
        random.gauss(0, 1)  # python's cached gaussian set: a float in the state, not null
        np.random.seed(20 + r)
        np.random.standard_normal()  # numpy's too
        torch.manual_seed(30 + r)
        records.append(checkpoint.rank_record({'train_time': 0.25 + r}, RANK_KEYS))
    return records


@pytest.fixture(scope='module')
def base(tmp_path_factory):
    """(path of a valid state, its metadata, its tensors, the model and optimizer that saved it, its rank records)."""
    model, opt = tiny_run(0)
    train_steps(model, opt, 2)
    progress = dict(epoch=1, n_updates=2, batch=1, order=[2, 0, 1, 3], best=50.0, seen=4, train_time=0.5,
                    log=[{'desc': 'tiny', 'time': 1.0}, {'n_updates': 1, 'va_acc': 50.0}])
    path = str(tmp_path_factory.mktemp('state') / 'state.safetensors')
    records = rank_records()
    checkpoint.save_training_state(path, model, opt, progress, ranks=records, identity=IDENTITY)
    meta, tensors = checkpoint.read_training_state(path)
    tensors = {k: v.clone() for k, v in tensors.items()}
    return path, meta, tensors, model, opt, records


@pytest.fixture(scope='module')
def target():
    """A model and optimizer in another state than base's (trained from another seed), restored to it by reset()."""
    model, opt = tiny_run(1)
    train_steps(model, opt, 1)
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    return model, opt, snapshot(model, opt)


def snapshot(model, opt):
    """Everything a restore could change: weights, optimizer state (deep), python, numpy and torch generators."""
    index = {id(p): i for i, p in enumerate(model.parameters())}
    return dict(weights={k: v.clone() for k, v in model.state_dict().items()},
                opt={index[id(p)]: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
                     for p, s in opt.state.items()},
                torch=torch.get_rng_state(), numpy=np.random.get_state(), python=random.getstate())


def same(a, b):
    """Whether two snapshots are equal, tensors and arrays compared exactly (dtypes included)."""
    if isinstance(a, tuple) and all(type(x) is int for x in a):  # python random's words: at once
        return type(b) is tuple and a == b
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return isinstance(b, (tuple, list)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    return type(a) is type(b) and a == b


def reset(model, opt, snap):
    """Put model, opt and the generators back to the snapshot snap."""
    with torch.no_grad():
        for k, v in model.state_dict().items():
            v.copy_(snap['weights'][k])
    params = list(model.parameters())
    opt.state.clear()
    for i, s in snap['opt'].items():
        opt.state[params[i]] = {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
    torch.set_rng_state(snap['torch'])
    np.random.set_state(snap['numpy'])
    random.setstate(snap['python'])


def attempt(path, target):
    """Load path into target; return 'loaded', or the BadFile's message after checking that it is one line naming
    path and that nothing changed. Any other exception fails the test."""
    model, opt, snap = target  # snap: what they hold before each attempt (checked, or reset to it, after each)
    try:
        checkpoint.load_training_state(path, model, opt, checkpoint.Expected(**LOAD))
    except untrusted.BadFile as err:
        message = str(err)
        assert '\n' not in message and path in message, message
        assert same(snapshot(model, opt), snap), f'refused ({message}) after changing something'
        return message
    reset(model, opt, snap)
    return 'loaded'


# --- the metadata JSON: every key deleted, every value replaced -------------------------------------------------

def nodes(value, path=()):
    """Yield the path of every key and element of a JSON value (of long lists: both ends and the middle)."""
    if isinstance(value, dict):
        for key in value:
            yield path + (key,)
            yield from nodes(value[key], path + (key,))
    elif isinstance(value, list):
        n = len(value)
        for i in sorted({0, n // 2, n - 1} if n > 6 else range(n)):
            if 0 <= i < n:
                yield path + (i,)
                yield from nodes(value[i], path + (i,))


def mutated(meta, path, new):
    """Return meta with the value at path replaced by new (deleted for DELETE), copying only the containers on the
    path (the rest is shared: nothing mutates it)."""
    if not path:
        return new
    key, changed = path[0], dict(meta) if isinstance(meta, dict) else list(meta)
    if len(path) > 1:
        changed[key] = mutated(meta[key], path[1:], new)
    elif new is DELETE:
        del changed[key]
    else:
        changed[key] = new
    return changed


def deep(n):
    value = 0
    for _ in range(n):
        value = [value]
    return value


REPLACEMENTS = [None, -1, 0, 'x', [], {}, 1e308, True, 2 ** 70, deep(30), {'a': deep(100)}]


def is_order(value):
    return value is None or (isinstance(value, list) and all(type(i) is int for i in value)
                             and sorted(value) == list(range(len(value))))


def may_load(meta, path, new):
    """Whether the mutation leaves a state that is valid by design (so it must load): free-form log records, a
    shorter valid order, other finite non-negative amounts, other finite cached gaussians."""
    if isinstance(new, (list, dict)) and len(path) + untrusted.json_depth(json.dumps(new)) > untrusted.JSON_MAX_DEPTH:
        return False  # nested deeper than any JSON file is read
    after = mutated(meta, path, new)
    if path[:2] == ('progress', 'log'):
        return len(path) >= 4 or (len(path) == 3 and (new is DELETE or isinstance(new, dict))) or \
            (len(path) == 2 and new == [])
    if path[:2] == ('progress', 'order'):
        return 'order' in after['progress'] and is_order(after['progress']['order'])
    number = type(new) in (int, float) and math.isfinite(new)
    if path[0] == 'progress' and path[-1] in ('epoch', 'n_updates', 'batch', 'seen'):
        return type(new) is int and 0 <= new <= 2 ** 40
    if path[-1] in ('best', 'train_time'):  # the progress's and each rank's (an int as large as a counter)
        return number and 0 <= new <= (2 ** 40 if type(new) is int else math.inf)
    if path[0] == 'opt_steps' and len(path) == 2:
        return type(new) is int and 1 <= new <= 2 ** 40
    if path[:1] == ('ranks',) and len(path) >= 5 and path[2] == 'rng':
        kind, part, word = path[3], path[4], (path[5] if len(path) == 6 else None)
        if (kind, part) in (('python', 1), ('numpy', 1)) and word is not None:  # a word of the state, or its index
            return type(new) is int and 0 <= new <= (624 if (kind, word) == ('python', 624) else 2 ** 32 - 1)
        if (kind, part) == ('numpy', 2):
            return type(new) is int and 0 <= new <= 624
        if (kind, part) == ('numpy', 3):
            return type(new) is int and new in (0, 1)
        if (kind, part) in (('python', 2), ('numpy', 4)):  # the cached gaussian (python's may be none)
            return (type(new) is float and math.isfinite(new)) or (kind == 'python' and new is None)
    return False


def write_state(path, tensors, meta):
    save_file(tensors, path, metadata={'state': json.dumps(meta)})


class StateFiles:
    """Writes the base state's tensors with other metadata, as save_file lays them out, without serializing the
    tensors again for each of the thousands of mutations (save_file once, then its header rewritten)."""

    def __init__(self, tensors):
        from safetensors.torch import save
        data = save(tensors, metadata={'state': '{}'})
        n = struct.unpack('<Q', data[:8])[0]
        self.header, self.body = json.loads(data[8:8 + n]), data[8 + n:]

    def write(self, path, meta):
        header = json.dumps(dict(self.header, __metadata__={'state': json.dumps(meta)})).encode()
        header += b' ' * (-len(header) % 8)
        with open(path, 'wb') as f:
            f.write(struct.pack('<Q', len(header)) + header + self.body)


def test_a_valid_state_restores_exactly(base, target, tmp_path):
    path, meta, tensors, model, opt, records = base
    t_model, t_opt, snap = target
    for rank in (0, 1):
        expected = checkpoint.Expected(**dict(LOAD, rank=rank))
        progress, n_saved = checkpoint.load_training_state(path, t_model, t_opt, expected)
        assert n_saved == 2 and progress == dict(meta['progress'], train_time=0.25 + rank)
        assert same({k: v for k, v in t_model.state_dict().items()}, dict(model.state_dict()))
        assert same(snapshot(t_model, t_opt)['opt'], snapshot(model, opt)['opt'])
        assert all(type(s['step']) is int and s['step'] == 2 for s in t_opt.state.values())
        assert torch.equal(torch.get_rng_state(), records[rank]['tensors']['torch'])
        version, internal, gauss = records[rank]['rng']['python']
        assert random.getstate() == (version, tuple(internal), gauss) and gauss is not None
        assert np.random.get_state()[1].tolist() == records[rank]['rng']['numpy'][1]
        assert np.random.get_state()[3:] == tuple(records[rank]['rng']['numpy'][3:])
    reset(t_model, t_opt, snap)
    # rewritten through save_file with the same tensors and metadata (as every mutation is): still valid
    write_state(str(tmp_path / 'same.safetensors'), tensors, meta)
    assert attempt(str(tmp_path / 'same.safetensors'), target) == 'loaded'
    StateFiles(tensors).write(str(tmp_path / 'same.safetensors'), meta)
    assert attempt(str(tmp_path / 'same.safetensors'), target) == 'loaded'


def test_every_deleted_key_is_refused_and_nothing_is_restored(base, target, tmp_path):
    _, meta, tensors, _, _, _ = base
    path, files = str(tmp_path / 'state.safetensors'), StateFiles(tensors)
    outcomes = {}
    for where in nodes(meta):
        files.write(path, mutated(meta, where, DELETE))
        outcomes[where] = attempt(path, target)
    assert len(outcomes) > 70
    wrong = {w: o for w, o in outcomes.items() if (o == 'loaded') != may_load(meta, w, DELETE)}
    assert not wrong, wrong
    assert outcomes[('ranks', 1, 'rng', 'python')].endswith("ranks[1].rng lacks 'python': damaged; delete it to "
                                                            "start afresh")
    assert 'progress lacks' in outcomes[('progress', 'n_updates')]


def test_every_value_replaced_by_another_type_is_refused_and_nothing_is_restored(base, target, tmp_path):
    _, meta, tensors, _, _, _ = base
    path, files = str(tmp_path / 'state.safetensors'), StateFiles(tensors)
    outcomes = {}
    for where in nodes(meta):
        for new in REPLACEMENTS:
            files.write(path, mutated(meta, where, new))
            outcomes[where, repr(new)[:20]] = outcome = attempt(path, target)
            assert (outcome == 'loaded') == may_load(meta, where, new), (where, new, outcome)
    assert len(outcomes) > 800
    assert sum(o == 'loaded' for o in outcomes.values()) < len(outcomes) // 10


@pytest.mark.parametrize('change, message', [
    (lambda m: m.update(ranks=[]), 'ranks must be a non-empty list of objects'),
    (lambda m: m['opt_steps'].update({'0': -1}), 'the optimizer step of parameter 0 must be an integer in [1,'),
    (lambda m: m['opt_steps'].update({'0': 'x'}), "the optimizer step of parameter 0 must be an integer in [1,"),
    (lambda m: m['opt_steps'].update({'0': 0}), 'the optimizer step of parameter 0 must be an integer in [1,'),
    (lambda m: m['opt_steps'].update({'0': 2.0}), 'the optimizer step of parameter 0 must be an integer in [1,'),
    (lambda m: m['opt_steps'].update({'0': 2 ** 60}), 'the optimizer step of parameter 0 must be an integer in [1,'),
    (lambda m: m['opt_steps'].update({'00': 2}), "opt_steps has the key '00', not a parameter index"),
    (lambda m: m['opt_steps'].update({'999': 2}), 'its optimizer has state for parameter 999'),
    (lambda m: m['opt_steps'].pop('1'), "the optimizer tensor 'opt/1/m' without a step"),
    (lambda m: m.update(identity=['x']), 'identity must be an object'),
    (lambda m: m.update(identity={}), 'was saved by another run (--dataset None'),
    (lambda m: m.update(extra=1), "the state holds an unexpected 'extra'"),
    (lambda m: m['progress'].update(n_updates=2 ** 60), 'progress.n_updates must be an integer in [0, 1099511627776]'),
    (lambda m: m['progress'].update(order=[0, 0, 1, 3]), 'progress.order must be null or an order'),
    (lambda m: m['progress'].update(more=1), "progress holds an unexpected 'more'"),
    (lambda m: m['ranks'][1]['progress'].update(train_time=-1), 'ranks[1].progress.train_time must be a finite'),
    (lambda m: m['ranks'][1]['progress'].update(seen=1), "ranks[1].progress holds an unexpected 'seen'"),
    (lambda m: m['ranks'][0]['rng']['python'].__setitem__(0, 2), 'ranks[0].rng.python[0] (the version) must be 3'),
    (lambda m: m['ranks'][0]['rng']['python'][1].__setitem__(624, 625), 'ranks[0].rng.python[1][624] must be an'),
    (lambda m: m['ranks'][0]['rng']['python'][1].__setitem__(3, 2 ** 32), 'ranks[0].rng.python[1] must be a list'),
    (lambda m: m['ranks'][0]['rng']['python'][1].pop(), 'ranks[0].rng.python[1] must be a list of 625 integers'),
    (lambda m: m['ranks'][1]['rng']['numpy'].__setitem__(0, 'PCG64'), "ranks[1].rng.numpy[0] must be 'MT19937'"),
    (lambda m: m['ranks'][1]['rng']['numpy'][1].__setitem__(5, -1), 'ranks[1].rng.numpy[1] must be a list of 624'),
    (lambda m: m['ranks'][1]['rng']['numpy'].__setitem__(2, 625), 'ranks[1].rng.numpy[2] must be an integer in [0'),
    (lambda m: m['ranks'][1]['rng']['numpy'].__setitem__(3, 2), 'ranks[1].rng.numpy[3] (has_gauss) must be 0 or 1'),
])
def test_named_metadata_attacks_are_refused_with_what_is_wrong(base, target, tmp_path, change, message):
    _, meta, tensors, _, _, _ = base
    meta = copy.deepcopy(meta)
    change(meta)
    path = str(tmp_path / 'state.safetensors')
    write_state(path, tensors, meta)
    outcome = attempt(path, target)
    assert message in outcome, outcome


# --- the tensors: dropped, reshaped, retyped, renamed, invalid content ------------------------------------------

def tensor_mutations(tensors):
    """Yield (description, mutated tensors) for each tensor of a state."""
    last = max(int(name.split('/')[1]) for name in tensors if name.startswith('opt/'))
    for name, t in tensors.items():
        if name.startswith('opt/') and int(name.split('/')[1]) not in (0, 1, last):
            continue  # the moments of the first two parameters and the last are enough
        others = {k: v for k, v in tensors.items() if k != name}
        yield f'drop {name}', others
        yield f'flatten {name}', dict(others, **{name: t.reshape(-1)[:-1] if t.numel() > 1 else t.reshape(1, -1)})
        for dtype in (torch.int32, torch.bool, torch.float64, torch.float32 if t.dtype == torch.uint8 else torch.uint8):
            yield f'{name} as {dtype}', dict(others, **{name: t.to(dtype)})
        yield f'rename {name}', dict(others, **{name + 'x': t})


def test_every_tensor_mutation_is_refused_and_nothing_is_restored(base, target, tmp_path):
    _, meta, tensors, _, _, _ = base
    path = str(tmp_path / 'state.safetensors')
    n, names = 0, set()
    for what, mutant in tensor_mutations(tensors):
        write_state(path, mutant, meta)
        outcome = attempt(path, target)
        assert outcome != 'loaded', what
        n += 1
        names.add(what.split()[-1] if what.startswith(('drop', 'rename')) else what.split()[0])
    assert n >= 7 * 20 and {'rng/0/torch', 'rng/1/torch', 'opt/0/v', 'model/transformer.embed.weight'} <= names


def with_tensor(tensors, name, change):
    t = tensors[name].clone()
    change(t)
    return dict(tensors, **{name: t})


@pytest.mark.parametrize('name, change, message', [
    ('rng/1/torch', lambda t: t.fill_(255), 'rng/1/torch is not a state of the torch generator'),
    ('rng/0/torch', lambda t: t.zero_(), 'rng/0/torch is not a state of the torch generator'),
    ('model/transformer.embed.weight', lambda t: t.view(-1)[3].fill_(math.nan), 'holds a value that is not finite'),
    ('model/task_head.clf.w', lambda t: t.view(-1)[0].fill_(math.inf), 'holds a value that is not finite'),
    ('opt/0/m', lambda t: t.view(-1)[0].fill_(math.nan), 'optimizer moment m of parameter 0 holds a value'),
    ('opt/2/v', lambda t: t.view(-1)[0].fill_(-1.0), 'optimizer moment v of parameter 2 holds a value that is not '
                                                     'finite and non-negative'),
])
def test_tensors_of_the_right_form_but_invalid_content_are_refused(base, target, tmp_path, name, change, message):
    """The last rank's torch state is checked as much as the first's (all of them before anything is restored),
    on a generator of its own."""
    _, meta, tensors, _, _, _ = base
    path = str(tmp_path / 'state.safetensors')
    write_state(path, with_tensor(tensors, name, change), meta)
    outcome = attempt(path, target)
    assert message in outcome, outcome


def test_the_cuda_state_of_a_cpu_run_is_still_checked_for_its_form(base, target, tmp_path):
    _, meta, tensors, _, _, _ = base
    path = str(tmp_path / 'state.safetensors')
    write_state(path, dict(tensors, **{'rng/0/cuda': torch.zeros(16, dtype=torch.uint8)}), meta)
    assert attempt(path, target) == 'loaded'  # the CUDA generator's state, ignored on the CPU
    write_state(path, dict(tensors, **{'rng/0/cuda': torch.zeros(4, 4)}), meta)
    assert 'rng/0/cuda must be a uint8 vector' in attempt(path, target)
    write_state(path, dict(tensors, **{'rng/2/torch': tensors['rng/0/torch'].clone()}), meta)
    assert "holds the random state 'rng/2/torch' of no rank it lists" in attempt(path, target)


# --- the file itself ---------------------------------------------------------------------------------------------

def test_truncated_forged_and_non_regular_files_are_refused(base, target, tmp_path):
    path = base[0]
    data = open(path, 'rb').read()
    bad = str(tmp_path / 'bad.safetensors')
    for cut in sorted({0, 3, 8, 9, 20, 100, len(data) // 2, len(data) - 100, len(data) - 1}):
        with open(bad, 'wb') as f:
            f.write(data[:cut])
        assert 'is not a safetensors training state' in attempt(bad, target), cut
    n_header = struct.unpack('<Q', data[:8])[0]
    for n in (2 ** 63, 2 ** 64 - 1, len(data), n_header + 1, n_header - 1, 1):
        with open(bad, 'wb') as f:
            f.write(struct.pack('<Q', n) + data[8:])
        assert attempt(bad, target) != 'loaded', n
    # the header made valid JSON that is not a safetensors header, or invalid UTF-8
    for header in (b'[]', b'{"x": 1}', b'{"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 8]}}',
                   b'{"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}',
                   b'{"x": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}',
                   b'{"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}, '
                   b'"b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}}',
                   b'\xff\xfe', b'[' * 10000 + b']' * 10000):
        with open(bad, 'wb') as f:
            f.write(struct.pack('<Q', len(header)) + header + bytes(8))
        assert 'is not a safetensors training state' in attempt(bad, target), header[:40]
    os.mkfifo(tmp_path / 'fifo')  # opened without blocking, refused as not a regular file
    assert 'not a regular file' in attempt(str(tmp_path / 'fifo'), target)
    assert 'is a folder' in attempt(str(tmp_path), target)
    outside = tmp_path / 'outside'
    outside.mkdir()
    (outside / 'state.safetensors').write_bytes(data)
    (tmp_path / 'run').mkdir()
    os.symlink(outside / 'state.safetensors', tmp_path / 'run' / 'state.safetensors')
    assert 'is a link that leads outside' in attempt(str(tmp_path / 'run' / 'state.safetensors'), target)
    with pytest.raises(untrusted.MissingFile, match='nothing to resume'):
        checkpoint.load_training_state(str(tmp_path / 'none.safetensors'), *target[:2])


def test_a_forged_header_size_allocates_nothing(base, tmp_path):
    """A header that claims more bytes than the file, or a tensor more than its data: refused from the sizes, in a
    child limited to 64 MB."""
    data = open(base[0], 'rb').read()
    bad = tmp_path / 'bad.safetensors'
    bad.write_bytes(struct.pack('<Q', 2 ** 40) + data[8:])
    model, opt = tiny_run(0)
    assert_refused(checkpoint.load_training_state, str(bad), model, opt, names=str(bad), memory=64 << 20)
    header = json.dumps({'x': {'dtype': 'F32', 'shape': [2 ** 40], 'data_offsets': [0, 2 ** 42]}}).encode()
    bad.write_bytes(struct.pack('<Q', len(header)) + header)
    assert_refused(checkpoint.load_training_state, str(bad), model, opt, names=str(bad), memory=64 << 20)


def test_read_training_state_raises_only_badfile(base, tmp_path):
    _, meta, tensors, _, _, _ = base
    path = str(tmp_path / 's.safetensors')
    for metadata in ({'state': '{"format": ' * 100}, {'state': '[' * 5000 + ']' * 5000}, {'state': 'NaN'},
                     {'state': '[1]'}, {'state': json.dumps(dict(meta, format=['x']))}, {}):
        save_file(tensors, path, metadata=metadata)
        with pytest.raises(untrusted.BadFile) as err:
            checkpoint.read_training_state(path)
        assert path in str(err.value) and '\n' not in str(err.value)


# --- weights files (load_params) ---------------------------------------------------------------------------------

def test_load_params_refuses_what_does_not_fit_and_copies_nothing(tmp_path):
    model, _ = tiny_run(0)
    path = str(tmp_path / 'best.safetensors')
    good = checkpoint.save_params(model, path)
    other, _ = tiny_run(1)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    cases = [dict(good, **{'transformer.embed.weight': good['transformer.embed.weight'].double()}),
             dict(good, **{'transformer.embed.weight': good['transformer.embed.weight'].int()}),
             dict(good, **{'task_head.clf.b': good['task_head.clf.b'].bool()}),
             {k: v for k, v in good.items() if k != 'task_head.clf.b'},
             dict(good, **{'task_head.clf.b': good['task_head.clf.b'].reshape(1, -1)}),
             dict(good, extra=torch.zeros(1)),
             dict(good, **{'task_head.clf.b': torch.full_like(good['task_head.clf.b'], math.nan)})]
    for saved in cases:
        save_file(saved, path)
        with pytest.raises(untrusted.BadFile) as err:
            checkpoint.load_params(other, path)
        assert path in str(err.value) and '\n' not in str(err.value)
        assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())
    with open(path, 'wb') as f:
        f.write(b'\x80\x04not a safetensors file at all')
    with pytest.raises(untrusted.BadFile, match='is not a safetensors file of weights'):
        checkpoint.load_params(other, path)
    with pytest.raises(untrusted.MissingFile, match='no saved weights there'):
        checkpoint.load_params(other, str(tmp_path / 'none.safetensors'))
    save_file(good, path)
    checkpoint.load_params(other, path)
    assert all(torch.equal(good[k], v) for k, v in other.state_dict().items() if k in good)


def test_a_state_whose_log_holds_a_nan_loss_still_resumes_and_a_nan_counter_is_refused(base, target, tmp_path):
    _, meta, tensors, _, _, _ = base
    path, files = str(tmp_path / 'state.safetensors'), StateFiles(tensors)
    logged = mutated(meta, ('progress', 'log'), meta['progress']['log'] + [{'n_updates': 2, 'val_loss': math.nan}])
    files.write(path, logged)  # json.dumps writes NaN, as save_training_state does for a run whose loss overflowed
    assert attempt(path, target) == 'loaded'
    files.write(path, mutated(meta, ('progress', 'best'), math.nan))
    assert attempt(path, target) != 'loaded'


@pytest.mark.parametrize('change', [dict(order=list(range(11))), dict(epoch=4), dict(batch=6),
                                    dict(epoch=3, batch=1)])
def test_a_resumed_progress_that_does_not_fit_the_runs_data_is_refused(change):
    """A checked state whose order or counters do not fit this run's data (10 examples, batches of 2, 3 epochs) would
    fail mid-run with an IndexError: refused at resume, naming the file."""
    import train
    fits = dict(order=list(range(10))[::-1], epoch=1, batch=5, n_updates=10)
    train.check_progress_fits(fits, 10, 2, 3, 'run/train_state.safetensors')
    train.check_progress_fits(dict(fits, order=None, epoch=3, batch=0), 10, 2, 3, 'run/train_state.safetensors')
    with pytest.raises(untrusted.BadFile, match=r"^run/train_state.safetensors .*not this run's state"):
        train.check_progress_fits(dict(fits, **change), 10, 2, 3, 'run/train_state.safetensors')
