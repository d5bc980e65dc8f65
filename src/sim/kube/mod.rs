//! An in-memory Kubernetes API server over real HTTP that kube-rs and kubectl accept unchanged.
