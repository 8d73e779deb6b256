"""Linux plumbing shared by the datapath, the sandbox and the agent's listeners: network namespaces
and the bpffs / cgroup v2 / tracefs mounts. No Velvet logic; depends on nothing of Velvet's but errors."""
