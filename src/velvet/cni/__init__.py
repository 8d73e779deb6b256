"""velvet-cni: the CNI plugin container runtimes call, and the agent's side of it."""
