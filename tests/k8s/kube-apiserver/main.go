// Command kube-apiserver is Kubernetes' API server, built from k8s.io/kubernetes for the
// Kubernetes-mode tests (tests/k8s/build.sh builds it; tests/harness/k8s_cluster.py starts it).
package main

import (
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
