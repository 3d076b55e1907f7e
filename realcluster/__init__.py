"""A real Kubernetes cluster on one machine, for policyd's tests and walkthrough.

Kubernetes' own binaries (built from the pinned module in `k8s/`), etcd, containerd, runc
and the standard CNI plugins from Debian; a control plane and worker nodes, each node a
network namespace with a mount namespace of its own (so kubelet, containerd and the CNI
see their usual paths) and its own containerd, kubelet and kube-proxy. Images are built
locally without a container engine (`images.py`). Nothing here is part of the product:
the product is `policyd/`, this is what it is tested against.
"""
