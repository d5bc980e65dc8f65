//! The simulator's protobuf descriptor table judged by kube-rs's generated Kubernetes protobuf
//! types (`k8s-pb`, on prost): objects are built with k8s-pb, wrapped in its `runtime.Unknown`
//! envelope and encoded by prost, so every field number and wire type comes from the
//! maintained bindings, not from the table; the simulator's decoding must be the JSON a real
//! API server serves for the same object. (k8s-pb cannot produce that JSON itself: its types
//! carry neither JSON names nor serde, and nothing in them says which scalars are Go pointers.)

use std::collections::BTreeMap;

use aad_pod_identity_sim::kube::protobuf::decode;
use k8s_pb::api::apps::v1 as apps;
use k8s_pb::api::batch::v1 as batch;
use k8s_pb::api::coordination::v1 as coordination;
use k8s_pb::api::core::v1 as core;
use k8s_pb::api::policy::v1 as policy;
use k8s_pb::apimachinery::pkg::api::resource::Quantity;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
use prost::Message;
use serde_json::{Value, json};

/// `k8s\0` and the `runtime.Unknown` envelope around `object`, as client-go sends it.
fn body(api_version: &str, kind: &str, object: &impl Message) -> Vec<u8> {
    let unknown = Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some(api_version.into()),
            kind: Some(kind.into()),
        }),
        raw: Some(object.encode_to_vec()),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    [b"k8s\0".to_vec(), unknown.encode_to_vec()].concat()
}

fn decoded(api_version: &str, kind: &str, object: &impl Message) -> Value {
    decode(&body(api_version, kind, object))
        .unwrap_or_else(|e| panic!("{api_version}/{kind}: {}", e.message))
}

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

fn q(v: &str) -> Quantity {
    Quantity { string: s(v) }
}

fn time(seconds: i64) -> Option<meta::Time> {
    Some(meta::Time {
        seconds: Some(seconds),
        nanos: Some(0),
    })
}

fn object_meta(name: &str) -> Option<meta::ObjectMeta> {
    Some(meta::ObjectMeta {
        name: s(name),
        namespace: s("default"),
        labels: BTreeMap::from([("app".into(), "web".into())]),
        ..Default::default()
    })
}

