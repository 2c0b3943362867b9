"""Misuse tests (issue 16): bad, empty and conflicting input to every command. Each asserts the exit code, a
one-line message and that nothing was changed. No test nodes: nodes are loopback ports, so nothing is ever touched."""
