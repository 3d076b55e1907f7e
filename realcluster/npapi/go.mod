// The network-policy-api release policyd implements (ClusterNetworkPolicy): its CRD goes into
// the chart at build time (scripts/k8s-build.sh); nothing of it is committed.
module policyd.local/npapi

go 1.26.0

require sigs.k8s.io/network-policy-api v0.3.0