#[test]
fn a_node_as_k8s_pb_encodes_it() {
    let node = core::Node {
        metadata: object_meta("vm0").map(|m| meta::ObjectMeta {
            namespace: None,
            ..m
        }),
        spec: Some(core::NodeSpec {
            pod_cidr: s("10.244.1.0/24"),
            pod_cid_rs: vec!["10.244.1.0/24".into()],
            provider_id: s(
                "azure:///subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm0",
            ),
            unschedulable: Some(true),
            taints: vec![core::Taint {
                key: s("dedicated"),
                value: s("nmi"),
                effect: s("NoSchedule"),
                time_added: time(1_700_000_000),
            }],
            config_source: Some(core::NodeConfigSource {
                config_map: Some(core::ConfigMapNodeConfigSource {
                    namespace: s("kube-system"),
                    name: s("kubelet"),
                    uid: s("u-1"),
                    resource_version: s("7"),
                    kubelet_config_key: s("kubelet"),
                }),
            }),
            external_id: s("vm0"),
        }),
        status: Some(core::NodeStatus {
            capacity: BTreeMap::from([("cpu".into(), q("2")), ("memory".into(), q("7Gi"))]),
            allocatable: BTreeMap::from([("cpu".into(), q("1900m"))]),
            phase: s("Running"),
            conditions: vec![core::NodeCondition {
                r#type: s("Ready"),
                status: s("True"),
                last_heartbeat_time: time(1_700_000_000),
                last_transition_time: time(1_700_000_060),
                reason: s("KubeletReady"),
                message: s("kubelet is posting ready status"),
            }],
            addresses: vec![core::NodeAddress {
                r#type: s("InternalIP"),
                address: s("10.240.0.4"),
            }],
            daemon_endpoints: Some(core::NodeDaemonEndpoints {
                kubelet_endpoint: Some(core::DaemonEndpoint { port: Some(10250) }),
            }),
            node_info: Some(core::NodeSystemInfo {
                machine_id: s("m"),
                system_uuid: s("u"),
                boot_id: s("b"),
                kernel_version: s("6.8.0"),
                os_image: s("Ubuntu 22.04"),
                container_runtime_version: s("containerd://1.7.0"),
                kubelet_version: s("v1.33.0"),
                kube_proxy_version: s(""),
                operating_system: s("linux"),
                architecture: s("amd64"),
                swap: Some(core::NodeSwapStatus { capacity: Some(0) }),
            }),
            images: vec![core::ContainerImage {
                names: vec!["nginx:1.27".into()],
                size_bytes: Some(70_000_000),
            }],
            volumes_in_use: vec!["kubernetes.io/csi/disk^d1".into()],
            volumes_attached: vec![core::AttachedVolume {
                name: s("kubernetes.io/csi/disk^d1"),
                device_path: s("/dev/sdc"),
            }],
            config: Some(core::NodeConfigStatus {
                assigned: Some(core::NodeConfigSource::default()),
                error: s("none"),
                ..Default::default()
            }),
            runtime_handlers: vec![core::NodeRuntimeHandler {
                name: s("runc"),
                features: Some(core::NodeRuntimeHandlerFeatures {
                    recursive_read_only_mounts: Some(true),
                    user_namespaces: Some(false),
                }),
            }],
            features: Some(core::NodeFeatures {
                supplemental_groups_policy: Some(true),
            }),
            declared_features: vec!["Swap".into()],
        }),
    };
    assert_eq!(
        decoded("v1", "Node", &node),
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "vm0", "labels": {"app": "web"}},
            "spec": {
                "podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"],
                "providerID": "azure:///subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm0",
                "unschedulable": true,
                "taints": [{"key": "dedicated", "value": "nmi", "effect": "NoSchedule",
                            "timeAdded": "2023-11-14T22:13:20Z"}],
                "configSource": {"configMap": {"namespace": "kube-system", "name": "kubelet", "uid": "u-1",
                                               "resourceVersion": "7", "kubeletConfigKey": "kubelet"}},
                "externalID": "vm0",
            },
            "status": {
                "capacity": {"cpu": "2", "memory": "7Gi"},
                "allocatable": {"cpu": "1900m"},
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True",
                                "lastHeartbeatTime": "2023-11-14T22:13:20Z",
                                "lastTransitionTime": "2023-11-14T22:14:20Z",
                                "reason": "KubeletReady", "message": "kubelet is posting ready status"}],
                "addresses": [{"type": "InternalIP", "address": "10.240.0.4"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                "nodeInfo": {"machineID": "m", "systemUUID": "u", "bootID": "b", "kernelVersion": "6.8.0",
                             "osImage": "Ubuntu 22.04", "containerRuntimeVersion": "containerd://1.7.0",
                             "kubeletVersion": "v1.33.0", "kubeProxyVersion": "", "operatingSystem": "linux",
                             "architecture": "amd64", "swap": {"capacity": 0}},
                "images": [{"names": ["nginx:1.27"], "sizeBytes": 70_000_000}],
                "volumesInUse": ["kubernetes.io/csi/disk^d1"],
                "volumesAttached": [{"name": "kubernetes.io/csi/disk^d1", "devicePath": "/dev/sdc"}],
                "config": {"assigned": {}, "error": "none"},
                "runtimeHandlers": [{"name": "runc", "features": {"recursiveReadOnlyMounts": true,
                                                                  "userNamespaces": false}}],
                "features": {"supplementalGroupsPolicy": true},
                "declaredFeatures": ["Swap"],
            },
        })
    );
}

