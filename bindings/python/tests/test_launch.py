"""The launcher tells Python how a job went as structured data (its events channel), and the
Spark tasks' barrier plan comes from the launcher's own builder: nothing in the package parses
the launcher's text."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path

import pytest
import runfns

import ferrovod
from ferrovod import _launch
from ferrovod._ferrovod import barrier_plan

#: The package's sources in this checkout (the installed copy may be older).
PACKAGE = Path(__file__).resolve().parents[1] / "ferrovod"


def _rank_script(body: str) -> list[str]:
    return [sys.executable, "-c", f"import os, sys, signal\nr = int(os.environ['FERROVOD_RANK'])\n{body}"]


# --- failures as data --------------------------------------------------------------------------


@pytest.mark.multiproc
def test_a_failing_rank_reaches_python_as_structured_data():
    seen: list[tuple[str, str]] = []
    done = _launch.launch(
        ["-np", "2"],
        _rank_script("print('out of', r, flush=True)\nprint('err of', r, file=sys.stderr, flush=True)\n"
                     "sys.exit(7 if r == 1 else 0)"),
        os.environ,
        sink=lambda stream, text: seen.append((stream, text)),
    )
    assert done.code == 7
    assert done.error is None and done.unreadable == 0
    failure = done.failure
    assert failure is not None
    assert (failure["kind"], failure["rank"], failure["exit_code"], failure["task"]) == ("rank", 1, 7, 0)
    assert failure["signal"] is None
    assert done.failures == [failure]
    assert done.report is not None
    assert (done.report["outcome"], done.report["exit_code"], done.report["world"]) == ("failed", 7, 2)
    # Each rank's lines come tagged with their rank, and are shown with it.
    assert "out of 1" in done.rank_tails[1] and "err of 1" in done.rank_tails[1]
    assert ("stdout", "[1] out of 1\n") in seen and ("stderr", "[1] err of 1\n") in seen


@pytest.mark.multiproc
def test_a_rank_killed_by_a_signal_is_named_with_the_signal():
    done = _launch.launch(
        ["-np", "2"], _rank_script("if r == 0: os.kill(os.getpid(), signal.SIGKILL)\nimport time; time.sleep(30)"),
        os.environ, sink=lambda *_: None,
    )
    assert done.code == 128 + signal.SIGKILL
    assert done.failure is not None
    assert (done.failure["kind"], done.failure["rank"], done.failure["signal"]) == ("rank", 0, signal.SIGKILL)


@pytest.mark.multiproc
def test_success_is_a_report_without_a_failure():
    done = _launch.launch(["-np", "2"], _rank_script("print('hi', r)"), os.environ, sink=lambda *_: None)
    assert done.code == 0 and done.failure is None and done.failures == []
    assert done.report is not None and done.report["outcome"] == "success"
    assert done.rank_tails == {0: ["hi 0"], 1: ["hi 1"]}


def test_a_refused_plan_is_an_error_event(tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text('{"version": 1}')
    done = _launch.launch(["--plan", str(plan)], ["true"], os.environ, sink=lambda *_: None)
    assert done.code == 2 and done.report is None and done.failure is None
    assert done.error is not None and done.error["exit_code"] == 2
    assert "missing field" in done.error["message"]


@pytest.mark.multiproc
def test_run_names_the_failing_rank_from_the_report():
    with pytest.raises(ferrovod.RankFailedError) as info:
        ferrovod.run(runfns.exit_silently_on_rank_1, np=2)
    assert info.value.rank == 1


# --- one plan builder --------------------------------------------------------------------------


def test_the_barrier_plan_comes_from_the_launcher_s_builder():
    text = barrier_plan("job-7", "10.0.0.1", 29400, 1, [("10.0.0.1", [0, 1], 2), ("10.0.0.2", [], 2)])
    plan = json.loads(text)
    assert plan == {
        "version": 1,
        "job_id": "job-7",
        "rendezvous": "10.0.0.1:29400",
        "task_index": 1,
        "tasks": [
            {"index": 0, "host": "10.0.0.1", "gpus": [0, 1], "slots": 2},
            {"index": 1, "host": "10.0.0.2", "gpus": [], "slots": 2},
        ],
    }
    assert json.loads(barrier_plan("j", "fe80::1", 7, 0, [("fe80::1", [], 1)]))["rendezvous"] == "[fe80::1]:7"


def test_a_plan_the_launcher_would_refuse_is_refused_when_built():
    with pytest.raises(ValueError, match="task_index 2 is not the index of a task"):
        barrier_plan("j", "h", 7, 2, [("h", [], 1)])
    with pytest.raises(ValueError, match="GPU 0 is listed twice"):
        barrier_plan("j", "h", 7, 0, [("h", [0, 0], 1)])
    with pytest.raises(ValueError, match="no processes to start"):
        barrier_plan("j", "h", 7, 0, [("h", [], 0)])


# --- no text parsing left ----------------------------------------------------------------------

#: What reading the launcher's text looks like: its message prefix and summary words, and
#: ``[rank] `` prefixes taken apart.
_TEXT_PARSING = [
    re.compile(r"ferrovod-run: "),
    re.compile(r"job (failed|stopped): (rank|the launcher)"),
    re.compile(r"_rank_of\b"),
    re.compile(r"""startswith\(\s*["']\["""),
    re.compile(r"""\.(find|index|split|partition)\(\s*["']\] ?["']"""),
    re.compile(r"""removeprefix\(\s*(prefix|f?["']\[)"""),
    re.compile(r"re\.(findall|search|match|fullmatch|finditer)\("),
]

#: Lines of the code this test replaced: the patterns must catch them, or the test proves nothing.
_OLD_CODE = [
    r'''named = re.findall(r"^ferrovod-run: job failed: rank (\d+) ", tail, re.MULTILINE)''',
    '''    if line.startswith("["):''',
    '''        end = line.find("] ", 1, 12)''',
    '''                rank = _rank_of(line)''',
    '''    lines = [ln for ln in rank_tails[rank].splitlines() if ln.removeprefix(prefix) not in shown]''',
]


def _offences(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if any(p.search(line) for p in _TEXT_PARSING)]


def test_the_patterns_catch_the_old_text_parsing():
    for line in _OLD_CODE:
        assert _offences(line), f"no pattern catches {line!r}"


def test_no_package_source_parses_launcher_text():
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 10, f"found only {sources} under {PACKAGE}"
    found = {str(p.relative_to(PACKAGE)): hits for p in sources if (hits := _offences(p.read_text(encoding="utf-8")))}
    assert not found, f"launcher text is parsed in: {found}"
