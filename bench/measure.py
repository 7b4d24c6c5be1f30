"""The measurements: flush, Postfix's own reroute, scan against qshape, start-up, the ceiling."""

from __future__ import annotations

import compileall
import json
import statistics
import subprocess
import sys
import sysconfig
import time
import venv
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.backlog import message, queued_files
from bench.common import (
    _QSHAPE_TOTAL,
    DOMAINS,
    PROFILE_RENDERERS,
    PROVIDER,
    REPO,
    SINK_POLL,
    BenchError,
    sbin,
)
from bench.probes import (
    ProcessRun,
    RssSampler,
    Sink,
    _round,
    cpu_ledger,
    run_measured,
)
from tests.integration.rescue_cli import Rescue, smarthost_entry
from tests.lab.postfix import PostfixLab

# -- the measurements ----------------------------------------------------------------------


def rate(messages: int, seconds: float) -> float:
    return round(messages / seconds, 1) if seconds > 0 else 0.0


def rescue_config(
    root: Path, lab: PostfixLab, sink: Sink, options: dict[str, Any], python: str
) -> Rescue:
    """The flush's configuration; `python` starts queue-rescue (installed_python())."""
    domains = ", ".join(json.dumps(d) for d in DOMAINS)
    entry = smarthost_entry("sink", sink.port)
    entry.update(options)
    return Rescue(
        root,
        lab,
        smarthosts=[entry],
        providers=f'[[provider]]\nname = "{PROVIDER}"\ndomains = [{domains}]\n',
        extra="[dns]\nenabled = false\n",
        python=python,
    )


def measure_flush(
    rescue: Rescue, lab: PostfixLab, sink: Sink, n: int, profile: Path | None
) -> dict[str, Any]:
    args = ["flush", "--all", "--yes", "--json"]
    argv = rescue.command(*args)
    if profile is not None:
        # pyinstrument in front of `-m rescue ...`: the same run, sampled.
        renderer = PROFILE_RENDERERS.get(profile.suffix, "text")
        argv = [argv[0], "-m", "pyinstrument", "-r", renderer, "-o", str(profile), *argv[1:]]
    result: dict[str, Any] = {"command": "queue-rescue " + " ".join(args)}
    sampler = RssSampler(sink.count)
    try:
        with cpu_ledger(result, lab, sink):
            run = run_measured(argv, timeout=300 + n / 10, on_start=sampler.start)
    finally:
        sampler.stop()
    run.check("queue-rescue flush")
    summaries = [
        json.loads(line)["summary"] for line in run.stdout.splitlines() if '"summary"' in line
    ]
    summary = summaries[-1] if summaries else {}
    # The sink answered every "." before queue-rescue saw the reply: the count is final.
    received = sink.count()
    left = len(lab.queue())
    result.update(
        seconds=round(run.seconds, 3),
        messages_per_second=rate(n, run.seconds),
        # The largest process's own peak RSS, or the whole process tree's sampled PSS
        # (a split flush's workers with their parent), whichever is larger.
        peak_rss_mb=round(max(run.max_rss_mb, sampler.peak_mb), 1),
        rss_over_progress=sampler.summary(n),
        cpu_seconds=round(run.cpu_seconds, 2),
        own_cpu_seconds=_round(run.own_cpu_seconds),
        children_cpu_seconds=_round(run.children_cpu_seconds),
        sink_received=received,
        queue_left=left,
        summary=summary,
        profiled=profile is not None,
    )
    if received != n or left != 0 or summary.get("rerouted") != n:
        raise BenchError(
            f"queue-rescue flush did not move all {n}: sink got {received}, {left} left in "
            f"the queue, summary {summary}\nstderr: {run.stderr[-2000:]}"
        )
    return result


def measure_postfix_reroute(lab: PostfixLab, sink: Sink, n: int) -> dict[str, Any]:
    """Postfix's own way: transport map to the sink, reload, requeue, flush, drain."""
    postsuper = [str(lab.command_dir / "postsuper"), "-c", str(lab.config_dir)]
    postqueue = [str(lab.command_dir / "postqueue"), "-c", str(lab.config_dir)]
    result: dict[str, Any] = {
        "command": "transport_maps -> sink; postfix reload; postsuper -r ALL deferred; "
        "postqueue -f; until the queue is empty"
    }
    timeout = 120 + n / 20
    with cpu_ledger(result, lab, sink):
        start = time.perf_counter()
        lab.set_transports({d: f"smtp:[127.0.0.1]:{sink.port}" for d in DOMAINS})  # + reload
        reloaded = time.perf_counter()
        subprocess.run([*postsuper, "-r", "ALL", "deferred"], capture_output=True, check=True)
        requeued = time.perf_counter()
        subprocess.run([*postqueue, "-f"], capture_output=True, check=True)
        deadline = start + timeout
        while sink.count() < n or queued_files(lab.queue_dir) > 0:
            if time.perf_counter() > deadline:
                raise BenchError(
                    f"Postfix reroute: sink got {sink.count()} of {n} after {timeout:g}s; "
                    f"{lab.describe()}"
                )
            time.sleep(SINK_POLL)
        done = time.perf_counter()
    seconds = done - start
    received = sink.count()
    left = len(lab.queue())
    result.update(
        seconds=round(seconds, 3),
        messages_per_second=rate(n, seconds),
        reload_seconds=round(reloaded - start, 3),
        requeue_seconds=round(requeued - reloaded, 3),
        drain_seconds=round(done - requeued, 3),
        sink_received=received,
        queue_left=left,
    )
    if received != n or left != 0:
        raise BenchError(f"Postfix reroute: sink got {received} of {n}, {left} left")
    return result