#[test]
fn delete_options_and_evictions_as_k8s_pb_encodes_them() {
    let opts = meta::DeleteOptions {
        grace_period_seconds: Some(0),
        preconditions: Some(meta::Preconditions {
            uid: s("uid-1"),
            resource_version: s("42"),
        }),
        orphan_dependents: Some(false),
        propagation_policy: s("Foreground"),
        dry_run: vec!["All".into()],
        ignore_store_read_error_with_cluster_breaking_potential: Some(false),
    };
    let want = json!({
        "gracePeriodSeconds": 0, "preconditions": {"uid": "uid-1", "resourceVersion": "42"},
        "orphanDependents": false, "propagationPolicy": "Foreground", "dryRun": ["All"],
        "ignoreStoreReadErrorWithClusterBreakingPotential": false,
    });
    let mut got = decoded("v1", "DeleteOptions", &opts);
    assert_eq!(got["kind"], "DeleteOptions");
    got.as_object_mut().unwrap().remove("kind");
    got.as_object_mut().unwrap().remove("apiVersion");
    assert_eq!(got, want);

    let eviction = policy::Eviction {
        metadata: object_meta("web-0"),
        delete_options: Some(opts),
    };
    let got = decoded("policy/v1", "Eviction", &eviction);
    assert_eq!(
        got["metadata"],
        json!({"name": "web-0", "namespace": "default", "labels": {"app": "web"}})
    );
    assert_eq!(got["deleteOptions"], want);
}

