"""What the policies do, seen from the kernel: NFLOG drop records with their cause."""
