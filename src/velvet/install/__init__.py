"""Installing Velvet on a Kubernetes cluster: the agent's manifests, rendered with install options."""
