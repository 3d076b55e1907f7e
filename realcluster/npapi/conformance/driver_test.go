// Package conformance runs the network-policy-api ClusterNetworkPolicy conformance tests
// (sigs.k8s.io/network-policy-api/conformance/tests, unchanged) against a real cluster.
//
// It differs from the module's own TestConformance in one way only: the suite's file
// system is ./base, which scripts/k8s-build.sh copies from the pinned module at build time
// with the base manifests adapted to this machine (realcluster/cnp_manifests.py says how
// and why). Every test file the suite applies is the module's own.
package conformance

import (
	"embed"
	"flag"
	"testing"

	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/config"

	api "sigs.k8s.io/network-policy-api/apis/v1beta1"
	"sigs.k8s.io/network-policy-api/conformance/tests"
	"sigs.k8s.io/network-policy-api/conformance/utils/suite"
)

//go:embed base
var manifests embed.FS

var supported = flag.String("supported-features", "ClusterNetworkPolicy", "comma-separated suite features this run claims")

func TestClusterNetworkPolicy(t *testing.T) {
	cfg, err := config.GetConfig()
	if err != nil {
		t.Fatalf("loading the kubeconfig: %v", err)
	}
	c, err := client.New(cfg, client.Options{})
	if err != nil {
		t.Fatalf("a controller-runtime client: %v", err)
	}
	clientset, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("a clientset: %v", err)
	}
	if err := api.Install(c.Scheme()); err != nil {
		t.Fatalf("installing the v1beta1 scheme: %v", err)
	}
	s := suite.New(suite.Options{
		Client:               c,
		ClientSet:            clientset,
		KubeConfig:           *cfg,
		CleanupBaseResources: true,
		SupportedFeatures:    suite.ParseSupportedFeatures(*supported),
		FS:                   &manifests,
	})
	s.Setup(t)
	s.Run(t, tests.ConformanceTests)
}
