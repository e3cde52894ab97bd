// Command kube-controller-manager is Kubernetes' controller manager, built from k8s.io/kubernetes
// for the Kubernetes-mode tests, which run only its garbage collector
// (tests/k8s/build.sh builds it; tests/harness/k8s_cluster.py starts it).
package main

import (
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	"k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

func main() {
	os.Exit(cli.Run(app.NewControllerManagerCommand()))
}
