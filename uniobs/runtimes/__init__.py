"""What uniobs knows about each VMM and container runtime: launch plans, /proc discovery,
the read-only QMP client, the KVM-or-TCG probe."""
