"""Worker runtimes of the GM: edge processes over the bus (standalone) and Kubernetes Pods."""
