// The agents policyd is measured beside (bench/run.py --only peers), each at one pinned release,
// built from its own module by scripts/peers-build.sh into .tools/peers/ (nothing of theirs is
// committed; kube-network-policies gets one small change of ours at build time, in
// kube-network-policies-nfqueue.patch beside this file).
module policyd.local/peers

go 1.26.0

require (
	github.com/cloudnativelabs/kube-router/v2 v2.1.0
	sigs.k8s.io/kube-network-policies v0.8.0
)
