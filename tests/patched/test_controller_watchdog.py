"""The controller-side guarantee, with real ansible-playbook runs on the patched ansible-core.

Run by scripts/core-tests (Python 3.13, patched ansible); skipped on the host. Covers: the watchdog
(a worker that blocks SIGALRM, one stuck in C code), the stress test (workers killed at random
instants while results of 200 KiB are in flight), and each way the controller can end (SIGINT,
SIGTERM, runner's killpg SIGKILL, SIGKILL of ansible-playbook alone).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest
from playbook_runs import ansible_playbook, start_run, wait_for, workers_of

errors = pytest.importorskip("ansible.errors")
if not hasattr(errors, "AnsibleTaskTimeoutError"):
    pytest.skip(
        "this ansible-core is not the patched one: scripts/core-tests runs these", allow_module_level=True
    )
bounds = pytest.importorskip("ansible_task_timeout.bounds")
guard = pytest.importorskip("ansible_task_timeout.guard")

RUN_ID_ENV = guard.RUN_ID_ENV
HOSTS = ("h1", "h2", "h3", "h4")
OUTPUT_SIZE = 200 * 1024

# A local action plugin whose "module" is the worker process itself: it can mask SIGALRM, sit in C
# code, or produce a large deterministic output from a real child process.
ACTION_PLUGIN = """
from __future__ import annotations
import ctypes, signal, subprocess, sys, time
from ansible.plugins.action import ActionBase

class ActionModule(ActionBase):
    def run(self, tmp=None, task_vars=None):
        mode = self._task.args["mode"]
        if mode == "mask_alarm":
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
            while True:
                time.sleep(1)
        if mode == "c_sleep":
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
            ctypes.CDLL(None).sleep(600)  # one C call: no bytecode boundary for a handler
        if mode == "big":
            seed = self._task.args["seed"]
            code = (
                "import hashlib, sys, time\\n"
                "time.sleep(1.0)\\n"  # a window in which the test finds this trial's worker
                "seed = sys.argv[1].encode(); out = bytearray()\\n"
                "while len(out) < %d:\\n"
                "    out += hashlib.sha256(seed + str(len(out)).encode()).hexdigest().encode()\\n"
                "sys.stdout.write(out[:%d].decode())\\n"
            ) % (OUTPUT_SIZE, OUTPUT_SIZE)
            argv = [sys.executable, "-c", code, seed]
            proc = subprocess.run(argv, capture_output=True, text=True, check=True)
            return {"changed": False, "stdout": proc.stdout}
        raise ValueError(mode)
""".replace("OUTPUT_SIZE", str(OUTPUT_SIZE))

# Records, in the controller, what each host's task delivered: enough to check content and timing.
CALLBACK_PLUGIN = """
from __future__ import annotations
import hashlib, json, os, time
from ansible.plugins.callback import CallbackBase