def installed_python() -> str:
    """A Python that starts queue-rescue the way an installed copy starts, and the
    bytecode of rescue/ written.

    The measured commands run the repository's code. The development set-up installs it
    in editable mode, whose import hook setuptools loads at every interpreter start (13 ms
    on the 2-CPU test machine: a tenth of a small scan) and which no installed copy has;
    and where nothing wrote rescue/'s .pyc files yet (PYTHONDONTWRITEBYTECODE=1, a fresh
    checkout) Python compiles every module at each start, which pip does once at install.
    This is a virtual environment of its own (build/bench-python) whose one addition is a
    .pth file naming the repository and the development environment's packages (the
    dependencies) as plain paths.
    """
    compileall.compile_dir(REPO / "rescue", quiet=1)
    home = REPO / "build" / "bench-python"
    python = home / "bin" / "python"
    # Made again when the development environment moved to another Python: the .pth
    # below only fits the interpreter that made the venv.
    if not python.exists() or python.resolve() != Path(sys.executable).resolve():
        venv.create(home, symlinks=True, with_pip=False, clear=True)
    # Its site-packages, laid out as this interpreter's (the same Python made both).
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(home)}))
    paths = [str(REPO), sysconfig.get_path("purelib")]
    (purelib / "queue-rescue-bench.pth").write_text("".join(f"{p}\n" for p in paths))
    return str(python)


def measure_scans(
    rescue: Rescue, lab: PostfixLab, n: int, recipients: int, repeat: int
) -> dict[str, Any]:
    """scan, scan --json and qshape, `repeat` times each, interleaved; medians."""
    commands: dict[str, tuple[str, list[str], Callable[[ProcessRun], int]]] = {
        "scan": ("queue-rescue scan", rescue.command("scan"), lambda run: n),
        "scan_json": (
            "queue-rescue scan --json",
            rescue.command("scan", "--json"),
            lambda run: sum(1 for line in run.stdout.splitlines() if line.startswith("{")),
        ),
        "qshape": (
            "qshape -c CONFIG_DIR deferred",
            [sbin("qshape"), "-c", str(lab.config_dir), "deferred"],
            lambda run: int(m.group(1)) if (m := _QSHAPE_TOTAL.search(run.stdout)) else -1,
        ),
    }
    expected = {"scan": n, "scan_json": n, "qshape": recipients}
    runs: dict[str, list[ProcessRun]] = {name: [] for name in commands}
    for _ in range(repeat):
        for name, (label, argv, _counted) in commands.items():
            runs[name].append(run_measured(argv, timeout=120 + n / 20).check(label))
    out: dict[str, Any] = {}
    for name, done in runs.items():
        label, _argv, counted = commands[name]
        seen = counted(done[-1])
        if seen != expected[name]:
            raise BenchError(f"{label} counted {seen}, expected {expected[name]}")
        times = [run.seconds for run in done]
        out[name] = {
            "command": label,
            "seconds": round(statistics.median(times), 3),
            "seconds_all": [round(t, 3) for t in times],
            "peak_rss_mb": round(max(run.max_rss_mb for run in done), 1),
            "cpu_seconds": round(statistics.median(run.cpu_seconds for run in done), 2),
        }
    out["scan"]["table_lines"] = len(runs["scan"][-1].stdout.splitlines())
    return out


def measure_startup(rescue: Rescue, repeat: int) -> dict[str, Any]:
    runs = [run_measured(rescue.command("--version"), timeout=60) for _ in range(repeat)]
    return {
        "command": "queue-rescue --version",
        "seconds": round(statistics.median(r.seconds for r in runs), 3),
        "peak_rss_mb": round(max(r.max_rss_mb for r in runs), 1),
    }


def measure_ceiling(folder: Path, sink: Sink, n: int) -> dict[str, Any]:
    """smtp-source into smtp-sink: 8 sessions, each many messages, our message n=1."""
    sample = folder / "sample.eml"
    sample.write_bytes(message(1).message)
    sessions = 8
    argv = [
        sbin("smtp-source"),
        "-d",
        "-s",
        str(sessions),
        "-m",
        str(n),
        "-M",
        "bench.test",
        "-f",
        message(1).sender,
        "-t",
        message(1).recipients[0],
        "-F",
        str(sample),
        f"127.0.0.1:{sink.port}",
    ]
    run = run_measured(argv, timeout=120 + n / 100).check("smtp-source")
    received = sink.count()
    if received != n:
        raise BenchError(f"smtp-source: sink got {received} of {n}")
    return {
        "command": f"smtp-source -d -s {sessions} -m {n} -F MESSAGE",
        "seconds": round(run.seconds, 3),
        "messages_per_second": rate(n, run.seconds),
    }
