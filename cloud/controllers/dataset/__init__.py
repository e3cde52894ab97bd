"""The Dataset controller: sends a Dataset to its node and keeps its status from the node's counts."""
