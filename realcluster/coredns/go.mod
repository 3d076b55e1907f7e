// CoreDNS, built from its official module at one pinned release (scripts/coredns-build.sh, into
// .tools/coredns/): the DNS server of the lab (`policyd lab up --dns-zone`) and of the real
// cluster (its kube-dns Service).
module policyd.local/coredns

go 1.26.0

require github.com/coredns/coredns v1.15.0
