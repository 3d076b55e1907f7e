"""policyd: Kubernetes NetworkPolicy enforcement with nftables."""

__version__ = "0.1.0"
