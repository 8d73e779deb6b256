"""Controllers: follow a source's objects, ask the pure compilers of `control/` for the desired
datapath tables, and hand the difference to the datapath writer. No syscalls of their own: they reach
the kernel only through the `Datapath` protocol, so they run unprivileged against the in-memory fake."""
