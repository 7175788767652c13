#!/bin/sh
# An interpreter that never answers: set as ansible_python_interpreter of one host it makes the
# first module (gather_facts) hang with the connection alive.
exec sleep infinity
