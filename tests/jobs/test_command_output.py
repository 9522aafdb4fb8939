"""A ``pixlake`` command's stdout carries its result and nothing else (so ``| jq`` works)."""

import io
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


def test_a_quiet_job_sends_rays_lines_to_its_log_and_keeps_its_own_and_errors_on_stderr(capfd, tmp_path, monkeypatch):
    import logging
    import os
    import tempfile

    from pixlake.jobs.console import ray_logs

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ours = logging.StreamHandler(open(2, "w", closefd=False))  # as run_main's basicConfig: on descriptor 2
    logging.getLogger().addHandler(ours)
    import ray.data  # noqa: F401  (configures Ray's loggers, as ray_logs does first)

    ray_handlers = list(logging.getLogger("ray").handlers)
    try:
        with ray_logs("embed", verbose=False) as log:
            logging.getLogger("ray").warning("Token authentication is enabled for this Ray cluster")
            logging.getLogger("ray.data").info("[dataset]: A new progress UI is available")
            os.write(2, b"[E core_worker.cc:2465] Actor ... has constructor arguments ... max_restarts > 0\n")
            logging.getLogger("ray.data").error("Operator MapBatches(EmbedImages) failed")
            logging.getLogger("pixlake.platform.governance").warning("created a local master key")
            print("pixlake: a line of pixlake's own", file=sys.stderr)
        with ray_logs("embed", verbose=True) as none:  # --verbose: nothing redirected
            os.write(2, b"Started a local Ray instance (verbose)\n")
            assert logging.getLogger("ray").handlers == ray_handlers
    finally:
        logging.getLogger().removeHandler(ours)
    err, logged = capfd.readouterr().err, log.read_text()
    for line in ("Token authentication", "A new progress UI", "max_restarts > 0"):
        assert line in logged and line not in err, line
    for line in ("created a local master key", "a line of pixlake's own", "Started a local Ray instance (verbose)"):
        assert line in err and line not in logged, line
    assert "ERROR ray.data: Operator MapBatches(EmbedImages) failed" in err  # Ray's errors: on stderr, and in the log
    assert "MapBatches(EmbedImages) failed" in logged
    assert none is None and log.parent == tmp_path / "pixlake"
    os.write(2, b"after\n")  # descriptor 2 and Ray's handlers are back
    assert capfd.readouterr().err == "after\n" and logging.getLogger("ray").handlers == ray_handlers


def test_a_log_nothing_was_written_to_is_removed_and_a_failure_says_where_the_log_is(capfd, tmp_path, monkeypatch):
    import logging
    import tempfile

    import pytest

    from pixlake.jobs.console import ray_logs

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with ray_logs("train", verbose=False) as empty:
        pass
    assert not empty.exists()
    with pytest.raises(ConfigError), ray_logs("train", verbose=False) as log:
        logging.getLogger("ray").info("Started a local Ray instance.")
        raise ConfigError("the store went away")
    assert capfd.readouterr().err == f"pixlake: Ray's log lines of this run are in {log} (--verbose shows them)\n"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_display_shows_items_of_total_rate_and_eta(monkeypatch):
    from pixlake.jobs import console

    display = console.ProgressDisplay(io.StringIO())
    assert display.line(24, 48, 12.0) == "embedding  24/48 items  2.0 images/s  ETA 12s"
    assert display.line(100, 10_100, 50.0) == "embedding  100/10,100 items  2.0 images/s  ETA 1h 23m"
    assert display.line(1_500, None, 10.0) == "embedding  1,500 items  150.0 images/s"  # a total the source does not say
    assert display.line(48, 48, 10.0) == "embedding  48/48 items  4.8 images/s"

    clock = iter([100.0, 101.0, 102.0, 115.0, 116.0])
    monkeypatch.setattr(console.time, "monotonic", lambda: next(clock))
    piped = console.ProgressDisplay(io.StringIO())  # a file or a CI log: a line at most every 10 s, and the last
    for done in (0, 10, 20, 30, 40):
        piped(done, 40)
    piped.close()
    assert piped.stream.getvalue().splitlines() == [
        "embedding  0/40 items  0.0 images/s", "embedding  30/40 items  2.0 images/s  ETA 5s",
        "embedding  40/40 items  2.5 images/s"]

    clock = iter([0.0, 2.0])
    terminal = console.ProgressDisplay(_Terminal())  # one line, rewritten in place
    terminal(0, None)
    terminal(10, None)
    terminal.close()
    assert terminal.stream.getvalue() == "\rembedding  0 items  0.0 images/s\rembedding  10 items  5.0 images/s\n"


def test_an_embed_command_shows_its_report_and_one_progress_display_and_logs_rays_lines(ray_session, capfd, tmp_path,
                                                                                         monkeypatch):
    import json
    import tempfile

    from pixlake.platform.corpus import write_corpus
    from tests.conftest import TINY, TINY_ENV, run_cli

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr("pixlake.platform.collection.LITE_CROSSOVER_ROWS", 4)  # this run reaches it
    for name, value in TINY_ENV.items():
        monkeypatch.setenv(name, value)
    write_corpus(tmp_path / "c", 4, seed=5)
    code = run_cli("embed", str(tmp_path / "c" / "images"), "--db", str(tmp_path / "p.db"), "--model", TINY[0],
                   "--pretrained", TINY[1], "--json")
    out, err = capfd.readouterr()
    assert code == 0, err
    assert json.loads(out)["embedded"] == 4  # stdout: the report alone
    hints = [line for line in err.splitlines() if line.startswith("pixlake: hint: ")]
    assert len(hints) == 1 and "holds 4 rows on milvus-lite" in hints[0] and "--db http://" in hints[0], err
    progress = [line for line in err.splitlines() if line.startswith("embedding  ")]
    assert progress and progress[-1].startswith("embedding  4/4 items  "), err
    # Ray Data's execution lines and the driver's actor-restart notice: in the log, not on stderr
    log = next((tmp_path / "pixlake").glob("embed-*.log")).read_text()
    assert "Starting execution of Dataset" in log and "Starting execution of Dataset" not in err
    # the core worker prints its actor-restart notice once per driver process: in the full
    # suite an earlier in-process job may have had it, so it is only required not on stderr
    assert "max_restarts > 0" not in err
