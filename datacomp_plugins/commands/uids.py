"""``datacomp-plugins uids``: inspect, combine and convert DataComp uid files (the resharder's input)."""

from __future__ import annotations

import argparse
import sys
import textwrap
import time

from datacomp_plugins.commands import RawDefaultsHelpFormatter

POLICY = """\
bad input policy:
  - a uid file whose array is not 1-D u8,u8 is refused (names the file, its dtype, the expected one)
  - an unsorted or duplicated uid file is accepted: sorted and deduplicated, with a warning on stderr
    naming the file; outputs are always sorted and unique
  - a malformed hex uid (from-hex) is refused with its file and line (text, 1-based) or row (parquet, 0-based):
    each uid is exactly 32 hex digits (DataComp's uid), with only whitespace around it
  - a parquet file without the uid column is refused, listing its columns
  - a missing input file is refused, naming it
  refusals print 'error: ...', exit with code 2 and leave no output file; outputs are written to a
  temporary file beside the target and renamed when complete"""

UID_FILE = "DataComp uid file: np.save of a sorted, unique 1-D array of dtype u8,u8 = divmod(int(uid_hex, 16), 2**64)"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``uids`` subcommand and its own subcommands."""
    parser = subparsers.add_parser(
        "uids",
        help="inspect, intersect/union/subtract and convert DataComp uid files",
        description=textwrap.fill(f"Work with uid lists as DataComp's resharder reads them. {UID_FILE}.", 100),
        epilog=POLICY,
        formatter_class=RawDefaultsHelpFormatter,
    )
    actions = parser.add_subparsers(dest="uids_command", metavar="ACTION")
    actions.required = True

    def add(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        return actions.add_parser(name, help=help_text, description=textwrap.fill(description, 100), epilog=POLICY,
                                  formatter_class=RawDefaultsHelpFormatter)

    info = add("info", "count, order check, first/last uid, overlap with a pool",
               "Report a uid file: count, dtype, whether it is sorted and unique (counting uids out of order "
               "and duplicates), first and last uid in hex; with --metadata_dir, how many of its uids are in "
               "the pool and how many pool rows it selects.")
    info.add_argument("file", metavar="FILE", help="uid file (.npy)")
    info.add_argument("--metadata_dir", metavar="POOL", default=None,
                      help="DataComp metadata folder (<stem>.parquet + <stem>.npz) to compare against")
    info.set_defaults(handler=run_info)

    for name, help_text, description in (
        ("intersect", "uids present in every input", "Write the uids present in every input file."),
        ("union", "uids present in any input", "Write the uids present in at least one input file."),
        ("difference", "uids of A in none of the others", "Write the uids of A that are in none of B, C, ..."),
    ):
        action = add(name, help_text, description)
        action.add_argument("first", metavar="A", help="uid file (.npy)")
        action.add_argument("others", nargs="+", metavar="B", help="more uid files (.npy)")
        action.add_argument("-o", "--output", required=True, metavar="OUT", help="uid file to write (.npy)")
        action.set_defaults(handler=run_set_operation, operation=name)

    from_hex = add("from-hex", "hex uids (text or parquet) -> uid file",
                   "Convert hex uids to a uid file. INPUT is a parquet file (detected by its PAR1 magic "
                   "bytes; --column names the uid column) or a text file with one hex uid per line (blank "
                   "lines and whitespace around a uid ignored; every uid exactly 32 hex digits, upper or lower case). "
                   "The output is sorted and unique.")
    from_hex.add_argument("input", metavar="INPUT", help="text file or parquet file")
    from_hex.add_argument("-o", "--output", required=True, metavar="OUT", help="uid file to write (.npy)")
    from_hex.add_argument("--column", default="uid", help="parquet column holding the hex uids")
    from_hex.set_defaults(handler=run_from_hex)

    to_hex = add("to-hex", "uid file -> text, one hex uid per line",
                 "Write one 32-character lower-case hex uid per line, in the file's sorted order.")
    to_hex.add_argument("file", metavar="FILE", help="uid file (.npy)")
    to_hex.add_argument("-o", "--output", required=True, metavar="OUT.txt", help="text file to write")
    to_hex.set_defaults(handler=run_to_hex)

    from datacomp_plugins.commands.uids_compare import register_compare

    register_compare(add)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _hex(uids, row: int) -> str:
    from datacomp_plugins.core.uids import to_hex

    return to_hex(uids[row : row + 1])[0].decode() if len(uids) else "-"


def run_info(args: argparse.Namespace) -> int:
    """Report on the file as stored; the pool overlap uses its sorted unique uids."""
    from datacomp_plugins import provenance
    from datacomp_plugins.core.pool import Pool
    from datacomp_plugins.core.uids import read_uid_file, sorted_unique
    from datacomp_plugins.select import uidtools

    started = time.perf_counter()
    pool = Pool(args.metadata_dir) if args.metadata_dir is not None else None  # refuse a bad pool early
    uids = read_uid_file(args.file)
    check = uidtools.check_order(uids)
    print(f"file: {args.file}")
    print(f"count: {check.count:,}")
    print("dtype: u8,u8 (ok)")
    if check.ok:
        print("sorted unique: yes")
    else:
        print(f"sorted unique: no ({check.out_of_order:,} out of order, {check.duplicates:,} duplicates; "
              "set operations and the resharder need sorted unique uids)")
    print(f"first: {_hex(uids, 0)}")
    print(f"last: {_hex(uids, len(uids) - 1)}")
    if pool is not None:
        distinct = uids if check.ok else sorted_unique(uids)
        overlap = uidtools.pool_overlap(distinct, pool)
        print(f"pool: {overlap.pool_rows:,} rows in {overlap.shards:,} shards of {args.metadata_dir}")
        print(f"file uids in pool: {overlap.file_uids_in_pool:,} of {len(distinct):,} "
              f"({len(distinct) - overlap.file_uids_in_pool:,} not in the pool)")
        print(f"pool rows in file: {overlap.pool_rows_in_file:,} of {overlap.pool_rows:,}")
    sidecar = provenance.read_sidecar(args.file)
    print("\n".join(provenance.describe(sidecar, args.file)) if sidecar else "provenance: none (no sidecar)")
    print(f"seconds: {time.perf_counter() - started:.2f}")
    return 0


def run_set_operation(args: argparse.Namespace) -> int:
    """Load every input (fixing order with a warning) before computing, then write atomically."""
    from datacomp_plugins import provenance
    from datacomp_plugins.core.fileio import check_writable, refuse_input_as_output
    from datacomp_plugins.core.uids import read_uid_file
    from datacomp_plugins.select import uidtools

    started = time.perf_counter()
    paths = [args.first, *args.others]
    refuse_input_as_output(args.output, "-o", [("uid file", path) for path in paths])
    check_writable(args.output, "-o")
    stored = [read_uid_file(path) for path in paths]  # every refusal before any sorting
    inputs = [uidtools.ensure_sorted(path, uids, _warn) for path, uids in zip(paths, stored, strict=True)]
    if args.operation == "intersect":
        result = uidtools.intersect(inputs)
    elif args.operation == "union":
        result = uidtools.union(inputs)
    else:
        result = uidtools.difference(inputs[0], inputs[1:])
    provenance.save_uid_array(args.output, result, f"uids {args.operation}", paths, [len(u) for u in inputs],
                              time.perf_counter() - started)
    counts = ", ".join(f"{path} {len(uids):,}" for path, uids in zip(paths, inputs, strict=True))
    print(f"{args.operation}: {len(result):,} uids -> {args.output} (inputs: {counts}) "
          f"in {time.perf_counter() - started:.2f} s")
    return 0


def run_from_hex(args: argparse.Namespace) -> int:
    """Parse everything before writing, so a malformed uid leaves no output."""
    from datacomp_plugins import provenance
    from datacomp_plugins.core.fileio import check_writable, refuse_input_as_output
    from datacomp_plugins.core.uids import sorted_unique
    from datacomp_plugins.select import hexfiles

    started = time.perf_counter()
    refuse_input_as_output(args.output, "-o", [("INPUT", args.input)])
    check_writable(args.output, "-o")
    parsed = hexfiles.read_hex_file(args.input, column=args.column)
    result = sorted_unique(parsed)
    provenance.save_uid_array(args.output, result, "uids from-hex", [args.input], [len(parsed)],
                              time.perf_counter() - started)
    print(f"from-hex: {len(parsed):,} hex uids from {args.input} -> {len(result):,} uids -> {args.output} "
          f"({len(parsed) - len(result):,} duplicates dropped) in {time.perf_counter() - started:.2f} s")
    return 0


def run_to_hex(args: argparse.Namespace) -> int:
    """Sorted unique hex text, whatever the input's order."""
    from datacomp_plugins.core.fileio import check_writable, refuse_input_as_output
    from datacomp_plugins.select import hexfiles, uidtools

    started = time.perf_counter()
    refuse_input_as_output(args.output, "-o", [("uid file", args.file)])
    check_writable(args.output, "-o")
    uids = uidtools.load_sorted(args.file, _warn)
    hexfiles.write_hex(args.output, uids)
    print(f"to-hex: {len(uids):,} uids from {args.file} -> {args.output} in {time.perf_counter() - started:.2f} s")
    return 0
