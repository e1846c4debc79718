"""Tests of benchmarks/steady.py: the warm-up lasts until the time of an iteration settles, the protocol's options, a
worker's result read from its last line, rounds taken in turn."""
import argparse
import os
import sys

import pytest

import steady


def test_the_warm_up_lasts_until_two_iterations_in_a_row_settle():
    assert steady.settled([9.0, 5.0, 5.1, 5.0, 5.0], 2, 0.1) == 2  # at least warmup: iteration 3 is within 10%
    assert steady.settled([9.0, 7.0, 5.0, 5.1, 5.0], 2, 0.1) == 3  # iteration 3 still settling, iteration 4 not
    assert steady.settled([9.0, 7.0, 5.0, 4.0, 5.0, 5.0], 2, 0.1) == 4  # at most twice warmup
    assert steady.settled([1.0, 1.0], 0, 0.1) == 0


@pytest.mark.parametrize('durations, discarded', [
    ([9, 5, 5.1, 5, 5, 5, 5, 5], 2),      # settled at once
    ([9, 7, 5, 5.1, 5, 5, 5, 5, 5], 3),   # one more until two in a row agree
    ([9, 7, 5, 4, 5, 5, 5, 5, 5, 5], 4),  # never settled: twice warmup, no more
])
def test_a_round_discards_until_settled_then_times_the_next_iterations(durations, discarded):
    """Iteration k 'takes' durations[k]: the round discards the leading ones by settled's rule and times the next
    steps, in order, each iteration run once."""
    ran = []
    protocol = steady.Protocol(steps=5, warmup=2, settle=0.1)
    got = steady.measure_round(ran.append, protocol, lambda fn: (fn(), durations[ran[-1]])[1])
    assert got == (discarded, durations[discarded:discarded + 5])
    assert ran == list(range(discarded + 5))


def test_no_warm_up_when_none_is_asked():
    ran = []
    assert steady.measure_round(ran.append, steady.Protocol(steps=2, warmup=0), lambda fn: (fn(), 1.0)[1]) == (0, [1.0, 1.0])
    assert ran == [0, 1]


def parse(argv):
    p = argparse.ArgumentParser()
    p.add_argument('--quick', action='store_true')
    steady.add_arguments(p)
    return steady.protocol_of(p.parse_args(argv), steady.Protocol(steps=7))


def test_the_options_fill_the_default_protocol_or_the_quick_one():
    assert parse([]) == steady.Protocol(steps=7, warmup=2, settle=0.1, rounds=3)
    assert parse(['--quick']) == steady.QUICK
    assert parse(['--quick', '--rounds', '2', '--warmup-steps', '0']) == steady.Protocol(steps=1, warmup=0, settle=1.0,
                                                                                          rounds=2)
    for bad in (['--steps', '0'], ['--rounds', '0'], ['--warmup_steps', '-1'], ['--settle', '-0.5']):
        with pytest.raises(SystemExit, match='--steps'):
            parse(bad)


def test_a_worker_given_the_protocol_s_options_makes_the_same_rounds():
    protocol = steady.Protocol(steps=7, warmup=3, settle=0.25, rounds=2)
    assert parse(protocol.argv() + ['--rounds', '2']) == protocol  # a worker makes one round: --rounds is not passed
    assert protocol.most == 13  # twice the warm-up, then the timed ones: the batches and updates a round may use


def test_a_worker_runs_in_a_process_of_its_own_and_its_last_line_is_read():
    folder = os.path.dirname(os.path.abspath(steady.__file__))
    code = f"import sys; sys.path.insert(0, {folder!r}); import steady; print('noise'); steady.report({{'times': [1.5]}})"
    result = steady.run_worker([sys.executable, '-c', code], 'the worker')
    assert result['times'] == [1.5] and result['pid'] != os.getpid()
    with pytest.raises(SystemExit, match=r'the worker failed \(exit status 3\): boom'):
        steady.run_worker([sys.executable, '-c', "import sys; sys.stderr.write('boom'); sys.exit(3)"], 'the worker')


def test_the_implementations_take_turns_round_by_round():
    order = []
    got = steady.take_turns(['a', 'b'], steady.Protocol(rounds=3), lambda name, r: order.append((name, r)) or r)
    assert order == [('a', 0), ('b', 0), ('a', 1), ('b', 1), ('a', 2), ('b', 2)]
    assert got == {'a': [0, 1, 2], 'b': [0, 1, 2]}