class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "record"
    CALLBACK_NEEDS_ENABLED = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._out = open(os.environ["RECORD_FILE"], "a", buffering=1)

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._write({"event": "start", "task": task.get_name()})

    def _result(self, status, result):
        res = result.result
        stdout = res.get("stdout")
        self._write({
            "event": status, "task": result.task.get_name(), "host": result.host.name,
            "sha": hashlib.sha256(stdout.encode()).hexdigest() if isinstance(stdout, str) else None,
            "msg": res.get("msg"), "task_timeout": res.get("task_timeout"),
        })

    def v2_runner_on_ok(self, result):
        self._result("ok", result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._result("failed", result)

    def v2_runner_on_unreachable(self, result):
        self._result("unreachable", result)

    def _write(self, record):
        record["t"] = time.monotonic()
        self._out.write(json.dumps(record) + "\\n")
"""


def expected_sha(seed: str) -> str:
    """What the `big` mode prints for `seed` (same algorithm as the action plugin)."""
    out = bytearray()
    while len(out) < OUTPUT_SIZE:
        out += hashlib.sha256(seed.encode() + str(len(out)).encode()).hexdigest().encode()
    return hashlib.sha256(bytes(out[:OUTPUT_SIZE])).hexdigest()


def write_project(tmp_path: Path, play: str) -> dict[str, str]:
    """Inventory, plugins and play in `tmp_path`; return the environment for ansible-playbook."""
    (tmp_path / "action_plugins").mkdir(exist_ok=True)
    (tmp_path / "action_plugins" / "probe.py").write_text(ACTION_PLUGIN)
    (tmp_path / "callback_plugins").mkdir(exist_ok=True)
    (tmp_path / "callback_plugins" / "record.py").write_text(CALLBACK_PLUGIN)
    (tmp_path / "inventory").write_text(
        "[all]\n"
        + "\n".join(
            f"{h} ansible_connection=local ansible_python_interpreter={sys.executable}" for h in HOSTS
        )
        + "\n"
    )
    (tmp_path / "play.yml").write_text(textwrap.dedent(play))
    return {
        **os.environ,
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORKS": str(len(HOSTS)),
        "ANSIBLE_ACTION_PLUGINS": str(tmp_path / "action_plugins"),
        "ANSIBLE_CALLBACK_PLUGINS": str(tmp_path / "callback_plugins"),
        "ANSIBLE_CALLBACKS_ENABLED": "record",
        "RECORD_FILE": str(tmp_path / "record.jsonl"),
    }


def records(tmp_path: Path) -> list[dict[str, object]]:
    path = tmp_path / "record.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def start_playbook(tmp_path: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """ansible-playbook in its own process group and session, as ansible-runner starts it."""
    argv = [ansible_playbook(), "-i", str(tmp_path / "inventory"), str(tmp_path / "play.yml")]
    return start_run(argv, tmp_path, env)


def run_processes(run_id: str | None = None) -> list[psutil.Process]:
    """Live processes carrying a run id (this one, or any if None)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            value = proc.environ().get(RUN_ID_ENV)
        except psutil.Error:
            continue
        if value and (run_id is None or value == run_id):
            found.append(proc)
    return found


def sleeps(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["cmdline"] == ["sleep", marker] and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


# --------------------------------------------------------------------------- watchdog


@pytest.mark.parametrize("mode", ["mask_alarm", "c_sleep"])
def test_watchdog_ends_a_worker_the_alarm_cannot_reach(tmp_path: Path, mode: str) -> None:
    limit = 6  # the healthy hosts' 1 s probe plus python start-up runs under it too, on loaded cores
    env = write_project(
        tmp_path,
        f"""
        - hosts: all
          gather_facts: false
          tasks:
            - name: stuck
              probe:
                mode: "{{{{ '{mode}' if inventory_hostname == 'h1' else 'big' }}}}"
                seed: "{{{{ inventory_hostname }}}}"
              task_timeout: {limit}
              register: r1
              ignore_errors: true
            - name: after
              probe: {{mode: big, seed: after}}
        """,
    )
    start = time.monotonic()
    proc = start_playbook(tmp_path, env)
    out, _ = proc.communicate(timeout=120)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, out
    recs = records(tmp_path)
    stuck = {r["host"]: r for r in recs if r.get("task") == "stuck" and "host" in r}
    assert stuck["h1"]["event"] == "failed"
    assert stuck["h1"]["task_timeout"] is True
    assert stuck["h1"]["msg"] == f"Task execution timed out, limit is: {limit} second(s)"
    for host in HOSTS[1:]:
        assert stuck[host]["event"] == "ok" and stuck[host]["sha"] == expected_sha(host)
    after = {r["host"] for r in recs if r.get("task") == "after" and r.get("event") == "ok"}
    assert after == set(HOSTS)  # the timed-out host went on (ignore_errors), nobody was lost
    assert "dead state" not in out
    # start-up and the second task take a few seconds; the point is: bounded, not 600 s
    assert elapsed < limit + bounds.RESULT_BOUND + 30, elapsed
    assert wait_for(lambda: not run_processes(), 10, "the run's processes to be gone")


@pytest.mark.parametrize("ignored", [True, False])
def test_a_lost_worker_s_result_honours_a_templated_ignore_errors(tmp_path: Path, ignored: bool) -> None:
    """The watchdog's result is the task's as the worker would have sent it: a templated
    ignore_errors is resolved (the controller's copy of the task never was), true or false."""
    limit = 6
    env = write_project(
        tmp_path,
        f"""
        - hosts: all
          gather_facts: false
          vars:
            stuck_ignored: {str(ignored).lower()}
          tasks:
            - name: stuck
              probe:
                mode: "{{{{ 'c_sleep' if inventory_hostname == 'h1' else 'big' }}}}"
                seed: "{{{{ inventory_hostname }}}}"
              task_timeout: {limit}
              ignore_errors: "{{{{ stuck_ignored }}}}"
            - name: after
              probe: {{mode: big, seed: after}}
        """,
    )
    proc = start_playbook(tmp_path, env)
    out, _ = proc.communicate(timeout=120)
    recs = records(tmp_path)
    stuck = {r["host"]: r for r in recs if r.get("task") == "stuck" and "host" in r}
    assert stuck["h1"]["event"] == "failed" and stuck["h1"]["task_timeout"] is True, out
    after = {r["host"] for r in recs if r.get("task") == "after" and r.get("event") == "ok"}
    if ignored:
        assert proc.returncode == 0 and after == set(HOSTS), out
    else:
        assert proc.returncode == 2 and after == set(HOSTS[1:]), out
    assert wait_for(lambda: not run_processes(), 10, "the run's processes to be gone")


# --------------------------------------------------------------------------- stress


TRIALS = int(os.environ.get("STRESS_TRIALS", "200"))
TRIALS_PER_RUN = 50
TRIAL_BOUND = 20.0


def _trial_worker(pid: int, seed: str) -> psutil.Process | None:
    """The worker running the trial of `seed`: parent of the action's child that carries the seed."""
    try:
        for worker in workers_of(pid):
            for child in worker.children():
                if seed in child.cmdline():
                    return worker
    except psutil.Error:
        pass
    return None


def _kill_one_worker_per_trial(
    pid: int,
    tmp_path: Path,
    first: int,
    trials: int,
    rng: random.Random,
    kills: dict[int, tuple[str, int]],
    stop: threading.Event,
) -> None:
    """For each trial: pick a host, find its worker (polling the process table), kill it at a random instant.

    SIGKILL and SIGTERM alternate. The worker is identified by its action's child process, whose
    command line carries the trial's seed, so the victim surely belongs to this trial.
    """
    for trial in range(trials):
        host = rng.choice(HOSTS)
        seed = f"{host}-{first + trial}"
        try:
            found = wait_for(lambda seed=seed: stop.is_set() or _trial_worker(pid, seed), 60, seed)
        except AssertionError:
            found = None  # the trial ended without us seeing the child: no victim
        if stop.is_set():
            return
        if not isinstance(found, psutil.Process):
            continue
        # The random instant: anywhere in the worker's remaining life (the 1 s window, then the
        # output and the write of its 200 KiB result); not synchronisation. With a shorter window
        # the worker had often finished first under load, and too few trials had a victim.
        time.sleep(rng.uniform(0.0, 1.1))
        signum = signal.SIGKILL if len(kills) % 2 == 0 else signal.SIGTERM
        try:
            found.send_signal(signum)  # psutil refuses if the pid was reused meanwhile
            kills[trial] = (host, signum)
        except psutil.Error:
            pass  # it finished first: this trial has no victim


def test_stress_workers_killed_at_random_instants(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("STRESS_SEED", "20250101")))
    totals = {"trials": 0, "SIGKILL": 0, "SIGTERM": 0, "victims_failed": 0, "no_victim": 0}
    slowest = 0.0
    for first in range(0, TRIALS, TRIALS_PER_RUN):
        count = min(TRIALS_PER_RUN, TRIALS - first)
        run_dir = tmp_path / f"run{first}"
        run_dir.mkdir()
        tasks = "".join(
            f"""
            - name: trial {t}
              probe: {{mode: big, seed: "{{{{ inventory_hostname }}}}-{first + t}"}}
              ignore_errors: true
            """
            for t in range(count)
        )
        env = write_project(
            run_dir,
            "- hosts: all\n  gather_facts: false\n  tasks:" + textwrap.indent(textwrap.dedent(tasks), "    "),
        )
        kills: dict[int, tuple[str, int]] = {}
        stop = threading.Event()
        proc = start_playbook(run_dir, env)
        killer = threading.Thread(
            target=_kill_one_worker_per_trial,
            args=(proc.pid, run_dir, first, count, rng, kills, stop),
            daemon=True,
        )
        killer.start()
        try:
            out, _ = proc.communicate(timeout=count * TRIAL_BOUND)
        finally:
            stop.set()
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            killer.join(timeout=30)
        assert "dead state" not in out, out[-3000:]
        assert proc.returncode in (0, 2), out[-3000:]
        recs = records(run_dir)
        for t in range(count):
            name = f"trial {t}"
            results = {r["host"]: r for r in recs if r.get("task") == name and "host" in r}
            starts = [r["t"] for r in recs if r.get("task") == name and r["event"] == "start"]
            assert set(results) == set(HOSTS), (name, results)  # every host has its result
            failed = [h for h, r in results.items() if r["event"] != "ok"]
            for host, res in results.items():
                if res["event"] == "ok":
                    assert res["sha"] == expected_sha(f"{host}-{first + t}"), (name, host)  # intact
            victim, signum = kills.get(t, (None, None))
            assert set(failed) <= {victim}, (name, victim, results)  # only the killed host failed
            if victim is not None:
                totals["SIGKILL" if signum == signal.SIGKILL else "SIGTERM"] += 1
                totals["victims_failed"] += len(failed)
            else:
                totals["no_victim"] += 1
            duration = max(r["t"] for r in results.values()) - starts[0]
            slowest = max(slowest, duration)
            assert duration < TRIAL_BOUND, (name, duration)
        totals["trials"] += count
        assert wait_for(lambda: not run_processes(), 15, "the run's processes to be gone")
    print(f"\nstress: {totals}, slowest trial {slowest:.2f} s")
    assert totals["trials"] == TRIALS
    assert (
        totals["SIGKILL"] + totals["SIGTERM"] >= TRIALS * 0.4
    )  # many trials really had a victim (the rest: the worker was done first)
    assert totals["victims_failed"] >= (totals["SIGKILL"] + totals["SIGTERM"]) * 0.5  # kills really hit


# --------------------------------------------------------------------------- controller shutdown


SHUTDOWN_PLAY = """
- hosts: all
  gather_facts: false
  tasks:
    - name: background
      # a daemonised descendant (own session, like an ssh ControlPersist master) and a plain command
      shell: "setsid sleep 319 </dev/null >/dev/null 2>&1 & exec sleep 317"
"""


def _kill(how: str, proc: subprocess.Popen[str]) -> None:
    if how == "SIGINT":
        proc.send_signal(signal.SIGINT)
    elif how == "SIGTERM":
        proc.send_signal(signal.SIGTERM)
    elif how == "killpg-SIGKILL":  # what ansible-runner does on timeout/cancel
        os.killpg(proc.pid, signal.SIGKILL)
    elif how == "SIGKILL":
        proc.kill()


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "killpg-SIGKILL", "SIGKILL"])
def test_controller_shutdown_leaves_nothing(tmp_path: Path, how: str) -> None:
    env = write_project(tmp_path, SHUTDOWN_PLAY)
    proc = start_playbook(tmp_path, env)
    try:
        wait_for(
            lambda: len(sleeps("317")) == len(HOSTS) and len(sleeps("319")) == len(HOSTS), 60, "the sleeps"
        )
        run_id = sleeps("317")[0].environ()[RUN_ID_ENV]
        assert len(workers_of(proc.pid)) == len(HOSTS)
        worker_pids = [w.pid for w in workers_of(proc.pid)]
        _kill(how, proc)
        out, _ = proc.communicate(timeout=30)
        if how in ("SIGINT", "SIGTERM"):  # the controller forwarded it: no worker was lost
            assert LOST_WORKER not in out, out
        start = time.monotonic()
        wait_for(lambda: not run_processes(run_id), 15, f"no process of run {run_id}")
        wait_for(
            lambda: not any(
                psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                for p in worker_pids
            ),
            15,
            "the workers to be gone",
        )
        assert sleeps("317") == [] and sleeps("319") == []
        print(f"\nshutdown {how}: everything gone {time.monotonic() - start:.2f} s after the controller")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for p in sleeps("317") + sleeps("319"):
            p.kill()


