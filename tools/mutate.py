"""Mutation testing of the core: inject one single-line fault at a time and see whether the tests notice.

A test suite that passes is only worth as much as the faults it would catch. This driver parses a module
with ``ast``, enumerates small faults (a flipped comparison, a changed constant, ``and``/``or`` swapped, a
guard that never fires, an early return dropped, ``min``/``max`` swapped, an arithmetic operator changed),
writes each mutant into a private copy of the checkout (the working tree is never edited), runs the tests
that guard that module with a timeout, and reports per module how many mutants were killed, listing every
survivor as ``file:line  mutation  | source line``.

A module's tests follow from the layout of tests/, which mirrors the package: ``scores/negcliploss`` is
guarded by tests/scores/test_negcliploss.py and tests/scores/test_negcliploss_*.py, ``pipeline`` by
tests/test_pipeline*.py. Only those files run, so a survivor is a gap in the module's own tests, not a
fault some distant end-to-end test happens to notice.

Usage:
    python tools/mutate.py                                   # the core modules (CORE), all mutants
    python tools/mutate.py --modules scores/metrics select/masks --max-mutants 20 --jobs 2
    python tools/mutate.py --modules core/uids --list        # only list the mutants

Why not mutmut: mutmut 3.8 was tried on this package (negcliploss.py, its test file). It runs, but only with
``process_isolation = "forkserver"``: with its default fork isolation a mutant's pytest deadlocked in torch's
thread pool inherited across fork. It then chooses each mutant's tests by coverage (any test that calls the
function), which cannot say "this module's own tests"; it needs a traced run of the whole selected suite
first; it has no deterministic sample, so a comparable per-module table of the core costs every mutant
(negcliploss.py alone: 130 mutants, 6.5 minutes on this 2-core machine); and a test that runs the command
in a subprocess from another folder imports the installed package, not the mutant. This driver writes each
mutant into a private copy that subprocesses and workers import too (PYTHONPATH), and samples.

``--max-mutants`` takes an evenly spread, deterministic sample of a module's mutants (so reruns compare
like with like). A mutant counts as killed when the tests fail, time out or cannot import it. Survivors are
either gaps in the tests or equivalent mutants (same behaviour, e.g. a bound that only costs time).
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import copy
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "datacomp_plugins"

# The modules mutated by default, and those with a row in the mutation table. A module's tests follow from the
# layout of tests/ (see tests_of), so there is no hand-written map to fall out of date.
MODULES = ["scores/metrics", "scores/negcliploss", "scores/normsim", "scores/dynamic", "core/cache", "core/uids",
           "select/masks", "select/uidtools", "select/streaming", "pipeline", "config"]
COPIED = [PACKAGE, "tests", "baselines", "patches", "docs", "pyproject.toml", "README.md", "Makefile"]
CORE = ["scores/metrics", "select/masks", "scores/negcliploss", "core/uids", "scores/dynamic"]

_COMPARE_SWAPS = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
                  ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
_BINOP_SWAPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
                ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult, ast.LShift: ast.RShift, ast.RShift: ast.LShift,
                ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd, ast.BitXor: ast.BitOr}


@dataclass
class Mutant:
    module: str
    index: int
    line: int
    description: str
    source_line: str


@dataclass
class Outcome:
    mutant: Mutant
    status: str  # killed | survived | timeout
    seconds: float


class _Mutator(ast.NodeTransformer):
    """Walks a module in a fixed order; counts mutation sites, and rewrites the one numbered ``target``."""

    def __init__(self, target: int = -1) -> None:
        self.target = target
        self.count = 0
        self.sites: list[tuple[int, str]] = []

    def _site(self, node: ast.AST, description: str) -> bool:
        """Register a site; True when it is the one to mutate."""
        index = self.count
        self.count += 1
        self.sites.append((getattr(node, "lineno", 0), description))
        return index == self.target

    # Parts of the tree that are not behaviour: docstrings, annotations, f-string text, TYPE_CHECKING blocks.
    def visit_JoinedStr(self, node: ast.JoinedStr) -> ast.AST:
        return node

    def visit_arg(self, node: ast.arg) -> ast.AST:
        return node

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST:
        if node.value is not None:
            node.value = self.visit(node.value)
        return node

    def _body(self, body: list[ast.stmt]) -> list[ast.stmt]:
        start = 1 if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) else 0
        return body[:start] + [self.visit(stmt) for stmt in body[start:]]

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        node.args.defaults = [self.visit(d) for d in node.args.defaults]
        node.args.kw_defaults = [d if d is None else self.visit(d) for d in node.args.kw_defaults]
        node.body = self._body(node.body)
        return node

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        node.body = self._body(node.body)
        return node

    def visit_Module(self, node: ast.Module) -> ast.AST:
        node.body = self._body(node.body)
        return node

    def visit_ImportFrom(self, node: ast.ImportFrom) -> ast.AST:
        return node

    def visit_Import(self, node: ast.Import) -> ast.AST:
        return node

    # The faults.
    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        for i, op in enumerate(node.ops):
            swap = _COMPARE_SWAPS.get(type(op))
            if swap and self._site(node, f"{type(op).__name__} -> {swap.__name__}"):
                node.ops[i] = swap()
        return node

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        self.generic_visit(node)
        swap = ast.Or if isinstance(node.op, ast.And) else ast.And
        if self._site(node, f"{type(node.op).__name__} -> {swap.__name__}"):
            node.op = swap()
        return node

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        swap = _BINOP_SWAPS.get(type(node.op))
        if swap and self._site(node, f"{type(node.op).__name__} -> {swap.__name__}"):
            node.op = swap()
        return node

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.AST:
        self.generic_visit(node)
        swap = _BINOP_SWAPS.get(type(node.op))
        if swap and self._site(node, f"{type(node.op).__name__}= -> {swap.__name__}="):
            node.op = swap()
        return node

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.op, (ast.Not, ast.USub, ast.Invert)) and self._site(
                node, f"drop {type(node.op).__name__}"):
            return node.operand
        return node

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        value = node.value
        if isinstance(value, bool):
            if self._site(node, f"{value} -> {not value}"):
                return ast.copy_location(ast.Constant(not value), node)
        elif isinstance(value, int):
            if self._site(node, f"{value} -> {value + 1}"):
                return ast.copy_location(ast.Constant(value + 1), node)
        elif isinstance(value, float):
            new = 1.0 if value == 0 else value * 2
            if self._site(node, f"{value!r} -> {new!r}"):
                return ast.copy_location(ast.Constant(new), node)
        return node

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.func, ast.Name) and node.func.id in ("min", "max"):
            other = "max" if node.func.id == "min" else "min"
            if self._site(node, f"{node.func.id}() -> {other}()"):
                node.func = ast.copy_location(ast.Name(other, ast.Load()), node.func)
        return node

    def visit_If(self, node: ast.If) -> ast.AST:
        if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            return node
        mutate = self._site(node, "guard never taken (if False)")
        node.test = self.visit(node.test)
        node.body = [self._early_return(stmt) for stmt in node.body]
        node.orelse = [self.visit(stmt) for stmt in node.orelse]
        if mutate:
            node.test = ast.copy_location(ast.Constant(False), node.test)
        return node

    def _early_return(self, stmt: ast.stmt) -> ast.stmt:
        """An early ``return``/``continue``/``break`` in an if's body can be dropped (the code falls through)."""
        if isinstance(stmt, (ast.Return, ast.Continue, ast.Break)):
            kind = type(stmt).__name__.lower()
            if self._site(stmt, f"drop early {kind}"):
                return ast.copy_location(ast.Pass(), stmt)
        return self.visit(stmt)


