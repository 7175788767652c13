"""The frozen-host guarantee holds for every user the image is run as.

Where the image runs decides its uid: docker and navigator use the image's USER 1000 (or the host
uid), OpenShift/AWX-on-k8s an arbitrary uid with gid 0, podman under navigator and AWX's podman
execution nodes `--user=root`. ssh needs a passwd entry and a writable HOME for the uid
(the builder entrypoint provides them), and the patched executor must be able to kill what it
started as that user. So the same frozen-host run, a target frozen (docker pause) while the
module runs on it, is repeated as each user, with `docker run --user` and `docker exec`.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
from harness import hang
from harness.dockerctl import docker, label_args
from harness.runner import (
    KEY_IN_EE,
    PLUGINS_DIR,
    PLUGINS_IN_EE,
    PROJECT_IN_EE,
    EEContainer,
    base_env,
    run_playbook,
)
from harness.runner import stage_project as stage
from harness.scenarios import HUNG, Lab
from harness.targets import inventory_ini, start_target
from harness.verdict import guarantee_problems

pytestmark = pytest.mark.integration

LIMIT_S = int(os.environ.get("TT_LIMIT_S", "10"))
"""Also bounds a healthy host's first task (ssh handshake + module): over 6 s now and then on 2 busy cores."""
OUTER_LIMIT_S = 90.0
HEALTHY = 3
_n = itertools.count(1)

# (docker run --user value or None for the image's USER, expected uid, expected gid)
USERS = {
    "image-default-1000": (None, "1000", "0"),
    "arbitrary-uid-gid0": ("4242:0", "4242", "0"),
    "root": ("0", "0", "0"),
}


def start_ee_as(lab: Lab, image: str, user: str | None, tag: str, project: Path) -> EEContainer:
    """Start a long-lived EE as `user` (like runner.EEContainer.start, which has no --user)."""
    name = f"{lab.session}-ee-{tag}"
    out = project / "out"
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(project, 0o755)
    os.chmod(out, 0o777)
    user_args = ["--user", user] if user is not None else []
    docker(
        "run", "-d", "--name", name, *label_args(lab.session), "--network", lab.network.name, *user_args,
        "-v", f"{project}:{PROJECT_IN_EE}", "-v", f"{PLUGINS_DIR}:{PLUGINS_IN_EE}:ro",
        "-v", f"{lab.key.private}:/tmp/tt-key-src:ro",
        image, "sleep", "infinity",
    )  # fmt: skip
    ee = EEContainer(name=name, image=image, project_dir=project)
    try:
        ee.uid = docker("exec", name, "id", "-u").stdout.strip()
        install = f"install -d -m 0700 -o {ee.uid} /tmp/tt-ssh"
        install += f" && install -m 0600 -o {ee.uid} /tmp/tt-key-src {KEY_IN_EE}"
        docker("exec", "-u", "0", name, "sh", "-c", install)
    except BaseException:
        ee.remove()
        raise
    return ee


@pytest.mark.parametrize("who", list(USERS))
def test_frozen_host_times_out_as_every_user(lab: Lab, ee_image: str, who: str) -> None:
    """As uid 1000, uid 4242 gid 0 and root: the frozen host times out alone, nothing is left."""
    user, want_uid, want_gid = USERS[who]
    n = next(_n)
    tag = f"user-{who}-{n}"
    alias = f"hung-user-{n}"
    healthy = lab.healthy(HEALTHY)
    project = lab.workdir / tag
    stage(project, "hang_remote.yml", inventory_ini({**healthy, HUNG: alias}, KEY_IN_EE, hung=[HUNG]))
    victim = start_target(lab.session, lab.network, lab.key, f"{lab.session}-victim-{tag}", [alias])
    ee: EEContainer | None = None
    try:
        ee = start_ee_as(lab, ee_image, user, tag, project)
        ident = docker("exec", ee.name, "sh", "-c", 'id -u; id -g; echo "$HOME"; getent passwd "$(id -u)"')
        uid, gid, home, passwd = (ident.stdout.splitlines() + ["", "", "", ""])[:4]
        assert (uid, gid) == (want_uid, want_gid), ident.stdout
        assert passwd, f"uid {uid} has no passwd entry (ssh refuses to run without one)"
        trigger = hang.PhaseTrigger(victim, hang.module_running, hang.freeze, f"freeze-{who}").start()
        env = base_env("linear", forks=HEALTHY + 1)
        env["ANSIBLE_TASK_DEADLINE"] = str(LIMIT_S)
        try:
            run = run_playbook(ee, "hang_remote.yml", env=env, outer_limit_s=OUTER_LIMIT_S)
        finally:
            trigger.stop()
        trigger.assert_fired()
        problems, _ = guarantee_problems(run, HUNG, list(healthy), "hang", LIMIT_S)
        assert not problems, (
            f"as {who} (uid {uid}, HOME {home}):\n" + "\n".join(problems) + "\n" + run.describe()
        )
    finally:
        if ee is not None:
            ee.remove()
        victim.remove()
