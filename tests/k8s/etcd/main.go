// Command etcd is the etcd server the Kubernetes-mode tests' kube-apiserver stores in
// (tests/k8s/build.sh builds it; tests/harness/k8s_cluster.py starts it).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