def list_mutants(module: str) -> tuple[str, list[Mutant]]:
    path = os.path.join(ROOT, PACKAGE, f"{module}.py")
    with open(path) as handle:
        source = handle.read()
    lines = source.splitlines()
    counter = _Mutator()
    counter.visit(ast.parse(source))
    mutants = [Mutant(module, i, line, description, lines[line - 1].strip() if 0 < line <= len(lines) else "")
               for i, (line, description) in enumerate(counter.sites)]
    return source, mutants


def mutated_source(source: str, index: int) -> str:
    tree = ast.parse(source)
    mutator = _Mutator(index)
    tree = mutator.visit(copy.deepcopy(tree))
    ast.fix_missing_locations(tree)
    return ast.unparse(tree)


def sample(mutants: list[Mutant], limit: int | None) -> list[Mutant]:
    """An evenly spread, deterministic subset of at most ``limit`` mutants."""
    if not limit or limit >= len(mutants):
        return mutants
    step = len(mutants) / limit
    return [mutants[int(i * step)] for i in range(limit)]


def tests_of(module: str) -> list[str]:
    """The test files that guard ``module``, from the layout: tests/ mirrors the package, and a module's tests
    are named after it. ``scores/negcliploss`` -> tests/scores/test_negcliploss.py and
    tests/scores/test_negcliploss_*.py; a top-level module such as ``pipeline`` -> tests/test_pipeline.py and
    tests/test_pipeline_*.py. Slow tests (marker ``slow``) are left out by the pytest command, not here."""
    folder, _, name = module.rpartition("/")
    where = os.path.join(ROOT, "tests", folder)
    found = glob.glob(os.path.join(where, f"test_{name}.py")) + glob.glob(os.path.join(where, f"test_{name}_*.py"))
    found.sort()
    return [os.path.relpath(path, ROOT) for path in found]


