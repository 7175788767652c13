#!/usr/bin/python
"""Test module: returns a token and registers it as a secret, as a module that makes one would.

From ansible-core 2.22 a module's registered secrets come back with its result and are registered
in the worker, whose messages carry them to the controller: the controller's callbacks then mask
the token wherever it appears, in this task's result and in every later one.
"""

from __future__ import annotations

from ansible.module_utils.basic import AnsibleModule


def main() -> None:
    module = AnsibleModule(argument_spec={"seed": {"type": "str", "required": True}})
    token = f"tt-secret-{module.params['seed']}"
    from ansible.module_utils.secrets import register_secret  # ansible-core >= 2.22

    register_secret(token)
    module.exit_json(changed=False, token=token)


if __name__ == "__main__":
    main()