fn container() -> core::Container {
    core::Container {
        name: s("web"),
        image: s("nginx:1.27"),
        command: vec!["nginx".into()],
        args: vec!["-g".into(), "daemon off;".into()],
        working_dir: s("/srv"),
        ports: vec![core::ContainerPort {
            name: s("http"),
            container_port: Some(8080),
            protocol: s("TCP"),
            ..Default::default()
        }],
        env: vec![core::EnvVar {
            name: s("MODE"),
            value: s("fast"),
            value_from: None,
        }],
        resources: Some(core::ResourceRequirements {
            limits: BTreeMap::from([("memory".into(), q("128Mi"))]),
            requests: BTreeMap::from([("cpu".into(), q("100m"))]),
            claims: vec![],
        }),
        liveness_probe: Some(core::Probe {
            handler: Some(core::ProbeHandler {
                http_get: Some(core::HttpGetAction {
                    path: s("/healthz"),
                    port: Some(IntOrString {
                        r#type: Some(1),
                        int_val: Some(0),
                        str_val: s("http"),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            period_seconds: Some(5),
            ..Default::default()
        }),
        readiness_probe: Some(core::Probe {
            handler: Some(core::ProbeHandler {
                tcp_socket: Some(core::TcpSocketAction {
                    port: Some(IntOrString {
                        r#type: Some(0),
                        int_val: Some(8080),
                        str_val: None,
                    }),
                    host: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        image_pull_policy: s("IfNotPresent"),
        security_context: Some(core::SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(1000),
            allow_privilege_escalation: Some(false),
            capabilities: Some(core::Capabilities {
                drop: vec!["ALL".into()],
                add: vec![],
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_json() -> Value {
    json!({
        "name": "web", "image": "nginx:1.27", "command": ["nginx"], "args": ["-g", "daemon off;"],
        "workingDir": "/srv",
        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
        "env": [{"name": "MODE", "value": "fast"}],
        "resources": {"limits": {"memory": "128Mi"}, "requests": {"cpu": "100m"}},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 5},
        "readinessProbe": {"tcpSocket": {"port": 8080}},
        "imagePullPolicy": "IfNotPresent",
        "securityContext": {"capabilities": {"drop": ["ALL"]}, "runAsUser": 1000, "runAsNonRoot": true,
                            "allowPrivilegeEscalation": false},
    })
}

#[test]
fn a_deployment_and_a_cronjob_as_k8s_pb_encodes_them() {
    let template = Some(core::PodTemplateSpec {
        metadata: Some(meta::ObjectMeta {
            labels: BTreeMap::from([("app".into(), "web".into())]),
            ..Default::default()
        }),
        spec: Some(core::PodSpec {
            containers: vec![container()],
            restart_policy: s("Always"),
            termination_grace_period_seconds: Some(30),
            service_account_name: s("web"),
            automount_service_account_token: Some(false),
            node_selector: BTreeMap::from([("kubernetes.io/os".into(), "linux".into())]),
            tolerations: vec![core::Toleration {
                key: s("dedicated"),
                operator: s("Equal"),
                value: s("nmi"),
                effect: s("NoExecute"),
                toleration_seconds: Some(300),
            }],
            ..Default::default()
        }),
    });
    let pod_json = json!({
        "metadata": {"labels": {"app": "web"}},
        "spec": {
            "containers": [container_json()], "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30, "serviceAccountName": "web",
            "automountServiceAccountToken": false, "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "nmi",
                             "effect": "NoExecute", "tolerationSeconds": 300}],
        },
    });
    let deployment = apps::Deployment {
        metadata: object_meta("web"),
        spec: Some(apps::DeploymentSpec {
            replicas: Some(0),
            selector: Some(meta::LabelSelector {
                match_labels: BTreeMap::from([("app".into(), "web".into())]),
                match_expressions: vec![],
            }),
            template: template.clone(),
            strategy: Some(apps::DeploymentStrategy {
                r#type: s("RollingUpdate"),
                rolling_update: Some(apps::RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString {
                        r#type: Some(1),
                        int_val: None,
                        str_val: s("25%"),
                    }),
                    max_surge: Some(IntOrString {
                        r#type: Some(0),
                        int_val: Some(1),
                        str_val: None,
                    }),
                }),
            }),
            revision_history_limit: Some(10),
            progress_deadline_seconds: Some(600),
            ..Default::default()
        }),
        status: None,
    };
    let got = decoded("apps/v1", "Deployment", &deployment);
    assert_eq!(
        got["spec"],
        json!({
            "replicas": 0,
            "selector": {"matchLabels": {"app": "web"}},
            "template": pod_json,
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": 1}},
            "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600,
        })
    );

    let cronjob = batch::CronJob {
        metadata: object_meta("nightly"),
        spec: Some(batch::CronJobSpec {
            schedule: s("0 3 * * *"),
            time_zone: s("Europe/Paris"),
            starting_deadline_seconds: Some(60),
            concurrency_policy: s("Forbid"),
            suspend: Some(false),
            job_template: Some(batch::JobTemplateSpec {
                metadata: None,
                spec: Some(batch::JobSpec {
                    backoff_limit: Some(2),
                    template,
                    ..Default::default()
                }),
            }),
            successful_jobs_history_limit: Some(3),
            failed_jobs_history_limit: Some(1),
        }),
        status: None,
    };
    let got = decoded("batch/v1", "CronJob", &cronjob);
    assert_eq!(
        got["spec"],
        json!({
            "schedule": "0 3 * * *", "timeZone": "Europe/Paris", "startingDeadlineSeconds": 60,
            "concurrencyPolicy": "Forbid", "suspend": false,
            "jobTemplate": {"spec": {"backoffLimit": 2, "template": pod_json}},
            "successfulJobsHistoryLimit": 3, "failedJobsHistoryLimit": 1,
        })
    );
}

#[test]
fn a_lease_keeps_microseconds_as_k8s_pb_encodes_them() {
    let lease = coordination::Lease {
        metadata: object_meta("mic"),
        spec: Some(coordination::LeaseSpec {
            holder_identity: s("mic-0"),
            lease_duration_seconds: Some(15),
            acquire_time: Some(meta::MicroTime {
                seconds: Some(1_700_000_000),
                nanos: Some(123_456_789),
            }),
            renew_time: None,
            lease_transitions: Some(2),
            strategy: None,
            preferred_holder: None,
        }),
    };
    assert_eq!(
        decoded("coordination.k8s.io/v1", "Lease", &lease)["spec"],
        json!({"holderIdentity": "mic-0", "leaseDurationSeconds": 15,
               "acquireTime": "2023-11-14T22:13:20.123456Z", "leaseTransitions": 2})
    );
}