CTRL_C_ROUNDS = int(os.environ.get("CTRL_C_ROUNDS", "15"))
CTRL_C_HOSTS = 10
LOST_WORKER = "before delivering its task result"


@pytest.mark.parametrize("isolation", ["0", "1"])
def test_ctrl_c_reports_no_lost_worker(tmp_path: Path, isolation: str) -> None:
    """Ctrl-C, round after round: the workers the controller's own forwarding ends are not lost workers.

    The controller forwards SIGINT to each worker, which sits in a process group of its own and dies
    of it while its result is still due. The results thread sees that death while the main thread
    handles the interrupt: the run is being interrupted, so it is no lost worker, in every round.
    The form of upstream's signal_propagation target: ad-hoc, a lookup running in each worker.
    """
    (tmp_path / "inventory").write_text(
        "[all]\n"
        + "".join(
            f"c{i} ansible_connection=local ansible_python_interpreter={sys.executable}\n"
            for i in range(CTRL_C_HOSTS)
        )
    )
    adhoc = str(Path(ansible_playbook()).with_name("ansible"))
    argv = [adhoc, "all", "-i", "inventory", "-m", "debug", "-a", 'msg={{ lookup("pipe", "sleep 333") }}']
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_WORKER_SESSION_ISOLATION": isolation}
    outputs = []
    for _ in range(CTRL_C_ROUNDS):
        proc = start_run([*argv, "-f", str(CTRL_C_HOSTS)], tmp_path, env)
        try:
            wait_for(lambda: len(sleeps("333")) == CTRL_C_HOSTS, 60, "every worker's lookup")
            proc.send_signal(signal.SIGINT)  # as ^C in its terminal, or upstream's timeout.py -s SIGINT
            out, _ = proc.communicate(timeout=30)
            outputs.append(out)
            wait_for(lambda: not sleeps("333"), 15, "the lookups to end")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            for p in sleeps("333"):
                p.kill()
    warned = [out for out in outputs if LOST_WORKER in out]
    assert not warned, (
        f"{len(warned)} of {len(outputs)} interrupted runs warned of a lost worker:\n{warned[0]}"
    )
    assert all("User interrupted execution" in out for out in outputs), outputs[0]


