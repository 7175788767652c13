"""The integration harness: containers, sshd targets, hangs, EE runs, scenarios and verdicts.

Shared by tests/integration, the demo (scripts/demo) and the benchmarks (bench/), so that all of
them make and judge a hang the same way.
"""
