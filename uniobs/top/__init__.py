"""`uniobs top`: every workload on the host at a glance, from the agent's own collectors
(`local`) or a running uniobs' Prometheus endpoint (`remote`); rows and their rendering in `model`.
The command and its terminal UI are in `uniobs/cli/top.py`."""