def test_normal_end_spares_intended_background_but_ends_workers(tmp_path: Path) -> None:
    env = write_project(
        tmp_path,
        """
        - hosts: h1
          gather_facts: false
          tasks:
            - shell: "setsid sleep 321 </dev/null >/dev/null 2>&1 &"
        """,
    )
    proc = start_playbook(tmp_path, env)
    out, _ = proc.communicate(timeout=60)
    try:
        assert proc.returncode == 0, out
        assert len(sleeps("321")) == 1  # a deliberate local background process is not ours to end
        guardians = [
            p for p in psutil.process_iter(["cmdline"]) if guard.GUARDIAN_MODULE in (p.info["cmdline"] or [])
        ]
        assert wait_for(
            lambda: not [g for g in guardians if g.is_running() and g.status() != psutil.STATUS_ZOMBIE],
            10,
            "the guardian to exit",
        )
    finally:
        for p in sleeps("321"):
            p.kill()


# --------------------------------------------------------------------------- ssh ControlPersist masters

# What ssh's ControlPersist leaves on the controller: a daemonised process (orphaned, own session)
# titled "ssh: <path> [mux]" whose /proc environ shows no run id (OpenSSH's setproctitle() wipes
# argv and environ). Its executable is called ssh, so its comm is "ssh" as well.
MASTERS_PLAY = """
- hosts: all
  gather_facts: false
  tasks:
    - name: master
      shell: >-
        ( env -i setsid bash -c 'exec -a "$0" "$1" 327' "ssh: CP/{{ inventory_hostname }} [mux]" SSH
        </dev/null >/dev/null 2>&1 & )
    - name: hold
      shell: "exec sleep 329"
      when: HOLD
"""


