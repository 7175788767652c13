#!/usr/bin/env bash
# scripts/referee's probe, run by ansible-test like any target: prints REFEREE_PROBE lines saying
# which ansible package and which ansible_task_timeout package the targets import, the deadline
# default in force, and what a task with task_timeout: 2 around a 10 s sleep did (patched: failed
# after about 2 s with task_timeout: true; stock: the keyword is rejected).
set -eux
"${ANSIBLE_TEST_PYTHON_INTERPRETER}" -c '
import ansible
print("REFEREE_PROBE ansible=" + ansible.__file__)
try:
    import ansible_task_timeout
    print("REFEREE_PROBE module=" + ansible_task_timeout.__file__)
except ImportError:
    print("REFEREE_PROBE module=none")
'
ansible --version | sed -n 's/^ *ansible python module location = /REFEREE_PROBE cli_module_location=/p'
echo "REFEREE_PROBE deadline=$(ansible-config dump 2>/dev/null | sed -n 's/^TASK_DEADLINE(\([^)]*\)) = /\1:/p')"
set +e
out=$(ansible-playbook -i localhost, -c local probe.yml -e "ansible_python_interpreter=${ANSIBLE_TEST_PYTHON_INTERPRETER}" 2>&1)
rc=$?
set -e
echo "$out"
echo "REFEREE_PROBE playbook_rc=$rc"
echo "$out" | sed -n 's/.*PROBE_RESULT \(.*\)"/REFEREE_PROBE result=\1/p' | head -1
