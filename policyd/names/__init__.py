"""ClusterNetworkPolicy `domainNames`: the DNS answers local pods receive, held on an NFQUEUE
until the addresses they name are in the policies' learned sets (learner.py)."""
