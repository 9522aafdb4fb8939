"""A ``pixlake`` command's stdout carries its result and nothing else (so ``| jq`` works)."""

import sys
import threading

from pixlake.jobs.common import emit, run_main
from pixlake.platform.errors import ConfigError


def test_other_writes_to_stdout_go_to_stderr_while_results_go_to_stdout(capsys):
    def body() -> int:
        # Ray's driver prints raylet warnings to sys.stdout from a background thread
        noise = threading.Thread(target=lambda: print("(raylet) WARNING: 8 PYTHON worker processes have been started"))
        noise.start()
        noise.join()
        print("library chatter")
        emit('{"switch": "done"}')
        return 0

    assert run_main(body) == 0
    out, err = capsys.readouterr()
    assert out == '{"switch": "done"}\n'
    assert "(raylet) WARNING" in err and "library chatter" in err
    print("after")  # stdout is stdout again once the command is over
    assert capsys.readouterr().out == "after\n"


def test_an_error_is_one_line_on_stderr_and_exit_code_2(capsys):
    def body() -> int:
        emit("partial")
        raise ConfigError("--n must be at least 1")

    assert run_main(body) == 2
    out, err = capsys.readouterr()
    assert out == "partial\n" and err.strip().splitlines()[-1] == "pixlake: error: --n must be at least 1"
    assert sys.stdout is not sys.stderr
