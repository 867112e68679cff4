"""Policy training on the CPU: the speedups of our DPO runs, and how a run uses the host's memory."""
