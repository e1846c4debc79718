"""The steady-state protocol of every peer comparison in benchmarks/ (bench.py, bench_pretrain.py, bench_gpt2.py,
bench_inference.py).

- Each implementation runs in rounds, each round in a process of its own, as a user starts a run: a process that has
  trained one model runs the next one's updates up to 20% slower on a CPU (BENCHMARKS.md, Issue 31).
- The implementations take turns, round by round, so a slow spell of a shared machine falls on all of them.
- In every round an implementation discards at least `warmup` iterations, and more (up to twice as many) until two in a
  row take within `settle` (a fraction) of each other; it then times `steps` iterations.
- The tables give the median and the range of all the timed iterations, and how many each round discarded.
"""
import json
import os
import subprocess
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Protocol:
    """How many iterations a round discards at least and times, how close two in a row settle, how many rounds."""
    steps: int = 5
    warmup: int = 2
    settle: float = 0.1
    rounds: int = 3

    @property
    def most(self):
        """Return the most iterations a round makes: twice the warm-up, then the timed ones."""
        return 2 * self.warmup + self.steps

    def argv(self):
        """Return the options that give a worker process this protocol's round."""
        return ['--steps', str(self.steps), '--warmup_steps', str(self.warmup), '--settle', str(self.settle)]

    def describe(self):
        """Return the protocol in words, for a table's heading."""
        return (f'{self.rounds} round(s) in turn, each in a process of its own, of {self.steps} timed after at least '
                f'{self.warmup} discarded (up to {2 * self.warmup}, until two in a row are within {self.settle:.0%})')


QUICK = Protocol(steps=1, warmup=1, settle=1.0, rounds=1)  # --quick's smoke test: any second iteration settles


def add_arguments(parser, default=Protocol(), what='updates'):
    """Add the protocol's options to parser (--steps, --warmup_steps, --settle, --rounds); protocol_of reads them."""
    parser.add_argument('--steps', type=int, default=None,
                        help=f'timed {what} per implementation and round (default: {default.steps}; 1 with --quick)')
    parser.add_argument('--warmup_steps', '--warmup-steps', type=int, default=None,
                        help=f'untimed {what} at least at the start of each round, up to twice as many until two in a '
                             f'row settle (default: {default.warmup}; 1 with --quick)')
    parser.add_argument('--settle', type=float, default=None,
                        help=f'two {what} in a row within this fraction of each other end the warm-up (default: '
                             f'{default.settle}; 1 with --quick)')
    parser.add_argument('--rounds', type=int, default=None,
                        help=f'rounds of the implementations taking turns, each in a new process (default: '
                             f'{default.rounds}; 1 with --quick)')


def protocol_of(args, default=Protocol()):
    """Return the Protocol of arguments parsed with add_arguments's options: those given, else default's (QUICK's
    with --quick)."""
    base = QUICK if args.quick else default
    given = dict(steps=args.steps, warmup=args.warmup_steps, settle=args.settle, rounds=args.rounds)
    protocol = replace(base, **{key: value for key, value in given.items() if value is not None})
    if protocol.steps < 1 or protocol.rounds < 1 or protocol.warmup < 0 or protocol.settle < 0:
        raise SystemExit(f'--steps {protocol.steps}, --rounds {protocol.rounds}, --warmup_steps {protocol.warmup}, '
                         f'--settle {protocol.settle}: give --steps and --rounds of at least 1, --warmup_steps and '
                         f'--settle of at least 0')
    return protocol


def settled(times, warmup, settle):
    """Return the number of leading iterations of times (seconds) to discard: at least warmup, then more until one
    takes within settle (a fraction) of the one before it, at most 2 * warmup."""
    k = warmup
    while k < 2 * warmup and k < len(times) and (k == 0 or abs(times[k] - times[k - 1]) > settle * times[k - 1]):
        k += 1
    return k


def measure_round(step, protocol, timed):
    """Run one round: step(k) for k = 0, 1, ..., until protocol.steps have run after the ones settled discards; return
    (how many were discarded, the seconds of the rest). timed(fn) returns the seconds fn() takes."""
    times = []
    while len(times) < settled(times, protocol.warmup, protocol.settle) + protocol.steps:
        times.append(timed(lambda: step(len(times))))
    discarded = settled(times, protocol.warmup, protocol.settle)  # fixed once an iteration after the warm-up settled
    return discarded, times[discarded:]


def report(result):
    """Print a worker's result as the last line of its output (run_worker reads it), with the process id."""
    print(json.dumps(dict(result, pid=os.getpid())), flush=True)


def run_worker(argv, label, timeout=7200):
    """Run argv (a benchmark's worker command) in a process of its own; return the dict of its last output line."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise SystemExit(f'{label} failed (exit status {proc.returncode}): {proc.stderr[-2000:]}')
    return json.loads(lines[-1])


def take_turns(names, protocol, run_round):
    """Return {name: [run_round(name, r) for each round r]}, the names taking turns round by round."""
    results = {name: [] for name in names}
    for r in range(protocol.rounds):
        for name in names:
            results[name].append(run_round(name, r))
    return results