def make_copy(folder: str) -> str:
    """A private copy of the package and its tests; mutants are written only here."""
    work = os.path.join(folder, "tree")
    # The whole checkout, not only the package and tests/: tests read the recipes in baselines/, the patch in
    # patches/ and README.md (the config tests failed unmutated in a copy without baselines/).
    for name in COPIED:
        source = os.path.join(ROOT, name)
        if os.path.isdir(source):
            shutil.copytree(source, os.path.join(work, name), ignore=shutil.ignore_patterns("__pycache__"))
        elif os.path.isfile(source):
            shutil.copy(source, work)
    # Hypothesis' per-example deadline is a timing check: on a loaded machine it fails unmutated code. The
    # mutant's own timeout bounds time here, and derandomised examples make reruns comparable.
    with open(os.path.join(work, "conftest.py"), "w") as handle:
        handle.write("from hypothesis import settings\n\n"
                     "settings.register_profile('mutate', deadline=None, derandomize=True)\n"
                     "settings.load_profile('mutate')\n")
    return work


def run_tests(work: str, tests: list[str], timeout: float) -> tuple[str, float]:
    env = dict(os.environ, PYTHONPATH=work, PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1")
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
               "-W", "ignore::DeprecationWarning", *tests]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=timeout, start_new_session=True)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - started
    return ("survived" if done.returncode == 0 else "killed"), time.perf_counter() - started