def masters(tmp_path: Path) -> list[psutil.Process]:
    prefix = f"ssh: {tmp_path}/cp/"
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if (proc.info["cmdline"] or [""])[0].startswith(prefix) and proc.info[
            "status"
        ] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def write_masters_project(tmp_path: Path, hold: bool) -> dict[str, str]:
    ssh = tmp_path / "bin" / "ssh"
    ssh.parent.mkdir()
    ssh.symlink_to(shutil.which("sleep") or "/usr/bin/sleep")
    play = MASTERS_PLAY.replace("CP", f"{tmp_path}/cp").replace("SSH", str(ssh)).replace("HOLD", str(hold))
    return write_project(tmp_path, play)


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "killpg-SIGKILL", "SIGKILL"])
def test_controller_death_ends_daemonised_ssh_masters(tmp_path: Path, how: str) -> None:
    env = write_masters_project(tmp_path, hold=True)
    proc = start_playbook(tmp_path, env)
    try:
        wait_for(
            lambda: len(masters(tmp_path)) == len(HOSTS) and len(sleeps("329")) == len(HOSTS), 60, "masters"
        )
        for master in masters(tmp_path):
            assert RUN_ID_ENV not in master.environ()  # only the controller's tree tells it is the run's
            assert master.ppid() == proc.pid  # adopted by the controller (subreaper)
        time.sleep(3 * bounds.GUARD_POLL)  # listed by the guardian
        _kill(how, proc)
        proc.communicate(timeout=30)
        start = time.monotonic()
        wait_for(lambda: not masters(tmp_path), 15, "the masters to be gone")
        print(f"\nmasters after {how}: gone {time.monotonic() - start:.2f} s after the controller")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for p in masters(tmp_path) + sleeps("329"):
            p.kill()


def test_normal_end_closes_daemonised_ssh_masters(tmp_path: Path) -> None:
    env = write_masters_project(tmp_path, hold=False)
    proc = start_playbook(tmp_path, env)
    out, _ = proc.communicate(timeout=60)
    try:
        assert proc.returncode == 0, out
        assert masters(tmp_path) == []
    finally:
        for p in masters(tmp_path):
            p.kill()
