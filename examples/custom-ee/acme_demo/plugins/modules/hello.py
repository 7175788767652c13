#!/usr/bin/python
# GPL-3.0-or-later

DOCUMENTATION = r"""
module: hello
short_description: Say hello, and which jmespath the EE carries
description: The module of the example collection of examples/custom-ee.
options:
  name:
    description: Who is greeted.
    type: str
    default: world
author: task-timeout-ee
"""

RETURN = r"""
msg:
  description: The greeting.
  type: str
  returned: always
jmespath:
  description: The version of the jmespath package the module imported.
  type: str
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402 (modules document first)


def main() -> None:
    module = AnsibleModule(
        argument_spec={"name": {"type": "str", "default": "world"}}, supports_check_mode=True
    )
    try:
        import jmespath
    except ImportError:
        module.fail_json(msg="jmespath is not installed: the EE's requirements.txt was not installed")
    module.exit_json(changed=False, msg=f"hello, {module.params['name']}", jmespath=jmespath.__version__)


if __name__ == "__main__":
    main()
