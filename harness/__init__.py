"""What the tests and the benchmarks both drive, kept out of the shipped package: an
in-process agent bound to one node namespace, an in-process Kubernetes-compatible API
server, and the tampering that drift-repair measurements inflict on a lab node."""
