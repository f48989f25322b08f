"""What the command-line tests share: running the training CLI in-process and reading its output."""

from __future__ import annotations

import json
import os

from adautomix_fast.train import main


def run_cli(args, capsys):
    """Run `python -m adautomix_fast.train ARGS` in this process: (exit code, stdout, stderr)."""
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def single_error_line(err):
    """The error is one line, the last one written (a progress bar may precede it)."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    return errors[0]


def read_log(folder):
    """The run's log.jsonl as a list of records."""
    with open(os.path.join(folder, "log.jsonl")) as f:
        return [json.loads(line) for line in f]
