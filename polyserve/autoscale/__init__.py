"""Per-tier autoscaling: a pure decision core, signal sources and actuators."""
