"""Front-ends that own a workload's life: `run` (spawn, observe, stop), `attach`, `agent`
(discover and follow everything on the host), `discover` (plain cgroups), `rundir` (what a
run creates, removed however it ends)."""
