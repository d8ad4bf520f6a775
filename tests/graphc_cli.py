"""`graphc` run inside the test's process: for the command lines that are refused before anything trains or
compiles, a subprocess spent ~0.8 s of CPU starting Python and importing graphc to print one error line. What the
subprocess showed, this shows too: the exit status, stdout and stderr, and an exception escaping main() (the
traceback a user would see) is not swallowed. The tests that train, or that need a process of their own (signals,
the console script, a crash), keep running `python -m graphc.cli`."""

from __future__ import annotations

import contextlib
import io
import subprocess
import warnings

from graphc.cli import main


def run_in_process(*argv, warnings_as_errors: bool = False) -> subprocess.CompletedProcess:
    """`graphc ARGV` through graphc.cli.main, as subprocess.run(..., capture_output=True, text=True) returns it;
    `warnings_as_errors`: a warning (numpy's RuntimeWarning printed before graphc's message) raises."""
    argv = [str(a) for a in argv]
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out), warnings.catch_warnings():
        if warnings_as_errors:
            warnings.simplefilter("error")
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse's usage errors, --version: the status the process would exit with
            if e.code is None or isinstance(e.code, int):
                rc = e.code or 0
            else:  # sys.exit("message"): Python prints the message and exits 1
                print(e.code, file=err)
                rc = 1
    return subprocess.CompletedProcess(["graphc", *argv], rc, out.getvalue(), err.getvalue())