def check_copy_is_used(work: str) -> None:
    """The copy, not an installed package, must be what the tests import."""
    env = dict(os.environ, PYTHONPATH=work)
    found = subprocess.run([sys.executable, "-c", f"import {PACKAGE}; print({PACKAGE}.__file__)"], cwd=work,
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    if not found.startswith(work):
        raise SystemExit(f"the tests would import {found}, not the copy in {work}")


def run_module(module: str, limit: int | None, jobs: int, timeout_factor: float) -> tuple[list[Outcome], float]:
    source, mutants = list_mutants(module)
    chosen = sample(mutants, limit)
    tests = tests_of(module)
    with tempfile.TemporaryDirectory(prefix="mutate-") as scratch:
        copies = [make_copy(os.path.join(scratch, str(j))) for j in range(jobs)]
        check_copy_is_used(copies[0])
        # Baseline on the unparsed (unmutated) source: the tests must pass, and it sets the timeout.
        target = os.path.join(copies[0], PACKAGE, f"{module}.py")
        with open(target, "w") as handle:
            handle.write(ast.unparse(ast.parse(source)))
        status, baseline = run_tests(copies[0], tests, 1800)
        if status != "survived":
            raise SystemExit(f"{module}: the tests fail without any mutation ({status}); fix that first")
        timeout = max(30.0, timeout_factor * baseline)
        free = list(copies)

        def one(mutant: Mutant) -> Outcome:
            work = free.pop()
            try:
                with open(os.path.join(work, PACKAGE, f"{module}.py"), "w") as handle:
                    handle.write(mutated_source(source, mutant.index))
                status, seconds = run_tests(work, tests, timeout)
                return Outcome(mutant, status, seconds)
            finally:
                with open(os.path.join(work, PACKAGE, f"{module}.py"), "w") as handle:
                    handle.write(source)
                free.append(work)

        outcomes = []
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            for outcome in pool.map(one, chosen):
                outcomes.append(outcome)
                mark = {"killed": ".", "survived": "S", "timeout": "T"}[outcome.status]
                print(mark, end="", flush=True)
        print()
    return outcomes, baseline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", nargs="+", default=CORE,
                        help=f"modules of {PACKAGE} to mutate, as paths without .py (default: the core, "
                             f"{' '.join(CORE)}; the table's: {' '.join(MODULES)})")
    parser.add_argument("--max-mutants", type=int, default=0,
                        help="per module, an evenly spread sample of at most this many mutants (0: all)")
    parser.add_argument("--jobs", type=int, default=1, help="mutants tested at once (each a pytest process)")
    parser.add_argument("--timeout-factor", type=float, default=4.0,
                        help="a mutant's tests time out at this many times the unmutated run (at least 30 s)")
    parser.add_argument("--list", action="store_true", help="only list the mutants")
    parser.add_argument("--json", default=None, help="also write the outcomes to this JSON file")
    args = parser.parse_args()
    if args.jobs < 1 or args.max_mutants < 0:
        parser.error("--jobs must be >= 1 and --max-mutants >= 0")
    for module in args.modules:
        if not os.path.isfile(os.path.join(ROOT, PACKAGE, f"{module}.py")):
            parser.error(f"--modules {module}: no {PACKAGE}/{module}.py")
        if not args.list and not tests_of(module):
            parser.error(f"--modules {module}: no tests named after it (tests/{module}.py's folder, "
                         f"test_<name>.py or test_<name>_*.py)")
    if args.list:
        for module in args.modules:
            for m in sample(list_mutants(module)[1], args.max_mutants):
                print(f"{PACKAGE}/{module}.py:{m.line}  #{m.index}  {m.description}  | {m.source_line}")
        return
    report: dict[str, dict] = {}
    totals = [0, 0]
    for module in args.modules:
        total = len(list_mutants(module)[1])
        print(f"{module}: {min(total, args.max_mutants or total)} of {total} mutants, tests {tests_of(module)}")
        started = time.perf_counter()
        outcomes, baseline = run_module(module, args.max_mutants or None, args.jobs, args.timeout_factor)
        killed = sum(o.status != "survived" for o in outcomes)
        survivors = [o.mutant for o in outcomes if o.status == "survived"]
        totals[0] += killed
        totals[1] += len(outcomes)
        rate = 100.0 * killed / len(outcomes) if outcomes else 100.0
        print(f"{module}: killed {killed} of {len(outcomes)} ({rate:.0f}%), "
              f"{sum(o.status == 'timeout' for o in outcomes)} by timeout; unmutated tests {baseline:.1f} s, "
              f"all {time.perf_counter() - started:.0f} s")
        for m in survivors:
            print(f"  survived {PACKAGE}/{module}.py:{m.line}  #{m.index}  {m.description}  | {m.source_line}")
        report[module] = {"mutants": len(outcomes), "of": total, "killed": killed,
                          "outcomes": [{**asdict(o.mutant), "status": o.status, "seconds": round(o.seconds, 1)}
                                       for o in outcomes]}
    if totals[1]:
        print(f"all: killed {totals[0]} of {totals[1]} ({100.0 * totals[0] / totals[1]:.0f}%)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=1)


if __name__ == "__main__":
    main()
